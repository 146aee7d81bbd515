"""`lspt explain`: where a prompted model looks, next to where its frozen backbone alone looks.

Two token-level maps over the patch grid, each computed twice: on the prompted model of a bundle,
and on the bare frozen backbone (lspt's `linear` path: the base `PromptStrategy`, no prompts, with
the bundle's head, explaining the same class):

1. **Attention rollout** (Abnar & Zuidema, "Quantifying Attention Flow in Transformers", ACL 2020).
   Per block l, the attention probabilities A_l = softmax(q k^T * d^-1/2) are averaged over heads,
   the residual connection is accounted for as A'_l = (A_l + I) / 2 (rows renormalised), and the
   rollout is R = A'_L ... A'_1. The map is R's row of the CLS token (over the patch tokens) and,
   for strategies with prompts, the mean of the prompt tokens' rows (what the prompts gather).
   timm runs fused SDPA, so the probabilities are never materialised: forward hooks capture q (after
   `attn.q_norm` *and* after lspt's own q-scale hook, i.e. with GaPT/LSPT's temperature 1/tau
   applied) and k (after `attn.k_norm`) in every block, and softmax(q k^T * scale) is recomputed
   from them; timm is not modified. VPT-deep replaces its prompts before every block; rollout treats
   a replaced slot like any token (its residual row carries on), the usual approximation.
   If a strategy changes the number of tokens between blocks, the rollout restarts there.
2. **Grad-CAM on ViT tokens** (Selvaraju et al. 2017, as adapted to ViTs by the common
   "ViT Grad-CAM", e.g. pytorch-grad-cam's `blocks[-1].norm1` target; cf. Chefer et al., CVPR 2021).
   A = the token features entering the last block's attention (output of `blocks[-1].norm1`),
   G = d(score of the predicted class)/dA; weights w_d = mean over patch tokens of G[:, d];
   map = ReLU(sum_d w_d A[:, d]) over the patch tokens. (The last block's *output* patch tokens do not
   reach a CLS readout, so their gradient would be zero; its attention input does.)

Each map (patch grid, min-max normalised) is upsampled bilinearly onto the region of the original
image the model saw (the centre crop for FGVC/custom tasks, the whole image for VTAB), coloured and
blended onto the image; outside that region the image is dimmed. A PNG per method holds three
panels side by side, each the size of the input image: input | prompted model | frozen backbone,
with a label above each. Images under 96 px on the short side are enlarged by the smallest integer
factor that reaches 96 px (nearest neighbour) so that they stay legible. PIL only, no matplotlib.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

MIN_PANEL = 96
LABEL_BAND = 16
ALPHA = 0.5
# A perceptual blue -> cyan -> yellow -> red ramp (anchors of Google's "turbo"), 0..1 -> RGB.
_CMAP = np.array([
    [0.00, 48, 18, 59], [0.15, 69, 117, 234], [0.35, 26, 228, 182], [0.50, 164, 252, 60],
    [0.65, 250, 186, 57], [0.85, 228, 70, 10], [1.00, 122, 4, 3],
])


def colormap(values: np.ndarray) -> np.ndarray:
    """[H, W] in [0, 1] -> [H, W, 3] uint8."""
    v = np.clip(values, 0.0, 1.0)
    return np.stack([np.interp(v, _CMAP[:, 0], _CMAP[:, c]) for c in (1, 2, 3)], axis=-1).astype(np.uint8)


def normalise(m: np.ndarray) -> np.ndarray:
    lo, hi = float(np.min(m)), float(np.max(m))
    if not math.isfinite(lo) or not math.isfinite(hi) or hi - lo < 1e-12:
        return np.zeros_like(m, dtype=np.float32)
    return ((m - lo) / (hi - lo)).astype(np.float32)


# -- capturing attention and gradients ------------------------------------------------------------
class TokenRecorder:
    """Forward hooks: q and k per block (for rollout) and the last block's norm1 output (Grad-CAM).

    The q hook is registered after FrozenBackbone's own q-scale hook on the same module, so it sees
    q with the strategy's attention temperature applied, exactly what SDPA receives.
    """

    def __init__(self, backbone):
        self.backbone = backbone
        self.q: list[Any] = []
        self.k: list[Any] = []
        self.cam_tokens = None
        self.handles = []
        blocks = list(backbone.blocks)
        for block in blocks:
            self.handles.append(block.attn.q_norm.register_forward_hook(lambda m, i, o: self.q.append(o.detach())))
            self.handles.append(block.attn.k_norm.register_forward_hook(lambda m, i, o: self.k.append(o.detach())))
        self.handles.append(blocks[-1].norm1.register_forward_hook(self._cam_hook))

    def _cam_hook(self, module, inputs, output):
        # A leaf that requires grad: the same values, and d(score)/d(tokens) without touching the
        # frozen weights (the bare backbone has nothing that requires grad otherwise).
        leaf = output.detach().requires_grad_(True)
        self.cam_tokens = leaf
        return leaf

    def remove(self) -> None:
        for h in self.handles:
            h.remove()

    def attention(self, index: int):
        """Head-averaged attention probabilities of block `index`, [B, T, T]."""
        import torch

        q, k = self.q[index].float(), self.k[index].float()
        scale = self.backbone.blocks[index].attn.scale
        return torch.softmax((q @ k.transpose(-2, -1)) * scale, dim=-1).mean(dim=1)


def rollout(attentions: list) -> tuple[Any, int]:
    """Abnar & Zuidema's rollout over blocks: (R [B, T, T], first block it covers)."""
    import torch

    result, start = None, 0
    for index, a in enumerate(attentions):
        eye = torch.eye(a.shape[-1], device=a.device).expand_as(a)
        a = 0.5 * a + 0.5 * eye
        a = a / a.sum(dim=-1, keepdim=True)
        if result is None or result.shape[-1] != a.shape[-1]:
            result, start = a, index  # token count changed: restart here
        else:
            result = a @ result
    return result, start


