"""The input pipeline's transforms (torchvision.transforms.v2), as VPT and GaPT use them.

Three styles, picked by the manifest's benchmark and the run's protocol (`transform_style`):
- "crop" (FGVC and custom: imagefolder, digits): train Resize(R) + RandomCrop(S) + RandomHorizontalFlip, eval
  Resize(R) + CenterCrop(S), with S = input size and R = round(S / 0.875) (256 for 224).
- "square" (VTAB-1k, protocol `lspt`): PIL's antialiased Resize((S, S)), no augmentation.
- "square-tf1" (VTAB-1k, protocol `paper`): TF1's bilinear resize to S x S *without* antialiasing, as
  VPT's `tf.compat.v1.image.resize` (KMnP/vpt src/data/datasets/tf_dataset.py:5,150), float output
  not rounded back to uint8 (VPT divides the float result by 255, tf_dataset.py:152). No augmentation.
Then ToDtype(float32, scale=True) and Normalize(mean, std) (the caller's, e.g. ImageNet's).

Each pipeline is split in two: `resize_transform` (deterministic, applied to the decoded PIL image;
the decoded-image cache stores its output, except for "square-tf1" whose float output is never cached)
and `tensor_transform` (crop/flip/normalise on the CHW tensor). Augmentation draws from torch's global RNG.
"""

from __future__ import annotations

from typing import Any, Sequence

CROP_RATIO = 0.875
STYLES = ("crop", "square", "square-tf1")
CACHED_STYLES = ("crop", "square")  # square-tf1's float pixels would be rounded by a uint8 cache


def transform_style(benchmark: str, extra: dict | None = None, protocol: str = "lspt") -> str:
    """"square-tf1" for VTAB under protocol `paper`, "square" for VTAB under `lspt`, else "crop".

    Bundles record the style (`lspt.task` "style"), so predict/eval/explain rebuild the training
    run's eval transform from the bundle; without one (older bundles) they assume `lspt`'s."""
    if benchmark != "vtab":
        return "crop"
    return "square-tf1" if protocol == "paper" else "square"


def resize_size(input_size: int) -> int:
    """The Resize() size before a crop of `input_size` (256 for 224, as VPT)."""
    return int(round(input_size / CROP_RATIO))


def check_style(style: str) -> str:
    if style not in STYLES:
        from ..errors import DataError

        raise DataError(f"unknown transform style {style!r}; known: {', '.join(STYLES)}")
    return style


def resize_transform(style: str, input_size: int):
    """The deterministic first step: PIL image (or uint8 CHW tensor) -> resized image/tensor."""
    from torchvision.transforms import v2

    check_style(style)
    if style == "square-tf1":
        return TF1Resize(input_size)
    if style == "square":
        return v2.Resize((input_size, input_size), antialias=True)
    return v2.Resize(resize_size(input_size), antialias=True)


# -- TF1's bilinear resize ------------------------------------------------------------------------
def tf1_resize_bilinear(image, height: int, width: int):
    """TF1's `resize_bilinear(align_corners=False, half_pixel_centers=False)` of a uint8 image.

    `image`: HxWxC array or CxHxW tensor of uint8 (or any real dtype). Returns float32 CxHxW with
    values on the input's scale (0..255), not rounded. TF1's legacy sampling (tensorflow
    core/kernels/image/resize_bilinear_op.cc, LegacyScaler and compute_lerp): scale = in / out
    in float32, src = dst * scale, lower = floor(src), upper = min(ceil(src), in - 1),
    lerp = src - floor(src); top = tl + (tr - tl) * x_lerp, bottom = bl + (br - bl) * x_lerp,
    out = top + (bottom - top) * y_lerp, every step in float32. No antialiasing: a downscale
    samples (at most) 2 x 2 source pixels per output pixel, and the last row/column is replicated
    when upscaling (no half-pixel offset).
    """
    import numpy as np
    import torch

    t = torch.as_tensor(np.asarray(image)) if not isinstance(image, torch.Tensor) else image
    if not isinstance(image, torch.Tensor):
        t = t.permute(2, 0, 1)  # HWC -> CHW
    x = t.to(torch.float32)
    in_h, in_w = int(x.shape[-2]), int(x.shape[-1])
    y0, y1, yl = _tf1_axis(in_h, int(height))
    x0, x1, xl = _tf1_axis(in_w, int(width))
    top_rows, bottom_rows = x[:, y0, :], x[:, y1, :]
    tl, tr = top_rows[:, :, x0], top_rows[:, :, x1]
    bl, br = bottom_rows[:, :, x0], bottom_rows[:, :, x1]
    xl, yl = xl.view(1, 1, -1), yl.view(1, -1, 1)
    top = tl + (tr - tl) * xl
    bottom = bl + (br - bl) * xl
    return (top + (bottom - top) * yl).contiguous()


