"""SPT: Self-Prompt Tuning (Wang et al., "Revisiting the Power of Prompt for Visual Tuning", ICML 2024,
arXiv:2402.02382; official code WangYZ1608/Self-Prompt-Tuning at ce0754f, cited as file:line below).

SPT is VPT with prompts initialised from the downstream task's own tokens: before training, a batch
of training images goes through the frozen backbone, and each prompt starts as a token prototype.

- **SPT-shallow**: Np prompts inserted once before block 0 (VPT-shallow's forward, Models/vpt.py:16-38,
  Models/MAE_vpt.py:19-45), initialised from the *patch embeddings* (`patch_embed` output: no
  position embedding, no CLS; train_MAE.py:212-222).
- **SPT-deep**: a fresh set P_l replaces the prompt slots before every block l (VPT-deep's forward,
  Models/vpt_deep.py:20-51); P_l is initialised from block l's input patch tokens in the unprompted
  backbone: the patch embeddings for l = 0, block l-1's output without the prefix token(s) for
  l >= 1 (`RepCatcher`, utils.py:149-185; train_MAE.py:114-124).

The prototypes (`init`; `--prompt_sample_type`, train_MAE.py:601, default "random"; the code is
`parts.spt_prototypes`, which GaPT and LSPT also offer as their `init`):

- `random`: Np tokens drawn without replacement from all B*N candidate tokens: `argsort(rand(B*N))[:Np]`
  (train_MAE.py:127-138 deep, 215-222 shallow).
- `mean_pooling` / `max_pooling`: each image's N tokens are cut into Np - 1 windows of
  w = N // (Np - 1) tokens plus the last `N % w` tokens (when N % w == 0 the official slice
  `x[:, -0:]` takes all N tokens, and lspt does the same), each window mean- or max-pooled; then Np
  of the Np * B pooled tokens are drawn as `random` draws (train_MAE.py:141-189).
- `kmeans`: Np k-means centres of the candidate tokens. The official code reads centres computed
  beforehand, outside the repository, from a 30% subset (train_MAE.py:191-209, README "For kmeans,
  the cluster center needs to be calculated in advance"), so this k-means is lspt's own: Lloyd's
  algorithm in torch, `kmeans_iters` iterations, centres initialised as `random` draws them, an empty
  cluster keeps its centre, at most KMEANS_TOKENS candidate tokens per set (a `random` subsample).
  Official SPT-shallow has only `random` (its shallow branch ignores `prompt_sample_type`); lspt
  offers all four for both.

The images: the official `prompt_generator` draws `len(train_data)` training indices with
replacement through the *training* transform (train_MAE.py:99-110; train.py:99-110, the README's
MoCo/supervised script), except train_MoCo.py, whose default `sample_size=1` draws a single image
(train_MoCo.py:100-107; `--set init_images=1` follows it) and which has no `kmeans`. lspt draws `init_images`
indices with replacement (default 1000, every VTAB-1k train+val image once on average) through the
*eval* transform (the strategy API's contract: un-augmented images; engine/data_init.py), by a
generator seeded with the run's seed; the random draws above use the global RNG seeded with it.

Defaults: num_prompts 100 shallow, 20 deep (README "num_prompts is 20 for deep, and 100 for
shallow"; train_MAE.py:598 default 100). `dropout` (default 0.0) is prompt dropout at every
insertion, as VPT's; the official models have none beyond `pos_drop`, whose rate is timm's default 0
(Models/MAE_vpt.py:33). Trainable: prompts, Np * D (shallow) or L * Np * D (deep); plus the head.
"""

from __future__ import annotations

from typing import Any

import torch

from lspt_cli.backbone import BackboneDims, FrozenBackbone
from lspt_cli.errors import ConfigError
from lspt_cli.prompted import PromptStrategy

from torch import nn

from .parts import INITS, check_choice, check_float, check_int, drop_prompts, spt_prototypes, vpt_prompts

__all__ = ["SPTDeep", "SPTShallow"]

# What this file registers (see vpt.py and plugins/strategies/__init__.py): plain data, read
# without importing this file.
STRATEGIES = (
    {
        "name": "spt-shallow",
        "class": "SPTShallow",
        "description": "SPT-shallow: VPT-shallow prompts initialised from the task's patch embeddings.",
        "defaults": {"num_prompts": 100, "init": "random", "init_images": 1000, "kmeans_iters": 20, "dropout": 0.0},
        "paper": "Wang et al., Revisiting the Power of Prompt for Visual Tuning, ICML 2024 (arXiv:2402.02382)",
    },
    {
        "name": "spt-deep",
        "class": "SPTDeep",
        "description": "SPT-deep: per-block prompts initialised from each block's input patch tokens.",
        "defaults": {"num_prompts": 20, "init": "random", "init_images": 1000, "kmeans_iters": 20, "dropout": 0.0},
        "paper": "Wang et al., Revisiting the Power of Prompt for Visual Tuning, ICML 2024 (arXiv:2402.02382)",
    },
)


