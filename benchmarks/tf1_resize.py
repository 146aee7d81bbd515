"""How close is lspt's TF1 bilinear resize (VTAB, protocol `paper`) to TF's kernel, and how far from
PIL's antialiased resize (protocol `lspt`)? Prints JSON, one row per input size, resized to 224x224.

    python benchmarks/tf1_resize.py

The reference is the pixel-by-pixel float32 re-implementation of TF's resize_bilinear kernel in
tests/test_protocol_data.py (no TensorFlow needed); differences are on the 0-255 scale.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))


def main() -> None:
    from PIL import Image
    from test_protocol_data import tf1_reference

    from lspt_cli.data.transforms import tf1_resize_bilinear

    rows = []
    for seed, (h, w) in enumerate([(32, 32), (375, 500), (500, 375), (224, 224), (7, 300), (256, 256)]):
        noise = np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)
        yy, xx = np.mgrid[0:h, 0:w]
        smooth = (127.5 + 60 * np.sin(xx / 9.0) + 60 * np.cos(yy / 13.0))[:, :, None].repeat(3, 2).clip(0, 255).astype(np.uint8)
        row = {"input_hw": [h, w]}
        for name, img in (("noise", noise), ("smooth", smooth)):
            ours = tf1_resize_bilinear(img, 224, 224).numpy().transpose(1, 2, 0)
            pil = np.asarray(Image.fromarray(img).resize((224, 224), Image.BILINEAR), dtype=np.float32)
            row[name] = {
                "max_vs_tf1_reference": float(np.abs(ours - tf1_reference(img, 224, 224)).max()),
                "max_vs_pil_antialias": round(float(np.abs(ours - pil).max()), 2),
                "mean_vs_pil_antialias": round(float(np.abs(ours - pil).mean()), 2),
            }
        rows.append(row)
    print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
