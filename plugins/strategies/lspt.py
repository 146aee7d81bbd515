"""LSPT: long-term spatial prompt tuning (Mo et al., "LSPT: Long-term Spatial Prompt Tuning for
Visual Representation Learning", 2024, arXiv:2402.17406).

LSPT keeps GaPT's gated prompts (Np prompts inserted once, per-block gates, optional attention
temperature; gapt.py) and adds two codings of the prompts between blocks. This file is the whole
of it: the class builds GaPT's tensors itself from the pieces in parts.py (VPT's prompt init and
dropout, GaPT's gate and temperature) and runs its own forward; it inherits from no other strategy.

The paper's exact equations were not available to lspt, and no official code is published: the
paper states the ideas (a global spatial coding and a long-term LSTM memory of the prompts) but not
every equation or hyper-parameter. What follows is lspt's formulation (docs/strategies.md), not
the authors'; each concrete choice (adding the mean patch token after the gate, one LSTMCell shared
by all blocks, its bottleneck r, the zero-initialised W_out) is lspt's. Training settings the paper is silent on are
GaPT's (the lspt-* recipes inherit GaPT's run.sh and per-task values; docs/protocol.md, item 14).

After block l, for l = 1..L-1 (the last block's prompt outputs are not carried on, as in GaPT):

    G^l = g_l * (prompt outputs of block l) + (1 - g_l) * (prompt inputs of block l)      (GaPT)
    S^l = G^l + mean_i(patch outputs of block l), broadcast over the Np prompts          (GSPC)
    (h^l, c^l) = LSTMCell(W_in S^l, (h^{l-1}, c^{l-1})),  h^0 = c^0 = 0                  (LPC)
    prompt inputs of block l+1 = S^l + W_out h^l

- Global spatial prompt coding (`spatial = "mean"`): the average patch token of block l (patches
  only: no CLS, registers or prompts) is added to every prompt, so prompts carry a summary of the
  image's spatial content into the next block. `spatial = "none"`: S^l = G^l.
- Long-term prompt coding (`memory = "lstm"`): ONE LSTM cell shared by all blocks, the block index
  playing the role of time, run independently per prompt token (vectorised over batch * prompts).
  It works in a bottleneck of `lstm_dim` r (64): W_in (D -> r) and W_out (r -> D), both without bias
  (the LSTM cell's own biases cover W_in's; the update is S + W_out h without one). W_out starts at
  zero, so an untrained LSPT computes exactly GaPT + GSPC and learns how much memory to use.
  `memory = "none"`: no LSTM and no parameters for it.

Decisions lspt made where its formulation leaves room:
- The memory runs on the blocks 1..L-1 whose prompts feed a next block (L - 1 steps); h^l is not
  computed after the last block, whose prompt outputs nobody reads.
- With spatial = "mean" and nearly closed gates, the prompt inputs accumulate the mean patch tokens
  of all earlier blocks (S^l ~ S^{l-1} + mean patch^l); this is lspt's formulation taken literally.

How the step is computed (speed; the values are those of the equations above, the forward's bit
for bit, checked against the plain formulation in tests/test_lspt_fast.py):
- Reading G^l and the mean patch token from block l's output and writing S^l + W_out h^l back into
  its prompt slots is `parts.PromptSlots`, shared with GaPT: the same ops as `parts.gate`,
  `patch_tokens(x).mean(1)` and `replace_prompts`, but the write goes into x in place and x's
  gradient is assembled once per block, where autograd's own backward of the three slices, the
  mean and the cat filled and summed four zero tensors of x's size.
- The LSTM step is `torch.lstm` over one time step with the cell's own weights: one fused kernel
  forward and one backward (oneDNN's on CPU) instead of `LSTMCell`'s two GEMMs and eleven
  point-wise ops, each with its backward. It runs in the cell's dtype (fp32) under bf16 autocast
  too: oneDNN's cell has no bf16 training path in torch 2.14 (torch would fall back to the
  decomposed cell), and its FLOPs are well under 1% of the step.
Every launched operator counts on a small shared CPU: each one pays its threads' hand-over, and
that, not the LSTM's < 1% of the FLOPs, is what made LSPT slower than GaPT (docs/performance.md).

Trainable: prompts (Np * D), gamma (L - 1), tau (L, if temperature), and with memory = "lstm"
W_in (D * r) + LSTMCell (8 r^2 + 8 r) + W_out (r * D); plus the head.
Config: num_prompts (100), gate_init (5), temperature (true), dropout (0.0), spatial ("mean"),
memory ("lstm"), lstm_dim (64), init ("uniform", or SPT's token prototypes: spt.py), init_images (1000).
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
    check_choice,
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

__all__ = ["LSPT"]


# What this file registers (see vpt.py and plugins/strategies/__init__.py): plain data, read
# without importing this file.
STRATEGIES = (
    {
        "name": "lspt",
        "class": "LSPT",
        "description": "LSPT: GaPT + spatial coding + shared-LSTM prompt memory.",
        "defaults": {
            "num_prompts": 100,
            "gate_init": 5.0,
            "temperature": True,
            "dropout": 0.0,
            "spatial": "mean",
            "memory": "lstm",
            "lstm_dim": 64,
            "init": "uniform",
            "init_images": 1000,
        },
        "paper": (
            "Mo et al., LSPT: Long-term Spatial Prompt Tuning for Visual Representation Learning, "
            "2024 (arXiv:2402.17406)"
        ),
    },
)


class LSPT(PromptStrategy):
    """GaPT's gated prompts + global spatial prompt coding + a shared-LSTM long-term prompt memory.

    Args:
        dims: the backbone's shapes.
        num_prompts: Np, the prompt tokens inserted before the first block (index 0; an integer >= 0).
        gate_init: gamma_l starts at -gate_init (a finite number; large = gates almost closed).
        temperature: learn a per-block attention temperature tau_l (true/false).
        dropout: prompt dropout at insertion, in [0, 1).
        spatial: "mean" adds the mean patch token of block l to every prompt (GSPC); "none" does not.
        memory: "lstm" runs the shared LSTM memory over the blocks (LPC); "none" has no memory.
        lstm_dim: r, the LSTM's width between W_in (D -> r) and W_out (r -> D) (an integer >= 1).
        init: the prompts' start: "uniform" (VPT's U(-v, v), the paper's) or one of SPT's token
            prototypes, random | mean_pooling | max_pooling | kmeans (spt.py), from the patch embeddings.
        init_images: training images (eval transform) SPT's prototypes are taken from.
    """

    strategy_name = "lspt"

    def __init__(
        self,
        dims: BackboneDims,
        num_prompts: int = 100,
        gate_init: float = 5.0,
        temperature: bool = True,
        dropout: float = 0.0,
        spatial: str = "mean",
        memory: str = "lstm",
        lstm_dim: int = 64,
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
        spatial = check_choice(name, "spatial", spatial, ("mean", "none"))
        memory = check_choice(name, "memory", memory, ("lstm", "none"))
        r = check_int(name, "lstm_dim", lstm_dim, 1)
        super().__init__(dims, num_prompts=num_prompts, dropout=dropout, gate_init=gate_init, temperature=temperature,
                         spatial=spatial, memory=memory, lstm_dim=lstm_dim, init=init, init_images=init_images)
        self.num_prompts = num_prompts
        self.init, self.data_init_images = init, data_init_images  # init != "uniform": SPT's prototypes
        self.spatial, self.memory, self.lstm_dim = spatial, memory, r
        # GaPT's tensors, in GaPT's order (a seed gives both the same prompts)
        self.dropout = nn.Dropout(dropout)
        self.prompts = vpt_prompts(dims, num_prompts)  # [Np, D]
        self.gate_logits = gate_logits(dims.depth, gate_init)  # [L - 1]
        self.tau = temperatures(dims.depth) if temperature else None  # [L]
        if self.memory == "lstm":  # W_in, the shared LSTM cell, W_out (zero: an untrained LSPT is GaPT + GSPC)
            self.memory_in = nn.Linear(dims.embed_dim, r, bias=False)
            self.lstm = nn.LSTMCell(r, r)
            self.memory_out = nn.Linear(r, dims.embed_dim, bias=False)
            nn.init.zeros_(self.memory_out.weight)

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
        # G^l (GaPT's gate), + the mean patch output of this block for every prompt (GSPC): S^l
        slots = PromptSlots(self.prefix)
        coded = slots.read(x, state["prompts"], state["gates"][index], spatial=self.spatial == "mean")
        if self.memory == "lstm":  # LPC: S^l + W_out h^l
            coded = coded + self.memory_step(coded, state)
        state["prompts"] = coded  # block l+1's prompt inputs
        return slots.write(x, coded)

    def memory_step(self, coded: torch.Tensor, state: dict[str, Any]) -> torch.Tensor:
        """W_out h^l, from one step of the shared LSTM cell on W_in S^l, all B * Np prompt tokens at
        once (one time step of `torch.lstm`, the cell's equations and weights, in the cell's dtype);
        (h, c) stay in `state`."""
        b, p, d = coded.shape
        cell = self.lstm
        x = self.memory_in(coded).reshape(1, b * p, self.lstm_dim).to(cell.weight_ih.dtype)  # [time 1, B * Np, r]
        hx = state.get("memory")
        if hx is None:  # h^0 = c^0 = 0
            zeros = x.new_zeros(1, b * p, self.lstm_dim)
            hx = (zeros, zeros)
        weights = (cell.weight_ih, cell.weight_hh, cell.bias_ih, cell.bias_hh)
        _, h, c = torch.lstm(x, hx, weights, True, 1, 0.0, self.training, False, False)
        state["memory"] = (h, c)
        return self.memory_out(h).reshape(b, p, d)
