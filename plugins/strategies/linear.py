"""Linear probe: the frozen backbone's readout feature feeds a trainable linear head.

The baseline of every visual-prompt-tuning paper, e.g. VPT (Jia et al., "Visual Prompt Tuning",
ECCV 2022, arXiv:2203.12119), Table 1 "Linear". No prompt tokens, no trainable tensors besides the
head: the tokens go through the timm blocks untouched, so the features equal timm's own
`forward_features` (CLS readout) or the mean of the patch tokens (MAE readout).
"""

from __future__ import annotations

from typing import Any

from lspt_cli.backbone import BackboneDims
from lspt_cli.errors import ConfigError
from lspt_cli.prompted import PromptStrategy

__all__ = ["LinearProbe"]

# What this file registers (see vpt.py and plugins/strategies/__init__.py): plain data, read
# without importing this file.
STRATEGIES = (
    {
        "name": "linear",
        "class": "LinearProbe",
        "description": "Linear probe: no prompts, a head on the frozen feature.",
        "defaults": {},
        "paper": "baseline (Jia et al., Visual Prompt Tuning, ECCV 2022 (arXiv:2203.12119), 'Linear')",
    },
)


class LinearProbe(PromptStrategy):
    """No prompts and no parameters; the base class's pass-through hooks do all the work.

    Args:
        dims: the backbone's shapes. There are no options.
    """

    def __init__(self, dims: BackboneDims, **config: Any):
        if config:
            # build_strategy cannot check keys against an empty defaults dict; do it here.
            raise ConfigError(f"strategy 'linear' takes no options; got: {', '.join(sorted(config))}")
        super().__init__(dims)
        self.num_prompts = 0
