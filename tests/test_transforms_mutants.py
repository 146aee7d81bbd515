"""The input pipeline's small decisions, each against a hand-computed value (benchmarks/mutation.py on
lspt_cli/data/transforms.py): VPT's resize size, antialiasing on tensors, [0, 1] scaling, where the
crop happens, the recorded style winning over the benchmark, and the eval pipeline's description.
"""

from __future__ import annotations

import pytest
import torch

from lspt_cli.data import transforms as T
from lspt_cli.errors import DataError

ZERO, ONE = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)


def noise(n: int) -> torch.Tensor:
    """A uint8 3 x n x n tensor of uniform noise (std ~74). A checkerboard would not do: bilinear
    sampling without antialiasing at an exact 8x downscale lands between two pixels and averages them."""
    return torch.randint(0, 256, (3, n, n), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)


def test_resize_size_is_vpts_256_for_224():
    assert [T.resize_size(s) for s in (224, 384, 32, 8)] == [256, 439, 37, 9]


@pytest.mark.parametrize("style, side", [("square", 8), ("crop", 9)])
def test_resizing_a_tensor_antialiases(style, side):
    """Array-backed tasks hand uint8 tensors to Resize: 64 -> 8 must average ~8 x 8 noisy pixels per
    output pixel (std ~74 / 8 ~ 10), not sample 2 x 2 of them (std ~37) (PIL images are always
    antialiased; tensors only with antialias=True)."""
    out = T.resize_transform(style, 8)(noise(64))
    assert out.shape[-2:] == (side, side)
    assert out.float().std() < 20


def test_tensor_transform_scales_to_unit_range_then_normalises():
    white = torch.full((3, 4, 4), 255, dtype=torch.uint8)
    assert torch.equal(T.tensor_transform("square", 4, ZERO, ONE, train=False)(white), torch.ones(3, 4, 4))
    half = T.tensor_transform("square", 4, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), train=False)(white)
    assert torch.allclose(half, torch.full((3, 4, 4), 2.0))  # (1 - 0.5) / 0.25


def test_only_the_crop_style_crops():
    image = torch.arange(36, dtype=torch.uint8).reshape(1, 6, 6).expand(3, 6, 6).contiguous()
    crop = T.tensor_transform("crop", 4, ZERO, ONE, train=False)(image)
    assert torch.allclose(crop, image[:, 1:5, 1:5].float() / 255, rtol=0, atol=1e-6)  # the centre 4 x 4
    square = T.tensor_transform("square", 4, ZERO, ONE, train=False)(image)
    assert square.shape == (3, 6, 6)  # already resized to S x S: nothing is cut


def test_the_recorded_style_wins_over_the_benchmark():
    from PIL import Image

    image = Image.new("RGB", (20, 10), (255, 0, 0))
    assert T.build_transform("vtab", 8, ZERO, ONE, train=False, style="crop")(image).shape == (3, 8, 8)
    assert T.transform_info("vtab", 8, ZERO, ONE, style="crop")["style"] == "crop"
    assert T.transform_info("vtab", 8, ZERO, ONE)["style"] == "square"  # no recorded style: the benchmark's
    with pytest.raises(DataError, match="unknown transform style 'bogus'"):
        T.resize_transform("bogus", 8)


def test_transform_info_describes_each_eval_pipeline():
    common = {"input_size": 224, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}
    mean, std = (0.5,) * 3, (0.25,) * 3
    assert T.transform_info("custom", 224, mean, std) == {
        **common, "style": "crop", "resize": 256, "crop": 224, "crop_pct": 0.875}
    assert T.transform_info("vtab", 224, mean, std) == {
        **common, "style": "square", "resize": [224, 224], "interpolation": "pil-antialias", "crop": None}
    assert T.transform_info("vtab", 224, mean, std, style="square-tf1") == {
        **common, "style": "square-tf1", "resize": [224, 224], "interpolation": "tf1-bilinear", "crop": None}
