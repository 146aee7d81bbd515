"""What a plugin registers: small, torch-free descriptions with lazy factories.

A factory is a callable or an import path "package.module:attribute"; it is imported and called only
when the component is used (plugins.resolve_factory), so `lspt --help`, `lspt list` and shell
completion never import torch. This module imports nothing of lspt but errors and messages.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Union

Factory = Union[Callable[..., Any], str]


# How the final tokens become one feature vector (docs/backbones.md, readouts); a run picks one
# with the `readout` key / `--readout`, else its backbone's default. "mean" is "mean-norm"'s old name
# and stays one (bundles and recipes written with it keep their meaning).
READOUTS = {
    "cls": "the CLS token after the pre-trained final norm (VPT/GaPT on MoCo v3 and supervised ViTs)",
    "mean-norm": "mean of the tokens after the prefix (CLS, registers), then the pre-trained final norm (GaPT's MAE readout)",
    "mean-ln": "mean of the tokens after the prefix, then a fresh LayerNorm with identity affine (VPT's MAE readout)",
    "cls+mean": "the CLS token and the mean of the patch tokens, each after the final norm, concatenated: "
                "twice the width (DINOv2's linear evaluation)",
}
READOUT_ALIASES = {"mean": "mean-norm"}
# How many embed_dim-wide vectors a readout concatenates (the head's input is this times embed_dim).
READOUT_WIDTH = {"cls+mean": 2}


def readout_dim(readout: str, embed_dim: int) -> int:
    """The width of a readout's feature vector: what the linear head takes."""
    return READOUT_WIDTH.get(canonical_readout(readout), 1) * int(embed_dim)


def canonical_readout(name: str) -> str:
    """The readout's canonical name; ValueError naming the known ones otherwise."""
    name = READOUT_ALIASES.get(name, name)
    if name not in READOUTS:
        raise ValueError(f"unknown readout {name!r}; known: {', '.join(READOUTS)}")
    return name


