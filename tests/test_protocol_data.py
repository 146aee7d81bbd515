"""Issue 10, items 10 and 13: VPT's VTAB resize (TF1 bilinear, no antialiasing) and a cache that
never changes what a run sees.

The TF1 reference below is written from TensorFlow's kernel (core/kernels/image/
resize_bilinear_op.cc: LegacyScaler, compute_interpolation_weights, compute_lerp), one output pixel
at a time in numpy float32, independently of lspt's vectorised torch version.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def tf1_reference(img: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """TF1 resize_bilinear(align_corners=False, half_pixel_centers=False), pixel by pixel, HWC float32."""
    f32 = np.float32
    in_h, in_w, channels = img.shape
    src = img.astype(f32)
    h_scale, w_scale = f32(in_h) / f32(out_h), f32(in_w) / f32(out_w)
    out = np.zeros((out_h, out_w, channels), dtype=f32)
    for y in range(out_h):
        in_y = f32(y) * h_scale
        top_y, bottom_y = max(int(np.floor(in_y)), 0), min(int(np.ceil(in_y)), in_h - 1)
        y_lerp = f32(in_y - np.floor(in_y))
        for x in range(out_w):
            in_x = f32(x) * w_scale
            left_x, right_x = max(int(np.floor(in_x)), 0), min(int(np.ceil(in_x)), in_w - 1)
            x_lerp = f32(in_x - np.floor(in_x))
            tl, tr = src[top_y, left_x], src[top_y, right_x]
            bl, br = src[bottom_y, left_x], src[bottom_y, right_x]
            top = tl + (tr - tl) * x_lerp
            bottom = bl + (br - bl) * x_lerp
            out[y, x] = top + (bottom - top) * y_lerp
    return out


def _random_image(h, w, seed):
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


# -- item 10: TF1 bilinear ----------------------------------------------------------------------
def test_tf1_bilinear_hand_computed():
    """Values worked out by hand from TF1's legacy sampling src = dst * in / out."""
    from lspt_cli.data.transforms import tf1_resize_bilinear

    up = np.array([[0, 100], [200, 255]], dtype=np.uint8)[:, :, None].repeat(3, axis=2)
    expected = np.array([
        [0, 50, 100, 100],  # src x = 0, .5, 1, 1.5: the last column is replicated (no half-pixel offset)
        [100, 138.75, 177.5, 177.5],
        [200, 227.5, 255, 255],
        [200, 227.5, 255, 255],
    ], dtype=np.float32)
    got = tf1_resize_bilinear(up, 4, 4).numpy()
    assert got.shape == (3, 4, 4) and got.dtype == np.float32
    for c in range(3):
        np.testing.assert_array_equal(got[c], expected)
    # a 2x downscale samples every other pixel (no antialiasing: nothing is averaged)
    row = np.array([[0, 10, 20, 30]], dtype=np.uint8)[:, :, None].repeat(3, axis=2)
    np.testing.assert_array_equal(tf1_resize_bilinear(row, 1, 2).numpy()[0], [[0, 20]])
    # 4 -> 3: src x = 0, 4/3, 8/3 -> 0, 10 + 10/3, 20 + 20/3 (float, not rounded)
    np.testing.assert_allclose(tf1_resize_bilinear(row, 1, 3).numpy()[0], [[0, 13.333333, 26.666666]], rtol=1e-6)


@pytest.mark.parametrize("in_hw,out_hw", [
    ((32, 32), (224, 224)),  # CIFAR / SVHN upscaled to the input size
    ((375, 500), (224, 224)),  # a landscape photo downscaled (sun397, pets)
    ((7, 300), (16, 16)),  # extreme aspect, both directions of scaling at once
    ((1, 1), (5, 3)),
    ((24, 24), (24, 24)),  # same size: the pixels themselves
])
def test_tf1_bilinear_matches_the_per_pixel_reference(in_hw, out_hw):
    from lspt_cli.data.transforms import tf1_resize_bilinear

    img = _random_image(*in_hw, seed=sum(in_hw) + out_hw[0])
    ref = tf1_reference(img, *out_hw)
    got = tf1_resize_bilinear(img, *out_hw).numpy().transpose(1, 2, 0)
    assert got.shape == ref.shape
    # README "Protocol", item 10: the measured maximum difference is 0 (same float32 operations)
    assert float(np.abs(got - ref).max()) <= 1e-4
    if in_hw == out_hw:
        np.testing.assert_array_equal(got, img.astype(np.float32))


