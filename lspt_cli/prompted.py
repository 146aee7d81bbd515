"""The prompted-ViT runner: a frozen backbone + a prompt strategy + a linear head.

The runner owns the loop over timm's blocks; a strategy only says what happens to the tokens
before and after each block (docs/architecture.md, "The prompted ViT"). Prompt tokens sit after the prefix tokens
(CLS and registers) and before the patches, without position embeddings.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from .backbone import BackboneDims, FrozenBackbone, canonical_readout

__all__ = ["BackboneDims", "PromptStrategy", "PromptedViT", "build_model", "forward_mixed", "forward_shared"]


class PromptStrategy(nn.Module):
    """Base class of every strategy. The defaults are a linear probe: tokens pass untouched.

    Subclasses override `start`, `before_block`, `after_block` and (for attention temperature)
    `attention_scales`. A strategy's `state_dict()` is exactly what a bundle stores, and
    `config()` is what the bundle records to rebuild it.
    """

    def __init__(self, dims: BackboneDims = None, **config: Any):
        super().__init__()
        if dims is None or not hasattr(dims, "embed_dim"):  # the classic slip: super().__init__() without dims
            from .errors import PluginError

            kind = type(self)
            raise PluginError(
                f"strategy {kind.__module__}.{kind.__qualname__}: PromptStrategy.__init__ needs the backbone's "
                f"BackboneDims as its first argument, got {type(dims).__name__}",
                hint="call super().__init__(dims, **options) with the dims your factory receives (docs/plugins.md)",
            )
        self.dims = dims
        self._config = dict(config)

    num_prompts: int = 0
    # How many un-augmented training images `init_from_data` wants (0: the strategy has no
    # data-aware initialisation and the hook is never called). May be set per instance in __init__.
    data_init_images: int = 0

    def config(self) -> dict[str, Any]:
        return dict(self._config)

    def init_from_data(self, backbone: FrozenBackbone, images: torch.Tensor) -> None:
        """The data-aware initialisation (e.g. SPT's prompts from the task's own patch tokens).

        Called once per run by the Trainer, before the optimizer is built, only when
        `data_init_images > 0`: `backbone` is the frozen backbone (eval mode) and `images` are
        `data_init_images` training images through the *eval* transform ([n, 3, H, W], on the
        backbone's device, fp32, drawn with replacement by a generator seeded with the run's seed),
        under `torch.no_grad()` with the global RNG seeded by the run's seed (so `torch.rand` and
        friends are deterministic for a seed). Write the result into the strategy's own tensors in
        place (`self.prompts.copy_(...)`), never replace a Parameter: what it writes must be in
        `state_dict()`, which is what checkpoints and bundles keep. It is never called on
        `--resume` (the checkpoint holds the initialised tensors), on bundle load, nor by
        `--compile`'s warm-up; under torchrun rank 0 computes it and the other ranks receive its
        `state_dict()` tensors (docs/plugins.md, "Data-aware initialisation")."""

    def start(self, x: torch.Tensor) -> dict[str, Any]:
        """Called once with the embedded tokens; returns per-forward state for the block hooks."""
        return {}

    def before_block(self, index: int, x: torch.Tensor, state: dict[str, Any]) -> torch.Tensor:
        return x

    def after_block(self, index: int, x: torch.Tensor, state: dict[str, Any]) -> torch.Tensor:
        return x

    def attention_scales(self) -> list[torch.Tensor | None] | None:
        """Per-block multipliers of q (1/tau_l) or None for plain attention."""
        return None

    # -- helpers shared by the prompt strategies -----------------------------------------------
    @property
    def prefix(self) -> int:
        return self.dims.num_prefix_tokens

    def insert_prompts(self, x: torch.Tensor, prompts: torch.Tensor) -> torch.Tensor:
        """[B, prefix + N, D] + prompts [B, P, D] -> [B, prefix + P + N, D]."""
        return torch.cat([x[:, : self.prefix], prompts, x[:, self.prefix :]], dim=1)

    def replace_prompts(self, x: torch.Tensor, prompts: torch.Tensor) -> torch.Tensor:
        """Put new prompt tokens into the P prompt slots of x."""
        p = prompts.shape[1]
        return torch.cat([x[:, : self.prefix], prompts, x[:, self.prefix + p :]], dim=1)

    def prompt_tokens(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, self.prefix : self.prefix + self.num_prompts]

    def patch_tokens(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, self.prefix + self.num_prompts :]


def checked_state(strategy: PromptStrategy, state: Any) -> dict[str, Any]:
    """`start` returns per-forward state (a dict), never tokens: a returned tensor would be dropped
    silently and its parameters never trained, so anything but a dict is a PluginError."""
    if isinstance(state, dict):
        return state
    from .errors import PluginError

    kind = type(strategy)
    raise PluginError(
        f"strategy {kind.__module__}.{kind.__qualname__}: start() returned {type(state).__name__}, not a dict "
        "of per-forward state",
        hint="start(x) must return a dict (e.g. {} or {'prompts': p}); change tokens in before_block/after_block "
        "(docs/plugins.md, 'The lifecycle of one forward')",
    )


def vpt_uniform_bound(dims: BackboneDims) -> float:
    """VPT's prompt init range: U(-v, v), v = sqrt(6 / (3 * patch * patch + D)) (Xavier on patches)."""
    return math.sqrt(6.0 / float(3 * dims.patch_size * dims.patch_size + dims.embed_dim))


