"""An epoch's running loss and accuracy, kept on the device and read once per SYNC_EVERY steps.

Reading `loss.item()` and the correct count every step costs two host syncs per step on a GPU
(the host waits for the step to finish before it can queue the next). The totals stay on the
device instead; `read()` brings them over in one transfer. The first non-finite loss is recorded
on the device too (its step and value), so the NaN stop still names the exact epoch and step: it
is raised at the next read, at most SYNC_EVERY - 1 steps after the bad one, and always before a
checkpoint, a best bundle or an epoch's metrics are written (those follow a read).
"""

from __future__ import annotations

import torch

SYNC_EVERY = 16  # steps between reads: the NaN stop's bound (docs/performance.md)


class DeviceTotals:
    """loss sum, correct count and the first non-finite loss of an epoch, accumulated without syncs."""

    def __init__(self, device: torch.device, loss_sum: float = 0.0, correct: int = 0, seen: int = 0):
        exact = torch.float32 if device.type == "mps" else torch.float64  # MPS has no float64
        self._loss_sum = torch.full((), float(loss_sum), dtype=exact, device=device)
        self._correct = torch.full((), int(correct), dtype=torch.long, device=device)
        self._bad_step = torch.full((), -1, dtype=torch.long, device=device)  # -1: every loss finite so far
        self._bad_value = torch.zeros((), dtype=exact, device=device)
        self.seen = int(seen)  # batch sizes are known on the host: no sync needed
        self.unread = 0  # steps added since the last read

    def add(self, loss: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor, step: int) -> None:
        """One step's loss (the batch mean), logits and labels; `step` counts from 0 in the epoch."""
        n = labels.numel()
        value = loss.detach().to(self._loss_sum.dtype)
        self._loss_sum += value * n
        self._correct += (logits.detach().argmax(dim=1) == labels).sum()
        first = (self._bad_step < 0) & ~torch.isfinite(value)
        self._bad_value = torch.where(first, value, self._bad_value)
        self._bad_step.masked_fill_(first, step)
        self.seen += n
        self.unread += 1

    def due(self) -> bool:
        return self.unread >= SYNC_EVERY

    def read(self) -> tuple[float, int, tuple[int, float] | None]:
        """(loss sum, correct, (step, value) of the first non-finite loss or None): one host sync."""
        loss_sum, correct, bad_step, bad_value = torch.stack(
            [self._loss_sum, self._correct.to(self._loss_sum.dtype), self._bad_step.to(self._loss_sum.dtype),
             self._bad_value]
        ).tolist()
        self.unread = 0
        bad = None if bad_step < 0 else (int(bad_step), float(bad_value))
        return loss_sum, int(correct), bad