def check_options(name: str, num_prompts: Any, init: Any, init_images: Any, kmeans_iters: Any) -> tuple:
    num_prompts = check_int(name, "num_prompts", num_prompts, 0)
    init = check_choice(name, "init", init, INITS)
    init_images = check_int(name, "init_images", init_images, 1)
    kmeans_iters = check_int(name, "kmeans_iters", kmeans_iters, 0)
    if init in ("mean_pooling", "max_pooling") and num_prompts == 1:
        raise ConfigError(f"strategy '{name}': init={init} needs num_prompts >= 2 (Np - 1 pooling windows)")
    return num_prompts, init, init_images, kmeans_iters


# -- the strategies -----------------------------------------------------------------------------------
def _set_up(strategy: PromptStrategy, dims: BackboneDims, num_prompts, init, init_images, kmeans_iters,
            dropout) -> int:
    """What SPT-shallow and SPT-deep share: their options checked, recorded (config()) and kept;
    returns the checked prompt count (per block for deep)."""
    name = strategy.strategy_name
    num_prompts, init, init_images, kmeans_iters = check_options(name, num_prompts, init, init_images, kmeans_iters)
    dropout = check_float(name, "dropout", dropout, 0.0, 1.0, high_open=True)
    PromptStrategy.__init__(strategy, dims, num_prompts=num_prompts, init=init, init_images=init_images,
                            kmeans_iters=kmeans_iters, dropout=dropout)
    strategy.num_prompts = num_prompts
    strategy.dropout = nn.Dropout(dropout)
    strategy.init, strategy.kmeans_iters = init, kmeans_iters
    strategy.data_init_images = init_images if num_prompts else 0
    return num_prompts


class SPTShallow(PromptStrategy):
    """SPT-shallow: Np prompts inserted once before block 0, initialised from the task's patch
    embeddings (trainable: Np * D).

    Args:
        dims: the backbone's shapes.
        num_prompts: Np (an integer >= 0; 0 is a linear probe).
        init: the prototypes: random | mean_pooling | max_pooling | kmeans.
        init_images: training images (eval transform, drawn with replacement) the init reads.
        kmeans_iters: Lloyd iterations of `init=kmeans`.
        dropout: prompt dropout at insertion, in [0, 1) (0: the official models').
    """

    strategy_name = "spt-shallow"

    def __init__(self, dims: BackboneDims, num_prompts: int = 100, init: str = "random", init_images: int = 1000,
                 kmeans_iters: int = 20, dropout: float = 0.0):
        num_prompts = _set_up(self, dims, num_prompts, init, init_images, kmeans_iters, dropout)
        # VPT's uniform values until init_from_data overwrites them (and in a bundle, the trained ones)
        self.prompts = vpt_prompts(dims, num_prompts)  # [Np, D]

    def init_from_data(self, backbone: FrozenBackbone, images: torch.Tensor) -> None:
        self.prompts.copy_(spt_prototypes(backbone, images, 1, self.num_prompts, self.init, self.kmeans_iters)[0])

    def before_block(self, index: int, x: torch.Tensor, state: dict[str, Any]) -> torch.Tensor:
        if index == 0 and self.num_prompts:
            prompts = self.prompts.to(x.dtype).unsqueeze(0).expand(x.shape[0], -1, -1)
            return self.insert_prompts(x, drop_prompts(prompts, self.dropout, self.training))
        return x


class SPTDeep(PromptStrategy):
    """SPT-deep: a fresh set of Np prompts replaces the prompt slots before every block l, set l
    initialised from block l's input patch tokens (trainable: L * Np * D).

    Args: as SPTShallow's; num_prompts is per block.
    """

    strategy_name = "spt-deep"

    def __init__(self, dims: BackboneDims, num_prompts: int = 20, init: str = "random", init_images: int = 1000,
                 kmeans_iters: int = 20, dropout: float = 0.0):
        num_prompts = _set_up(self, dims, num_prompts, init, init_images, kmeans_iters, dropout)
        self.prompts = vpt_prompts(dims, num_prompts, sets=dims.depth)  # [L, Np, D]

    def init_from_data(self, backbone: FrozenBackbone, images: torch.Tensor) -> None:
        sets = self.prompts.shape[0]
        self.prompts.copy_(spt_prototypes(backbone, images, sets, self.num_prompts, self.init, self.kmeans_iters))

    def before_block(self, index: int, x: torch.Tensor, state: dict[str, Any]) -> torch.Tensor:
        if not self.num_prompts:
            return x
        prompts = self.prompts[index].to(x.dtype).unsqueeze(0).expand(x.shape[0], -1, -1)
        prompts = drop_prompts(prompts, self.dropout, self.training)
        if index == 0:
            return self.insert_prompts(x, prompts)
        return self.replace_prompts(x, prompts)
