"""VFPT: Visual Fourier Prompt Tuning (Zeng et al., "Visual Fourier Prompt Tuning", NeurIPS 2024,
arXiv:2411.01327; official code runtsang/VFPT at 1b3d984, cited as file:line below).

VFPT is VPT whose prompt sets are partly *Fourier prompts*: of each set of Np prompts, the first
m = floor(Np * fourier_fraction) pass through a 2-D FFT over their sequence and hidden dimensions,
and only the real part enters the ViT:

    F(P[:m]) = Re(FFT_seq(FFT_hidden(P[:m])))        (`FNetBlock`, src/models/vit_prompt/vit_fourier_mae.py:19-25)

so the tokens of block l are [cls, F(P_l[:m]), P_l[m:], patches]. The FFT runs over the m Fourier
prompts only (their own sequence axis, not all Np), after prompt dropout, and is taken afresh in every
forward: the trainable tensors are the prompts themselves, as VPT's (nothing new to learn).

- **VFPT** (`vfpt`, deep, the paper's setting and its README's command, README.md:182-190): a fresh set
  P_l before every block, inserted before block 0 and replacing the prompt slots before blocks 1..L-1
  (vit_fourier_mae.py:67-93 and 118-151; vit_fourier_moco.py:83-109 and 136-170: the same code).
- **VFPT-shallow** (`vfpt-shallow`, `MODEL.PROMPT_FOURIER.DEEP False`, config.py:138, the config's
  default): one set, inserted once before block 0 (`incorporate_prompt` only).

Prompts: U(-v, v), v = sqrt(6 / (3 * patch * patch + D)), VPT's init (vit_fourier_mae.py:47-62). The
official code draws block 0's set ([1, Np, D]) and then blocks 1..L-1's ([L-1, Np, D]) in two calls;
lspt keeps one [L, Np, D] tensor drawn in one call, which gives the same numbers for a seed
(uniform_ fills in order; tests/test_vfpt.py checks it).

Options:

- `num_prompts` (Np per set; `NUM_TOKENS`), `dropout` (prompt dropout at every insertion; `DROPOUT`).
- `fourier_fraction` (`FOURIER_PERCENTAGE`, config.py:157), in [0, 1]: m = floor(Np * fraction), as
  written (vit_fourier_mae.py:41-44, so 100 * 0.29 gives 28). 0 (or an m of 0) is plain VPT, as the
  supervised ViT's code has it (vit_fourier.py:142,177-182,212-220); the MAE/MoCo files would FFT an
  empty tensor there and fail.
- `fourier_dims` (`FOURIER_DIMENSION`, config.py:156, README.md:97): `all` (both axes, the paper's
  and the MAE/MoCo files' only choice), `sequence` or `hidden` (one FFT; the supervised file only:
  vit_fourier.py:41-55,78-83).

The Fourier prompts come first in each set (`FOURIER_LOCATION` "prepend", config.py:161, the MAE/MoCo
files' only choice). The supervised file's `append` (vit_fourier.py:170-176,281-287) only puts them
after the plain prompts: prompt tokens carry no position embedding and attention is
permutation-equivariant, so no feature or gradient changes (tests/test_vfpt.py checks it) and lspt has
no option for it. Its `random` (vit_fourier.py:160-169,271-280) draws new slots in every forward with
Python's `random` and transforms each chosen prompt on its own (a one-token sequence FFT is the
identity): another method, not offered.

Prompt dropout draws its masks in the official order, so a training forward under a seed equals
theirs: before block 0 the Fourier part first (vit_fourier_mae.py:73-74, then 86), before the deeper
blocks the plain part first (vit_fourier_mae.py:130-135). Where no dropout runs (eval mode, p = 0) the
FFT is taken once per set, not once per sample (the same numbers: every sample's prompts are equal).

Defaults: `vfpt` follows the README's command (README.md:182-190: DEEP True, NUM_TOKENS 10, DROPOUT
0.10, FOURIER_PERCENTAGE 1.0); `vfpt-shallow` the same with the config's DROPOUT 0.0 (config.py:151),
VPT-shallow's. The config's own FOURIER_PERCENTAGE default is 0.5 (config.py:157) and its NUM_TOKENS 5
(config.py:127); the paper tunes Np and the fraction per task (the recipes say what lspt uses).

Trainable: prompts, Np * D (shallow) or L * Np * D (deep); plus the head.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from lspt_cli.backbone import BackboneDims
from lspt_cli.prompted import PromptStrategy

from .parts import check_choice, check_float, check_int, drop_prompts, vpt_prompts

__all__ = ["VFPT", "VFPTShallow", "fourier"]

# What this file registers (see vpt.py and plugins/strategies/__init__.py): plain data, read
# without importing this file.
STRATEGIES = (
    {
        "name": "vfpt",
        "class": "VFPT",
        "description": "VFPT: VPT-deep whose first prompts of every set pass through a 2-D FFT (real part).",
        "defaults": {"num_prompts": 10, "fourier_fraction": 1.0, "fourier_dims": "all", "dropout": 0.1},
        "paper": "Zeng et al., Visual Fourier Prompt Tuning, NeurIPS 2024 (arXiv:2411.01327)",
    },
    {
        "name": "vfpt-shallow",
        "class": "VFPTShallow",
        "description": "VFPT-shallow: Fourier prompts inserted once, before the first block.",
        "defaults": {"num_prompts": 10, "fourier_fraction": 1.0, "fourier_dims": "all", "dropout": 0.0},
        "paper": "Zeng et al., Visual Fourier Prompt Tuning, NeurIPS 2024 (arXiv:2411.01327)",
    },
)

DIMS = ("all", "sequence", "hidden")


def fourier(x: torch.Tensor, dims: str) -> torch.Tensor:
    """The real part of the FFT of prompts x [..., m, D]: over hidden then sequence (`all`), or one axis."""
    if dims == "all":
        return torch.fft.fft(torch.fft.fft(x, dim=-1), dim=-2).real
    return torch.fft.fft(x, dim=-2 if dims == "sequence" else -1).real


def _set_up(strategy: PromptStrategy, dims: BackboneDims, num_prompts, fourier_fraction, fourier_dims,
            dropout) -> int:
    """What VFPT and VFPT-shallow share: their options checked, recorded (config()) and kept; returns
    the checked prompt count (per block for deep)."""
    name = strategy.strategy_name
    num_prompts = check_int(name, "num_prompts", num_prompts, 0)
    fourier_fraction = check_float(name, "fourier_fraction", fourier_fraction, 0.0, 1.0)
    fourier_dims = check_choice(name, "fourier_dims", fourier_dims, DIMS)
    dropout = check_float(name, "dropout", dropout, 0.0, 1.0, high_open=True)
    PromptStrategy.__init__(strategy, dims, num_prompts=num_prompts, fourier_fraction=fourier_fraction,
                            fourier_dims=fourier_dims, dropout=dropout)
    strategy.num_prompts = num_prompts
    strategy.num_fourier = math.floor(num_prompts * fourier_fraction)  # as vit_fourier_mae.py:42 writes it
    strategy.fourier_dims = fourier_dims
    strategy.dropout = nn.Dropout(dropout)
    return num_prompts


def _prompt_set(strategy: PromptStrategy, prompts: torch.Tensor, batch: int, first: bool) -> torch.Tensor:
    """One set [Np, D] as the tokens it puts in the prompt slots, [batch, Np, D]: the first m through
    the FFT, in the parameters' dtype (the FFT has no bf16 kernels), dropped out in the official order."""
    m = strategy.num_fourier
    if m == 0:
        return drop_prompts(prompts.unsqueeze(0).expand(batch, -1, -1), strategy.dropout, strategy.training)
    spectral, plain = prompts[:m], prompts[m:]
    if strategy.training and strategy.dropout.p > 0:
        def drop(part):  # each sample its own mask; nothing drawn for an empty part (m = Np)
            part = part.unsqueeze(0).expand(batch, -1, -1)
            return strategy.dropout(part) if part.shape[1] else part

        if first:  # incorporate_prompt: the Fourier part first (vit_fourier_mae.py:73-74, 86)
            spectral = drop(spectral)
            plain = drop(plain)
        else:  # deeper blocks: the plain part first (vit_fourier_mae.py:130-135)
            plain = drop(plain)
            spectral = drop(spectral)
        spectral = fourier(spectral, strategy.fourier_dims)
    else:  # no dropout: every sample's set is the same, so one FFT per set
        spectral = fourier(spectral, strategy.fourier_dims).unsqueeze(0).expand(batch, -1, -1)
        plain = plain.unsqueeze(0).expand(batch, -1, -1)
    return torch.cat((spectral, plain), dim=1)


