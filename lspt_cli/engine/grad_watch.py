"""Find trainable tensors that never learn: no gradient, or an exactly-zero one, at every step.

A strategy whose parameter never reaches the model (e.g. `start` that returns new tokens instead of
state) still trains, still counts the parameter, and silently leaves it at its initial value. The
trainer watches the first epoch, the `lspt plugins check` gradient check watches a few steps; both
use this class. A tensor may be dead at initialisation by design (LSPT's LSTM sits behind a
zero-initialised output projection, so its gradient is exactly zero at step 1), but it must come
alive within the window: only tensors dead at *every* observed step are reported.
"""

from __future__ import annotations

import sys

import torch


class GradWatch:
    """Call `observe()` after each backward; `dead()` names the tensors never seen with a non-zero grad."""

    def __init__(self, model: torch.nn.Module):
        self.params = {name: p for name, p in model.named_parameters() if p.requires_grad}
        # per tensor: has any step given a non-zero gradient? (a device tensor: no sync per step)
        self._alive = {name: torch.zeros((), dtype=torch.bool, device=p.device) for name, p in self.params.items()}
        self.steps = 0

    def observe(self) -> None:
        for name, p in self.params.items():
            if p.grad is not None:
                self._alive[name] |= p.grad.ne(0).any()
        self.steps += 1

    def dead(self) -> list[str]:
        """Trainable tensors without a non-zero gradient in any observed step, by name."""
        return [name for name, alive in self._alive.items() if not bool(alive)]


def dead_tensor_warning(names: list[str], steps: int, where: str) -> str:
    from ..messages import shorten_list

    shown = shorten_list(names, 10)
    return (
        f"Warning: {len(names)} trainable tensor(s) got no non-zero gradient in {steps} step(s) of {where}: {shown}. "
        "They are not learning: a strategy's parameter that never reaches the tokens (PromptStrategy.start "
        "returns per-forward state, not tokens), or a zero-initialised path that never opens. "
        "Run `lspt plugins check STRATEGY` for details."
    )


def warn_dead(names: list[str], steps: int, where: str) -> None:
    """The end-of-epoch report on stderr (shown with --json and -q too: it is a warning, not a log)."""
    if names:
        print(dead_tensor_warning(names, steps, where), file=sys.stderr, flush=True)
