"""`--img-size`: the file's position embeddings resampled to the model's patch grid, as the authors do.

Done in the state dict before the strict load (timm_vit.load_timm_backbone), so everything else
in a wrong file still fails by name. Which resampling:

- DINOv2 without registers (`*_dinov2`, not `_reg`): the official `interpolate_pos_encoding`,
  bicubic with a scale factor of (grid + 0.1) / old grid and no antialiasing
  (facebookresearch/dinov2 dinov2/models/vision_transformer.py:195-207; the hub's defaults
  interpolate_offset=0.1, interpolate_antialias=False: dinov2/hub/backbones.py:27-28).
- DINOv2 with registers: the official size-based bicubic with antialiasing (the `_reg` hub models
  set interpolate_antialias=True, interpolate_offset=0.0: dinov2/hub/backbones.py:107-108), which
  is timm's `resample_abs_pos_embed` (timm/layers/pos_embed.py:20).
- Every other ViT: what timm's `checkpoint_filter_fn` does when it adapts a checkpoint to another
  size (timm/models/vision_transformer.py:2000-2001 in timm 1.0.31): `resample_abs_pos_embed`,
  bicubic with antialiasing, bilinear without it for FlexiViT (:3381); the prefix positions (CLS,
  registers) are kept as they are, none where the model has `no_embed_class`.

Only square source grids are resampled (every timm ViT checkpoint is square); the target is the
model's own `patch_embed.grid_size`.
"""

from __future__ import annotations

import math
from typing import Any

from lspt_cli.errors import WeightsError

DINOV2_OFFSET = 0.1  # dinov2/hub/backbones.py:28


def fit_pos_embed(state: dict[str, Any], model, timm_model: str, source: str) -> dict[str, Any]:
    """`state` with `pos_embed` resampled to `model`'s patch grid (unchanged when it already fits)."""
    pos = state.get("pos_embed")
    if pos is None or getattr(model, "pos_embed", None) is None or pos.ndim != 3:
        return state  # nothing to resample; the strict load names what is missing
    if pos.shape[-1] != model.pos_embed.shape[-1]:
        return state  # another width: a wrong file, reported by the strict load
    prefix = 0 if getattr(model, "no_embed_class", False) else int(model.num_prefix_tokens)
    n_old = pos.shape[1] - prefix
    side = math.isqrt(max(n_old, 0))
    if n_old <= 0 or side * side != n_old:
        raise WeightsError(f"{source}: pos_embed holds {n_old} patch positions (after {prefix} prefix), "
                           "not a square grid; cannot resample it for --img-size")
    new = tuple(int(v) for v in model.patch_embed.grid_size)
    if (side, side) == new:
        return state
    out = dict(state)
    out["pos_embed"] = resample(pos, (side, side), new, prefix, timm_model)
    return out


def resample(pos, old: tuple[int, int], new: tuple[int, int], prefix: int, timm_model: str):
    """[1, prefix + H*W, D] at grid `old` -> [1, prefix + h*w, D] at grid `new` (see the module doc)."""
    import torch
    from timm.layers import resample_abs_pos_embed

    if "dinov2" in timm_model and "_reg" not in timm_model:
        dtype, dim = pos.dtype, pos.shape[-1]
        head, grid = pos[:, :prefix], pos[:, prefix:].float()
        grid = grid.reshape(1, old[0], old[1], dim).permute(0, 3, 1, 2)
        scale = ((new[0] + DINOV2_OFFSET) / old[0], (new[1] + DINOV2_OFFSET) / old[1])
        grid = torch.nn.functional.interpolate(grid, scale_factor=scale, mode="bicubic", antialias=False)
        if tuple(grid.shape[-2:]) != new:  # the offset exists to land exactly on the grid (dino issue 8)
            raise WeightsError(f"resampling pos_embed from {old} to {new} gave {tuple(grid.shape[-2:])}")
        grid = grid.permute(0, 2, 3, 1).reshape(1, new[0] * new[1], dim).to(dtype)
        return torch.cat([head, grid], dim=1)
    flexi = "flexi" in timm_model
    return resample_abs_pos_embed(pos, new_size=list(new), old_size=list(old), num_prefix_tokens=prefix,
                                  interpolation="bilinear" if flexi else "bicubic", antialias=not flexi)
