"""`--help` texts of the training options `tune` and `sweep` share, each ending with its default.

A training option left out comes from the recipe, else the protocol, else TrainConfig; the texts
are built from those tables, so `--help` cannot drift from what a run uses. Torch-free.
"""

from __future__ import annotations

from dataclasses import MISSING, fields

from ..recipes import PROTOCOL_DEFAULTS, TrainConfig

WHAT = {
    "epochs": "Training epochs.",
    "warmup_epochs": "Epochs of linear lr warm-up before the cosine decay.",
    "batch_size": "Training images per step.",
    "lr": "Base learning rate.",
    "weight_decay": "Weight decay (matrices and prompts only; never biases, gates or temperatures).",
    "optimizer": "sgd or adamw.",
    "grad_clip": "Max gradient norm; 0 disables.",
    "amp": "auto (bf16 on GPUs and on CPUs with native bf16: AVX512-BF16/AMX), bf16 or off.",
    "schedule": "per-epoch (VPT/GaPT's LambdaLR) or per-step warm-up + cosine.",
    "head_init": "kaiming (VPT/GaPT) or normal (N(0, 0.01^2)).",
    "ddp_batch": "Under torchrun: split --batch-size over the ranks (split), or use it on every rank (per-rank).",
    "lr_scaling": "none, or batch/256 (the lr trained is lr * batch / 256, VPT's convention).",
    "readout": "cls, mean-norm (GaPT's MAE readout) or mean-ln (VPT's).",
    "seed": "Random seed (init, data order, augmentation, dropout).",
    "num_workers": "Data-loader worker processes (results do not depend on it).",
    "device": "auto, cpu, cuda or cuda:N.",
    "threads": "torch CPU threads (0 = one per core).",
    "loggers": "Experiment trackers, comma-separated: tensorboard, mlflow (lspt list loggers; README \"Tracking\"). Under torchrun spell it --loggers (torchrun reads --log as its --log-dir).",
    "compile": "torch.compile the prompted forward (compile time reported apart; eager where unavailable).",
    "grad_checkpointing": "Recompute each frozen block in backward: less memory, more time.",
    "augment": "Training augmentation (FGVC/custom crop+flip); --no-augment trains on the eval transform.",
    "feature_cache": "Linear probe: compute the frozen features once (auto where exact; --feature-cache with augmentation too, --no-feature-cache never).",
}


def _plain_default(key: str):
    field = next(f for f in fields(TrainConfig) if f.name == key)
    return None if field.default is MISSING else field.default


def default_text(key: str) -> str:
    """"[default: the recipe's, else 100]", or per protocol where the protocol sets the knob."""
    if key == "readout":
        return "[default: the recipe's, else the backbone's]"
    if key == "loggers":
        return "[default: the recipe's, else none]"
    by_protocol = {p: d[key] for p, d in PROTOCOL_DEFAULTS.items() if key in d}
    if by_protocol:
        shown = ", ".join(f"{value} ({protocol})" for protocol, value in by_protocol.items())
        return f"[default: the recipe's, else by --protocol: {shown}]"
    return f"[default: the recipe's, else {_plain_default(key)}]"


def train_help(key: str, what: str | None = None) -> str:
    return f"{what or WHAT[key]}  {default_text(key)}"
