"""The built-in timm ViT backbones: factories `load_<name>(weights) -> FrozenBackbone`.

Weights resolve in this order (docs/backbones.md):

1. `weights` (the `--weights FILE` flag): converted from the official layout, then strict-loaded.
2. The local caches, never the network: `<lspt cache>/weights/<official file name>`, the Hugging
   Face cache (`HF_HUB_CACHE`, else `HF_HOME/hub`, else `~/.cache/huggingface/hub`) for timm's
   hub repo, and torch.hub's `checkpoints/` folder (`TORCH_HOME`) where timm and torch put URLs.
3. Only with `LSPT_ALLOW_DOWNLOAD=1`: the download (timm's HF hub repo, or the official URL into
   `<lspt cache>/weights/`). Otherwise a `WeightsError` naming the file to fetch and `--weights`,
   so an offline machine never hangs on a network timeout.

The model is `timm.create_model(<tag>, pretrained=False, num_classes=0,
pretrained_cfg_overlay=dict(file=...))`: timm's pretrained config (mean/std, interpolation, crop,
the file it came from) applies, but the weights are loaded by lspt, strictly. timm's own
`load_pretrained` is not used because it relaxes to `strict=False` whenever the classifier size
differs (augreg_in21k has 21843 classes) and its `checkpoint_filter_fn` silently resamples
pos_embed/patch_embed to fit; these backbones are fixed at 224 px / patch 16, so a shape that does
not fit means a wrong file and is reported by name.

MAE and the norms: timm's `vit_base_patch16_224.mae` keeps `global_pool="token"`, so the model has
the pre-trained final `norm` (loaded from MAE's `norm.*`) and `fc_norm` is an Identity with no
weights. The default readout "mean-norm" averages the tokens after the prefix and applies that
`norm` (GaPT's choice). VPT's "mean-ln" (the vpt-* MAE recipes) applies a LayerNorm with identity
affine instead: VPT builds MAE with global_pool=True, which deletes `norm` and adds an `fc_norm`
the checkpoint does not hold, left at its init and frozen (lspt_cli/backbone.py, `read_out`).
Building the timm model with `global_pool="avg"` is not needed for either.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from lspt_cli.errors import WeightsError

from . import checkpoints

MAE_URL = "https://dl.fbaipublicfiles.com/mae/pretrain/mae_pretrain_vit_base.pth"
MOCOV3_URL = "https://dl.fbaipublicfiles.com/moco-v3/vit-b-300ep/vit-b-300ep.pth.tar"
MOCOV3_LINEAR_URL = "https://dl.fbaipublicfiles.com/moco-v3/vit-b-300ep/linear-vit-b-300ep.pth.tar"
SUP_URL = "https://huggingface.co/timm/vit_base_patch16_224.augreg_in21k/resolve/main/model.safetensors"

# vit-tiny: the same config as tests/conftest.py TINY; deterministic random init.
TINY_CONFIG = dict(img_size=32, patch_size=8, embed_dim=64, depth=4, num_heads=4)
TINY_SEED = 0

HF_FILENAMES = ("model.safetensors", "pytorch_model.bin")


@dataclass(frozen=True)
class TimmBackbone:
    """How one built-in backbone is built and where its weights may be found."""

    name: str
    timm_model: str
    readout: str
    convert: Callable[[Any, str], tuple[dict, str]]
    download_url: str  # the file the offline error tells the user to fetch
    local_files: tuple[str, ...] = ()  # official file names looked up in lspt's and torch's caches
    hf_repo: str | None = None  # timm's Hugging Face repo (cache lookup and opt-in download)


MAE_VITB = TimmBackbone(
    name="mae-vitb",
    timm_model="vit_base_patch16_224.mae",
    readout="mean-norm",
    convert=checkpoints.convert_mae,
    download_url=MAE_URL,
    local_files=("mae_pretrain_vit_base.pth",),
    hf_repo="timm/vit_base_patch16_224.mae",
)
MOCOV3_VITB = TimmBackbone(
    name="mocov3-vitb",
    timm_model="vit_base_patch16_224",
    readout="cls",
    convert=checkpoints.convert_mocov3,
    download_url=MOCOV3_URL,
    local_files=("vit-b-300ep.pth.tar", "linear-vit-b-300ep.pth.tar"),
    hf_repo=None,  # timm's default vit_base_patch16_224 weights are supervised, not MoCo v3
)
SUP_VITB = TimmBackbone(
    name="sup-vitb",
    timm_model="vit_base_patch16_224.augreg_in21k",
    readout="cls",
    convert=checkpoints.convert_timm,
    download_url=SUP_URL,
    local_files=(),
    hf_repo="timm/vit_base_patch16_224.augreg_in21k",
)
BACKBONES = {b.name: b for b in (MAE_VITB, MOCOV3_VITB, SUP_VITB)}


# -- factories (the strings registered in lspt_plugins.backbones) ---------------------------------
def load_mae_vitb(weights: Path | str | None = None, *, model_kwargs: dict | None = None):
    return load_timm_backbone(MAE_VITB, weights, model_kwargs=model_kwargs)


def load_mocov3_vitb(weights: Path | str | None = None, *, model_kwargs: dict | None = None):
    return load_timm_backbone(MOCOV3_VITB, weights, model_kwargs=model_kwargs)


def load_sup_vitb(weights: Path | str | None = None, *, model_kwargs: dict | None = None):
    return load_timm_backbone(SUP_VITB, weights, model_kwargs=model_kwargs)


def load_vit_tiny(weights: Path | str | None = None):
    """A 32-px, patch-8, 4-block, 64-dim ViT; random init with a fixed seed, or a saved state dict."""
    import torch
    from timm.models.vision_transformer import VisionTransformer

    from lspt_cli.backbone import FrozenBackbone
    from lspt_cli.weights import read_checkpoint, strict_load

    with torch.random.fork_rng(devices=[]):  # a fixed init that leaves the caller's RNG alone
        torch.manual_seed(TINY_SEED)
        model = VisionTransformer(**TINY_CONFIG, num_classes=0)
    if weights is None:
        return with_registered_normalisation(FrozenBackbone(model, "vit-tiny", "cls", source=f"random init (seed {TINY_SEED})"))
    file = Path(weights).expanduser()
    state, what = checkpoints.convert_timm(read_checkpoint(file), str(file))
    strict_load(model, state, source=str(file))
    return with_registered_normalisation(FrozenBackbone(model, "vit-tiny", "cls", source=f"{what} from {file}", weights_file=file))


# -- the shared path ------------------------------------------------------------------------------
def load_timm_backbone(spec: TimmBackbone, weights: Path | str | None = None, *, model_kwargs: dict | None = None):
    """Resolve the weights file, build the timm model, convert and strict-load, freeze.

    `model_kwargs` overrides the architecture (tests build the same layout at a tiny size).
    """
    from lspt_cli.backbone import FrozenBackbone
    from lspt_cli.weights import read_checkpoint, strict_load

    if weights is not None:
        file, where = Path(weights).expanduser(), "--weights"
    else:
        file, where = resolve_weights(spec)
    obj = read_checkpoint(file)  # before building the model: a bad file fails fast
    state, what = spec.convert(obj, str(file))
    model = create_model(spec, file, model_kwargs)
    strict_load(model, state, source=f"{spec.name} weights {file}")
    backbone = FrozenBackbone(
        model, spec.name, spec.readout, source=f"{what} from {file} ({where})", weights_file=file
    )
    return with_registered_normalisation(backbone)


def with_registered_normalisation(backbone):
    """The mean/std/interpolation of the backbone's registered BackboneSpec (lspt_plugins.backbones,
    what `lspt list backbones` shows) replace timm's: timm's config for `vit_base_patch16_224` is
    Google's 0.5/0.5, wrong for MoCo v3's weights. input_size stays the model's own."""
    from . import BACKBONES as SPECS

    spec = next(s for s in SPECS if s.name == backbone.name)
    for key in ("mean", "std", "interpolation"):
        if getattr(spec, key) is not None:
            value = getattr(spec, key)
            backbone.data_config[key] = list(value) if isinstance(value, tuple) else value
    return backbone


