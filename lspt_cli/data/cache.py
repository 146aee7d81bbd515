"""The decoded-image cache: every image of a task decoded once and resized, stored as raw uint8.

`lspt prepare-data TASK --cache [--input-size 224]` writes, next to the manifest,
`cache-<style>-<input size>.bin` (memory-mapped at load time) and `cache-<style>-<input size>.json`
(its index: the manifest fingerprint, and per image its key, byte offset and (height, width)).
Each image is stored exactly as the pipeline's deterministic resize step leaves it
(transforms.resize_transform), with its true size and aspect ratio, images back to back:
- "crop" (FGVC, imagefolder): the shorter side resized to R = round(S / 0.875), the long side in
  proportion, however elongated (a Stanford Cars image at 2:1 keeps all 512 x 256 pixels, so
  RandomCrop draws from the same range of offsets as when decoding);
- "square" (VTAB, protocol `lspt`): Resize((S, S)).
So a cached run sees bit-for-bit the pixels a decoding run sees, crops and flips included.
"square-tf1" (VTAB, protocol `paper`) is never cached: its resize returns float pixels that a
uint8 cache would round; those runs decode from disk (VTAB-1k trains on 800-1000 small images).
Both files are written atomically (index last); the loader uses a cache only when its index matches
the manifest's fingerprint, the style, the input size and the data file's length, so a re-prepared
task never reads a stale cache.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from .. import atomic
from ..errors import DataError
from .manifest import Manifest
from .transforms import CACHED_STYLES, resize_transform, transform_style

CACHE_VERSION = 2  # 1: fixed-size rows, long side cut at 4:3 (changed what a run saw); never read


@dataclass
class CacheInfo:
    data: Path
    index: Path
    style: str
    input_size: int
    rows: dict[str, int]
    offsets: list[int]
    hw: list[tuple[int, int]]
    nbytes: int

    @property
    def count(self) -> int:
        return len(self.hw)


def _style(manifest: Manifest, style: str | None) -> str:
    return style or transform_style(manifest.benchmark, manifest.extra)


def cache_paths(manifest: Manifest, input_size: int, style: str | None = None) -> tuple[Path, Path]:
    """(data file, index file); `style` defaults to the benchmark's `lspt` style."""
    if manifest.directory is None:
        raise DataError(f"task '{manifest.task}': the manifest has no directory (write it first)")
    stem = f"cache-{_style(manifest, style)}-{int(input_size)}"
    return manifest.directory / f"{stem}.bin", manifest.directory / f"{stem}.json"


def find_cache(manifest: Manifest, input_size: int, style: str | None = None) -> CacheInfo | None:
    """The valid cache for this manifest, style and input size, or None (never for square-tf1)."""
    style = _style(manifest, style)
    if style not in CACHED_STYLES or manifest.directory is None or manifest.root is None:
        return None
    data, index = cache_paths(manifest, input_size, style)
    try:
        doc = json.loads(index.read_text(encoding="utf-8"))
        size = data.stat().st_size
    except (OSError, ValueError):
        return None
    if not isinstance(doc, dict) or (
        doc.get("version") != CACHE_VERSION
        or doc.get("fingerprint") != manifest.fingerprint()
        or doc.get("style") != style
        or doc.get("input_size") != int(input_size)
        or doc.get("bytes") != size
    ):
        return None
    keys, hw, offsets = doc.get("keys") or [], doc.get("hw") or [], doc.get("offsets") or []
    if not all(isinstance(v, list) for v in (keys, hw, offsets)) or not all(isinstance(k, str) for k in keys):
        return None  # a damaged index: rebuilt by the next `prepare-data --cache`, decoded until then
    try:
        hw = [(int(h), int(w)) for h, w in hw]
        offsets = [int(o) for o in offsets]
    except (TypeError, ValueError):
        return None
    if not (len(keys) == len(hw) == len(offsets)) or any(
        o < 0 or h <= 0 or w <= 0 or o + h * w * 3 > size for o, (h, w) in zip(offsets, hw)
    ):
        return None
    return CacheInfo(
        data=data, index=index, style=style, input_size=int(input_size),
        rows={k: i for i, k in enumerate(keys)}, offsets=offsets, hw=hw, nbytes=size,
    )


def read_row(array, offset: int, h: int, w: int):
    """One cached image as an HxWx3 uint8 view of the memory-mapped data file."""
    return array[offset : offset + h * w * 3].reshape(h, w, 3)


# -- errors raised in a DataLoader worker ------------------------------------------------------------
# torch re-raises a worker's exception in the main process as `type(exc)(text)`, the text being
# "Caught X in DataLoader worker process N. Original Traceback ...": the worker's whole stack in the
# message, the hint lost. `carried` (worker side) folds an LsptError's hint into its message;
# `worker_errors_reduced` (main side) brings the error back to its own message and hint.
_HINT_MARK = "\n[lspt hint] "