def test_tf1_bilinear_is_not_pil_antialias():
    """Downscaling: the antialiased resize averages, TF1's bilinear samples; they differ a lot."""
    from PIL import Image

    from lspt_cli.data.transforms import tf1_resize_bilinear

    img = _random_image(375, 500, seed=1)
    pil = np.asarray(Image.fromarray(img).resize((224, 224), Image.BILINEAR), dtype=np.float32)
    tf1 = tf1_resize_bilinear(img, 224, 224).numpy().transpose(1, 2, 0)
    assert np.abs(pil - tf1).max() > 100  # noise images: a sample is far from the local average
    assert float(pil.std()) < 0.6 * float(tf1.std())  # averaging over ~2.2 x 1.7 pixels smooths the noise


# -- the VTAB pipeline per protocol ---------------------------------------------------------------
def _vtab_task(cli, tmp_path, cache=False):
    from test_data_layouts import make_vtab_task

    from lspt_cli.data import load_manifest

    make_vtab_task(tmp_path / "v" / "dtd")
    args = ["prepare-data", "vtab/dtd", "--root", str(tmp_path / "v"), "--json"]
    if cache:
        args += ["--cache", "--input-size", "16", "--workers", "0"]
    r = cli(*args)
    assert r.exit_code == 0, r.output
    return load_manifest("vtab/dtd")


def _batches(m, split, style, use_cache=True, train=False, size=16, seed=0, epoch=0, workers=0):
    import torch

    from lspt_cli.data import build_loader

    loader = build_loader(m, split, input_size=size, mean=MEAN, std=STD, train=train, batch_size=3, seed=seed,
                          epoch=epoch, shuffle=False, use_cache=use_cache, style=style, num_workers=workers)
    return torch.cat([x for x, _ in loader]), loader.dataset.cached


def test_paper_vtab_images_are_tf1_resized_then_normalised(cli, tmp_path):
    """protocol paper: (TF1 bilinear / 255 - mean) / std of the decoded image, as VPT's tf_dataset.py."""
    from PIL import Image

    from lspt_cli.data.transforms import transform_style

    m = _vtab_task(cli, tmp_path, cache=True)
    assert transform_style("vtab", protocol="paper") == "square-tf1"
    assert transform_style("vtab", protocol="lspt") == "square"
    assert transform_style("fgvc", protocol="paper") == "crop"
    got, cached = _batches(m, "test", "square-tf1")
    assert not cached  # float pixels: never from the uint8 cache, though one exists
    mean, std = np.array(MEAN, np.float32), np.array(STD, np.float32)
    for i, (key, _) in enumerate(m.splits["test"]):
        img = np.asarray(Image.open(m.image_path(key)).convert("RGB"))
        expected = (tf1_reference(img, 16, 16) / np.float32(255.0) - mean) / std
        np.testing.assert_allclose(got[i].numpy().transpose(1, 2, 0), expected, rtol=0, atol=2e-6)
    lspt, cached = _batches(m, "test", "square")
    assert cached and not np.allclose(lspt.numpy(), got.numpy(), atol=1e-3)  # lspt keeps PIL's antialiased resize


