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
into [0.01, 10] in place before every forward (GaPT's `reinit_temp`; see `project_tau`); attention
becomes softmax(Q K^T / (sqrt(d) tau_l)). The runner applies it by
multiplying q by 1 / tau_l (`attention_scales`), which works with timm's fused attention.

Trainable: prompts (Np * D), gamma (L - 1), tau (L, if temperature), plus the head.
Config: num_prompts (100, the paper's FGVC setting), gate_init (5), temperature (true),
dropout (0.0, prompt dropout at insertion, as VPT-shallow).

Implementation: the gate is three element-wise ops on the [B, Np, D] prompts per block, the gates'
sigmoid is computed once per forward, and no per-prompt loops run.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from lspt_cli.backbone import BackboneDims
from lspt_cli.errors import ConfigError

from .vpt import VPTShallow, check_bool, check_int

TAU_MIN, TAU_MAX = 0.01, 10.0


class GaPT(VPTShallow):
    """VPT-shallow prompts + per-block gates on the prompt outputs + attention temperature."""

    strategy_name = "gapt"

    def __init__(
        self,
        dims: BackboneDims,
        num_prompts: int = 100,
        gate_init: float = 5.0,
        temperature: bool = True,
        dropout: float = 0.0,
    ):
        super().__init__(dims, num_prompts=num_prompts, dropout=dropout)
        name = self.strategy_name
        if isinstance(gate_init, bool) or not isinstance(gate_init, (int, float)) or not math.isfinite(gate_init):
            raise ConfigError(f"strategy '{name}': gate_init must be a finite number, got {gate_init!r}")
        temperature = check_bool(name, "temperature", temperature)
        check_int(name, "depth", dims.depth, 1)
        self._config.update(gate_init=gate_init, temperature=temperature)
        # gamma_l for l = 1..L-1 (index 0..L-2): the last block's prompt output is not carried on.
        self.gate_logits = nn.Parameter(torch.full((dims.depth - 1,), -float(gate_init)))
        self.tau = nn.Parameter(torch.ones(dims.depth)) if temperature else None

    # -- attention temperature -------------------------------------------------------------------
    def attention_scales(self) -> list[torch.Tensor | None] | None:
        if self.tau is None:
            return None
        if torch.compiler.is_compiling():  # torch.export cannot mutate a parameter: the same values
            tau = self.tau.clamp(TAU_MIN, TAU_MAX)
        else:
            self.project_tau()
            tau = self.tau
        return list((1.0 / tau).unbind(0))

    @torch.no_grad()
    def project_tau(self) -> None:
        """Clamp tau into [TAU_MIN, TAU_MAX] in place before each forward, as GaPT does (`reinit_temp`,
        src/models/vit_prompt/vit_mae.py:106-108 and 133-135; vit_moco.py:108-110 and 135-137).
        A projection, not a clamp in the graph: a tau the optimizer pushed past a bound is put back
        on it and still gets gradient, so it can come back (a clamp in the graph would stop it)."""
        self.tau.clamp_(TAU_MIN, TAU_MAX)

    # -- prompt flow -----------------------------------------------------------------------------
    def start(self, x: torch.Tensor) -> dict[str, Any]:
        return {"gates": torch.sigmoid(self.gate_logits).to(x.dtype)} if self.num_prompts else {}

    def before_block(self, index: int, x: torch.Tensor, state: dict[str, Any]) -> torch.Tensor:
        if index == 0 and self.num_prompts:
            prompts = self.batch_prompts(x)
            state["prompts"] = prompts  # block l's prompt inputs, for the gate after block l
            return self.insert_prompts(x, prompts)
        return x

    def after_block(self, index: int, x: torch.Tensor, state: dict[str, Any]) -> torch.Tensor:
        if not self.num_prompts or index >= self.dims.depth - 1:
            return x
        # Z = g * out + (1 - g) * in, written as in + g * (out - in): autograd then keeps only the
        # small difference, not a view that would pin the whole [B, T, D] block output in memory.
        previous = state["prompts"]
        gated = previous + state["gates"][index] * (self.prompt_tokens(x) - previous)
        prompts = self.code_prompts(index, gated, x, state)
        state["prompts"] = prompts
        return self.replace_prompts(x, prompts)

    def code_prompts(self, index: int, gated: torch.Tensor, x: torch.Tensor, state: dict[str, Any]) -> torch.Tensor:
        """The next block's prompt inputs from the gated prompts (GaPT: the gated prompts as is)."""
        return gated
