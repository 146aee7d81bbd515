"""The learning-rate schedule of a run: warm-up then cosine, per optimizer step or per epoch.

`per-epoch` (the papers') is VPT's and GaPT's WarmupCosineSchedule stepped once per epoch;
`per-step` (lspt's) warms up and decays per optimizer step. The base lr is the config's
`scaled_lr` (the lr after `--lr-scaling`, settings.py); every group of the optimizer trains at the
base lr times the factor of the step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


def lr_factor(step: int, warmup_steps: int, total_steps: int) -> float:
    """Schedule `per-step` (lspt's): linear warm-up from 1/W then cosine decay to 0, per optimizer step."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def epoch_lr_factor(epoch: int, warmup_epochs: int, epochs: int) -> float:
    """Schedule `per-epoch` (the papers'): the lr factor of epoch `epoch` (from 0), exactly VPT's and
    GaPT's WarmupCosineSchedule (src/solver/lr_scheduler.py:56-65 in both), a LambdaLR whose step()
    runs once after every epoch (src/engine/trainer.py:221): epoch 0 trains at lr 0, epoch e < W at
    e/W, then cosine over the remaining epochs."""
    if epoch < warmup_epochs:
        return float(epoch) / float(max(1.0, warmup_epochs))
    progress = float(epoch - warmup_epochs) / float(max(1, epochs - warmup_epochs))
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * 0.5 * 2.0 * progress)))


def epoch_steps(order_length: int, batch_size: int, drop_last: bool) -> int:
    """Optimizer steps in one epoch of `order_length` images (never 0); with `drop_last` the last
    partial batch does not run (VPT's split over GPUs, src/data/loader.py:55-58)."""
    if drop_last:
        return max(1, order_length // batch_size)
    return max(1, math.ceil(order_length / batch_size))


@dataclass(frozen=True)
class Schedule:
    """The lr of every optimizer step of a run: `kind` is the config's `schedule`, `base_lr` its
    `scaled_lr`."""

    kind: str
    base_lr: float
    epochs: int
    warmup_epochs: int
    steps_per_epoch: int

    @property
    def total_steps(self) -> int:
        return self.epochs * self.steps_per_epoch

    @property
    def warmup_steps(self) -> int:
        return min(self.warmup_epochs, self.epochs) * self.steps_per_epoch

    def step(self, epoch: int, position: int) -> int:
        """The run's optimizer step (from 0) at batch `position` of `epoch`."""
        return epoch * self.steps_per_epoch + position

    def factor(self, epoch: int, position: int) -> float:
        if self.kind == "per-epoch":
            return epoch_lr_factor(epoch, self.warmup_epochs, self.epochs)
        return lr_factor(self.step(epoch, position), self.warmup_steps, self.total_steps)

    def apply(self, optimizer, epoch: int, position: int) -> None:
        """Set every group's lr for the step at batch `position` of `epoch`."""
        factor = self.factor(epoch, position)
        for group in optimizer.param_groups:
            group["lr"] = self.base_lr * factor
