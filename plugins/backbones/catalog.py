"""Named backbones for the self-supervised checkpoints users have: one record per file its authors publish.

Each `CatalogEntry` is a `timm_vit.TimmBackbone` (the timm model, the converter of the official layout,
the file names looked up in the local caches, the download URL the offline error names), plus what
`lspt list backbones` and the README table show: the architecture, the input statistics, the default
readout with the authors' own evaluation readout cited, the paper. Variants are data; the factory is
one thin function, `load_named`, that builds any of them through `timm_vit.load_timm_backbone`.

The four original names (mae-vitb, mocov3-vitb, sup-vitb, vit-tiny) keep their definitions in
timm_vit.py; `cached_weights` covers them too. Importing this module imports neither torch nor timm.

Readouts (docs/backbones.md): lspt reads one vector from the last block; where the authors'
linear evaluation concatenates several blocks, the entry says so and what lspt uses instead.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lspt_cli.backbone_dims import IMAGENET_MEAN, IMAGENET_STD

from . import checkpoints, timm_vit

FB = "https://dl.fbaipublicfiles.com"
IBOT = "https://lf3-nlp-opensource.bytetos.com/obj/nlp-opensource/archive/2022/ibot"

MAE_PAPER = "He et al., Masked Autoencoders Are Scalable Vision Learners, CVPR 2022 (arXiv 2111.06377)"
MOCOV3_PAPER = "Chen, Xie, He, An Empirical Study of Training Self-Supervised Vision Transformers, ICCV 2021 (arXiv 2104.02057)"
DINO_PAPER = "Caron et al., Emerging Properties in Self-Supervised Vision Transformers, ICCV 2021 (arXiv 2104.14294)"
DINOV2_PAPER = "Oquab et al., DINOv2: Learning Robust Visual Features without Supervision, TMLR 2024 (arXiv 2304.07193)"
REGISTERS_PAPER = "Darcet et al., Vision Transformers Need Registers, ICLR 2024 (arXiv 2309.16588)"
IBOT_PAPER = "Zhou et al., iBOT: Image BERT Pre-Training with Online Tokenizer, ICLR 2022 (arXiv 2111.07832)"

MAE_READOUT = ("MAE's linear probe reads the CLS token (facebookresearch/mae main_linprobe.py:72-74, "
               "global_pool off); lspt uses mean-norm, GaPT's MAE readout, as for mae-vitb")
MOCOV3_READOUT = ("MoCo v3's linear probe reads the CLS token after the final norm (facebookresearch/moco-v3 "
                  "main_lincls.py:158-183, timm's token pool); lspt: cls")
DINO_READOUT = ("DINO's linear probe: ViT-S concatenates the CLS of the last 4 blocks, ViT-B the last CLS and "
                "the mean patch token (facebookresearch/dino eval_linear.py:256-259, README.md:340-344); "
                "lspt: the last block's CLS (cls)")
DINOV2_READOUT = ("DINOv2's linear evaluation concatenates the CLS of the last 1 or 4 blocks, with or "
                  "without the mean patch token, and keeps the best (facebookresearch/dinov2 "
                  "dinov2/eval/linear.py:171-183, :503); lspt: cls+mean of the last block")
IBOT_READOUT = ("iBOT's linear probe (bytedance/ibot run.sh:50-58, evaluation/eval_linear.py:185-193): ViT-B "
                "concatenates the last CLS and the mean patch token (avgpool 2), ViT-S the CLS of the last "
                "4 blocks; lspt: the last block's CLS (cls), as for DINO")

LAYOUTS = {
    "mae": "{'model': encoder} (a pre-training checkpoint's decoder_* and mask_token dropped), or timm's safetensors",
    "mocov3": "{'state_dict': module.base_encoder.*} (momentum encoder, predictor, projection head dropped), "
              "or the linear-probe file {'state_dict': module.*} (classifier dropped)",
    "dino": "the flat backbone file, or a training checkpoint's 'teacher' (backbone.* kept, head.* dropped)",
    "dinov2": "the flat hub file (mask_token dropped; register_tokens -> reg_token with CLS's position folded "
              "into cls_token; ViT-g's mlp.w12/w3 -> mlp.fc1/fc2), or timm's safetensors",
    "ibot": "{'state_dict': backbone} (checkpoint_teacher.pth), or a training checkpoint's 'teacher' "
            "(backbone.* kept, head.* dropped)",
}


@dataclass(frozen=True)
class CatalogEntry(timm_vit.TimmBackbone):
    """A named pre-trained backbone (the inherited fields say how it loads)."""

    family: str = ""  # a key of LAYOUTS
    title: str = ""  # "DINOv2 ViT-B/14 with 4 registers"
    data: str = ""  # what it was pre-trained on
    embed_dim: int = 768
    depth: int = 12
    patch_size: int = 16
    num_prefix_tokens: int = 1  # CLS + registers
    input_size: int = 224  # lspt's default input; the model is built (and pos_embed resampled) for it
    build_size: int | None = None  # set where the timm model's own size differs (DINOv2: 518)
    model_kwargs: tuple[tuple[str, Any], ...] = ()  # the architecture where timm's default differs
    mean: tuple[float, ...] = IMAGENET_MEAN  # every entry: ImageNet statistics, as in its authors' code
    std: tuple[float, ...] = IMAGENET_STD
    citation: str = ""
    readout_note: str = ""

    @property
    def description(self) -> str:
        return f"{self.title} (timm {self.timm_model}), self-supervised on {self.data}; {self.readout} readout"


def _mae(name, size, timm_model, file, dim, depth, patch):
    return CatalogEntry(
        name=name, timm_model=timm_model, readout="mean-norm", convert=checkpoints.convert_mae,
        download_url=f"{FB}/mae/pretrain/{file}", local_files=(file,), hf_repo=f"timm/{timm_model}",
        family="mae", title=f"MAE ViT-{size}/{patch}", data="ImageNet-1k", embed_dim=dim, depth=depth,
        patch_size=patch, citation=MAE_PAPER, readout_note=MAE_READOUT,
    )


def _dino(name, size, timm_model, stem, dim, patch):
    file = f"{stem}_pretrain.pth"  # facebookresearch/dino hubconf.py:30-75
    return CatalogEntry(
        name=name, timm_model=timm_model, readout="cls", convert=checkpoints.convert_dino,
        download_url=f"{FB}/dino/{stem}_pretrain/{file}", local_files=(file,), hf_repo=f"timm/{timm_model}",
        family="dino", title=f"DINO ViT-{size}/{patch}", data="ImageNet-1k", embed_dim=dim, depth=12,
        patch_size=patch, citation=DINO_PAPER, readout_note=DINO_READOUT,
    )


def _dinov2(size, dim, depth, registers):
    """facebookresearch/dinov2 hub/backbones.py:18-60, hub/utils.py:17-20 (file names)."""
    arch = f"vit{size.lower()}14"
    file = f"dinov2_{arch}{'_reg4' if registers else ''}_pretrain.pth"
    timm_size = {"S": "small", "B": "base", "L": "large", "g": "giant"}[size]
    timm_model = f"vit_{timm_size}_patch14_{'reg4_' if registers else ''}dinov2.lvd142m"
    return CatalogEntry(
        name=f"dinov2-{arch}{'-reg' if registers else ''}", timm_model=timm_model, readout="cls+mean",
        convert=checkpoints.convert_dinov2, download_url=f"{FB}/dinov2/dinov2_{arch}/{file}", local_files=(file,),
        hf_repo=f"timm/{timm_model}", family="dinov2",
        title=f"DINOv2 ViT-{size}/14" + (" with 4 registers" if registers else ""), data="LVD-142M",
        embed_dim=dim, depth=depth, patch_size=14, num_prefix_tokens=5 if registers else 1,
        build_size=518,  # the hub models: img_size=518 (hub/backbones.py:21), a 37 x 37 pos_embed
        citation=DINOV2_PAPER + ("; " + REGISTERS_PAPER if registers else ""), readout_note=DINOV2_READOUT,
    )


ENTRIES: tuple[CatalogEntry, ...] = (
    _mae("mae-vitl", "L", "vit_large_patch16_224.mae", "mae_pretrain_vit_large.pth", 1024, 24, 16),
    _mae("mae-vith", "H", "vit_huge_patch14_224.mae", "mae_pretrain_vit_huge.pth", 1280, 32, 14),
    CatalogEntry(
        name="mocov3-vits", timm_model="vit_small_patch16_224", readout="cls", convert=checkpoints.convert_mocov3,
        download_url=f"{FB}/moco-v3/vit-s-300ep/vit-s-300ep.pth.tar",
        local_files=("vit-s-300ep.pth.tar", "linear-vit-s-300ep.pth.tar"),  # facebookresearch/moco-v3 CONFIG.md:198-200
        hf_repo=None,  # timm's vit_small_patch16_224 weights are supervised (and 6-headed)
        family="mocov3", title="MoCo v3 ViT-S/16 (12 heads)", data="ImageNet-1k", embed_dim=384, depth=12,
        # MoCo v3's ViT-S has 12 heads where timm's (and DeiT's) has 6 (moco-v3 vits.py:115-119,
        # README.md:177); the sin-cos pos_embed and stop_grad_conv1 change no key.
        model_kwargs=(("num_heads", 12),),
        citation=MOCOV3_PAPER, readout_note=MOCOV3_READOUT,
    ),
    _dino("dino-vits16", "S", "vit_small_patch16_224.dino", "dino_deitsmall16", 384, 16),
    _dino("dino-vits8", "S", "vit_small_patch8_224.dino", "dino_deitsmall8", 384, 8),
    _dino("dino-vitb16", "B", "vit_base_patch16_224.dino", "dino_vitbase16", 768, 16),
    _dino("dino-vitb8", "B", "vit_base_patch8_224.dino", "dino_vitbase8", 768, 8),
    *(_dinov2(size, dim, depth, registers)
      for registers in (False, True)
      for size, dim, depth in (("S", 384, 12), ("B", 768, 12), ("L", 1024, 24), ("g", 1536, 40))),
    CatalogEntry(
        name="ibot-vitb16", timm_model="vit_base_patch16_224", readout="cls", convert=checkpoints.convert_ibot,
        download_url=f"{IBOT}/vitb_16/checkpoint_teacher.pth",  # bytedance/ibot README.md:166
        local_files=("checkpoint_teacher.pth",),
        hf_repo=None,  # timm's vit_base_patch16_224 weights are supervised
        family="ibot", title="iBOT ViT-B/16", data="ImageNet-1k", citation=IBOT_PAPER, readout_note=IBOT_READOUT,
    ),
)
CATALOG: dict[str, CatalogEntry] = {e.name: e for e in ENTRIES}


@dataclass(frozen=True)
class NamedLoader:
    """The registered factory of one entry: `factory(weights, **options)` -> FrozenBackbone."""

    name: str

    def __call__(self, weights: Path | str | None = None, **options):
        return load_named(CATALOG[self.name], weights, **options)


def load_named(entry: CatalogEntry, weights: Path | str | None = None, *, model_kwargs: dict | None = None,
               img_size: int | None = None, **options):
    """Build `entry` through the one shared path (timm_vit.load_timm_backbone).

    `model_kwargs` override the entry's architecture (tests build the same layout at a tiny size).
    Without `img_size` (or 0), an entry whose timm model is built for another size than lspt's
    default input (DINOv2: 518 px) is built at `input_size`, its pos_embed resampled as the authors
    do; a tiny test model that sets its own img_size keeps it."""
    kwargs = {**dict(entry.model_kwargs), **(model_kwargs or {})}
    if not img_size and entry.build_size and "img_size" not in kwargs:
        img_size = entry.input_size
    return timm_vit.load_timm_backbone(entry, weights, model_kwargs=kwargs, img_size=img_size or None, **options)


# -- what is already on disk (lspt list backbones: "cached") ---------------------------------------
def cached_weights(name: str) -> str | None:
    """A weights file of backbone `name` already on disk, or None; never touches the network nor
    imports torch: <cache dir>/weights/<official file>, the Hugging Face cache of the timm repo, and
    torch.hub's checkpoints folder (TORCH_HOME, read as torch.hub.get_dir does)."""
    spec = CATALOG.get(name) or timm_vit.BACKBONES.get(name)
    if spec is None:
        return None
    for folder in (timm_vit.lspt_weights_dir(), _torch_hub_checkpoints_dir()):
        for file in spec.local_files:
            if (folder / file).is_file():
                return str(folder / file)
    if spec.hf_repo:
        try:
            from huggingface_hub import try_to_load_from_cache
        except ImportError:  # pragma: no cover - huggingface_hub comes with timm
            return None
        for file in timm_vit.HF_FILENAMES:
            hit = try_to_load_from_cache(spec.hf_repo, file, cache_dir=str(timm_vit.hf_cache_dir()))
            if isinstance(hit, str) and Path(hit).is_file():
                return hit
    return None


def _torch_hub_checkpoints_dir() -> Path:
    """torch.hub.get_dir()/checkpoints without importing torch (TORCH_HOME, else XDG_CACHE_HOME/torch)."""
    home = os.environ.get("TORCH_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "torch")
    return Path(home).expanduser() / "hub" / "checkpoints"
