"""VPT: Visual Prompt Tuning (Jia et al., "Visual Prompt Tuning", ECCV 2022, arXiv:2203.12119).

Learnable prompt tokens P in R^{Np x D} sit after the prefix tokens (CLS, registers) and before the
patches, without position embeddings; the backbone stays frozen.

- **VPT-shallow**: insert P once, before block 1; block l's prompt outputs are block l+1's prompt
  inputs, like any other token:  x^1 = [cls, P, E];  x^{l+1} = B_l(x^l).
- **VPT-deep**: before every block l, the prompt slots are *replaced* by a fresh set P_l
  (L sets in all):  x^{l+1} = B_l([cls^l, P_l, E^l]), where cls^l, E^l are block l-1's outputs.
  The prompt outputs of the last block stay in the tokens (the MAE mean readout averages them).

Init (VPT section 3.2 / its code): U(-v, v), v = sqrt(6 / (3 * patch * patch + D)), Xavier uniform
with the patch embedding's fan-in. Prompt dropout at every insertion (VPT's code applies
`prompt_dropout` to each inserted prompt set, each sample its own mask); defaults 0.0 shallow,
0.1 deep.

Defaults: VPT tunes the prompt length per task ({1, 5, 10, 50, 100, 200}); lspt's defaults are
100 shallow prompts (the length GaPT uses for VPT-shallow and for itself on FGVC, so the two compare
at equal length) and 10 deep prompts per block (VPT's most frequent deep choice). Recipes set the
per-task lengths.

Trainable: prompts, Np * D (shallow) or L * Np * D (deep); plus the head.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from lspt_cli.backbone import BackboneDims
from lspt_cli.prompted import PromptStrategy

from .parts import check_float, check_int, drop_prompts, vpt_prompts

__all__ = ["VPTDeep", "VPTShallow"]

# What this file registers (a StrategySpec per entry; "class" is the class below that builds it).
# Plain data: the package reads it from this source without importing the file, so `lspt --help`
# needs no torch (plugins/strategies/__init__.py). The defaults are the classes' own.
STRATEGIES = (
    {
        "name": "vpt-shallow",
        "class": "VPTShallow",
        "description": "VPT-shallow: prompts inserted once, before the first block (block 0).",
        "defaults": {"num_prompts": 100, "dropout": 0.0},
        "paper": "Jia et al., Visual Prompt Tuning, ECCV 2022 (arXiv:2203.12119)",
    },
    {
        "name": "vpt-deep",
        "class": "VPTDeep",
        "description": "VPT-deep: fresh prompts before every block.",
        "defaults": {"num_prompts": 10, "dropout": 0.1},
        "paper": "Jia et al., Visual Prompt Tuning, ECCV 2022 (arXiv:2203.12119)",
    },
)


class VPTShallow(PromptStrategy):
    """VPT-shallow: Np prompts inserted once, before the first block (index 0; trainable: Np * D).

    Args:
        dims: the backbone's shapes.
        num_prompts: Np, the prompt tokens (an integer >= 0; 0 is a linear probe).
        dropout: prompt dropout at insertion, in [0, 1).
    """

    strategy_name = "vpt-shallow"

    def __init__(self, dims: BackboneDims, num_prompts: int = 100, dropout: float = 0.0):
        name = self.strategy_name
        num_prompts = check_int(name, "num_prompts", num_prompts, 0)
        dropout = check_float(name, "dropout", dropout, 0.0, 1.0, high_open=True)
        super().__init__(dims, num_prompts=num_prompts, dropout=dropout)
        self.num_prompts = num_prompts
        self.dropout = nn.Dropout(dropout)
        self.prompts = vpt_prompts(dims, num_prompts)  # [Np, D]

    def start(self, x: torch.Tensor) -> dict[str, Any]:
        return {}

    def before_block(self, index: int, x: torch.Tensor, state: dict[str, Any]) -> torch.Tensor:
        if index == 0 and self.num_prompts:
            # P expanded to the batch [B, Np, D] in x's dtype, dropped out per sample
            prompts = self.prompts.to(x.dtype).unsqueeze(0).expand(x.shape[0], -1, -1)
            return self.insert_prompts(x, drop_prompts(prompts, self.dropout, self.training))
        return x


class VPTDeep(PromptStrategy):
    """VPT-deep: a fresh set of Np prompts replaces the prompt slots before every block (L * Np * D).

    Args:
        dims: the backbone's shapes.
        num_prompts: Np, the prompt tokens of each block (an integer >= 0; 0 is a linear probe).
        dropout: prompt dropout at every insertion, in [0, 1).
    """

    strategy_name = "vpt-deep"

    def __init__(self, dims: BackboneDims, num_prompts: int = 10, dropout: float = 0.1):
        name = self.strategy_name
        num_prompts = check_int(name, "num_prompts", num_prompts, 0)
        dropout = check_float(name, "dropout", dropout, 0.0, 1.0, high_open=True)
        super().__init__(dims, num_prompts=num_prompts, dropout=dropout)
        self.num_prompts = num_prompts
        self.dropout = nn.Dropout(dropout)
        self.prompts = vpt_prompts(dims, num_prompts, sets=dims.depth)  # [L, Np, D]

    def start(self, x: torch.Tensor) -> dict[str, Any]:
        if not self.num_prompts:
            return {}
        # All L prompt sets expanded and dropped out in one op: [L, B, Np, D].
        prompts = self.prompts.to(x.dtype).unsqueeze(1).expand(-1, x.shape[0], -1, -1)
        return {"prompts": drop_prompts(prompts, self.dropout, self.training)}

    def before_block(self, index: int, x: torch.Tensor, state: dict[str, Any]) -> torch.Tensor:
        if not self.num_prompts:
            return x
        prompts = state["prompts"][index]
        if index == 0:
            return self.insert_prompts(x, prompts)
        return self.replace_prompts(x, prompts)
