"""VTAB-1k with VPT's pixels: a PNG task folder (what scripts/vtab_from_tfds.py writes) is read
losslessly, so the `paper` pipeline resizes exactly the decoded TFDS pixels, as VPT does
(src/data/datasets/tf_dataset.py:148-152); NOAH's JPEG files (quality 75) are not those pixels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


def write_task(tdir: Path, ext: str, n_classes=3, counts=(("train800", 4), ("val200", 2), ("test", 3))):
    """A VTAB task folder in NOAH's layout with images/<split>/NNNNNN.<ext>; returns path -> pixels."""
    from PIL import Image

    rng = np.random.default_rng(0)
    lines: dict[str, list[str]] = {}
    pixels: dict[str, np.ndarray] = {}
    for split, count in counts:
        lines[split] = []
        for i in range(count):
            rel = f"images/{split}/{i:06d}.{ext}"
            array = rng.integers(0, 256, size=(13 + i, 21, 3), dtype=np.uint8)  # odd sizes: a real resize
            (tdir / rel).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(array).save(tdir / rel, **({"quality": 75} if ext == "jpg" else {}))
            pixels[rel] = array
            lines[split].append(f"{rel} {i % n_classes}")
    for split, rows in lines.items():
        (tdir / f"{split}.txt").write_text("\n".join(rows) + "\n")
    (tdir / "train800val200.txt").write_text("\n".join(lines["train800"] + lines["val200"]) + "\n")
    return pixels


def paper_inputs(manifest, split):
    """The `paper` VTAB inputs of a split (style square-tf1, mean 0 / std 1: TF1 resize / 255)."""
    from lspt_cli.data.loader import build_dataset

    ds = build_dataset(manifest, split, input_size=32, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), train=False,
                       use_cache=False, style="square-tf1")
    return [ds[i][0] for i in range(len(ds))]


def test_png_layout_feeds_the_exact_decoded_pixels(tmp_path):
    from lspt_cli.data.transforms import tf1_resize_bilinear
    from lspt_plugins.datasets.vtab import prepare_dtd

    pixels = write_task(tmp_path / "vtab-1k" / "dtd", "png")
    m = prepare_dtd(tmp_path / "vtab-1k")
    assert {k for s in m.splits.values() for k, _ in s} == set(pixels)
    assert [y for _, y in m.splits["trainval"]] == [0, 1, 2, 0, 0, 1]
    for split in ("train", "val", "test"):
        for (key, _), x in zip(m.splits[split], paper_inputs(m, split)):
            expected = tf1_resize_bilinear(pixels[key], 32, 32) / 255.0  # VPT: tf.image.resize of the TFDS tensor
            assert torch.equal(x, expected), key


def test_noah_jpeg_layout_is_not_vpts_pixels(tmp_path):
    """The same arrays saved as JPEG at quality 75 (NOAH's files) reach the model changed."""
    from lspt_cli.data.transforms import tf1_resize_bilinear
    from lspt_plugins.datasets.vtab import prepare_dtd

    pixels = write_task(tmp_path / "dtd", "jpg")
    m = prepare_dtd(tmp_path / "dtd")
    (key, _), x = m.splits["test"][0], paper_inputs(m, "test")[0]
    assert (x - tf1_resize_bilinear(pixels[key], 32, 32) / 255.0).abs().max() > 0.05


def test_conversion_script_is_documented_and_not_imported_by_lspt():
    """scripts/vtab_from_tfds.py is a one-off (TensorFlow and VPT's repo needed): it must parse
    without TensorFlow installed and name every VTAB task lspt knows."""
    import ast

    from lspt_plugins.datasets import layouts

    path = Path(__file__).resolve().parents[1] / "scripts" / "vtab_from_tfds.py"
    tree = ast.parse(path.read_text())
    assert "python scripts/vtab_from_tfds.py" in ast.get_docstring(tree)
    top_level = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    assert not any("tensorflow" in ast.dump(n) for n in top_level)  # imported inside main() only
    mapping = next(n for n in tree.body if isinstance(n, ast.Assign) and n.targets[0].id == "VPT_NAMES")
    assert set(ast.literal_eval(mapping.value)) == set(layouts.VTAB_TASKS)
    assert "vtab_from_tfds.py" in layouts.VTAB and "png" in layouts.VTAB_TASK
