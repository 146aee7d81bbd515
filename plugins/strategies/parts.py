"""The small pieces the prompt strategies share, each named for what it is.

No strategy inherits from another: vpt.py, gapt.py and lspt.py each subclass
`lspt_cli.prompted.PromptStrategy` and build their tensors and their forward from these pieces, so
each file reads top to bottom on its own. The pieces are functions, not modules: a strategy keeps
its tensors as its own attributes (`prompts`, `gate_logits`, `tau`), which are the tensor names of
its bundles.

- option checks: `check_int`, `check_float`, `check_number`, `check_bool`, `check_choice` (a bad
  `--set` value is one `ConfigError` naming the strategy and the option);
- VPT's prompt tokens: `vpt_prompts` (the U(-v, v) init), `drop_prompts` (prompt dropout);
- GaPT's gate: `gate_logits` (gamma, init -gate_init) and `gate` (Z = g * out + (1 - g) * in);
- GaPT's attention temperature: `temperatures` (tau, init 1) and `attention_scales` (tau projected
  into [TAU_MIN, TAU_MAX] in place, then 1 / tau per block).
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import torch
from torch import nn

from lspt_cli.backbone import BackboneDims
from lspt_cli.errors import ConfigError
from lspt_cli.prompted import vpt_uniform_bound

__all__ = [
    "TAU_MAX",
    "TAU_MIN",
    "attention_scales",
    "check_bool",
    "check_choice",
    "check_float",
    "check_int",
    "check_number",
    "drop_prompts",
    "gate",
    "gate_logits",
    "project_tau",
    "temperatures",
    "vpt_prompts",
]


# -- option checks --------------------------------------------------------------------------------
def check_int(name: str, key: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ConfigError(f"strategy '{name}': {key} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def check_float(name: str, key: str, value: Any, low: float, high: float, high_open: bool = False) -> float:
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if ok:
        ok = low <= float(value) < high if high_open else low <= float(value) <= high
    if not ok:
        bracket = ")" if high_open else "]"
        raise ConfigError(f"strategy '{name}': {key} must be a number in [{low}, {high}{bracket}, got {value!r}")
    return float(value)


def check_number(name: str, key: str, value: Any) -> float:
    """Any finite number (an int or a float, never a bool)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"strategy '{name}': {key} must be a finite number, got {value!r}")
    return value


def check_bool(name: str, key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"strategy '{name}': {key} must be true or false, got {value!r}")
    return value


def check_choice(name: str, key: str, value: Any, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ConfigError(f"strategy '{name}': {key} must be one of {', '.join(choices)}; got {value!r}")
    return value


# -- VPT's prompt tokens ----------------------------------------------------------------------------
def vpt_prompts(dims: BackboneDims, num_prompts: int, sets: int | None = None) -> nn.Parameter:
    """Prompt tokens with VPT's init U(-v, v), v = sqrt(6 / (3 * patch * patch + D)) (VPT section 3.2
    / its code: Xavier uniform with the patch embedding's fan-in). `sets` None: one [Np, D] set
    (inserted once); an int L: [L, Np, D], one set per block (VPT-deep)."""
    bound = vpt_uniform_bound(dims)
    shape = (num_prompts, dims.embed_dim) if sets is None else (sets, num_prompts, dims.embed_dim)
    return nn.Parameter(torch.empty(shape).uniform_(-bound, bound))


def drop_prompts(prompts: torch.Tensor, dropout: nn.Dropout, training: bool) -> torch.Tensor:
    """Prompt dropout (VPT's `prompt_dropout`, each sample its own mask); no kernel is launched in
    eval mode or with p = 0, where dropout is the identity anyway."""
    if training and dropout.p > 0:
        return dropout(prompts)
    return prompts


# -- GaPT's gate ------------------------------------------------------------------------------------
def gate_logits(depth: int, gate_init: float) -> nn.Parameter:
    """gamma_l for l = 1..L-1 (index 0..L-2), init -gate_init: g_l = sigmoid(gamma_l) starts almost
    closed for a large gate_init. The last block's prompt output is not carried on: no gate."""
    return nn.Parameter(torch.full((depth - 1,), -float(gate_init)))


def gate(inputs: torch.Tensor, outputs: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Z = g * outputs + (1 - g) * inputs, written as inputs + g * (outputs - inputs): autograd then
    keeps only the small difference, not a view that would pin the whole [B, T, D] block output."""
    return inputs + g * (outputs - inputs)


# -- GaPT's attention temperature -------------------------------------------------------------------
TAU_MIN, TAU_MAX = 0.01, 10.0


def temperatures(depth: int) -> nn.Parameter:
    """tau_l, one per block, init 1: attention becomes softmax(Q K^T / (sqrt(d) tau_l))."""
    return nn.Parameter(torch.ones(depth))


@torch.no_grad()
def project_tau(tau: torch.Tensor) -> None:
    """Clamp tau into [TAU_MIN, TAU_MAX] in place before each forward, as GaPT does (`reinit_temp`,
    GatedPromptTuning@dd7d1ea src/models/vit_prompt/vit_mae.py:106-108 and 133-135; vit_moco.py:108-110
    and 135-137). A projection, not a clamp in the graph: a tau the optimizer pushed past a bound is
    put back on it and still gets gradient, so it can come back (a clamp in the graph would stop it)."""
    tau.clamp_(TAU_MIN, TAU_MAX)


def attention_scales(tau: torch.Tensor | None) -> list[torch.Tensor] | None:
    """The runner's per-block q multipliers, 1 / tau_l (q * 1/tau works with timm's fused
    attention); None without temperature."""
    if tau is None:
        return None
    if torch.compiler.is_compiling():  # torch.export cannot mutate a parameter: the same values
        tau = tau.clamp(TAU_MIN, TAU_MAX)
    else:
        project_tau(tau)
    return list((1.0 / tau).unbind(0))
