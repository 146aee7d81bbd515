"""Converters from the official checkpoint layouts to timm key names (no model needed).

Each converter takes the object `lspt_cli.weights.read_checkpoint` returned and gives back
`(state_dict, description)`: the state dict uses timm's ViT key names and is loaded strictly
afterwards, so anything a converter does not explicitly know about ends up as an error naming it.

- MAE (`mae_pretrain_vit_base.pth`): `{"model": {...}}` with timm key names (cls_token,
  pos_embed, patch_embed.*, blocks.*, norm.*). A full pre-training checkpoint of the MAE code also
  holds the decoder (`decoder_*`, `mask_token`): those are dropped, and the description says so.
- MoCo v3 SSL (`vit-b-300ep.pth.tar`): `{"state_dict": {"module.base_encoder.*",
  "module.momentum_encoder.*", "module.predictor.*"}}`. The base encoder is a timm ViT whose
  `head` is the projection MLP: keep `base_encoder.*` minus `head.*`; drop the momentum encoder and
  the predictor. Any other key is left in and fails the strict load.
- MoCo v3 linear probe (`linear-vit-b-300ep.pth.tar`, the file VPT used): `{"state_dict":
  {"module.*"}}`, the frozen SSL encoder plus a trained `head` (Linear 768 -> 1000): strip
  `module.`, drop `head.*`.
- DINO (`dino_deitsmall16_pretrain.pth` ...): the hub file is the flat backbone, timm key names
  (facebookresearch/dino hubconf.py:22-75). The training checkpoint (`..._full_checkpoint.pth`,
  main_dino.py:278-287) holds `teacher`, a MultiCropWrapper: `backbone.*` is kept (prefix stripped),
  the DINOHead `head.*` dropped; `student`, `optimizer` and the rest are not read.
- iBOT (`checkpoint_teacher.pth`): `{"state_dict": backbone}`, timm key names; the training
  checkpoint (`checkpoint.pth`, bytedance/ibot main_ibot.py:348-358) is read like DINO's. A
  student's `masked_embed` (the MIM mask token, models/vision_transformer.py:170-172) is dropped.
- DINOv2 (`dinov2_vitb14_pretrain.pth`, `..._reg4_pretrain.pth`): the flat hub file
  (facebookresearch/dinov2 hub/backbones.py:52-60). `mask_token` (used only in training) is
  dropped; LayerScale `ls1.gamma`/`ls2.gamma` already have timm's names; ViT-g's SwiGLU
  `mlp.w12`/`mlp.w3` become timm's `mlp.fc1`/`mlp.fc2` (timm's SwiGLUPacked splits fc1's output in
  the same order: silu(first half) * second half, dinov2/layers/swiglu_ffn.py:31-35). With
  registers, the official model adds `pos_embed[:, 0]` to CLS and inserts `register_tokens` after it
  without a position (dinov2/models/vision_transformer.py:214-230); timm's reg4 models have no
  position for any prefix token (`no_embed_class`), so `cls_token` becomes `cls_token +
  pos_embed[:, 0]`, `pos_embed` keeps the patch rows and `register_tokens` becomes `reg_token`:
  the same tokens enter the first block.
- Anything else is taken as a timm-format state dict (e.g. timm's safetensors from the HF hub); a
  classifier `head.*` is dropped because lspt builds its backbones with `num_classes=0`.

Every description names what was dropped (`dropped_text`), so `source` in summary.json says which
part of the file became the backbone.
"""

from __future__ import annotations

from typing import Any, Mapping

from lspt_cli.errors import WeightsError
from lspt_cli.weights import drop_keys, strip_prefix, unwrap_state_dict

HEAD_PREFIXES = ("head.",)
MAE_DECODER_PREFIXES = ("decoder_", "mask_token")


def convert_timm(obj: Any, source: str = "checkpoint") -> tuple[dict[str, Any], str]:
    """A timm-format state dict (optionally under 'model'/'state_dict'); classifier dropped."""
    state = unwrap_state_dict(obj, source)
    if state and all(k.startswith("module.") for k in state):
        state = strip_prefix(state, "module.")
    state, dropped = drop_keys(state, HEAD_PREFIXES)
    return state, "timm-format state dict" + (" (classifier head dropped)" if dropped else "")


def convert_mae(obj: Any, source: str = "checkpoint") -> tuple[dict[str, Any], str]:
    """MAE's official pre-training checkpoint -> timm ViT keys (decoder and head dropped)."""
    official = isinstance(obj, dict) and isinstance(obj.get("model"), dict)
    state = unwrap_state_dict(obj, source)
    state, decoder = drop_keys(state, MAE_DECODER_PREFIXES)
    state, head = drop_keys(state, HEAD_PREFIXES)
    what = "MAE pre-training checkpoint ('model' key)" if official else "timm-format MAE state dict"
    notes = [f"{n}: {dropped_text(d)}" for n, d in (("decoder dropped", decoder), ("classifier head dropped", head)) if d]
    return state, what + (f" ({'; '.join(notes)})" if notes else "")


