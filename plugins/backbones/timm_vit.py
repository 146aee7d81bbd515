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

from lspt_cli.errors import UsageError, WeightsError

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
def load_mae_vitb(weights: Path | str | None = None, *, model_kwargs: dict | None = None, img_size: int | None = None):
    return load_timm_backbone(MAE_VITB, weights, model_kwargs=model_kwargs, img_size=img_size)


def load_mocov3_vitb(weights: Path | str | None = None, *, model_kwargs: dict | None = None, img_size: int | None = None):
    return load_timm_backbone(MOCOV3_VITB, weights, model_kwargs=model_kwargs, img_size=img_size)


def load_sup_vitb(weights: Path | str | None = None, *, model_kwargs: dict | None = None, img_size: int | None = None):
    return load_timm_backbone(SUP_VITB, weights, model_kwargs=model_kwargs, img_size=img_size)


def load_timm_family(weights: Path | str | None = None, *, model: str, model_kwargs: dict | None = None,
                     img_size: int | None = None):
    """`--backbone timm/<model>`: any timm VisionTransformer, built by timm's own name (docs/backbones.md,
    "Bring your own ViT"). The registry calls this with `model` (lspt_cli.plugins.FamilyFactory).
    The architecture is checked first (built on the meta device, no memory, no weights): a CNN is
    refused as one before any weights file is looked for."""
    import torch

    spec = family_member(model)
    with torch.device("meta"):
        create_model(spec, None, model_kwargs, img_size=img_size)
    return load_timm_backbone(spec, weights, model_kwargs=model_kwargs, img_size=img_size)


def load_vit_tiny(weights: Path | str | None = None, *, img_size: int | None = None):
    """A 32-px, patch-8, 4-block, 64-dim ViT; random init with a fixed seed, or a saved state dict.

    `img_size`: the same weights (the seeded init or the file) with pos_embed resampled to that size
    (pos_embed.py), as for the pre-trained backbones."""
    import torch
    from timm.models.vision_transformer import VisionTransformer

    from lspt_cli.backbone import FrozenBackbone
    from lspt_cli.weights import read_checkpoint, strict_load

    from .pos_embed import fit_pos_embed

    with torch.random.fork_rng(devices=[]):  # a fixed init that leaves the caller's RNG alone
        torch.manual_seed(TINY_SEED)
        model = VisionTransformer(**TINY_CONFIG, num_classes=0)
    file = Path(weights).expanduser() if weights is not None else None
    if file is None:
        state, source = None, f"random init (seed {TINY_SEED})"
    else:
        state, what = checkpoints.convert_timm(read_checkpoint(file), str(file))
        source = f"{what} from {file}"
    if img_size and int(img_size) != TINY_CONFIG["img_size"]:
        state = state if state is not None else model.state_dict()
        model = VisionTransformer(**{**TINY_CONFIG, "img_size": int(img_size)}, num_classes=0)
        check_img_size(model, int(img_size), "vit-tiny")
        state = fit_pos_embed(state, model, "vit_tiny", source=str(file or "vit-tiny's init"))
    if state is not None:
        strict_load(model, state, source=str(file or "vit-tiny"))
    return with_registered_normalisation(FrozenBackbone(model, "vit-tiny", "cls", source=source, weights_file=file))


# -- the shared path ------------------------------------------------------------------------------
def load_timm_backbone(spec: TimmBackbone, weights: Path | str | None = None, *, model_kwargs: dict | None = None,
                       img_size: int | None = None):
    """Resolve the weights file, build the timm model, convert, fit pos_embed, strict-load, freeze.

    The single entry point of every timm backbone (built-in, catalog, `timm/<model>`).
    `model_kwargs` overrides the architecture (tests build the same layout at a tiny size).
    `img_size` (`--img-size`; None or 0: the model's own size) builds the model for N x N inputs and
    resamples the file's position embeddings to that grid BEFORE the strict load (pos_embed.py), so
    a wrong file still fails by name; without it a file at another resolution is refused.
    """
    from lspt_cli.backbone import FrozenBackbone
    from lspt_cli.weights import read_checkpoint, strict_load

    from .pos_embed import fit_pos_embed

    if weights is not None:
        file, where = Path(weights).expanduser(), "--weights"
    else:
        file, where = resolve_weights(spec)
    obj = read_checkpoint(file)  # before building the model: a bad file fails fast
    state, what = spec.convert(obj, str(file))
    model = create_model(spec, file, model_kwargs, img_size=img_size)
    if img_size:
        state = fit_pos_embed(state, model, spec.timm_model, source=str(file))
    strict_load(model, state, source=f"{spec.name} weights {file}")
    backbone = FrozenBackbone(
        model, spec.name, spec.readout, source=f"{what} from {file} ({where})", weights_file=file,
        timm_model=spec.timm_model,
    )
    return with_registered_normalisation(backbone)


def with_registered_normalisation(backbone):
    """The mean/std/interpolation of the backbone's registered BackboneSpec (lspt_plugins.backbones,
    what `lspt list backbones` shows) replace timm's: timm's config for `vit_base_patch16_224` is
    Google's 0.5/0.5, wrong for MoCo v3's weights. input_size stays the model's own. A backbone with
    no spec of its own (`timm/<model>`) keeps timm's pretrained config for its tag."""
    from . import BACKBONES as SPECS

    spec = next((s for s in SPECS if s.name == backbone.name), None)
    if spec is None:
        return backbone
    for key in ("mean", "std", "interpolation"):
        if getattr(spec, key) is not None:
            value = getattr(spec, key)
            backbone.data_config[key] = list(value) if isinstance(value, tuple) else value
    return backbone


