"""The linear probe's feature cache: the frozen backbone runs once per image, not once per epoch.

With strategy `linear` the head's input is the frozen backbone's readout feature and nothing
trains before it, so when the training transform is deterministic (VTAB's resize, or
`--no-augment`) every epoch would compute the very same features again. The trainer computes them
once (train split with the training transform, val with the eval transform), keeps them on the
device, and trains and validates the head on them; test is evaluated once on the images as before.
Batches, order, schedule, RNG, checkpoints, selection, metrics and the bundle are unchanged: only
where the feature comes from differs, so the head equals the uncached run's to fp rounding.

`feature_cache`: "auto" uses it where it is exact (above), "off" never, "on" also with
augmentation: then each image's features are those of its epoch-1 augmented view, reused in
every epoch (not exact: the head sees one view per image instead of a fresh one per epoch).
Under torchrun the cache stays off (each rank would hold every feature, and the head is DDP's).
"""

from __future__ import annotations

from typing import Any, Iterator

import torch

from .evaluate import autocast


def pass_through(strategy: torch.nn.Module) -> bool:
    """True for a strategy that changes nothing (the linear probe): no parameters, no hooks of its own."""
    from ..prompted import PromptStrategy

    hooks = ("start", "before_block", "after_block", "attention_scales")
    own = any(getattr(type(strategy), name) is not getattr(PromptStrategy, name) for name in hooks)
    return not own and not any(True for _ in strategy.parameters())


def cache_decision(mode: str, strategy: torch.nn.Module, deterministic: bool, distributed: bool) -> tuple[bool, str]:
    """(use the cache, why) for a run; `deterministic`: its training transform draws no randomness."""
    if mode == "off":
        return False, "off (--no-feature-cache)"
    if not pass_through(strategy):
        return False, "off (the strategy changes the tokens: only the linear probe's features are fixed)"
    if distributed:
        return False, "off (not under torchrun)"
    if deterministic:
        return True, "on (linear probe, deterministic training transform: exact)"
    if mode == "on":
        return True, "on, asked for with augmentation (each image's epoch-1 view, reused every epoch: not exact)"
    return False, "off (augmentation: each epoch sees new views; --feature-cache to use one view per image)"


class FeatureCache:
    """Per split: the readout features [N, D] and labels [N] of every image, in manifest order."""

    def __init__(self, model, device: torch.device, amp: bool):
        self.model, self.device, self.amp = model, device, amp
        self.features: dict[str, torch.Tensor] = {}
        self.labels: dict[str, torch.Tensor] = {}

    def __contains__(self, split: str) -> bool:
        return split in self.features

    @torch.no_grad()
    def add(self, split: str, loader) -> None:
        """Run the frozen backbone once over `loader` (the split in manifest order, unshuffled).
        The global RNG is left as it was, so the run's random stream matches the uncached run's."""
        feats, labels = [], []
        with torch.random.fork_rng(devices=[]):
            for images, y in loader:
                images = images.to(self.device, non_blocking=True)
                with autocast(self.device, self.amp):
                    f = self.model.forward_features(images)
                feats.append(f.float())
                labels.append(y.to(self.device))
        self.features[split] = torch.cat(feats)
        self.labels[split] = torch.cat(labels)

    def batches(self, split: str, order: list[int] | None, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(features, labels) batches in `order` (None: manifest order), like the image loader's."""
        feats, labels = self.features[split], self.labels[split]
        n = feats.shape[0]
        index = torch.arange(n) if order is None else torch.as_tensor(order, dtype=torch.long)
        for start in range(0, index.numel(), batch_size):
            chunk = index[start : start + batch_size].to(feats.device)
            yield feats[chunk], labels[chunk]

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.features.values())

    def info(self) -> dict[str, Any]:
        return {"splits": {k: int(v.shape[0]) for k, v in self.features.items()}, "bytes": self.nbytes()}
