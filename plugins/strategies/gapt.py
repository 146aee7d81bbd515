"""GaPT: gated prompt tuning (Yoo et al., "Improving Visual Prompt Tuning for Self-supervised
Vision Transformers", ICML 2023, arXiv:2306.05067).

VPT-shallow's Np prompts P are inserted once, before block 1. After each block l = 1..L-1 a learned
gate decides how much of that block's prompt output to keep (GatedPromptTuning@dd7d1ea
src/models/vit_prompt/vit_mae.py:60-63,139-153):

    g_l   = sigmoid(gamma_l),  gamma_l initialised to -gate_init
    Z_P^l = g_l * (prompt outputs of block l) + (1 - g_l) * (prompt inputs of block l)

and Z_P^l is block l+1's prompt input; CLS and patch outputs pass through unchanged. A large
gate_init (5 by default, 1..20 in the paper) starts the gates almost closed, so the prompts keep
their learned value deep into the network instead of being washed out by the blocks. The last
block's prompt outputs are not gated (nothing reads them further, except the MAE mean readout,
which averages them as they come out of the block).

Adaptive attention temperature (`temperature = true`): one scalar tau_l per block, init 1, projected
into [0.01, 10] in place before every forward (GaPT's `reinit_temp`; see `parts.project_tau`);
attention becomes softmax(Q K^T / (sqrt(d) tau_l)). The runner applies it by multiplying q by
1 / tau_l (`attention_scales`), which works with timm's fused attention.

Trainable: prompts (Np * D), gamma (L - 1), tau (L, if temperature), plus the head.
Config: num_prompts (100, the paper's FGVC setting), gate_init (5), temperature (true),
dropout (0.0, prompt dropout at insertion, as VPT-shallow), init ("uniform"; or SPT's token
prototypes: `--set init=kmeans`, see spt.py), init_images (1000, for SPT's init).

Implementation: the gate is three element-wise ops on the [B, Np, D] prompts per block, the gates'
sigmoid is computed once per forward, and no per-prompt loops run. Reading the prompt outputs and
writing the gated prompts back is `parts.PromptSlots`: the plain ops' values, the write in place and
x's gradient built once per block (autograd's own backward of the slices filled and summed three
x-sized zero tensors per block; tests/test_lspt_fast.py compares both in fp64). The pieces shared with VPT and
LSPT (prompt init and dropout, the gate, the temperature) are in parts.py.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from lspt_cli.backbone import BackboneDims
from lspt_cli.prompted import PromptStrategy

from . import parts
from .parts import (
    PromptSlots,
    check_bool,
    check_float,
    check_int,
    check_number,
    drop_prompts,
    gate_logits,
    prompt_init,
    spt_prototypes,
    temperatures,
    vpt_prompts,
)

__all__ = ["GaPT"]

# What this file registers (see vpt.py and plugins/strategies/__init__.py): plain data, read
# without importing this file.
STRATEGIES = (
    {
        "name": "gapt",
        "class": "GaPT",
        "description": "GaPT: gated prompts + attention temperature.",
        "defaults": {"num_prompts": 100, "gate_init": 5.0, "temperature": True, "dropout": 0.0, "init": "uniform",
                     "init_images": 1000},
        "paper": (
            "Yoo et al., Improving Visual Prompt Tuning for Self-supervised Vision Transformers, "
            "ICML 2023 (arXiv:2306.05067)"
        ),
    },
)


class GaPT(PromptStrategy):
    """VPT-shallow prompts + per-block gates on the prompt outputs + attention temperature.

    Args:
        dims: the backbone's shapes.
        num_prompts: Np, the prompt tokens inserted before the first block (index 0; an integer >= 0).
        gate_init: gamma_l starts at -gate_init (a finite number; large = gates almost closed).
        temperature: learn a per-block attention temperature tau_l (true/false).
        dropout: prompt dropout at insertion, in [0, 1).
        init: the prompts' start: "uniform" (VPT's U(-v, v), the paper's) or one of SPT's token
            prototypes, random | mean_pooling | max_pooling | kmeans (spt.py), from the patch embeddings.
        init_images: training images (eval transform) SPT's prototypes are taken from.
    """

    strategy_name = "gapt"

    def __init__(
        self,
        dims: BackboneDims,
        num_prompts: int = 100,
        gate_init: float = 5.0,
        temperature: bool = True,
        dropout: float = 0.0,
        init: str = "uniform",
        init_images: int = 1000,
    ):
        name = self.strategy_name
        num_prompts = check_int(name, "num_prompts", num_prompts, 0)
        dropout = check_float(name, "dropout", dropout, 0.0, 1.0, high_open=True)
        gate_init = check_number(name, "gate_init", gate_init)
        temperature = check_bool(name, "temperature", temperature)
        check_int(name, "depth", dims.depth, 1)
        init, data_init_images = prompt_init(name, init, init_images, num_prompts)
        super().__init__(dims, num_prompts=num_prompts, dropout=dropout, gate_init=gate_init, temperature=temperature,
                         init=init, init_images=init_images)
        self.num_prompts = num_prompts
        self.init, self.data_init_images = init, data_init_images  # init != "uniform": SPT's prototypes
        self.dropout = nn.Dropout(dropout)
        self.prompts = vpt_prompts(dims, num_prompts)  # [Np, D]
        self.gate_logits = gate_logits(dims.depth, gate_init)  # [L - 1]
        self.tau = temperatures(dims.depth) if temperature else None  # [L]

    def init_from_data(self, backbone, images: torch.Tensor) -> None:
        """`init` = one of SPT's prototypes: the prompts start as the task's own patch embeddings
        (as SPT-shallow's; parts.spt_prototypes). Only called when init != "uniform"."""
        self.prompts.copy_(spt_prototypes(backbone, images, 1, self.num_prompts, self.init)[0])

    def attention_scales(self) -> list[torch.Tensor] | None:
        return parts.attention_scales(self.tau)

    def start(self, x: torch.Tensor) -> dict[str, Any]:
        return {"gates": torch.sigmoid(self.gate_logits).to(x.dtype)} if self.num_prompts else {}

    def before_block(self, index: int, x: torch.Tensor, state: dict[str, Any]) -> torch.Tensor:
        if index == 0 and self.num_prompts:
            prompts = self.prompts.to(x.dtype).unsqueeze(0).expand(x.shape[0], -1, -1)
            prompts = drop_prompts(prompts, self.dropout, self.training)
            state["prompts"] = prompts  # block l's prompt inputs, for the gate after block l
            return self.insert_prompts(x, prompts)
        return x

    def after_block(self, index: int, x: torch.Tensor, state: dict[str, Any]) -> torch.Tensor:
        if not self.num_prompts or index >= self.dims.depth - 1:
            return x
        slots = PromptSlots(self.prefix)
        prompts = slots.read(x, state["prompts"], state["gates"][index])  # Z_P^l
        state["prompts"] = prompts
        return slots.write(x, prompts)
