"""Fake official checkpoints of every named backbone, at a tiny size, for the conversion tests and
the benchmarks (benchmarks import `fake_checkpoint`).

Each fake holds random tensors under the key names, shapes and nesting of the file its authors
publish; only the width and depth are shrunk (embed 48, 2 blocks, an image of 2 x 2 patches), so the
patch size, register tokens, LayerScale, SwiGLU and every wrapper (`model`, `state_dict`, `teacher`,
`module.`, `backbone.`) are the real ones. The key lists are written here from the official model
code, not derived from timm, so a converter is checked against the authors' layout:

- ViT keys (cls_token, pos_embed, patch_embed.proj, blocks.N.{norm1, attn.qkv, attn.proj, norm2,
  mlp.fc1, mlp.fc2}, norm): facebookresearch/dino vision_transformer.py:99-159 (DINO, and the timm
  ViT that MAE models_vit.py, MoCo v3 vits.py and bytedance/ibot models/vision_transformer.py:134-172
  share, qkv with bias).
- DINOv2 (facebookresearch/dinov2 dinov2/models/vision_transformer.py:103-169, layers/block.py:63-84,
  layers/swiglu_ffn.py): + mask_token [1, D], register_tokens [1, 4, D] for the `_reg` models,
  blocks.N.ls1.gamma / ls2.gamma, and for ViT-g mlp.w12 [2h, D] / mlp.w3 [D, h] with
  h = (int(4D * 2 / 3) + 7) // 8 * 8 (SwiGLUFFNFused). The hub files are flat state dicts
  (hub/backbones.py:52-60 loads them as they are); the grid is the one of 518 px (37 x 37).
- DINO: the hub file `dino_*_pretrain.pth` is the flat backbone (hubconf.py:22-75); the training
  checkpoint (main_dino.py:278-287) holds `teacher` = MultiCropWrapper: `backbone.*` + `head.*`
  (DINOHead: mlp.*, last_layer.weight_g/_v), and `student` the same under DDP's `module.`.
- iBOT: `checkpoint_teacher.pth` is `{"state_dict": backbone}`; the training checkpoint
  (main_ibot.py:348-358) is DINO's with an iBOTHead.
- MAE: `{"model": encoder}` (the released files); a pre-training checkpoint of main_pretrain.py
  (util/misc.py save_model) holds the whole MaskedAutoencoderViT: + decoder_* and mask_token.
- MoCo v3: main_moco.py saves `{"epoch", "arch", "state_dict": module.base_encoder.* (head = the
  projection MLP), module.momentum_encoder.*, module.predictor.*, "optimizer", "scaler"}`;
  main_lincls.py saves `{"state_dict": module.* + module.head.{weight,bias}}`.

`FakeCheckpoint.expected` is what the converted state dict must hold under timm's names, tensor for
tensor; `dropped` lists the official keys a converter drops.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

TINY_DIM = 48  # divisible by every spec's head count (6, 12, 16, 24)
TINY_DEPTH = 2
TINY_GRID = 2  # patches per side: the image is TINY_GRID * patch pixels
DINOV2_GRID = 37  # the official hub models are built at 518 px: 518 / 14 = 37 patches per side
REGISTERS = 4

# name -> (family, patch size); the families decide the layout, written from the official code
SPECS: dict[str, tuple[str, int]] = {
    "mae-vitb": ("mae", 16), "mae-vitl": ("mae", 16), "mae-vith": ("mae", 14),
    "mocov3-vits": ("mocov3", 16), "mocov3-vitb": ("mocov3", 16),
    "dino-vits16": ("dino", 16), "dino-vits8": ("dino", 8), "dino-vitb16": ("dino", 16), "dino-vitb8": ("dino", 8),
    "dinov2-vits14": ("dinov2", 14), "dinov2-vitb14": ("dinov2", 14), "dinov2-vitl14": ("dinov2", 14),
    "dinov2-vitg14": ("dinov2", 14),
    "dinov2-vits14-reg": ("dinov2", 14), "dinov2-vitb14-reg": ("dinov2", 14), "dinov2-vitl14-reg": ("dinov2", 14),
    "dinov2-vitg14-reg": ("dinov2", 14),
    "ibot-vitb16": ("ibot", 16),
}
# the variants each family has: "" is the file users download first
VARIANTS = {"mae": ("", "full"), "mocov3": ("", "linear"), "dino": ("", "full"), "dinov2": ("",), "ibot": ("", "full")}
OFFICIAL_FILES = {
    "mae-vitb": "mae_pretrain_vit_base.pth", "mae-vitl": "mae_pretrain_vit_large.pth",
    "mae-vith": "mae_pretrain_vit_huge.pth",
    "mocov3-vits": "vit-s-300ep.pth.tar", "mocov3-vitb": "vit-b-300ep.pth.tar",
    "dino-vits16": "dino_deitsmall16_pretrain.pth", "dino-vits8": "dino_deitsmall8_pretrain.pth",
    "dino-vitb16": "dino_vitbase16_pretrain.pth", "dino-vitb8": "dino_vitbase8_pretrain.pth",
    "dinov2-vits14": "dinov2_vits14_pretrain.pth", "dinov2-vitb14": "dinov2_vitb14_pretrain.pth",
    "dinov2-vitl14": "dinov2_vitl14_pretrain.pth", "dinov2-vitg14": "dinov2_vitg14_pretrain.pth",
    "dinov2-vits14-reg": "dinov2_vits14_reg4_pretrain.pth", "dinov2-vitb14-reg": "dinov2_vitb14_reg4_pretrain.pth",
    "dinov2-vitl14-reg": "dinov2_vitl14_reg4_pretrain.pth", "dinov2-vitg14-reg": "dinov2_vitg14_reg4_pretrain.pth",
    "ibot-vitb16": "checkpoint_teacher.pth",
}
VARIANT_FILES = {
    ("mae", "full"): "checkpoint-799.pth", ("mocov3", "linear"): "linear-{arch}-300ep.pth.tar",
    ("dino", "full"): "{stem}_full_checkpoint.pth", ("ibot", "full"): "checkpoint.pth",
}


@dataclass
class FakeCheckpoint:
    """One fake official file: what to save, how to build the spec's model at its size, what to expect."""

    spec: str
    variant: str
    file_name: str
    obj: dict
    model_kwargs: dict
    expected: dict[str, torch.Tensor]
    dropped: list[str] = field(default_factory=list)

    def save(self, directory: Path | str) -> Path:
        path = Path(directory) / self.file_name
        torch.save(self.obj, path)
        return path