class VFPTShallow(PromptStrategy):
    """VFPT-shallow: Np prompts, the first floor(Np * fourier_fraction) of them Fourier prompts,
    inserted once before the first block (trainable: Np * D).

    Args:
        dims: the backbone's shapes.
        num_prompts: Np (an integer >= 0; 0 is a linear probe).
        fourier_fraction: the share of Fourier prompts, in [0, 1] (0: VPT-shallow).
        fourier_dims: the FFT's axes: all | sequence | hidden.
        dropout: prompt dropout at insertion, in [0, 1).
    """

    strategy_name = "vfpt-shallow"

    def __init__(self, dims: BackboneDims, num_prompts: int = 10, fourier_fraction: float = 1.0,
                 fourier_dims: str = "all", dropout: float = 0.0):
        num_prompts = _set_up(self, dims, num_prompts, fourier_fraction, fourier_dims, dropout)
        self.prompts = vpt_prompts(dims, num_prompts)  # [Np, D]

    def before_block(self, index: int, x: torch.Tensor, state: dict[str, Any]) -> torch.Tensor:
        if index == 0 and self.num_prompts:
            return self.insert_prompts(x, _prompt_set(self, self.prompts, x.shape[0], first=True).to(x.dtype))
        return x


class VFPT(PromptStrategy):
    """VFPT (deep): a fresh set of Np prompts, the first floor(Np * fourier_fraction) of them Fourier
    prompts, replaces the prompt slots before every block (trainable: L * Np * D).

    Args: as VFPTShallow's; num_prompts is per block, dropout defaults to 0.1 (the README's command).
    """

    strategy_name = "vfpt"

    def __init__(self, dims: BackboneDims, num_prompts: int = 10, fourier_fraction: float = 1.0,
                 fourier_dims: str = "all", dropout: float = 0.1):
        num_prompts = _set_up(self, dims, num_prompts, fourier_fraction, fourier_dims, dropout)
        self.prompts = vpt_prompts(dims, num_prompts, sets=dims.depth)  # [L, Np, D]

    def before_block(self, index: int, x: torch.Tensor, state: dict[str, Any]) -> torch.Tensor:
        if not self.num_prompts:
            return x
        prompts = _prompt_set(self, self.prompts[index], x.shape[0], first=index == 0).to(x.dtype)
        if index == 0:
            return self.insert_prompts(x, prompts)
        return self.replace_prompts(x, prompts)
