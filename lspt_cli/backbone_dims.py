"""The shapes of a ViT that strategies need, and the built-in backbones' input normalisation,
importable without torch (for `lspt list`)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class BackboneDims:
    """The shapes a strategy needs to build its parameters (no weights)."""

    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    num_prefix_tokens: int = 1
    num_patches: int = 196
    patch_size: int = 16
    in_chans: int = 3


VIT_B16 = BackboneDims()


# Input normalisation. VPT and GaPT normalise every input with ImageNet's mean/std (KMnP/vpt
# src/data/transforms.py:8-10, the same file in GaPT), and MAE and MoCo v3 were pre-trained with it
# (timm's default for `vit_base_patch16_224`, 0.5/0.5, belongs to Google's supervised weights).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HALF_MEAN_STD = (0.5, 0.5, 0.5)  # Google's/timm's augreg ViTs: inputs scaled to [-1, 1]
# lspt's resize is torchvision's bilinear (Resize(256) + crop 224 for FGVC, as VPT's transforms.py:23);
# timm's "bicubic" and crop_pct 0.9 describe timm's eval pipeline, which lspt does not use.
INTERPOLATION = "bilinear"