def convert_mocov3(obj: Any, source: str = "checkpoint") -> tuple[dict[str, Any], str]:
    """MoCo v3 SSL or linear-probe checkpoint -> timm ViT keys; the description says which."""
    state = unwrap_state_dict(obj, source)
    wrapped = any(k.startswith("module.") for k in state)  # saved from DistributedDataParallel
    if wrapped:
        state = strip_prefix(state, "module.")
    if any(k.startswith("base_encoder.") for k in state):
        state, others_dropped = drop_keys(state, ("momentum_encoder.", "predictor."))
        encoder = {k[len("base_encoder."):]: v for k, v in state.items() if k.startswith("base_encoder.")}
        others = {k: v for k, v in state.items() if not k.startswith("base_encoder.")}
        encoder, head = drop_keys(encoder, HEAD_PREFIXES)  # the projection MLP
        encoder.update(others)  # unknown keys stay in and fail the strict load, by name
        dropped = others_dropped + [f"base_encoder.{k}" for k in head]
        return encoder, (
            "MoCo v3 self-supervised checkpoint (base_encoder; momentum encoder, predictor "
            f"and projection head dropped: {dropped_text(dropped)})"
        )
    if wrapped and "head.weight" in state:
        state, head = drop_keys(state, HEAD_PREFIXES)
        return state, f"MoCo v3 linear-probe checkpoint (frozen encoder; linear classifier dropped: {dropped_text(head)})"
    if not state:
        raise WeightsError(f"{source} holds an empty state dict")
    state, dropped = drop_keys(state, HEAD_PREFIXES)
    return state, "timm-format state dict" + (" (classifier head dropped)" if dropped else "")


def convert_any(obj: Any, source: str = "checkpoint") -> tuple[dict[str, Any], str]:
    """`timm/<model>`'s --weights: a timm-format state dict, MAE's official pre-training file, or
    DINOv2's official file (dinov2_vit*14*_pretrain.pth), each recognised by its keys."""
    state = unwrap_state_dict(obj, source)
    if any(k.startswith("decoder_") for k in state):  # before DINOv2's test: MAE's decoder has a mask_token too
        return convert_mae(obj, source)
    if "mask_token" in state and any(k.startswith("blocks.") for k in state):
        return convert_dinov2(state, source)
    return convert_timm(obj, source)


def convert_dino(obj: Any, source: str = "checkpoint") -> tuple[dict[str, Any], str]:
    """DINO's hub file (the flat backbone) or its training checkpoint's `teacher` -> timm ViT keys."""
    return _self_distilled(obj, source, "DINO", ())


def convert_ibot(obj: Any, source: str = "checkpoint") -> tuple[dict[str, Any], str]:
    """iBOT's `checkpoint_teacher.pth` (`state_dict`) or training checkpoint's `teacher` -> timm ViT keys."""
    return _self_distilled(obj, source, "iBOT", ("masked_embed",))


def _self_distilled(obj: Any, source: str, family: str, extra_drops: tuple[str, ...]) -> tuple[dict[str, Any], str]:
    """The teacher backbone of a DINO-style checkpoint: `teacher` entry (else the file's state dict),
    `module.` and MultiCropWrapper's `backbone.` stripped, the projection `head.*` dropped."""
    if isinstance(obj, Mapping) and isinstance(obj.get("teacher"), Mapping):
        what = f"{family} training checkpoint ('teacher' entry; the student is not used)"
        state = unwrap_state_dict(obj["teacher"], f"{source} ['teacher']")
    else:
        what = f"{family} backbone file"
        state = unwrap_state_dict(obj, source)
    if state and all(k.startswith("module.") for k in state):
        state = strip_prefix(state, "module.")
    if any(k.startswith("backbone.") for k in state):
        state = strip_prefix(state, "backbone.")
    state, dropped = drop_keys(state, HEAD_PREFIXES + extra_drops)
    return state, what + (f" (dropped: {dropped_text(dropped)})" if dropped else "")


def convert_dinov2(obj: Any, source: str = "checkpoint") -> tuple[dict[str, Any], str]:
    """DINOv2's hub file -> timm ViT keys (see the module docstring for registers and SwiGLU)."""
    state = unwrap_state_dict(obj, source)
    if state and all(k.startswith("module.") for k in state):
        state = strip_prefix(state, "module.")
    if "reg_token" in state or "mask_token" not in state:  # already timm's layout (timm's HF files)
        state, dropped = drop_keys(state, HEAD_PREFIXES)
        return state, "timm-format DINOv2 state dict" + (f" (dropped: {dropped_text(dropped)})" if dropped else "")
    state, dropped = drop_keys(state, ("mask_token",) + HEAD_PREFIXES)
    notes = []
    if "register_tokens" in state:
        pos = state["pos_embed"]
        state["reg_token"] = state.pop("register_tokens")
        state["cls_token"] = state["cls_token"] + pos[:, :1]
        state["pos_embed"] = pos[:, 1:]
        notes.append(f"{state['reg_token'].shape[1]} register tokens; CLS's position folded into cls_token")
    swiglu = [k for k in state if k.endswith((".mlp.w12.weight", ".mlp.w12.bias", ".mlp.w3.weight", ".mlp.w3.bias"))]
    for key in swiglu:
        state[key.replace(".mlp.w12.", ".mlp.fc1.").replace(".mlp.w3.", ".mlp.fc2.")] = state.pop(key)
    if swiglu:
        notes.append("SwiGLU w12/w3 -> fc1/fc2")
    notes.append(f"dropped: {dropped_text(dropped)}")
    return state, f"DINOv2 hub checkpoint ({'; '.join(notes)})"


def dropped_text(keys: list[str]) -> str:
    """Dropped keys by group: "head.* (4 keys), mask_token" (a group is everything before the first
    dot, plus the second part for wrapper prefixes such as module.momentum_encoder.*)."""
    groups: dict[str, int] = {}
    for key in keys:
        parts = key.split(".")
        depth = 2 if parts[0] in ("module", "base_encoder") and len(parts) > 2 else 1
        group = ".".join(parts[:depth]) + (".*" if len(parts) > depth else "")
        groups[group] = groups.get(group, 0) + 1
    return ", ".join(g + (f" ({n} keys)" if n > 1 else "") for g, n in groups.items())
