"""Opening images: any mode becomes 8-bit RGB; anything unreadable is a DataError naming the path.

Training never skips an image silently: a zero-byte, truncated or corrupt file, a path that is a
directory or a special file (a FIFO would hang the reader), or a decompression bomb (more pixels than
PIL's default MAX_IMAGE_PIXELS, checked from the header before decoding; PIL's own warning is never
printed) stops with the path in the message. Every command opens images through `load_image`.
"""

from __future__ import annotations

import os
from pathlib import Path

from .. import atomic
from ..errors import DataError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")


def is_image_file(name: str) -> bool:
    return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


def to_rgb(img):
    """Convert a PIL image of any mode (L, LA, P, RGBA, CMYK, I;16, I, F, 1, ...) to 8-bit RGB."""
    from PIL import Image

    mode = img.mode
    if mode == "RGB":
        return img
    if mode.startswith("I;16") or mode in ("I", "F"):
        import numpy as np

        arr = np.asarray(img)
        if mode == "F":
            lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
            arr = (arr - lo) / (hi - lo if hi > lo else 1.0) * 255.0
        else:
            arr = arr.astype(np.int64)
            hi = 65535 if (mode.startswith("I;16") or arr.max() > 255) else 255
            arr = arr * 255.0 / hi
        gray = Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), mode="L")
        return gray.convert("RGB")
    if mode == "P":
        return img.convert("RGBA").convert("RGB")
    return img.convert("RGB")


def _pil():
    """PIL's Image module, with its own decompression-bomb check (a warning, or an error at twice the
    limit) replaced by ours in load_image: a warning filter is process-global, not thread-safe to
    change per call (--verify decodes in threads) and undone by anyone's catch_warnings."""
    from PIL import Image

    global MAX_PIXELS
    if Image.MAX_IMAGE_PIXELS is not None:
        MAX_PIXELS = int(Image.MAX_IMAGE_PIXELS)
        Image.MAX_IMAGE_PIXELS = None
    return Image


MAX_PIXELS = 89_478_485  # PIL's default limit (about 0.25 GiB of RGB); images above it are refused


def load_image(path: str | os.PathLike):
    """Open, fully decode and convert to RGB; DataError naming the path on any failure."""
    path = Path(path)
    if path.is_dir():
        raise DataError(f"image path is a directory, not an image file: {path}")
    fh = atomic.open_regular(path, "image file", DataError)  # a FIFO or device: DataError, never a hang
    try:
        return _decode(fh, str(path), "resize it, or remove it from the dataset")
    except FileNotFoundError:
        raise DataError(f"image not found: {path}") from None
    except _Undecodable as exc:
        size = path.stat().st_size if path.exists() else -1
        what = "empty (0 bytes)" if size == 0 else f"corrupt or truncated ({exc})"
        raise DataError(f"cannot decode image {path}: {what}") from None


def decode_image(data: bytes, label: str = "image", max_pixels: int | None = None):
    """`load_image` for bytes in memory (`lspt serve`'s uploads): RGB PIL image or a one-line DataError.
    `max_pixels` (default PIL's limit) is checked from the header, before anything is decoded."""
    import io

    if not data:
        raise DataError(f"cannot decode {label}: empty (0 bytes)")
    try:
        return _decode(io.BytesIO(data), label, "send a smaller image", max_pixels)
    except _Undecodable as exc:
        raise DataError(f"cannot decode {label}: corrupt, truncated or not an image ({exc})") from None


class _Undecodable(Exception):
    pass


def _decode(fh, label: str, hint: str, max_pixels: int | None = None):
    from PIL import UnidentifiedImageError

    Image = _pil()
    limit = MAX_PIXELS if max_pixels is None else min(int(max_pixels), MAX_PIXELS)
    try:
        with fh, Image.open(fh) as img:  # reads the header only
            width, height = img.size
            if width * height > limit:
                raise DataError(
                    f"image {label} is too large to decode safely ({width}x{height} = {width * height:,} pixels, "
                    f"more than {limit:,}: a possible decompression bomb)",
                    hint=hint,
                )
            img.load()
            rgb = to_rgb(img)
            if rgb is img:
                rgb = img.copy()
    except MemoryError:
        raise DataError(f"image {label} does not fit in memory when decoded") from None
    except FileNotFoundError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as exc:
        raise _Undecodable(f"{type(exc).__name__}: {exc}") from None
    return rgb


load_rgb = load_image


def check_image(path: str | os.PathLike) -> str | None:
    """None if the image decodes, else the reason (for `--verify`)."""
    try:
        load_image(path)
    except DataError as exc:
        return exc.message
    return None
