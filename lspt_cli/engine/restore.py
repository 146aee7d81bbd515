"""Rebuild a prompted model from a bundle alone (+ the backbone's weights), strictly."""

from __future__ import annotations

from pathlib import Path

from .. import bundle
from ..specs import READOUTS
from ..errors import BundleError


def model_from_bundle(path, *, weights=None, allow_backbone_mismatch: bool = False, backbone=None, host=None,
                      img_size: int | None = None, allow_img_size_mismatch: bool = False):
    """(PromptedViT with the bundle's tensors, BundleHeader). Any mismatch is a BundleError.

    The backbone is rebuilt at the input size the bundle records (`lspt.backbone.img_size`; bundles
    older than it: the backbone's own size). `img_size` (eval/predict/explain `--img-size`) asks
    for another size: refused, naming both, unless `allow_img_size_mismatch`; the size is checked
    before the fingerprint, which changes with it (pos_embed is resampled), and when a mismatch is
    allowed the fingerprint cannot be compared and is not."""
    from ..prompted import PromptedViT, build_strategy, load_backbone

    loaded = bundle.load(path)
    header = loaded.header
    info = header.backbone
    name = info.get("name")
    if not name:
        raise BundleError(f"{path}: bundle metadata names no backbone")
    recorded = bundle.recorded_img_size(header)
    if backbone is None:
        if weights is None and info.get("weights") and Path(info["weights"]).exists():
            weights = info["weights"]  # the file the bundle was trained with, when still there
        size = int(img_size) if img_size else (recorded[0] if recorded and recorded[0] == recorded[1] else None)
        backbone = load_backbone(name, weights, host=host, img_size=size)
    elif backbone.name != name:
        raise BundleError(f"{path}: trained on backbone '{name}', not '{backbone.name}'")
    size_differs = bundle.check_img_size(header, backbone.img_size, allow_img_size_mismatch)
    if not size_differs:
        bundle.check_backbone(header, backbone.fingerprint, allow_backbone_mismatch)
    strategy_info = header.strategy
    classes = header.task.get("classes") or []
    if not strategy_info.get("name") or not classes:
        raise BundleError(f"{path}: bundle metadata lacks the strategy or the class names")
    try:
        strategy = build_strategy(strategy_info["name"], backbone.dims, strategy_info.get("config") or {}, host=host)
    except BundleError:
        raise
    except Exception as exc:
        raise BundleError(f"{path}: cannot rebuild strategy '{strategy_info['name']}' ({getattr(exc, 'message', exc)})") from None
    readout = info.get("readout")  # absent in bundles older than readouts: the backbone's default
    if readout is not None and readout not in READOUTS:
        raise BundleError(f"{path}: trained with readout {readout!r}, which this lspt does not know "
                          f"(known: {', '.join(READOUTS)})", hint="upgrade lspt: pip install -U lspt")
    model = PromptedViT(backbone, strategy, len(classes), readout=readout)
    bundle.check_tensors(path, loaded.tensors, model.trainable_state_dict())
    model.load_trainable_state_dict(loaded.tensors)
    model.eval()
    return model, header


def eval_transform(task: dict, backbone):
    """The eval pipeline (RGB PIL image -> normalised CHW float tensor) a bundle was trained and
    selected with (`task`: the bundle's `lspt.task` metadata): its benchmark family's resize/crop and recorded style, the backbone's input size
    and normalisation. `lspt predict`, `lspt serve` and `lspt.load(...).predict` all use it."""
    from ..data.transforms import build_transform

    benchmark, style = transform_key(task)
    data_cfg = backbone.data_config
    return build_transform(benchmark, int(data_cfg["input_size"][-1]), data_cfg["mean"], data_cfg["std"],
                           train=False, style=style or None)


def transform_key(task: dict) -> tuple[str, str]:
    """(benchmark, style) of a bundle's `lspt.task` metadata: bundles with equal keys on one backbone
    preprocess images identically."""
    return task.get("benchmark", "custom"), task.get("style") or ""


def top_predictions(logits, classes, top_k: int) -> list[list[dict]]:
    """Logits [B, C] -> per image the top-k {"label", "index", "probability"} (predict, serve, the API)."""
    probs = logits.float().softmax(dim=1).cpu()
    k = min(top_k, len(classes))
    values, indices = probs.topk(k, dim=1)
    return [[{"label": classes[j], "index": j, "probability": round(prob, 6)} for prob, j in zip(v, ix)]
            for v, ix in zip(values.tolist(), indices.tolist())]
