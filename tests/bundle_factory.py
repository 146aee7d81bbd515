"""Bundles for the API and serve tests, made in milliseconds: `lspt.wrap` on vit-tiny's exact ViT
(same seed, so the registered `vit-tiny` backbone's fingerprint matches), trainable tensors set to
random values so that every task predicts differently, saved with `PromptedModel.save`."""

from __future__ import annotations

from pathlib import Path

# (task name, strategy, options): every family, two tasks that batch together in every block
# (deep2, deep2b), token counts 1+16, 1+16+2 and 1+16+3.
SPECS = [
    ("lin", "linear", {}),
    ("deep2", "vpt-deep", {"num_prompts": 2}),
    ("deep2b", "vpt-deep", {"num_prompts": 2}),
    ("gapt2", "gapt", {"num_prompts": 2}),
    ("lspt3", "lspt", {"num_prompts": 3, "lstm_dim": 8}),
    ("shallow3", "vpt-shallow", {"num_prompts": 3}),
]
CLASSES = [f"c{j}" for j in range(10)]


def tiny_vit(seed: int = 0):
    import torch
    from timm.models.vision_transformer import VisionTransformer

    from lspt_plugins.backbones.timm_vit import TINY_CONFIG

    torch.manual_seed(seed)
    return VisionTransformer(**TINY_CONFIG, num_classes=0)


def make_bundle(path: Path, strategy: str, options: dict, seed: int, vit_seed: int = 0, scale: float = 0.5) -> Path:
    import torch

    import lspt

    net = lspt.wrap(tiny_vit(vit_seed), strategy, num_classes=len(CLASSES), backbone="vit-tiny", **options)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.trainable_parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)
    return net.save(path, classes=CLASSES)


def make_bundles(directory: Path, specs=SPECS) -> dict[str, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    return {name: make_bundle(directory / f"{name}.safetensors", strategy, options, seed=100 + i)
            for i, (name, strategy, options) in enumerate(specs)}


def png_bytes(seed: int, size=(40, 40)) -> bytes:
    import io

    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def assert_same_predictions(a, b, tol: float = 2e-5) -> None:
    """Top-k lists per image: the same labels and indices, probabilities equal to fp tolerance (a
    batch of another size reassociates the sums; the 6-digit rounding then may differ in the last digit).
    Two entries whose probabilities tie within tol may swap places."""
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert len(x) == len(y)
        px = {p["index"]: p["probability"] for p in x}
        py = {p["index"]: p["probability"] for p in y}
        for p, q in zip(x, y):
            assert abs(p["probability"] - q["probability"]) <= tol, (x, y)
            if p["index"] != q["index"]:  # only a near-tie may reorder
                assert abs(px[p["index"]] - py.get(p["index"], -1.0)) <= tol or abs(p["probability"] - q["probability"]) <= tol, (x, y)
        assert {p["label"] for p in x if p["probability"] - x[-1]["probability"] > tol} <= {p["label"] for p in y}, (x, y)
