"""Datasets and loaders over a manifest, deterministic in (seed, epoch).

- Shuffle order: a `torch.Generator` seeded from (seed, epoch) drives the DataLoader's sampler (and
  the workers' base seeds).
- Augmentation: each sample's random crop/flip draws from torch's RNG re-seeded from
  (seed, epoch, index), restored afterwards, so it is a pure function of
  (seed, epoch, index): identical for any `num_workers`, any worker assignment, and any resume
  point, and the caller's global RNG is left untouched.
- Images come from the decoded-image cache when a valid one exists for the style and input size
  (see cache.py; it holds exactly what decoding gives), else are decoded from disk (PIL -> RGB),
  or from the array a task keeps (digits).
- `style` (transforms.transform_style) is the run's: VTAB under protocol `paper` is "square-tf1".
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ..errors import DataError
from .cache import carried, find_cache, worker_errors_reduced
from .images import load_image
from .manifest import Manifest
from .transforms import check_style, resize_transform, tensor_transform, transform_style

_MASK64 = (1 << 64) - 1


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def mix_seed(*parts: int) -> int:
    """A 63-bit seed that is a pure function of the integers given (e.g. seed, epoch, index)."""
    h = 0x243F6A8885A308D3
    for p in parts:
        h = _splitmix64(h ^ (int(p) & _MASK64))
    return h & ((1 << 63) - 1)


# -- image sources --------------------------------------------------------------------------------
class _FileSource:
    """Decode from disk, then the deterministic resize step."""

    def __init__(self, root: str, style: str, input_size: int):
        self.root, self.style, self.input_size = root, style, input_size
        self._resize = None

    def __getstate__(self):
        return {**self.__dict__, "_resize": None}

    def get(self, key: str) -> torch.Tensor:
        from torchvision.transforms.v2 import functional as F

        if self._resize is None:
            self._resize = resize_transform(self.style, self.input_size)
        out = self._resize(load_image(Path(self.root) / key))
        return out if isinstance(out, torch.Tensor) else F.pil_to_tensor(out)  # square-tf1 gives a tensor


class _CacheSource:
    """Images of the memory-mapped cache (opened lazily in each worker process)."""

    def __init__(self, info):
        self.data, self.rows, self.offsets, self.hw = info.data, info.rows, info.offsets, info.hw
        self._arr = None

    def __getstate__(self):
        return {**self.__dict__, "_arr": None}

    def get(self, key: str) -> torch.Tensor:
        from .cache import read_row

        if self._arr is None:
            self._arr = np.memmap(self.data, dtype=np.uint8, mode="r")
        i = self.rows[key]
        arr = read_row(self._arr, self.offsets[i], *self.hw[i])
        return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))  # a writable CHW copy


class _ArraySource:
    """Images kept as a uint8 (N, H, W, 3) array next to the manifest (digits), then resized."""

    def __init__(self, array: np.ndarray, style: str, input_size: int):
        self.array, self.style, self.input_size = array, style, input_size
        self._resize = None

    def __getstate__(self):
        return {**self.__dict__, "_resize": None}

    def get(self, key: str) -> torch.Tensor:
        if self._resize is None:
            self._resize = resize_transform(self.style, self.input_size)
        try:
            row = int(key.rsplit("/", 1)[-1])
        except ValueError:
            raise DataError(f"array key {key!r} does not end in a row number") from None
        img = torch.from_numpy(np.ascontiguousarray(self.array[row])).permute(2, 0, 1)
        return self._resize(img)


class TaskDataset(Dataset):
    """(float32 CHW normalised tensor, int label) for each (key, label) of one split."""

    def __init__(self, items: list[tuple[str, int]], source: Any, post, train: bool, task: str, split: str):
        self.items = items
        self.source = source
        self.post = post
        self.train = train
        self.task, self.split = task, split
        self.seed, self.epoch = 0, 0
        self.cached = isinstance(source, _CacheSource)

    def set_epoch(self, seed: int, epoch: int) -> None:
        """Augmentation of sample i in this epoch is a pure function of (seed, epoch, i)."""
        self.seed, self.epoch = int(seed), int(epoch)

    def __len__(self) -> int:
        return len(self.items)

    @property
    def labels(self) -> list[int]:
        return [label for _, label in self.items]

    @carried
    def __getitem__(self, index: int):
        from torchvision import tv_tensors

        key, label = self.items[index]
        img = tv_tensors.Image(self.source.get(key))
        if self.train:
            # Seed the CPU generator for this sample only, then restore the caller's state (what
            # torch.random.fork_rng(devices=[]) does, without torch.manual_seed's lazy device calls).
            gen = torch.default_generator
            state = gen.get_state()
            gen.manual_seed(mix_seed(self.seed, self.epoch, index))
            try:
                x = self.post(img)
            finally:
                gen.set_state(state)
        else:
            x = self.post(img)
        return x.as_subclass(torch.Tensor), int(label)


def _source_for(manifest: Manifest, style: str, input_size: int, use_cache: bool):
    array_name = manifest.extra.get("array")
    if array_name:
        if manifest.directory is None:
            raise DataError(f"task '{manifest.task}': the manifest has no directory to find {array_name} in")
        path = manifest.directory / array_name
        if not path.exists():
            raise DataError(
                f"task '{manifest.task}': its image array is missing: {path}",
                hint=f"prepare it again: `lspt prepare-data {manifest.dataset}`",
            )
        try:
            array = np.load(path)  # allow_pickle=False: an array of objects is refused, never unpickled
        except (OSError, ValueError, EOFError) as exc:
            array, reason = None, f"{type(exc).__name__}: {exc}"
        else:
            reason = f"expected uint8 (N, H, W, 3), got {array.dtype} {array.shape}"
        if array is None or array.dtype != np.uint8 or array.ndim != 4 or array.shape[-1] != 3:
            raise DataError(
                f"task '{manifest.task}': its image array {path} is corrupt ({reason})",
                hint=f"prepare it again: `lspt prepare-data {manifest.dataset}`",
            )
        rows = [int(k.rsplit("/", 1)[-1]) for items in manifest.splits.values() for k, _ in items if k.rsplit("/", 1)[-1].isdigit()]
        if rows and max(rows) >= len(array):
            raise DataError(f"task '{manifest.task}': the manifest lists row {max(rows)} of {path}, which has {len(array)} rows")
        return _ArraySource(array, style, input_size)
    if manifest.root is None:
        raise DataError(f"task '{manifest.task}' has neither an image root nor an image array")
    if use_cache:
        info = find_cache(manifest, input_size, style)
        if info is not None:
            return _CacheSource(info)
    return _FileSource(manifest.root, style, input_size)


def build_dataset(
    manifest: Manifest,
    split: str,
    *,
    input_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    train: bool,
    use_cache: bool = True,
    style: str | None = None,
) -> TaskDataset:
    """The split as a map-style dataset; `train` turns on the style's augmentation (FGVC crop/flip).

    `style`: the run's transform style (None: the benchmark's under protocol `lspt`)."""
    if split not in manifest.splits:
        raise DataError(
            f"task '{manifest.task}' has no split '{split}'; it has {', '.join(sorted(manifest.splits))}"
        )
    items = manifest.splits[split]
    if not items:
        raise DataError(f"task '{manifest.task}': split '{split}' is empty")
    style = check_style(style or transform_style(manifest.benchmark, manifest.extra))
    source = _source_for(manifest, style, int(input_size), use_cache)
    post = tensor_transform(style, int(input_size), mean, std, train)
    return TaskDataset(list(items), source, post, train, manifest.task, split)


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(mix_seed(seed, epoch, 0x5EED))
    return g


class TaskLoader(DataLoader):
    """A DataLoader whose workers' errors arrive as the worker raised them: one message (and hint),
    not the worker's stack in the message (cache.worker_errors_reduced; LSPT_DEBUG=1 keeps it)."""

    def __iter__(self):
        return worker_errors_reduced(super().__iter__())


def build_loader(
    manifest: Manifest,
    split: str,
    *,
    input_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    train: bool,
    batch_size: int,
    seed: int = 0,
    epoch: int = 0,
    num_workers: int = 0,
    shuffle: bool | None = None,
    drop_last: bool = False,
    sampler=None,
    use_cache: bool = True,
    style: str | None = None,
) -> DataLoader:
    """One epoch's loader: order and augmentation are pure functions of (seed, epoch).

    `shuffle` defaults to `train`; with a `sampler` (e.g. DistributedSampler) the sampler orders.
    """
    dataset = build_dataset(
        manifest, split, input_size=input_size, mean=mean, std=std, train=train, use_cache=use_cache, style=style
    )
    dataset.set_epoch(seed, epoch)
    if shuffle is None:
        shuffle = train
    kwargs: dict[str, Any] = {}
    if num_workers > 0:
        kwargs.update(persistent_workers=False, prefetch_factor=4)
    return TaskLoader(
        dataset,
        batch_size=batch_size,
        shuffle=bool(shuffle) if sampler is None else False,
        sampler=sampler,
        num_workers=num_workers,
        drop_last=drop_last,
        generator=epoch_generator(seed, epoch),
        **kwargs,
    )