def create_model(spec: TimmBackbone, file: Path | None = None, model_kwargs: dict | None = None):
    """The timm model with lspt's head removed; random weights until lspt loads them."""
    import timm

    kwargs: dict[str, Any] = dict(num_classes=0)
    kwargs.update(model_kwargs or {})
    if file is not None:
        kwargs["pretrained_cfg_overlay"] = dict(file=str(file))
    return timm.create_model(spec.timm_model, pretrained=False, **kwargs)


def resolve_weights(spec: TimmBackbone) -> tuple[Path, str]:
    """(file, where it was found) from the local caches, an opt-in download, or a WeightsError."""
    found = find_cached_weights(spec)
    if found is not None:
        return found
    if os.environ.get("LSPT_ALLOW_DOWNLOAD", "") not in ("", "0"):
        return download_weights(spec), "downloaded"
    file_name = spec.download_url.rsplit("/", 1)[-1]
    where = f"{spec.hf_repo} on the Hugging Face hub, or " if spec.hf_repo else ""
    raise WeightsError(
        f"no weights for backbone '{spec.name}' in the local caches, and downloading is off: "
        f"download {file_name} ({spec.download_url}) and pass it with --weights FILE",
        hint=f"lspt looks in {lspt_weights_dir()}, the Hugging Face cache ({hf_cache_dir()}) and "
        f"torch.hub's checkpoints; set LSPT_ALLOW_DOWNLOAD=1 to fetch {where}{file_name} automatically",
    )


