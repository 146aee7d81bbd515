"""A strategy's data-aware initialisation (`PromptStrategy.init_from_data`), run once per run.

The Trainer calls `init_from_data` here before it builds the optimizer, for a strategy whose
`data_init_images` is above 0 (SPT's prompts from the task's own patch tokens; docs/plugins.md,
"Data-aware initialisation"):

- the images are `data_init_images` indices of the run's training split drawn *with replacement*
  (as SPT's `prompt_generator` draws them, train_MAE.py:105) by a generator seeded with the run's
  seed, read through the eval transform (no augmentation): the same images for a seed, always;
- the hook runs in eval mode, under `torch.no_grad()`, in fp32, with the global RNG seeded by the
  run's seed inside `fork_rng` (its draws are deterministic and the run's RNG stream is untouched);
- under torchrun rank 0 computes it and every `state_dict()` tensor of the strategy is broadcast;
- it never runs on `--resume` (the Trainer skips it: the checkpoint holds the initialised tensors),
  on bundle load (bundles are loaded by `load_trainable_state_dict`, never through the Trainer), nor
  inside `--compile`'s warm-up (which comes after it and restores every trainable tensor it touched,
  engine/accel.py `preserved_state`).
"""

from __future__ import annotations

import numbers
import time
from typing import Any, Callable, Iterable

import torch

from ..errors import PluginError

MAX_INIT_IMAGES = 20_000  # a bound on what one strategy may ask for (the images are held in memory)


def wanted_images(strategy) -> int:
    """The strategy's `data_init_images`, checked: an integer in [0, MAX_INIT_IMAGES]."""
    n = getattr(strategy, "data_init_images", 0)
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or not 0 <= n <= MAX_INIT_IMAGES:
        kind = type(strategy)
        raise PluginError(
            f"strategy {kind.__module__}.{kind.__qualname__}: data_init_images must be an integer in "
            f"[0, {MAX_INIT_IMAGES}], got {n!r}",
            hint="set data_init_images to how many un-augmented training images init_from_data needs (0: none)",
        )
    return int(n)


def init_indices(n_train: int, n: int, seed: int) -> list[int]:
    """The training-split indices of the init images: n draws with replacement, seeded by `seed`."""
    generator = torch.Generator().manual_seed(int(seed))
    return torch.randint(n_train, (n,), generator=generator).tolist()


def run_data_init(model, load: Callable[[list[int]], Iterable], n_train: int, seed: int, device: torch.device,
                  dist, log: Callable[[str], None] = lambda message: None) -> dict[str, Any]:
    """Initialise `model.strategy` from the data; returns what summary.json records ({} when the
    strategy has no data-aware init): `data_init_images`, `data_init_seconds`.

    `load(indices)` yields (images, labels) batches of those training images through the eval
    transform, in that order."""
    strategy = model.strategy
    n = wanted_images(strategy)
    if n == 0 or n_train == 0:
        return {}
    tick = time.perf_counter()
    if dist.is_main:
        images = torch.cat([batch[0] for batch in load(init_indices(n_train, n, seed))]).to(device)
        was_training = model.training
        model.eval()
        devices = [device] if device.type == "cuda" else []
        try:
            with torch.random.fork_rng(devices=devices), torch.no_grad():
                torch.manual_seed(int(seed))
                strategy.init_from_data(model.backbone, images)
        finally:
            model.train(was_training)
        del images
    dist.broadcast_tensors(list(strategy.state_dict().values()))
    seconds = time.perf_counter() - tick
    log(f"Data-aware init: {n} training images (eval transform) in {seconds:.1f}s")
    return {"data_init_images": n, "data_init_seconds": round(seconds, 3)}