@dataclass(frozen=True)
class BackboneSpec:
    """A frozen ViT backbone. `factory(weights: Path | None) -> lspt_cli.backbone.FrozenBackbone`."""

    name: str
    description: str
    factory: Factory
    readout: str = "cls"  # the default readout, a key of READOUTS (docs/backbones.md, readouts)
    embed_dim: int = 768
    depth: int = 12
    num_prefix_tokens: int = 1
    # The input the weights expect (shown by `lspt list backbones`); None: timm's config of the model.
    input_size: int | None = 224
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    interpolation: str | None = None
    # What `lspt list backbones` and the README's "Backbones" table say about pre-trained weights.
    patch_size: int | None = 16  # None: the model's own (a family such as timm/*)
    weights_files: tuple[str, ...] = ()  # the official file names, the one to download first; <cache dir>/weights/ holds them
    weights_url: str = ""  # where the first file is downloaded (the offline error names it)
    layout: str = ""  # the checkpoint layouts `--weights` accepts and how they become timm's keys
    citation: str = ""  # the paper the weights come from
    readout_note: str = ""  # the authors' evaluation readout (cited) and what the default readout follows
    find_weights: Factory | None = None  # (name) -> a weights file already on disk, or None; never the network

    def tokens(self) -> int | None:
        """Tokens per image entering the first block (prefix + patches) at `input_size`, or None."""
        if not self.input_size or not self.patch_size:
            return None
        return (self.input_size // self.patch_size) ** 2 + self.num_prefix_tokens


@dataclass(frozen=True)
class StrategySpec:
    """A prompt strategy.

    `factory(dims: lspt_cli.prompted.BackboneDims, **config) -> lspt_cli.prompted.PromptStrategy`.
    `defaults` is the paper-default config; `count_params(dims, config) -> int` counts the strategy's
    trainable tensors (head excluded), for `lspt list strategies` and the memory check before a build
    (a torch-free formula, or the module built on the meta device as the built-ins do).
    """

    name: str
    description: str
    factory: Factory
    defaults: dict[str, Any] = field(default_factory=dict)
    count_params: Callable[[Any, dict], int] | None = None
    paper: str = ""

    def options(self, config: dict[str, Any] | None) -> dict[str, Any]:
        """Defaults overridden by `config`; `defaults` lists every option, so any other key is refused."""
        from .errors import ConfigError

        for key in config or {}:
            if key not in self.defaults:
                allowed = ", ".join(sorted(self.defaults)) or "(none)"
                raise ConfigError(f"unknown option '{key}' for strategy '{self.name}'; allowed: {allowed}")
        return {**self.defaults, **(config or {})}


@dataclass(frozen=True)
class DatasetSpec:
    """A task. `prepare(root: Path | None, out_dir: Path | None = None, **options) -> Manifest`
    (lspt_cli.data.manifest.Manifest; `prepare-data` writes it atomically).

    `benchmark` picks transforms and recipes: "fgvc", "vtab", or "custom".
    """

    name: str
    description: str
    prepare: Factory
    benchmark: str = "custom"
    needs_root: bool = True
    layout: str = ""  # the expected folder layout, shown in errors and `lspt list datasets -v`


@dataclass(frozen=True)
class RecipeSpec:
    """Training hyper-parameters for (strategy, backbone, benchmark), optionally one task.

    `values` is the parsed TOML (a flat dict of config keys); `source` names where it came from;
    `value_sources` maps a value's dotted key ("train.lr", "tasks.cub.train.lr", "strategy.num_prompts")
    to its citation (a recipe file's comment on that line), shown by `tune --dry-run`.
    """

    name: str
    description: str
    values: dict[str, Any]
    strategy: str = "*"
    backbone: str = "*"
    benchmark: str = "*"
    task: str = "*"
    source: str = ""
    value_sources: dict[str, str] = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class LoggerSpec:
    """An experiment tracker for `lspt tune --log NAME` (docs/tracking.md).

    `factory(**options) -> logger` with `start(run, config, state)`, `log_epoch(epoch, metrics)`,
    `finish(summary, bundle)` and optionally `close()` (lspt_cli/loggers.py, LOGGER_METHODS).
    `options` maps each key `--log-opt KEY=VALUE` may set to a line of help (values arrive as
    strings; any other key is a usage error). `requires` lists the modules it imports and `extra`
    the pip extra that installs them: a missing one is one `Error:` before training.
    `reachable(**options)`, if given, checks before anything is written that the run can be tracked
    as asked (a tracking server answers within a bounded wait) and raises an LsptError naming the
    address and what to check otherwise: one `Error:`, nothing trained, nothing half-written.
    """

    name: str
    description: str
    factory: Factory
    requires: tuple[str, ...] = ()
    extra: str = ""
    options: dict[str, str] = field(default_factory=dict)
    reachable: Factory | None = None


@dataclass(frozen=True)
class ExecutorOption:
    """One `--executor-opt KEY=VALUE` of an executor: its help and what a value must be.

    `kind` is "str", "int", "float" or "bool"; numbers must be finite and within `minimum`/`maximum`
    (inclusive; `above` makes the minimum exclusive: "> 0"); `choices` lists the allowed strings.
    `default` is only shown (`lspt list executors`); the factory still receives the value as typed.
    """

    help: str
    kind: str = "str"
    minimum: float | None = None
    maximum: float | None = None
    above: bool = False
    choices: tuple[str, ...] = ()
    default: str = ""

    def rule(self) -> str:
        """What a value must be, in words: "a number > 0 and <= 4096", "one of slurm, local"."""
        if self.choices:
            return "one of " + ", ".join(self.choices)
        what = {"int": "an integer", "float": "a number", "bool": "true or false"}.get(self.kind, "a string")
        bounds = []
        if self.minimum is not None:
            bounds.append(f"{'>' if self.above else '>='} {self.minimum:g}")
        if self.maximum is not None:
            bounds.append(f"<= {self.maximum:g}")
        return " ".join([what, " and ".join(bounds)]).strip()

    def parse(self, text: str) -> Any:
        """The value of `text`; ValueError saying what it must be otherwise."""
        import math

        text = str(text).strip()
        if self.choices:
            if text not in self.choices:
                raise ValueError(f"must be {self.rule()}")
            return text
        if self.kind == "bool":
            lowered = text.lower()
            if lowered not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
                raise ValueError(f"must be {self.rule()}")
            return lowered in ("1", "true", "yes", "on")
        if self.kind in ("int", "float"):
            try:
                value = int(text) if self.kind == "int" else float(text)
            except ValueError:
                value = None
            if value is None or not math.isfinite(value) or (
                self.minimum is not None and (value <= self.minimum if self.above else value < self.minimum)
            ) or (self.maximum is not None and value > self.maximum):
                raise ValueError(f"must be {self.rule()}")
            return value
        if not text:
            raise ValueError("must not be empty")
        return text


@dataclass(frozen=True)
class ExecutorSpec:
    """Where `lspt sweep --executor NAME` runs its trials (docs/cluster.md).

    `factory(options, *, workers, sweep_dir, host) -> executor` whose `run(trials)` yields
    `(trial, outcome, summary, error)` as trials end and `close()` frees the engine
    (lspt_cli/sweep/executors.py). `options` maps each `--executor-opt` key to an ExecutorOption
    (or to a line of help: any non-empty string); every value is checked against it before the sweep
    starts, and the factory receives the values as typed. `requires` and `extra` as for loggers: a
    missing module is one `Error:` before any trial.
    """

    name: str
    description: str
    factory: Factory
    options: dict[str, Union[str, ExecutorOption]] = field(default_factory=dict)
    requires: tuple[str, ...] = ()
    extra: str = ""

    def option(self, key: str) -> ExecutorOption:
        """The declaration of option `key` (a bare help string declares a free-form string)."""
        declared = self.options[key]
        return declared if isinstance(declared, ExecutorOption) else ExecutorOption(help=str(declared))


KIND_OF_SPEC = {
    BackboneSpec: "backbone",
    StrategySpec: "strategy",
    DatasetSpec: "dataset",
    RecipeSpec: "recipe",
    LoggerSpec: "logger",
    ExecutorSpec: "executor",
}