def test_bundle_style_rebuilds_the_eval_transform():
    """predict/eval rebuild a bundle's transform from its recorded style (older bundles: from the benchmark)."""
    from PIL import Image

    from lspt_cli.data.transforms import TF1Resize, build_transform, transform_info

    img = Image.fromarray(_random_image(40, 30, seed=5))
    paper = build_transform("vtab", 16, MEAN, STD, train=False, style="square-tf1")(img)
    expected = (tf1_reference(np.asarray(img), 16, 16) / np.float32(255.0) - np.array(MEAN, np.float32)) / np.array(STD, np.float32)
    np.testing.assert_allclose(paper.numpy().transpose(1, 2, 0), expected, rtol=0, atol=2e-6)
    legacy = build_transform("vtab", 16, MEAN, STD, train=False)(img)
    assert not np.allclose(legacy.numpy(), paper.numpy(), atol=1e-3)
    assert transform_info("vtab", 16, MEAN, STD, style="square-tf1")["interpolation"] == "tf1-bilinear"
    assert "TF1" in repr(TF1Resize(16))


# -- item 13: the cache never changes what a run sees ---------------------------------------------
ELONGATED = [(90, 30), (30, 84), (64, 30), (30, 45), (50, 50)]  # (w, h): 3:1, 1:2.8, 2.1:1, 1:1.5, square


def test_cache_gives_the_same_training_batches_on_elongated_images(cli, tmp_path):
    import torch
    from test_data_images import make_folder

    from lspt_cli.data import load_manifest

    root = make_folder(tmp_path / "d", ELONGATED)
    r = cli("prepare-data", "imagefolder", "--root", str(root), "--cache", "--input-size", "24", "--json")  # 2 workers
    assert r.exit_code == 0, r.output
    m = load_manifest("imagefolder")
    for seed, epoch in ((0, 0), (7, 3)):
        decoded, c0 = _batches(m, "train", None, use_cache=False, train=True, size=24, seed=seed, epoch=epoch)
        cached, c1 = _batches(m, "train", None, use_cache=True, train=True, size=24, seed=seed, epoch=epoch)
        assert (c0, c1) == (False, True)
        assert torch.equal(decoded, cached)
    workers, _ = _batches(m, "train", None, train=True, size=24, seed=7, epoch=3, workers=2)
    assert torch.equal(workers, cached)
    # eval (centre crop) too
    assert torch.equal(_batches(m, "test", None, use_cache=False)[0], _batches(m, "test", None, use_cache=True)[0])


def test_cache_stores_every_image_whole_with_its_aspect(cli, tmp_path):
    """Each image as Resize(R) leaves it: the long side is never cut (R = 27 for 24)."""
    from PIL import Image
    from test_data_images import make_folder

    from lspt_cli.data import load_manifest
    from lspt_cli.data.cache import find_cache, read_row

    root = make_folder(tmp_path / "d", ELONGATED)
    assert cli("prepare-data", "imagefolder", "--root", str(root), "--cache", "--input-size", "24", "--workers", "0").exit_code == 0
    m = load_manifest("imagefolder")
    info = find_cache(m, 24)
    data = np.memmap(info.data, dtype=np.uint8, mode="r")
    for key, row in info.rows.items():
        w, h = Image.open(m.image_path(key)).size
        short = min(w, h)
        expect = (27, int(27 * w / short)) if h == short else (int(27 * h / short), 27)
        assert info.hw[row] == expect, key
        assert read_row(data, info.offsets[row], *info.hw[row]).shape == (*expect, 3)
    assert info.nbytes == sum(h * w * 3 for h, w in info.hw)
    doc = json.loads(info.index.read_text())
    assert doc["version"] == 2
    # a damaged index is ignored (the run decodes), never a crash
    n = len(doc["keys"])
    for bad in ({"keys": [[1]] * n}, {"hw": [[1]] * n}, {"hw": "x"}, {"offsets": [10**12] * n}, {"keys": None},
                {"hw": [[None, 3]] * n}, {"version": 1}):
        info.index.write_text(json.dumps({**doc, **bad}))
        assert find_cache(m, 24) is None, bad
    info.index.write_text(json.dumps(doc))
    assert find_cache(m, 24) is not None
    # a truncated data file is not used
    with open(info.data, "r+b") as fh:
        fh.truncate(info.nbytes - 1)
    assert find_cache(m, 24) is None
