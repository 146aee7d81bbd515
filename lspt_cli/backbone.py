"""A frozen timm VisionTransformer, driven token by token by the prompted runner.

Only the public parts of timm's ViT are used (patch_embed, _pos_embed, patch_drop, norm_pre,
blocks, norm, num_prefix_tokens), so a timm upgrade that renames internals does not break lspt.
Attention temperature (GaPT/LSPT) is applied by scaling q right after timm's `q_norm` through a
forward hook, which works for both the fused (SDPA) and the explicit attention path.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from .backbone_dims import VIT_B16, BackboneDims  # noqa: F401  (re-exported)
from .specs import READOUTS, canonical_readout, readout_dim  # noqa: F401  (re-exported)

# VPT's fc_norm: nn.LayerNorm(embed_dim, eps=1e-6) built fresh (KMnP/vpt src/models/vit_backbones/
# vit_mae.py:62-64 norm_layer=partial(nn.LayerNorm, eps=1e-6), :21-26 fc_norm = norm_layer(...))
MEAN_LN_EPS = 1e-6




class FrozenBackbone(nn.Module):
    """A timm ViT in eval mode with `requires_grad=False`, plus what lspt needs to know about it.

    `readout` is the default readout (a key of specs.READOUTS; a run may pick another, see
    `read_out`). `source` says where the weights came from; `data_config` is timm's (input_size,
    mean, std, ...). `timm_model` is timm's name of the architecture (recorded in bundles).
    """

    def __init__(
        self,
        model: nn.Module,
        name: str,
        readout: str = "cls",
        source: str = "random init",
        weights_file: Path | None = None,
        data_config: dict[str, Any] | None = None,
        timm_model: str | None = None,
    ):
        super().__init__()
        self.model = model
        self.name = name
        self.timm_model = timm_model
        self.readout = canonical_readout(readout)
        self.source = source
        self.weights_file = Path(weights_file) if weights_file else None
        self.data_config = dict(data_config or _timm_data_config(model))
        self._fingerprint: str | None = None
        self._q_scales: Sequence[torch.Tensor | None] | None = None
        for index, block in enumerate(model.blocks):
            block.attn.q_norm.register_forward_hook(self._make_q_hook(index))
        model.requires_grad_(False)
        model.eval()

    # -- structure ---------------------------------------------------------------------------
    @property
    def dims(self) -> BackboneDims:
        m = self.model
        patch = m.patch_embed.patch_size
        return BackboneDims(
            embed_dim=m.embed_dim,
            depth=len(m.blocks),
            num_heads=m.blocks[0].attn.num_heads,
            num_prefix_tokens=m.num_prefix_tokens,
            num_patches=m.patch_embed.num_patches,
            patch_size=patch[0] if isinstance(patch, (tuple, list)) else patch,
            in_chans=m.patch_embed.proj.in_channels,
        )

    @property
    def blocks(self) -> nn.ModuleList:
        return self.model.blocks

    @property
    def img_size(self) -> tuple[int, int]:
        """(height, width) of the images the model is built for (`--img-size`; pos_embed's grid)."""
        size = self.model.patch_embed.img_size
        return (int(size[0]), int(size[1])) if isinstance(size, (tuple, list)) else (int(size), int(size))

    def feature_dim(self, readout: str | None = None) -> int:
        """The width of `read_out`'s vector for `readout` (None: the default): the head's input."""
        return readout_dim(self.readout if readout is None else readout, self.dims.embed_dim)

    def identity(self) -> dict[str, Any]:
        """What a bundle records to rebuild and recognise this backbone (`lspt.backbone` metadata):
        name, fingerprint, source, the weights file, the input size, and timm's model name."""
        info: dict[str, Any] = {"name": self.name, "fingerprint": self.fingerprint, "source": self.source,
                                "weights": str(self.weights_file.resolve()) if self.weights_file else None,
                                "img_size": list(self.img_size)}
        if self.timm_model:
            info["timm_model"] = self.timm_model
        return info

    def train(self, mode: bool = True) -> "FrozenBackbone":
        """The backbone never leaves eval mode (no dropout, no drop-path, frozen statistics)."""
        return super().train(False)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Images -> tokens [B, prefix + N, D], exactly as timm's forward_features starts."""
        m = self.model
        x = m.patch_embed(images)
        x = m._pos_embed(x)
        x = m.patch_drop(x)
        return m.norm_pre(x)

    def read_out(self, x: torch.Tensor, readout: str | None = None) -> torch.Tensor:
        """Final tokens -> one feature vector per image (docs/backbones.md, readouts).

        - "cls": the pre-trained final `norm`, then the CLS token.
        - "mean-norm": the mean of every token after the prefix (prompts included), then the
          pre-trained `norm` (GaPT: ryongithub/GatedPromptTuning src/models/vit_prompt/vit_mae.py:157-164).
        - "mean-ln": the same mean, then a LayerNorm with weight 1 and bias 0 (VPT deletes MAE's
          `norm` and builds a fresh `fc_norm` the checkpoint does not hold, and prompt tuning
          freezes it: KMnP/vpt src/models/vit_backbones/vit_mae.py:21-26, vit_prompt/vit_mae.py:
          122-124, build_vit_backbone.py:60 strict=False, vit_models.py:319-322).
        - "cls+mean": [norm(x)[CLS], mean of norm(x) over the image patch tokens], 2 x D. DINOv2's
          linear evaluation: the final norm on every token, the CLS token concatenated with the
          mean of the patch tokens, registers left out (facebookresearch/dinov2
          dinov2/models/vision_transformer.py:312-314, dinov2/eval/linear.py:171-183). Prompts are
          not patch tokens and are left out too: the patches are the last `num_patches` tokens.
        `readout` None: this backbone's default.
        """
        readout = self.readout if readout is None else canonical_readout(readout)
        if readout == "cls":
            return self.model.norm(x)[:, 0]
        if readout == "cls+mean":
            normed = self.model.norm(x)
            patches = normed[:, normed.shape[1] - self.model.patch_embed.num_patches :]
            return torch.cat([normed[:, 0], patches.mean(dim=1)], dim=-1)
        pooled = x[:, self.model.num_prefix_tokens :].mean(dim=1)
        if readout == "mean-ln":
            return nn.functional.layer_norm(pooled, pooled.shape[-1:], eps=MEAN_LN_EPS)
        return self.model.norm(pooled)

    # -- attention temperature ---------------------------------------------------------------
    def set_q_scales(self, scales: Sequence[torch.Tensor | None] | None) -> None:
        """Per-block multipliers of q (1/tau), used by the next forward; None = plain attention."""
        self._q_scales = scales

    def _make_q_hook(self, index: int):
        def hook(module, inputs, output):
            scales = self._q_scales
            if scales is None or scales[index] is None:
                return None
            return output * scales[index].to(output.dtype)

        return hook

    # -- identity ----------------------------------------------------------------------------
    @property
    def fingerprint(self) -> str:
        """sha256 over the state dict's tensors, cached per weights file (docs/backbones.md, "Fingerprint")."""
        if self._fingerprint is None:
            self._fingerprint = cached_fingerprint(self.model, self.weights_file)
        return self._fingerprint


def state_dict_fingerprint(state: dict[str, torch.Tensor]) -> str:
    """Hash names, dtypes, shapes and bytes of every tensor, in sorted order."""
    digest = hashlib.sha256()
    for key in sorted(state):
        tensor = state[key].detach().to("cpu").contiguous()
        digest.update(key.encode())
        digest.update(str(tensor.dtype).encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return "sha256:" + digest.hexdigest()


def cached_fingerprint(model: nn.Module, weights_file: Path | None) -> str:
    """Fingerprint a model; with a weights file, remember it by (path, size, mtime, input size) in
    the cache dir. The same file at the same --img-size always has the same fingerprint; at another
    size pos_embed is resampled, so the fingerprint differs (bundles check the size first)."""
    if weights_file is None:
        return state_dict_fingerprint(model.state_dict())
    from . import atomic, paths

    stat = weights_file.stat()
    size = tuple(getattr(getattr(model, "patch_embed", None), "img_size", ()) or ())
    key = f"{weights_file.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{type(model).__name__}"
    if size:
        key += "|" + "x".join(str(int(v)) for v in size)
    cache_file = paths.cache_dir() / "fingerprints.json"
    try:
        cache = json.loads(cache_file.read_text())
        if not isinstance(cache, dict):
            cache = {}
    except (OSError, ValueError):
        cache = {}
    if key in cache:
        return cache[key]
    value = state_dict_fingerprint(model.state_dict())
    cache[key] = value
    try:
        atomic.write_json(cache_file, cache)
    except OSError:
        pass  # an unwritable cache only costs a recomputation next time
    return value


def _timm_data_config(model: nn.Module) -> dict[str, Any]:
    try:
        from timm.data import resolve_data_config

        cfg = resolve_data_config({}, model=model)
    except Exception:
        cfg = {}
    size = model.patch_embed.img_size
    return {
        "input_size": [3, int(size[0]), int(size[1])],  # what the model takes, not a default
        "mean": list(cfg.get("mean", (0.485, 0.456, 0.406))),
        "std": list(cfg.get("std", (0.229, 0.224, 0.225))),
        "crop_pct": float(cfg.get("crop_pct", 0.875)),
        "interpolation": str(cfg.get("interpolation", "bicubic")),
    }