@dataclass
class Maps:
    """Patch-grid maps [gh, gw] (raw, before normalisation) of one model on one image."""

    rollout_cls: np.ndarray
    rollout_prompts: np.ndarray | None
    gradcam: np.ndarray
    logits: Any = None
    rollout_start: int = 0


def compute_maps(model, image, class_index: int | None = None) -> Maps:
    """Rollout (CLS, prompts) and Grad-CAM of `model` (a PromptedViT) on one image [1, 3, S, S]."""
    import torch

    backbone = model.backbone
    dims = backbone.dims
    grid = tuple(backbone.model.patch_embed.grid_size)
    n = dims.num_patches
    recorder = TokenRecorder(backbone)
    try:
        with torch.enable_grad():
            logits = model(image)
            c = int(logits[0].argmax()) if class_index is None else int(class_index)
            grad = torch.autograd.grad(logits[0, c], recorder.cam_tokens)[0]
        attentions = [recorder.attention(i) for i in range(len(recorder.q))]
        tokens = recorder.cam_tokens.detach()
    finally:
        recorder.remove()
    r, start = rollout(attentions)
    prefix = dims.num_prefix_tokens
    num_prompts = r.shape[-1] - prefix - n
    cls_map = r[0, 0, -n:]
    prompt_map = r[0, prefix : prefix + num_prompts, -n:].mean(dim=0) if num_prompts > 0 else None
    a, g = tokens[0, -n:].float(), grad[0, -n:].float()
    weights = g.mean(dim=0)
    cam = torch.relu(a @ weights)

    def to_np(t):
        return t.detach().cpu().numpy().reshape(grid)

    return Maps(rollout_cls=to_np(cls_map), rollout_prompts=to_np(prompt_map) if prompt_map is not None else None,
                gradcam=to_np(cam), logits=logits.detach(), rollout_start=start)


def backbone_only(model):
    """The bare frozen backbone with the bundle's head and no prompts (lspt's `linear` path)."""
    import copy

    from .prompted import PromptedViT, PromptStrategy

    bare = PromptedViT(model.backbone, PromptStrategy(model.backbone.dims), model.head.out_features, readout=model.readout)
    bare.head.load_state_dict(copy.deepcopy(model.head.state_dict()))
    return bare.eval()


# -- geometry and drawing -------------------------------------------------------------------------
def seen_box(size: tuple[int, int], benchmark: str, input_size: int) -> tuple[float, float, float, float]:
    """The region of the original image (left, top, right, bottom) the eval transform keeps."""
    from .data.transforms import resize_size, transform_style

    w, h = size
    if transform_style(benchmark) == "square":
        return 0.0, 0.0, float(w), float(h)
    r = resize_size(input_size)
    if w <= h:
        rw, rh = r, int(r * h / w)
    else:
        rw, rh = int(r * w / h), r
    left, top = int(round((rw - input_size) / 2.0)), int(round((rh - input_size) / 2.0))
    sx, sy = w / rw, h / rh
    return left * sx, top * sy, (left + input_size) * sx, (top + input_size) * sy


def panel_scale(size: tuple[int, int]) -> int:
    short = min(size)
    return 1 if short >= MIN_PANEL else math.ceil(MIN_PANEL / max(short, 1))


def overlay(image, heat: np.ndarray, box: tuple[float, float, float, float], alpha: float = ALPHA):
    """Blend a normalised patch-grid map onto the box of `image` (PIL RGB); dim outside the box."""
    from PIL import Image

    w, h = image.size
    base = np.asarray(image, dtype=np.float32)
    left, top, right, bottom = (int(round(v)) for v in box)
    left, top = max(left, 0), max(top, 0)
    right, bottom = min(max(right, left + 1), w), min(max(bottom, top + 1), h)
    out = base * 0.35  # outside what the model saw
    field_img = Image.fromarray(normalise(heat).astype(np.float32)).resize(
        (right - left, bottom - top), Image.BILINEAR)
    colours = colormap(np.asarray(field_img)).astype(np.float32)
    region = base[top:bottom, left:right]
    out[top:bottom, left:right] = (1 - alpha) * region + alpha * colours
    return Image.fromarray(np.clip(out, 0, 255).astype(np.uint8))