def all_fakes() -> list[tuple[str, str]]:
    """(spec, variant) for every fake this module builds (the tests parametrize over it)."""
    return [(name, variant) for name, (family, _) in SPECS.items() for variant in VARIANTS[family]]


@dataclass(frozen=True)
class Dims:
    """The fake's size: width, blocks, patches per side, and the scale of its random tensors."""

    dim: int = TINY_DIM
    depth: int = TINY_DEPTH
    grid: int = TINY_GRID
    scale: float = 1.0


def fake_checkpoint(spec: str, variant: str = "", seed: int = 0, *, embed_dim: int = TINY_DIM,
                    depth: int = TINY_DEPTH, grid: int = TINY_GRID, scale: float = 1.0) -> FakeCheckpoint:
    """The fake official checkpoint of `spec` ("" = the main file; "full", "linear" as in VARIANTS).

    By default tiny; `embed_dim`, `depth` and `grid` (patches per side of the file's pos_embed, e.g.
    the real width and 14 for 224 px at patch 16, or 37 for DINOv2's 518 px) give a larger one, and
    `scale` shrinks the random tensors (0.02 keeps a deep random ViT finite)."""
    family, patch = SPECS[spec]
    if variant not in VARIANTS[family]:
        raise ValueError(f"{spec} has no variant {variant!r}; it has {VARIANTS[family]}")
    gen = torch.Generator().manual_seed(seed)
    build = {"mae": _mae, "mocov3": _mocov3, "dino": _dino, "dinov2": _dinov2, "ibot": _ibot}[family]
    fake = build(spec, variant, patch, gen, Dims(embed_dim, depth, grid, scale))
    if variant:
        stem = OFFICIAL_FILES[spec].split(".")[0]
        arch = "vit-s" if spec.endswith("vits") else "vit-b"
        fake.file_name = VARIANT_FILES[(family, variant)].format(stem=stem, arch=arch)
    return fake


# -- the official ViT keys ----------------------------------------------------------------------------
def vit_shapes(dim: int, depth: int, patch: int, grid: int, *, layerscale: bool = False,
               swiglu: bool = False) -> dict[str, tuple[int, ...]]:
    """Key -> shape of the official backbone (see the module docstring for where each comes from)."""
    shapes: dict[str, tuple[int, ...]] = {
        "cls_token": (1, 1, dim),
        "pos_embed": (1, grid * grid + 1, dim),
        "patch_embed.proj.weight": (dim, 3, patch, patch),
        "patch_embed.proj.bias": (dim,),
    }
    hidden = 4 * dim
    for i in range(depth):
        b = f"blocks.{i}."
        shapes.update({
            b + "norm1.weight": (dim,), b + "norm1.bias": (dim,),
            b + "attn.qkv.weight": (3 * dim, dim), b + "attn.qkv.bias": (3 * dim,),
            b + "attn.proj.weight": (dim, dim), b + "attn.proj.bias": (dim,),
            b + "norm2.weight": (dim,), b + "norm2.bias": (dim,),
        })
        if swiglu:  # dinov2/layers/swiglu_ffn.py SwiGLUFFNFused: hidden = (int(4D * 2/3) + 7) // 8 * 8
            h = (int(hidden * 2 / 3) + 7) // 8 * 8
            shapes.update({b + "mlp.w12.weight": (2 * h, dim), b + "mlp.w12.bias": (2 * h,),
                           b + "mlp.w3.weight": (dim, h), b + "mlp.w3.bias": (dim,)})
        else:
            shapes.update({b + "mlp.fc1.weight": (hidden, dim), b + "mlp.fc1.bias": (hidden,),
                           b + "mlp.fc2.weight": (dim, hidden), b + "mlp.fc2.bias": (dim,)})
        if layerscale:
            shapes.update({b + "ls1.gamma": (dim,), b + "ls2.gamma": (dim,)})
    shapes.update({"norm.weight": (dim,), "norm.bias": (dim,)})
    return shapes