def _tf1_axis(in_size: int, out_size: int):
    """(lower, upper, lerp) of TF1's legacy scaler along one axis, in float32 like TF's kernel."""
    import torch

    scale = torch.tensor(float(in_size), dtype=torch.float32) / torch.tensor(float(out_size), dtype=torch.float32)
    src = torch.arange(out_size, dtype=torch.float32) * scale
    floor = torch.floor(src)
    lower = floor.to(torch.int64).clamp(min=0)
    upper = torch.ceil(src).to(torch.int64).clamp(max=in_size - 1)
    return lower, upper, src - floor


class TF1Resize:
    """Resize to S x S as VPT's VTAB pipeline does: TF1 bilinear, then / 255 (float32 CHW in [0, 1])."""

    def __init__(self, size: int):
        self.size = int(size)

    def __call__(self, img):
        import numpy as np
        import torch

        if isinstance(img, torch.Tensor):  # a uint8 CHW tensor (array-backed tasks)
            chw = img
        else:  # a PIL image, already RGB
            chw = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1)
        return tf1_resize_bilinear(chw, self.size, self.size) / 255.0

    def __repr__(self) -> str:
        return f"TF1Resize(size={self.size}, bilinear, no antialias, align_corners=False, half_pixel_centers=False)"


def tensor_transform(style: str, input_size: int, mean: Sequence[float], std: Sequence[float], train: bool):
    import torch
    from torchvision.transforms import v2

    steps: list[Any] = []
    if style == "crop":
        if train:
            steps += [v2.RandomCrop(input_size), v2.RandomHorizontalFlip()]
        else:
            steps += [v2.CenterCrop(input_size)]
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(map(float, mean)), list(map(float, std)))]
    return v2.Compose(steps)


def build_transform(benchmark: str, input_size: int, mean, std, train: bool, extra: dict | None = None,
                    style: str | None = None):
    """The whole pipeline from an RGB PIL image to a normalised float32 CHW tensor (for predict).

    `style`: the bundle's recorded style; None derives it from the benchmark (protocol `lspt`)."""
    from torchvision.transforms import v2

    style = check_style(style or transform_style(benchmark, extra))
    return v2.Compose([resize_transform(style, input_size), v2.ToImage(), tensor_transform(style, input_size, mean, std, train)])


def transform_info(benchmark: str, input_size: int, mean, std, extra: dict | None = None,
                   style: str | None = None) -> dict[str, Any]:
    """A JSON-able description of the eval pipeline (for bundle metadata)."""
    style = check_style(style or transform_style(benchmark, extra))
    info: dict[str, Any] = {"input_size": int(input_size), "mean": list(map(float, mean)), "std": list(map(float, std))}
    if style in ("square", "square-tf1"):
        method = "tf1-bilinear" if style == "square-tf1" else "pil-antialias"
        info.update(style=style, resize=[int(input_size), int(input_size)], interpolation=method, crop=None)
    else:
        info.update(style="crop", resize=resize_size(input_size), crop=int(input_size), crop_pct=CROP_RATIO)
    return info
