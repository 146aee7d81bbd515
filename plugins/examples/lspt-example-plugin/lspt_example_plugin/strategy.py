"""A toy prompt strategy: a learned bias added to the patch tokens before the first block.

It changes tokens in `before_block`; `start` keeps the base class's empty state (start returns
per-forward state, never tokens). A bad `--set scale=...` is a ConfigError: one clean `Error:` line.
"""

import numbers

import torch
from torch import nn

from lspt_cli import ConfigError
from lspt_cli.prompted import PromptStrategy


class PatchBias(PromptStrategy):
    """Args:
        dims: the backbone's shapes (BackboneDims); the bias has dims.embed_dim entries.
        scale: a number multiplying the bias.
    """

    def __init__(self, dims, scale: float = 1.0):
        if isinstance(scale, bool) or not isinstance(scale, numbers.Real):
            raise ConfigError(f"strategy 'example-bias': scale must be a number, got {scale!r}")
        super().__init__(dims, scale=float(scale))
        self.scale = float(scale)
        self.bias = nn.Parameter(torch.zeros(dims.embed_dim))

    def before_block(self, index, x, state):
        if index != 0:
            return x
        patches = self.patch_tokens(x) + self.scale * self.bias
        return torch.cat([x[:, : self.prefix], patches], dim=1)
