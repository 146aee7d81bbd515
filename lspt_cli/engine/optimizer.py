"""The optimizer of a run: SGD (the papers') or AdamW over the trainable parameters, with weight
decay on matrices and prompts only. Its lr is set every step by the schedule (engine/schedule.py)."""

from __future__ import annotations

from typing import Any

import torch


def param_groups(model, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on matrices and prompts only: never on biases, gates or temperatures (1-D)."""
    decay, no_decay = [], []
    for _, p in sorted(
        ((n, p) for n, p in model.named_parameters() if p.requires_grad), key=lambda item: item[0]
    ):
        (decay if p.ndim >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def make_optimizer(model, cfg) -> torch.optim.Optimizer:
    groups = param_groups(model, cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr)
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)