def carried(getitem):
    """Decorate a Dataset's __getitem__: in a worker process, an LsptError keeps its hint across."""
    import functools

    from ..errors import LsptError

    @functools.wraps(getitem)
    def wrapper(self, index):
        try:
            return getitem(self, index)
        except LsptError as exc:
            import torch.utils.data

            from ..messages import debug_enabled

            if exc.hint and torch.utils.data.get_worker_info() is not None and not debug_enabled():
                raise type(exc)(f"{exc.message}{_HINT_MARK}{exc.hint}") from None
            raise

    return wrapper


def from_worker(exc: BaseException) -> BaseException | None:
    """The exception a DataLoader worker raised, as that worker raised it (its message and hint, no
    stack), for one torch re-raised in the main process; None for any other (or with LSPT_DEBUG=1)."""
    from ..errors import LsptError
    from ..messages import debug_enabled, last_exception

    text = exc.message if isinstance(exc, LsptError) else str(exc)
    if "in DataLoader worker process" not in str(text) or debug_enabled():
        return None
    found = last_exception(text)
    if found is None:
        return None
    kind, message = found
    if isinstance(exc, LsptError):
        message, _, hint = message.partition(_HINT_MARK.strip("\n"))
        try:
            return type(exc)(message.strip(), hint=hint.strip() or None)
        except TypeError:
            return LsptError(message.strip(), hint=hint.strip() or None)
    try:
        clean = type(exc)(message)
    except Exception:  # noqa: BLE001  (an exception type that takes other arguments)
        return RuntimeError(f"{kind}: {message}")
    return clean if str(clean) else RuntimeError(kind)


def worker_errors_reduced(iterator):
    """Iterate a DataLoader's iterator; a worker's error is raised as the worker raised it (from_worker)."""
    try:
        yield from iterator
    except Exception as exc:
        clean = from_worker(exc)
        if clean is None:
            raise
        raise clean from None


class _DecodeForCache:
    """A map-style dataset: row i -> (i, the resized image as uint8 HxWx3 bytes, (h, w))."""

    def __init__(self, root: str, keys: list[str], style: str, input_size: int):
        self.root, self.keys, self.style, self.input_size = root, keys, style, input_size
        self._resize = None

    def __len__(self) -> int:
        return len(self.keys)

    @carried
    def __getitem__(self, i: int):
        import numpy as np

        from .images import load_image

        if self._resize is None:
            self._resize = resize_transform(self.style, self.input_size)
        img = self._resize(load_image(Path(self.root) / self.keys[i]))
        arr = np.ascontiguousarray(np.asarray(img, dtype=np.uint8))
        return i, arr.tobytes(), (int(arr.shape[0]), int(arr.shape[1]))


def build_cache(
    manifest: Manifest,
    input_size: int = 224,
    num_workers: int = 0,
    progress: Callable[[int, int], None] | None = None,
    style: str | None = None,
) -> dict[str, Any]:
    """Decode every image once into the cache files (atomically). Returns a JSON-able summary."""
    import torch

    if manifest.root is None:
        raise DataError(f"task '{manifest.task}' keeps its images in an array already; it needs no cache")
    style = _style(manifest, style)
    if style not in CACHED_STYLES:
        raise DataError(f"style '{style}' is not cached (its float pixels would be rounded); it decodes from disk")
    data, index = cache_paths(manifest, input_size, style)
    keys = manifest.keys()
    existing = find_cache(manifest, input_size, style)
    if existing is not None and existing.count == len(keys):
        return _summary(existing, reused=True)
    index.unlink(missing_ok=True)  # no window where an old index describes the new data file
    dataset = _DecodeForCache(manifest.root, keys, style, input_size)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=None, shuffle=False, num_workers=num_workers, collate_fn=lambda x: x
    )
    hw: list[list[int]] = [[0, 0]] * len(keys)
    offsets = [0] * len(keys)
    position = 0
    with atomic.atomic_path(data) as tmp:
        with open(tmp, "wb") as fh:
            for done, (i, raw, (h, w)) in enumerate(worker_errors_reduced(iter(loader)), 1):
                fh.write(raw)
                offsets[i], hw[i] = position, [h, w]
                position += len(raw)
                if progress is not None:
                    progress(done, len(keys))
    atomic.write_json(
        index,
        {
            "version": CACHE_VERSION,
            "task": manifest.task,
            "fingerprint": manifest.fingerprint(),
            "style": style,
            "input_size": int(input_size),
            "data": data.name,
            "bytes": position,
            "keys": keys,
            "offsets": offsets,
            "hw": hw,
        },
    )
    info = find_cache(manifest, input_size, style)
    if info is None:  # pragma: no cover - we just wrote it
        raise DataError(f"the cache just written is not readable: {data}")
    return _summary(info, reused=False)


def _summary(info: CacheInfo, reused: bool) -> dict[str, Any]:
    return {
        "path": str(info.data),
        "images": info.count,
        "style": info.style,
        "input_size": info.input_size,
        "stored": [max((h for h, _ in info.hw), default=0), max((w for _, w in info.hw), default=0), 3],
        "bytes": info.nbytes,
        "reused": reused,
    }