def random_state(shapes: dict[str, tuple[int, ...]], gen: torch.Generator, scale: float = 1.0) -> dict[str, torch.Tensor]:
    return {k: torch.randn(s, generator=gen) * scale for k, s in shapes.items()}


def _model_kwargs(patch: int, d: Dims) -> dict:
    """The spec's timm model at the fake's size (the head count stays the spec's own)."""
    return dict(img_size=d.grid * patch, embed_dim=d.dim, depth=d.depth)


def _backbone(patch: int, gen: torch.Generator, d: Dims, **kinds) -> dict[str, torch.Tensor]:
    return random_state(vit_shapes(d.dim, d.depth, patch, d.grid, **kinds), gen, d.scale)


def _mlp_head(prefix: str, gen: torch.Generator, dim: int, hidden: int = 16, out: int = 8) -> dict:
    """A projection head (DINOHead / iBOTHead / MoCo's MLP, abridged: its keys are all dropped)."""
    return {
        f"{prefix}mlp.0.weight": torch.randn(hidden, dim, generator=gen),
        f"{prefix}mlp.0.bias": torch.randn(hidden, generator=gen),
        f"{prefix}last_layer.weight_g": torch.ones(out, 1),
        f"{prefix}last_layer.weight_v": torch.randn(out, hidden, generator=gen),
    }


# -- per family -----------------------------------------------------------------------------------
def _mae(spec: str, variant: str, patch: int, gen: torch.Generator, d: Dims) -> FakeCheckpoint:
    encoder = _backbone(patch, gen, d)
    model = dict(encoder)
    dropped: list[str] = []
    if variant == "full":  # models_mae.py MaskedAutoencoderViT: the decoder and its mask token
        decoder = {
            "mask_token": torch.randn(1, 1, 32, generator=gen),
            "decoder_pos_embed": torch.randn(1, d.grid ** 2 + 1, 32, generator=gen),
            "decoder_embed.weight": torch.randn(32, d.dim, generator=gen),
            "decoder_embed.bias": torch.randn(32, generator=gen),
            "decoder_blocks.0.norm1.weight": torch.randn(32, generator=gen),
            "decoder_norm.weight": torch.randn(32, generator=gen),
            "decoder_pred.weight": torch.randn(patch * patch * 3, 32, generator=gen),
        }
        model.update(decoder)
        dropped = list(decoder)
    obj = {"model": model}
    return FakeCheckpoint(spec, variant, OFFICIAL_FILES[spec], obj, _model_kwargs(patch, d), encoder, dropped)


def _moco_mlp(prefix: str, gen: torch.Generator, dim: int) -> dict[str, torch.Tensor]:
    """MoCo v3 main_moco.py _build_mlp: Linear (no bias), BatchNorm1d, ReLU, ..., last BN affine=False."""
    return {
        f"{prefix}0.weight": torch.randn(16, dim, generator=gen),
        f"{prefix}1.weight": torch.randn(16, generator=gen),
        f"{prefix}1.bias": torch.randn(16, generator=gen),
        f"{prefix}1.running_mean": torch.randn(16, generator=gen),
        f"{prefix}1.running_var": torch.rand(16, generator=gen),
        f"{prefix}1.num_batches_tracked": torch.tensor(7),
        f"{prefix}3.weight": torch.randn(8, 16, generator=gen),
        f"{prefix}4.running_mean": torch.randn(8, generator=gen),
        f"{prefix}4.running_var": torch.rand(8, generator=gen),
        f"{prefix}4.num_batches_tracked": torch.tensor(7),
    }