def compose(panels: list, labels: list[str]):
    """Panels side by side (each the same size), a label band above each."""
    from PIL import Image, ImageDraw, ImageFont

    w, h = panels[0].size
    canvas = Image.new("RGB", (w * len(panels), h + LABEL_BAND), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    for i, (panel, label) in enumerate(zip(panels, labels)):
        canvas.paste(panel, (i * w, LABEL_BAND))
        draw.text((i * w + 3, 2), fit_label(draw, label, font, w - 6), fill=(0, 0, 0), font=font)
    return canvas


def fit_label(draw, text: str, font, width: float) -> str:
    """`text` cut to `width` pixels with "..." (small panels, e.g. 84 px: a title never runs into the
    next panel's; the full texts are in --json and the file names)."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "...", font=font) > width:
        text = text[:-1]
    return text + "..." if text else ""


# -- the command's work ---------------------------------------------------------------------------
METHODS = ("rollout-cls", "rollout-prompts", "gradcam")


@dataclass
class Explanation:
    image: str
    size: tuple[int, int]
    panel_size: tuple[int, int]
    scale: int
    label: str
    index: int
    probability: float
    files: dict[str, str] = field(default_factory=dict)
    maps: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "image": self.image, "size": list(self.size), "panel_size": list(self.panel_size), "scale": self.scale,
            "predicted": {"label": self.label, "index": self.index, "probability": round(self.probability, 6)},
            "files": self.files,
        }


def explain_images(bundle_path, image_paths, out_dir, *, weights=None, allow_backbone_mismatch=False,
                   device="auto", img_size=None, allow_img_size_mismatch=False) -> list[Explanation]:
    """Write the PNGs for every image; returns what was written (and the raw maps)."""

    from .data.images import load_image
    from .data.transforms import build_transform
    from .engine.restore import model_from_bundle
    from .engine.train import resolve_device

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    dev = resolve_device(device)
    model, header = model_from_bundle(bundle_path, weights=weights, allow_backbone_mismatch=allow_backbone_mismatch,
                                      img_size=img_size, allow_img_size_mismatch=allow_img_size_mismatch)
    model = model.to(dev).eval()
    bare = backbone_only(model).to(dev)
    data_cfg = model.backbone.data_config
    input_size = int(data_cfg["input_size"][-1])
    benchmark = header.task.get("benchmark", "custom")
    classes = header.task.get("classes") or []
    strategy = (header.strategy or {}).get("name", "prompted")
    transform = build_transform(benchmark, input_size, data_cfg["mean"], data_cfg["std"], train=False,
                                style=header.task.get("style"))
    results, used = [], set()
    for path in image_paths:
        path = Path(path)
        original = load_image(path)
        x = transform(original).unsqueeze(0).to(dev)
        prompted = compute_maps(model, x)
        probs = prompted.logits.float().softmax(dim=1)[0]
        index = int(probs.argmax())
        plain = compute_maps(bare, x, class_index=index)
        k = panel_scale(original.size)
        shown = original.resize((original.width * k, original.height * k), 0) if k > 1 else original  # 0 = NEAREST
        box = tuple(v * k for v in seen_box(original.size, benchmark, input_size))
        stem = path.stem
        while stem in used:
            stem += "_"
        used.add(stem)
        label = classes[index] if index < len(classes) else str(index)
        result = Explanation(image=str(path), size=original.size, panel_size=shown.size, scale=k, label=label,
                             index=index, probability=float(probs[index]))
        title = f"input: {label} {100 * float(probs[index]):.0f}%"
        panels = {
            "rollout-cls": ((prompted.rollout_cls, plain.rollout_cls), (f"{strategy}: rollout CLS", "backbone: rollout CLS")),
            "gradcam": ((prompted.gradcam, plain.gradcam), (f"{strategy}: Grad-CAM", "backbone: Grad-CAM")),
        }
        if prompted.rollout_prompts is not None:
            panels["rollout-prompts"] = ((prompted.rollout_prompts, plain.rollout_cls),
                                         (f"{strategy}: rollout prompts", "backbone: rollout CLS"))
        for method in METHODS:
            if method not in panels:
                continue
            (mine, theirs), (label_a, label_b) = panels[method]
            canvas = compose([shown, overlay(shown, mine, box), overlay(shown, theirs, box)], [title, label_a, label_b])
            target = out_dir / f"{stem}-{method}.png"
            canvas.save(target)
            result.files[method] = str(target)
            result.maps[method] = {"prompted": mine, "backbone": theirs}
        results.append(result)
    return results