def create_model(spec: TimmBackbone, file: Path | None = None, model_kwargs: dict | None = None,
                 img_size: int | None = None):
    """The timm model with lspt's head removed; random weights until lspt loads them.

    A timm model lspt cannot drive token by token is refused here, naming what it lacks."""
    import timm

    kwargs: dict[str, Any] = dict(num_classes=0)
    kwargs.update(model_kwargs or {})
    if img_size:
        kwargs["img_size"] = int(img_size)
    if file is not None:
        kwargs["pretrained_cfg_overlay"] = dict(file=str(file))
    try:
        model = timm.create_model(spec.timm_model, pretrained=False, **kwargs)
    except TypeError as exc:  # img_size for a family without one (a CNN): say what it lacks, if that is it
        if "img_size" not in kwargs:
            raise
        kwargs.pop("img_size")
        check_token_driven(timm.create_model(spec.timm_model, pretrained=False, **kwargs), spec.name)
        raise UsageError(f"backbone '{spec.name}': timm cannot build {spec.timm_model} at --img-size {img_size} ({exc})") from None
    check_token_driven(model, spec.name)
    if img_size:
        check_img_size(model, int(img_size), spec.name)
    return model


# What lspt's runner uses of a timm ViT (lspt_cli/backbone.py): a model without one of these
# cannot be driven token by token.
TOKEN_PARTS = ("patch_embed", "blocks", "_pos_embed", "patch_drop", "norm_pre", "norm", "num_prefix_tokens")


def check_token_driven(model, name: str) -> None:
    """A UsageError naming what lspt needs and this model lacks (a CNN, an attention-pooled ViT)."""
    missing = [part for part in TOKEN_PARTS if not hasattr(model, part)]
    blocks = getattr(model, "blocks", None)
    if not missing and not all(hasattr(b, "attn") and hasattr(getattr(b, "attn"), "q_norm") for b in blocks):
        missing.append("blocks[i].attn.q_norm (timm's Attention)")
    if not missing and not hasattr(getattr(model, "patch_embed"), "grid_size"):
        missing.append("patch_embed.grid_size")
    if not missing:
        from timm.models.vision_transformer import VisionTransformer

        if not isinstance(model, VisionTransformer):  # Eva, NaFlexVit, ...: other token plumbing (rope, masks)
            missing.append(f"timm's VisionTransformer class (it is {type(model).__name__})")
    pool = getattr(model, "global_pool", "token")
    if not missing and pool not in ("token", "avg", "", None):
        missing.append(f"a token readout (global_pool={pool!r} pools with its own trained module)")
    if missing:
        raise UsageError(
            f"backbone '{name}' ({type(model).__name__}) cannot be driven token by token: it lacks "
            f"{', '.join(missing)}",
            hint="lspt prompts timm VisionTransformer models (e.g. timm/vit_small_patch14_dinov2); see docs/backbones.md",
        )


def check_img_size(model, img_size: int, name: str) -> None:
    """--img-size must be a whole number of patches."""
    patch = model.patch_embed.patch_size
    patch = patch[0] if isinstance(patch, (tuple, list)) else patch
    if img_size < patch or img_size % patch:
        raise UsageError(f"--img-size {img_size}: backbone '{name}' has {patch}-px patches; "
                         f"expected a multiple of {patch} (e.g. {max(1, round(img_size / patch)) * patch})")


def family_member(model: str) -> TimmBackbone:
    """How `timm/<model>` is built: timm's own name and pretrained config, lspt's loading rules.

    The weights resolve as for the built-ins: --weights, else the HF cache of timm's hub repo for
    the tag (`timm/<model>.<tag>`), else the offline error naming that repo."""
    import timm

    name = f"timm/{model}"
    if not timm.is_model(model):
        import difflib

        base = model.split(".")[0]
        close = difflib.get_close_matches(base, timm.list_models(), n=3)
        raise UsageError(f"unknown backbone '{name}': timm has no model {model!r}",
                         hint=(f"did you mean {', '.join(f'timm/{c}' for c in close)}? " if close else "")
                         + "list them with: python -c \"import timm; print(timm.list_models('vit_*'))\"")
    cfg = timm.models.get_pretrained_cfg(model)
    hub = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
    if hub and hub.endswith("/"):  # timm's shorthand 'timm/': the repo is named after the model and tag
        tag = getattr(cfg, "tag", None)
        hub = hub + model.split(".")[0] + (f".{tag}" if tag else "")
    official = (getattr(cfg, "url", "") or "") if cfg is not None else ""
    url = official or (f"https://huggingface.co/{hub}/resolve/main/{HF_FILENAMES[0]}" if hub else "")
    if not url:
        url = f"https://huggingface.co/timm/{model}"  # timm keeps no file for it: the error still says where to look
    return TimmBackbone(
        name=name,
        timm_model=model,
        readout=default_readout(model),
        convert=checkpoints.convert_any,
        download_url=url,
        local_files=(official.rsplit("/", 1)[-1],) if official else (),
        hf_repo=hub or None,
    )


def default_readout(model: str) -> str:
    """The readout the authors evaluate a self-supervised checkpoint with; "cls" otherwise.

    - DINOv2 (`*_dinov2*`): "cls+mean", the linear evaluation's input (CLS and the mean patch
      token, facebookresearch/dinov2 dinov2/eval/linear.py:171-183, create_linear_input).
    - MAE (`*.mae`): "mean-norm", as the built-in mae-vitb (GaPT's readout; docs/backbones.md).
    """
    if "dinov2" in model:
        return "cls+mean"
    if model.endswith(".mae"):
        return "mean-norm"
    return "cls"


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