def _mocov3(spec: str, variant: str, patch: int, gen: torch.Generator, d: Dims) -> FakeCheckpoint:
    encoder = _backbone(patch, gen, d)
    arch = "vit_small" if spec.endswith("vits") else "vit_base"
    if variant == "linear":  # main_lincls.py: the frozen encoder + a trained Linear, under DDP
        head = {"head.weight": torch.randn(10, d.dim, generator=gen), "head.bias": torch.randn(10, generator=gen)}
        state = {f"module.{k}": v for k, v in {**encoder, **head}.items()}
        obj = {"epoch": 90, "arch": arch, "state_dict": state, "best_acc1": torch.tensor(73.2),
               "optimizer": {"state": {}, "param_groups": [{"lr": 0.1, "params": [0, 1]}]}}
        dropped = [f"module.{k}" for k in head]
    else:
        state = {f"module.base_encoder.{k}": v for k, v in encoder.items()}
        extra = {f"module.base_encoder.{k}": v for k, v in _moco_mlp("head.", gen, d.dim).items()}
        extra.update({f"module.momentum_encoder.{k}": v + 1 for k, v in encoder.items()})
        extra.update({f"module.momentum_encoder.{k}": v for k, v in _moco_mlp("head.", gen, d.dim).items()})
        extra.update({f"module.predictor.{k}": v for k, v in _moco_mlp("", gen, 8).items()})
        state.update(extra)
        obj = {"epoch": 300, "arch": arch, "state_dict": state,
               "optimizer": {"state": {}, "param_groups": [{"lr": 1.5e-4, "params": [0, 1]}]},
               "scaler": {"scale": 65536.0, "growth_factor": 2.0}}
        dropped = list(extra)
    return FakeCheckpoint(spec, variant, OFFICIAL_FILES[spec], obj, _model_kwargs(patch, d), encoder, dropped)


def _teacher_student(encoder: dict, gen: torch.Generator, loss_key: str, dim: int) -> tuple[dict, list[str]]:
    """A DINO/iBOT training checkpoint: teacher `backbone.`/`head.`, student under `module.` too.

    The real file also pickles the training `args` (an argparse.Namespace); the tests that need it
    add it (tests/test_backbone_catalog.py: lspt allows that one class)."""
    head = _mlp_head("head.", gen, dim)
    teacher = {**{f"backbone.{k}": v for k, v in encoder.items()}, **head}
    student = {f"module.{k}": v + 1 for k, v in teacher.items()}
    obj = {"student": student, "teacher": teacher,
           "optimizer": {"state": {}, "param_groups": [{"lr": 5e-4, "params": [0, 1]}]},
           "epoch": 100, loss_key: {"center": torch.randn(1, 8, generator=gen)},
           "fp16_scaler": {"scale": 65536.0}}
    return obj, list(head)


def _dino(spec: str, variant: str, patch: int, gen: torch.Generator, d: Dims) -> FakeCheckpoint:
    encoder = _backbone(patch, gen, d)
    if variant == "full":
        obj, dropped = _teacher_student(encoder, gen, "dino_loss", d.dim)
    else:
        obj, dropped = dict(encoder), []
    return FakeCheckpoint(spec, variant, OFFICIAL_FILES[spec], obj, _model_kwargs(patch, d), encoder, dropped)


def _ibot(spec: str, variant: str, patch: int, gen: torch.Generator, d: Dims) -> FakeCheckpoint:
    encoder = _backbone(patch, gen, d)
    if variant == "full":
        obj, dropped = _teacher_student(encoder, gen, "ibot_loss", d.dim)
    else:
        obj, dropped = {"state_dict": dict(encoder)}, []
    return FakeCheckpoint(spec, variant, OFFICIAL_FILES[spec], obj, _model_kwargs(patch, d), encoder, dropped)


def _dinov2(spec: str, variant: str, patch: int, gen: torch.Generator, d: Dims) -> FakeCheckpoint:
    """The hub file, flat. With registers, timm's model keeps no position for CLS (no_embed_class):
    its cls_token is the official cls_token + pos_embed[:, 0], its pos_embed the patches' part."""
    registers = spec.endswith("-reg")
    giant = "vitg14" in spec
    official = _backbone(patch, gen, d, layerscale=True, swiglu=giant)
    official["mask_token"] = torch.randn(1, d.dim, generator=gen)
    if registers:
        official["register_tokens"] = torch.randn(1, REGISTERS, d.dim, generator=gen)
    expected = {k: v for k, v in official.items() if k not in ("mask_token", "register_tokens")}
    if giant:
        expected = {k.replace("mlp.w12.", "mlp.fc1.").replace("mlp.w3.", "mlp.fc2."): v for k, v in expected.items()}
    if registers:
        expected["reg_token"] = official["register_tokens"]
        expected["cls_token"] = official["cls_token"] + official["pos_embed"][:, :1]
        expected["pos_embed"] = official["pos_embed"][:, 1:]
    obj = dict(official)
    return FakeCheckpoint(spec, variant, OFFICIAL_FILES[spec], obj, _model_kwargs(patch, d), expected, ["mask_token"])
