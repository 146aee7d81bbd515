"""Warn when a run's training loss says its settings do not suit the backbone (issue 21).

A classifier head that starts near uniform logits has a loss near log(classes). A DINOv2 ViT-S/14
run under the papers' settings started at 35 (10 classes, log 10 = 2.3: the kaiming fan_out head
on features of norm ~50) and SGD at lr 0.1 drove it to 301 in epoch 2; it ended at chance. Two
signs, each reported once, on stderr as it is seen and in summary.json's `warnings`:

- the mean loss of the first FIRST_STEPS optimisation steps (or of the first epoch, if shorter) is
  above START_FACTOR x log(classes): the head starts far from uniform (its init does not suit the
  feature scale) or the first steps already overshoot;
- an epoch's training loss is above GROWTH_FACTOR x the lowest of the epochs before it (and above
  log(classes), so a small loss doubling near zero is not called a blow-up): the lr is too high
  for this backbone's feature scale.

A warning never stops or changes the run. The warnings are a function of metrics.jsonl (the first
epoch's record keeps the first steps' mean loss), so a resumed run reports the same ones.
"""

from __future__ import annotations

import math
import sys
from typing import Any, Callable

FIRST_STEPS = 10
START_FACTOR = 3.0
GROWTH_FACTOR = 2.0


def _advice(protocol: str, grad_clip: float) -> str:
    """What to try, leaving out what the run already does."""
    tries = (["--protocol lspt"] if protocol != "lspt" else []) + ["a lower --lr"]
    tries += ["--grad-clip 1"] if grad_clip <= 0 else []
    return "try " + ", ".join(tries[:-1]) + (" or " if len(tries) > 1 else "") + tries[-1] + " (docs/protocol.md)"


def start_warning(loss: float, steps: int, num_classes: int, advice: str) -> str | None:
    """The first steps' mean loss far above log(classes), or None. NaN is Diverged's to report;
    a one-class task (log 1 = 0: no uniform loss to compare with) gets none."""
    if num_classes < 2:
        return None
    uniform = math.log(num_classes)
    if not loss > START_FACTOR * uniform:
        return None
    return (f"the training loss of the first {steps} step(s) is {loss:.3g}, {loss / uniform:.0f}x log({num_classes} "
            f"classes) = {uniform:.2f}: the head starts far from uniform logits or the lr overshoots at once on this "
            f"backbone's feature scale; {advice}")


def growth_warning(losses: list[float], num_classes: int, advice: str) -> str | None:
    """The first epoch whose training loss is GROWTH_FACTOR x the lowest before it (and above
    log(classes)), or None (a one-class task: none)."""
    if num_classes < 2:
        return None
    uniform = math.log(num_classes)
    for index in range(1, len(losses)):
        low = min(range(index), key=lambda i: losses[i])
        if losses[index] > GROWTH_FACTOR * losses[low] and losses[index] > uniform:
            return (f"the training loss grew from {losses[low]:.3g} (epoch {low + 1}) to {losses[index]:.3g} "
                    f"(epoch {index + 1}), log({num_classes} classes) = {uniform:.2f}: the lr is too high for this "
                    f"backbone's feature scale; {advice}")
    return None


def _warn(message: str) -> None:
    print(f"Warning: {message}", file=sys.stderr, flush=True)


class LossWatch:
    """The loss warnings of one run. `observe(loss)` after each training step's loss (device
    tensors, read once the window is full: no sync per step), `end_epoch(train_loss)` with each
    epoch's mean; `warnings` for summary.json. `records`: metrics.jsonl's epochs of a resumed run."""

    def __init__(self, num_classes: int, protocol: str, grad_clip: float, records: list[dict[str, Any]] = (),
                 say: Callable[[str], None] = _warn):
        self.num_classes = num_classes
        self.advice = _advice(protocol, grad_clip)
        self.say = say
        first = next((r for r in records if "first_steps_loss" in r), None)
        self.first = (first["first_steps_loss"], first["first_steps"]) if first else None
        self.losses = [float(r["train_loss"]) for r in records if isinstance(r.get("train_loss"), (int, float))]
        self.window: list | None = None  # the first steps' losses, while they are watched
        self.said = set(self.warnings)  # a resumed run does not repeat what it said before

    def begin(self) -> None:
        """A fresh run: watch its first steps."""
        self.window = []

    def observe(self, loss) -> None:
        if self.window is not None and len(self.window) < FIRST_STEPS:
            self.window.append(loss.detach())
            if len(self.window) == FIRST_STEPS:
                self._judge_start()

    def end_epoch(self, train_loss: float) -> dict[str, Any]:
        """Fields for the epoch's metrics record (the first steps' mean, in epoch 1), after saying
        what is new."""
        fields = {}
        if self.window is not None:
            if len(self.window) < FIRST_STEPS:  # an epoch shorter than the window
                self._judge_start()
            if self.first is not None:
                fields = {"first_steps_loss": self.first[0], "first_steps": self.first[1]}
            self.window = None
        self.losses.append(float(train_loss))
        self._say_new()
        return fields

    @property
    def warnings(self) -> list[str]:
        found = [start_warning(self.first[0], self.first[1], self.num_classes, self.advice) if self.first else None,
                 growth_warning(self.losses, self.num_classes, self.advice)]
        return [w for w in found if w]

    def _judge_start(self) -> None:
        """One read of the window's losses (the window stays, for epoch 1's record)."""
        if self.window:
            import torch

            self.first = (float(torch.stack([v.float() for v in self.window]).mean()), len(self.window))
            self._say_new()

    def _say_new(self) -> None:
        for message in self.warnings:
            if message not in self.said:
                self.said.add(message)
                self.say(message)