def init_head(head: nn.Linear, kind: str) -> None:
    """The linear head's initial weights (TrainConfig.head_init).

    "kaiming": VPT's and GaPT's: kaiming_normal_(fan_out) weight and the constant bias
        -log((1 - 0.01) / 0.01) of `special_bias=True` (vpt src/models/mlp.py:52-57, the head built
        with special_bias=True in src/models/vit_models.py). The bias is the same for every class, so
        it does not change the softmax; it is kept to be exact.
    "normal": lspt's choice: N(0, 0.01^2) weight, zero bias, so the logits start near uniform.
    """
    if kind == "kaiming":
        nn.init.kaiming_normal_(head.weight, a=0, mode="fan_out")
        nn.init.constant_(head.bias, -math.log((1 - 0.01) / 0.01))
    elif kind == "normal":
        nn.init.normal_(head.weight, std=0.01)
        nn.init.zeros_(head.bias)
    else:
        raise ValueError(f"unknown head_init {kind!r}")


class PromptedViT(nn.Module):
    """Frozen backbone + trainable strategy + trainable head. `forward(images) -> logits`."""

    def __init__(self, backbone: FrozenBackbone, strategy: PromptStrategy, num_classes: int, head_init: str = "normal",
                 readout: str | None = None):
        super().__init__()
        self.backbone = backbone
        self.strategy = strategy
        # the run's readout (a key of specs.READOUTS); None = the backbone's default. Kept here, not
        # on the backbone, so bundles with different readouts can share one backbone (forward_shared).
        self.readout = canonical_readout(readout or backbone.readout)
        self.head = nn.Linear(backbone.feature_dim(self.readout), num_classes)  # 2 x D for cls+mean
        init_head(self.head, head_init)
        # --grad-checkpointing: training forwards keep only each block's input and recompute the
        # block in backward (the strategy hooks between blocks run once, as without it)
        self.grad_checkpointing = False

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        backbone, strategy = self.backbone, self.strategy
        x = backbone.embed(images)
        state = checked_state(strategy, strategy.start(x))
        scales = strategy.attention_scales()
        backbone.set_q_scales(scales)
        recompute = self.grad_checkpointing and self.training and torch.is_grad_enabled()
        try:
            for index, block in enumerate(backbone.blocks):
                x = strategy.before_block(index, x, state)
                if recompute:
                    x = checkpoint(_scaled_block, backbone, block, scales, x, use_reentrant=False, preserve_rng_state=False)
                else:
                    x = block(x)
                x = strategy.after_block(index, x, state)
        finally:
            backbone.set_q_scales(None)
        return backbone.read_out(x, self.readout)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(images))

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """What a bundle stores: `strategy.*` and `head.*`, never the backbone."""
        out = {f"strategy.{k}": v for k, v in self.strategy.state_dict().items()}
        out.update({f"head.{k}": v for k, v in self.head.state_dict().items()})
        return out

    def load_trainable_state_dict(self, tensors: dict[str, torch.Tensor]) -> None:
        """Strict inverse of `trainable_state_dict` (bundle.check_tensors validates first)."""
        strategy = {k[len("strategy.") :]: v for k, v in tensors.items() if k.startswith("strategy.")}
        head = {k[len("head.") :]: v for k, v in tensors.items() if k.startswith("head.")}
        self.strategy.load_state_dict(strategy, strict=True)
        self.head.load_state_dict(head, strict=True)

    def trainable_parameters(self):
        return [p for p in self.parameters() if p.requires_grad]

    def train(self, mode: bool = True) -> "PromptedViT":
        super().train(mode)
        self.backbone.train(False)
        return self


