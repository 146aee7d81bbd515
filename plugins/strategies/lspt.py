"""LSPT: long-term spatial prompt tuning (Mo et al., "LSPT: Long-term Spatial Prompt Tuning for
Visual Representation Learning", 2024, arXiv:2402.17406).

LSPT keeps GaPT's gated prompts (see gapt.py: Np prompts inserted once, per-block gates, optional
attention temperature) and adds two codings of the prompts between blocks.

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

Trainable: prompts (Np * D), gamma (L - 1), tau (L, if temperature), and with memory = "lstm"
W_in (D * r) + LSTMCell (8 r^2 + 8 r) + W_out (r * D); plus the head.
Config: num_prompts (100), gate_init (5), temperature (true), dropout (0.0), spatial ("mean"),
memory ("lstm"), lstm_dim (64).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from lspt_cli.backbone import BackboneDims

from .gapt import GaPT
from .vpt import check_choice, check_int


class LSPT(GaPT):
    """GaPT + global spatial prompt coding + a shared-LSTM long-term prompt memory."""

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
    ):
        super().__init__(dims, num_prompts=num_prompts, gate_init=gate_init, temperature=temperature, dropout=dropout)
        name = self.strategy_name
        self.spatial = check_choice(name, "spatial", spatial, ("mean", "none"))
        self.memory = check_choice(name, "memory", memory, ("lstm", "none"))
        self.lstm_dim = check_int(name, "lstm_dim", lstm_dim, 1)
        self._config.update(spatial=spatial, memory=memory, lstm_dim=lstm_dim)
        if self.memory == "lstm":
            self.memory_in = nn.Linear(dims.embed_dim, self.lstm_dim, bias=False)
            self.lstm = nn.LSTMCell(self.lstm_dim, self.lstm_dim)
            self.memory_out = nn.Linear(self.lstm_dim, dims.embed_dim, bias=False)
            nn.init.zeros_(self.memory_out.weight)

    def code_prompts(self, index: int, gated: torch.Tensor, x: torch.Tensor, state: dict[str, Any]) -> torch.Tensor:
        coded = gated
        if self.spatial == "mean":  # GSPC: + the mean patch output of this block, for every prompt
            coded = gated + self.patch_tokens(x).mean(dim=1, keepdim=True)
        if self.memory == "lstm":  # LPC: one LSTM step per block, all B * Np prompt tokens at once
            b, p, d = coded.shape
            h, c = self.lstm(self.memory_in(coded).reshape(b * p, self.lstm_dim), state.get("memory"))
            state["memory"] = (h, c)
            coded = coded + self.memory_out(h).reshape(b, p, d)
        return coded