def find_cached_weights(spec: TimmBackbone) -> tuple[Path, str] | None:
    """Look only at files already on disk; never touches the network."""
    for name in spec.local_files:
        candidate = lspt_weights_dir() / name
        if candidate.is_file():
            return candidate, "lspt cache"
    if spec.hf_repo:
        try:
            from huggingface_hub import try_to_load_from_cache
        except ImportError:  # pragma: no cover - huggingface_hub comes with timm
            try_to_load_from_cache = None
        if try_to_load_from_cache is not None:
            for name in HF_FILENAMES:
                hit = try_to_load_from_cache(spec.hf_repo, name, cache_dir=str(hf_cache_dir()))
                if isinstance(hit, str) and Path(hit).is_file():
                    return Path(hit), f"Hugging Face cache, {spec.hf_repo}"
    for name in spec.local_files:
        candidate = torch_hub_checkpoints_dir() / name
        if candidate.is_file():
            return candidate, "torch.hub cache"
    return None


def download_weights(spec: TimmBackbone) -> Path:
    """Fetch the weights (only called with LSPT_ALLOW_DOWNLOAD=1)."""
    try:
        if spec.hf_repo:
            from huggingface_hub import hf_hub_download

            return Path(hf_hub_download(spec.hf_repo, HF_FILENAMES[0], cache_dir=str(hf_cache_dir())))
        from torch.hub import download_url_to_file

        target = lspt_weights_dir() / spec.download_url.rsplit("/", 1)[-1]
        target.parent.mkdir(parents=True, exist_ok=True)
        download_url_to_file(spec.download_url, str(target), progress=True)
        return target
    except Exception as exc:
        raise WeightsError(
            f"downloading the weights of '{spec.name}' failed ({type(exc).__name__}: {exc})",
            hint=f"download {spec.download_url} yourself and pass it with --weights FILE",
        ) from exc


def lspt_weights_dir() -> Path:
    from lspt_cli import paths

    return paths.cache_dir() / "weights"


def hf_cache_dir() -> Path:
    """The Hugging Face hub cache, read from the environment at call time."""
    explicit = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "huggingface")
    return Path(home).expanduser() / "hub"


def torch_hub_checkpoints_dir() -> Path:
    import torch.hub

    return Path(torch.hub.get_dir()) / "checkpoints"
