"""What every `lspt tune` checks at its end, so a wrong strategy plugin fails the run that trained it.

`lspt plugins check` finds these mistakes when an author runs it; a run must not let them through
either (docs/guarantees.md, "A run's bundle is checked"):

- the strategy's declared `count_params` is its real number of trainable tensors' elements;
- two builds of the strategy with the run's seed give the same tensors (an init drawn from `random`,
  numpy or a private generator makes runs unrepeatable);
- the bundle just written loads into a fresh model (`lspt eval`/`predict` rebuild it as
  `factory(dims, **config())`) and gives the trained model's outputs on a few inputs.

A mismatch is one `PluginError` naming the strategy, its plugin and the likely cause (an option
missing from `config()`, state outside `state_dict`, an unseeded init, a wrong count). Costs a
strategy build and two forwards of a few images, next to a whole training run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import BundleError, PluginError

INPUTS = 2  # images compared between the trained and the reloaded model
FIX_CONFIG = "pass every option to super().__init__(dims, **options): config() is what a bundle rebuilds from"
FIX_STATE = ("keep every learned or changing value in nn.Parameters or registered buffers (state_dict), "
             "never in Python attributes")


def check_run_bundle(model, bundle_path: Path, *, strategy: str, config: dict[str, Any] | None, seed: int,
                     host) -> str:
    """Check `model` (the trained PromptedViT, unwrapped) against its spec and against `bundle_path`.
    Returns one line for the log; raises PluginError naming the strategy and the likely cause."""
    import torch

    if host is None:
        from ..plugins import get_host

        host = get_host()
    spec = host.strategies.get(strategy)
    options = spec.options(config or {})
    owner = _owner(host, strategy)
    dims = model.backbone.dims

    def fail(problem: str, hint: str) -> PluginError:
        return PluginError(f"strategy '{strategy}' ({owner}): {problem}",
                           hint=f"{hint}; `lspt plugins check {strategy}` runs every conformance check")

    lost = _lost_options(model.strategy, options)
    actual = sum(p.numel() for p in model.strategy.parameters() if p.requires_grad)
    if spec.count_params is not None:
        claimed = int(spec.count_params(dims, options))
        if claimed != actual:
            raise fail(f"count_params says {claimed:,} trainable parameters, the strategy has {actual:,}",
                       "count_params(dims, options) must sum the numel of every trainable tensor (head excluded)")
    _check_seeded(strategy, dims, options, seed, host, fail)

    from .restore import model_from_bundle

    try:
        restored, _ = model_from_bundle(bundle_path, backbone=model.backbone, host=host)
    except BundleError as exc:
        cause = f"config() lacks or changes option(s) {', '.join(lost)}" if lost else "the rebuilt strategy does not match"
        raise fail(f"its bundle cannot be loaded back ({exc.message}): {cause}", FIX_CONFIG if lost else FIX_STATE) from None
    device = next(iter(model.head.parameters())).device
    restored.to(device)
    size = int(model.backbone.data_config["input_size"][-1])
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(INPUTS, dims.in_chans, size, size, generator=generator).to(device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():  # the features as well as the logits: a small head hides differences
            expected = torch.cat([model.forward_features(images).float(), model(images).float()], dim=1)
            got = torch.cat([restored.forward_features(images).float(), restored(images).float()], dim=1)
    finally:
        model.train(was_training)
    if not torch.allclose(expected, got, rtol=1e-4, atol=1e-5):
        gap = (expected - got).abs().max().item()
        if lost:
            raise fail(f"the bundle reloaded into a fresh model gives other outputs (max difference {gap:.3g}): "
                       f"config() lacks or changes option(s) {', '.join(lost)}", FIX_CONFIG)
        raise fail(f"the bundle reloaded into a fresh model gives other outputs (max difference {gap:.3g}): "
                   "state kept outside state_dict()", FIX_STATE)
    return f"bundle reloads with identical outputs; {actual:,} strategy parameters as declared"


def _lost_options(strategy, options: dict[str, Any]) -> list[str]:
    """Options the strategy was built with that its config() does not give back."""
    try:
        recorded = strategy.config()
    except Exception:  # noqa: BLE001  (a broken config() is reported as the round trip's failure)
        return sorted(options)
    recorded = recorded if isinstance(recorded, dict) else {}
    return [k for k, v in options.items() if k not in recorded or recorded[k] != v]


def _check_seeded(strategy: str, dims, options: dict[str, Any], seed: int, host, fail) -> None:
    import torch

    from ..prompted import build_strategy

    builds = []
    for _ in range(2):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            builds.append(build_strategy(strategy, dims, options, host=host).state_dict())
    first, second = builds
    different = [k for k in first if k not in second or not torch.equal(first[k], second[k])]
    if different:
        raise fail(f"two builds with seed {seed} differ in {', '.join(different)}: an unseeded initialisation",
                   "draw the init from torch's global RNG (torch.rand, nn.init), never from random/numpy or a "
                   "private unseeded generator")


def _owner(host, strategy: str) -> str:
    try:
        record = host.record_of(host.strategies.provider(strategy))
    except KeyError:
        return "a plugin"
    return f"built-in '{record.name}'" if record.builtin else f"plugin {record.label}"
