"""Numbers, devices and sizes that come from options or recipes, checked in one place.

A `Rule` is a number's range (finite, in bounds); settings.py gives each training number its rule,
and `TrainConfig.validate`/`settings.check_flags` apply them, naming the key or the flag
(`--lr: must be a finite number > 0, got nan`). Devices are checked for form here and for
presence (`torch_device`) before anything runs on them; `check_param_memory` refuses a strategy
whose parameters alone cannot fit in this machine's memory (`--set num_prompts=1000000000`)
before a byte is allocated. Torch-free except `torch_device`. File schemas live in schema.py.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from typing import Any

from .errors import ConfigError, UsageError

MAX_SEED = 2**32 - 1  # numpy's and DataLoader workers' seed range; seed * 100_003 + epoch stays in int64
MAX_THREADS = max(256, os.cpu_count() or 1)  # 100000 OpenMP threads end in a segfault


@dataclass(frozen=True)
class Rule:
    """An integer or float range; `low_open`: the minimum itself is refused (lr > 0)."""

    kind: type
    low: float
    high: float = math.inf
    low_open: bool = False
    high_open: bool = False

    def problem(self, value: Any) -> str | None:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"must be a number, got {value!r}"
        if self.kind is int and not isinstance(value, int):
            return f"must be an integer, got {value!r}"
        if not math.isfinite(value):
            return f"must be a finite number, got {value}"
        too_low = value <= self.low if self.low_open else value < self.low
        too_high = value >= self.high if self.high_open else value > self.high
        if too_low:
            return f"must be {self.lower_bound()}, got {value}"
        if too_high:
            return f"must be {'below' if self.high_open else 'at most'} {self.number(self.high)}, got {value}"
        return None

    def number(self, x: float) -> str:
        return f"{int(x):,}" if self.kind is int else f"{x:g}"

    def lower_bound(self) -> str:
        if self.kind is int:
            return "a positive integer" if self.low == 1 else f"an integer >= {self.number(self.low)}"
        return f"> {self.number(self.low)}" if self.low_open else f">= {self.number(self.low)}"


DEVICE_FORM = re.compile(r"auto|cpu|mps|cuda(:[0-9]{1,4})?")


def option_name(key: str) -> str:
    return "--" + key.replace("_", "-")


def device_problem(name: Any) -> str | None:
    if not isinstance(name, str) or not DEVICE_FORM.fullmatch(name):
        return f"must be auto, cpu, cuda, cuda:N or mps, got {name!r}"
    return None


def torch_device(name: str, option: str = "--device"):
    """The torch.device for `name`, refusing a malformed name or a device this machine lacks."""
    problem = device_problem(name)
    if problem:
        raise UsageError(f"{option}: {problem}")
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UsageError(f"{option} {name}: CUDA is not available on this machine", hint=f"use {option} cpu (or auto)")
        index = int(name.partition(":")[2] or 0)
        count = torch.cuda.device_count()
        if index >= count:
            raise UsageError(f"{option} {name}: this machine has {count} CUDA device(s) (cuda:0 to cuda:{count - 1})")
    if name == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise UsageError(f"{option} mps: Apple's MPS is not available on this machine", hint=f"use {option} cpu (or auto)")
    return torch.device(name)


# -- memory -------------------------------------------------------------------------------------
BYTES_PER_TRAINED_PARAM = 16  # fp32 value + gradient + two optimizer moments (AdamW; SGD needs less)


def physical_memory() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def human_bytes(n: float) -> str:
    for unit in ("bytes", "KB", "MB", "GB", "TB", "PB"):
        if n < 1024 or unit == "PB":
            return f"{n:,.0f} {unit}" if unit == "bytes" else f"{n:,.1f} {unit}"
        n /= 1024
    return f"{n:.1f} PB"


def check_param_memory(n_params: int, what: str, limit: int | None = None) -> None:
    """Refuse (with the estimate) a component whose trained parameters cannot fit in memory."""
    limit = physical_memory() if limit is None else limit
    need = n_params * BYTES_PER_TRAINED_PARAM
    if limit is not None and need > limit:
        raise ConfigError(
            f"{what} has {n_params:,} trainable parameters: about {human_bytes(need)} to train "
            f"(value, gradient, optimizer state), more than this machine's {human_bytes(limit)} of memory",
            hint="use a smaller option value (e.g. --set num_prompts=50)",
        )