def _scaled_block(backbone: FrozenBackbone, block: nn.Module, scales, x: torch.Tensor) -> torch.Tensor:
    """One frozen block under the run's q scales. Gradient checkpointing recomputes it during
    backward, when forward_features has already reset the scales: so set them here, for the call.
    (No RNG state is kept: the backbone is always in eval mode, its blocks are deterministic.)"""
    previous = backbone._q_scales
    backbone.set_q_scales(scales)
    try:
        return block(x)
    finally:
        backbone.set_q_scales(previous)


def build_strategy(name: str, dims: BackboneDims, config: dict[str, Any] | None = None, host=None):
    """Instantiate a registered strategy with its defaults overridden by `config`."""
    from .plugins import get_host
    from .plugins import resolve_factory

    host = host or get_host()
    spec = host.strategies.get(name)
    options = spec.options(config)
    if spec.count_params is not None:  # refuse before allocating: --set num_prompts=1000000000
        from .validate import check_param_memory

        try:
            n_params = int(spec.count_params(dims, options))
        except Exception:  # malformed options: the factory's own checks report them below
            n_params = 0
        check_param_memory(n_params, f"strategy '{name}' with {options}")
    strategy = resolve_factory(spec.factory)(dims, **options)
    if not isinstance(strategy, PromptStrategy):
        raise TypeError(f"strategy '{name}' factory returned {type(strategy).__name__}, not a PromptStrategy")
    return strategy


def load_backbone(name: str, weights=None, host=None, img_size: int | None = None) -> FrozenBackbone:
    """Instantiate a registered backbone (weights: a file, or None for cache/hub/random).

    `img_size` (`--img-size`, a bundle's recorded size; None or 0: the backbone's own) is passed to
    the factory as `img_size=` only when set, so factories that take no size keep working; one that
    does not accept it is refused by name. `timm/<model>` resolves through the registry's family."""
    from .errors import UsageError
    from .plugins import get_host
    from .plugins import resolve_factory

    host = host or get_host()
    spec = host.backbones.get(name)
    if host.backbones.is_family(name):
        raise UsageError(f"backbone '{name}' is a family, not a model: name one, e.g. "
                         f"{name[:-1]}vit_small_patch14_dinov2", hint="see docs/backbones.md, 'Bring your own ViT'")
    factory = resolve_factory(spec.factory)
    backbone = None
    if img_size:
        try:
            backbone = factory(weights, img_size=int(img_size))
        except TypeError as exc:  # a plugin factory without img_size: fine if its own size is the one asked
            if "unexpected keyword argument 'img_size'" not in str(exc):
                raise
    if backbone is None:
        backbone = factory(weights)
    if not isinstance(backbone, FrozenBackbone):
        raise TypeError(f"backbone '{name}' factory returned {type(backbone).__name__}, not a FrozenBackbone")
    if img_size and backbone.img_size != (int(img_size), int(img_size)):
        raise UsageError(f"backbone '{name}' is built for {backbone.img_size[0]} px and its factory takes no "
                         f"img_size: it cannot be built at --img-size {img_size}")
    return backbone


def build_model(
    backbone: FrozenBackbone | str,
    strategy: str,
    num_classes: int,
    strategy_config: dict[str, Any] | None = None,
    weights=None,
    host=None,
) -> PromptedViT:
    if isinstance(backbone, str):
        backbone = load_backbone(backbone, weights, host=host)
    return PromptedViT(backbone, build_strategy(strategy, backbone.dims, strategy_config, host=host), num_classes)


def forward_shared(models: list[PromptedViT], images: torch.Tensor) -> list[torch.Tensor]:
    """Logits of several bundles on one backbone, in one backbone pass per block.

    The patch embedding is computed once; at every block the token tensors of all models with the
    same length are concatenated along the batch and go through the frozen block together (per-
    sample q scales keep each model's attention temperature). Equals `[m(images) for m in models]`.
    """
    backbone = _shared_backbone(models)
    embedded = backbone.embed(images)
    return _forward_grouped(backbone, models, [embedded for _ in models])


def forward_mixed(models: list[PromptedViT], images: list[torch.Tensor]) -> list[torch.Tensor]:
    """Logits of several bundles on one backbone, each on ITS OWN images, in one pass per block.

    `images[k]` ([B_k, C, H, W], B_k may differ) goes through `models[k]`. All images share one patch
    embedding; at every block the token tensors of all models with the same token count (same
    number of prompt slots: every linear probe, all tasks of one family and prompt length, any two
    strategies that happen to agree) are concatenated along the batch and go through the frozen
    block together, each sample with its own model's q scale (attention temperature). Strategy hooks
    and heads run per model on that model's slice. Equals `[m(x) for m, x in zip(models, images)]`
    up to floating-point reassociation (`lspt serve`'s cross-task batching).
    """
    backbone = _shared_backbone(models)
    if len(images) != len(models):
        raise ValueError("forward_mixed needs one image batch per model")
    sizes = [int(x.shape[0]) for x in images]
    embedded = backbone.embed(torch.cat(list(images), dim=0))
    return _forward_grouped(backbone, models, list(embedded.split(sizes, dim=0)))


def _shared_backbone(models: list[PromptedViT]) -> FrozenBackbone:
    backbone = models[0].backbone
    if any(m.backbone is not backbone for m in models):
        raise ValueError("models must share one backbone object")
    return backbone


def _forward_grouped(backbone: FrozenBackbone, models: list[PromptedViT], xs: list[torch.Tensor]) -> list[torch.Tensor]:
    """The block loop of forward_shared/forward_mixed: xs[k] are models[k]'s embedded tokens."""
    states = [checked_state(m.strategy, m.strategy.start(x)) for m, x in zip(models, xs)]
    scales_per_model = [m.strategy.attention_scales() for m in models]
    ones = xs[0].new_ones(())
    try:
        for index, block in enumerate(backbone.blocks):
            xs = [m.strategy.before_block(index, x, s) for m, x, s in zip(models, xs, states)]
            groups: dict[int, list[int]] = {}
            for k, x in enumerate(xs):
                groups.setdefault(x.shape[1], []).append(k)
            outputs: list[torch.Tensor | None] = [None] * len(models)
            for members in groups.values():
                per_model = [
                    (scales_per_model[k][index] if scales_per_model[k] is not None and scales_per_model[k][index] is not None else ones)
                    for k in members
                ]
                if all(s is ones for s in per_model):
                    backbone.set_q_scales(None)  # plain attention for the whole group (linear probes, VPT)
                else:
                    scale = torch.cat([s.reshape(1).expand(xs[k].shape[0]) for s, k in zip(per_model, members)]).view(-1, 1, 1, 1)
                    scales = [None] * len(backbone.blocks)
                    scales[index] = scale
                    backbone.set_q_scales(scales)
                joint = block(torch.cat([xs[k] for k in members], dim=0)) if len(members) > 1 else block(xs[members[0]])
                for k, part in zip(members, joint.split([xs[k].shape[0] for k in members], dim=0)):
                    outputs[k] = part
            xs = [m.strategy.after_block(index, x, s) for m, x, s in zip(models, outputs, states)]
    finally:
        backbone.set_q_scales(None)
    return [m.head(backbone.read_out(x, m.readout)) for m, x in zip(models, xs)]
