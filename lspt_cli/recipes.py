"""Recipes: TOML files of training hyper-parameters, and the merge that resolves a run's config.

A recipe file:

    # Source: GaPT (Yoo et al., ICML 2023), Appendix: MAE / FGVC settings
    description = "GaPT on MAE ViT-B/16, FGVC (paper's per-task lr and gate_init)"
    [match]                    # which runs it applies to ("*" = any)
    strategy = "gapt"
    backbone = "mae-vitb"
    benchmark = "fgvc"
    [train]                    # keys of TrainConfig
    lr = 0.1
    [strategy]                 # the strategy's own options
    gate_init = 5
    [tasks.cars.train]         # per-task overrides
    lr = 0.25
    [grid]                     # what `lspt sweep` searches by default
    lr = [0.05, 0.1, 0.25]

Resolution order (highest first): CLI flags > `--recipe FILE` > the best-matching registered
recipe for (strategy, backbone, benchmark) > the protocol's defaults (PROTOCOL_DEFAULTS, for the
`protocol` those layers name; `paper` if none does) > TrainConfig defaults.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .loggers import NAMES_FORM
from .specs import READOUTS, RecipeSpec
from .validate import check_options, check_train

RECIPE_KEYS = {"description", "match", "train", "strategy", "tasks", "grid"}
MATCH_KEYS = {"strategy", "backbone", "benchmark", "task"}


PROTOCOLS = ("paper", "lspt")
# The knobs a protocol sets when no recipe and no flag gives them (README "Protocol"): `paper` is
# what the official VPT/GaPT code does, `lspt` is lspt's own training improvements.
PROTOCOL_DEFAULTS: dict[str, dict[str, Any]] = {
    "paper": {"grad_clip": 0.0, "amp": "off", "schedule": "per-epoch", "head_init": "kaiming", "ddp_batch": "split"},
    "lspt": {"grad_clip": 1.0, "amp": "auto", "schedule": "per-step", "head_init": "normal", "ddp_batch": "per-rank"},
}
CHOICES = {  # TrainConfig's string keys and their values
    "protocol": PROTOCOLS,
    "optimizer": ("sgd", "adamw"),
    "lr_scaling": ("none", "batch/256"),
    "amp": ("auto", "bf16", "off"),
    "schedule": ("per-epoch", "per-step"),
    "head_init": ("kaiming", "normal"),
    "ddp_batch": ("split", "per-rank"),
    "readout": ("", *READOUTS),
    "feature_cache": ("auto", "on", "off"),
}


def _one_of(allowed) -> str:
    quoted = [f"'{a}'" for a in allowed]
    return ", ".join(quoted[:-1]) + " or " + quoted[-1]


@dataclass
class TrainConfig:
    """Every training knob of `lspt tune`; the defaults are the `paper` protocol's (DESIGN.md section 7)."""

    protocol: str = "paper"  # "paper" | "lspt": sets the defaults of PROTOCOL_DEFAULTS' keys
    epochs: int = 100
    warmup_epochs: int = 10
    batch_size: int = 64
    optimizer: str = "sgd"  # "sgd" | "adamw"
    lr: float = 0.1
    weight_decay: float = 1e-4
    momentum: float = 0.9
    lr_scaling: str = "none"  # "none" | "batch/256": the lr trained is lr, or lr * batch_size / 256 (VPT's scripts)
    grad_clip: float = 0.0  # max global grad norm; 0 disables
    amp: str = "off"  # "auto" (bf16 on GPU) | "bf16" | "off"
    schedule: str = "per-epoch"  # "per-epoch" (VPT/GaPT's LambdaLR, stepped once per epoch) | "per-step"
    head_init: str = "kaiming"  # "kaiming" (VPT/GaPT: kaiming_normal fan_out, bias -log(99)) | "normal" (N(0, 0.01^2), bias 0)
    ddp_batch: str = "split"  # multi-GPU: "split" batch_size over the ranks (VPT) | "per-rank" batch_size on every rank
    readout: str = ""  # "" = the backbone's default | a key of specs.READOUTS ("mean-ln": VPT's MAE, "mean-norm": GaPT's)
    seed: int = 42
    num_workers: int = 0
    eval_batch_size: int = 0  # 0 = same as batch_size
    device: str = "auto"  # "auto" | "cpu" | "cuda" | "cuda:N"
    threads: int = 0  # torch intra-op threads on CPU; 0 = torch's default (one per core)
    loggers: str = ""  # experiment trackers, comma-separated (`--log tensorboard,mlflow`; lspt_cli/loggers.py)
    augment: bool = True  # False: train on the eval transform (deterministic; FGVC crop/flip off)
    # speed (README "Performance"): these change what a run computes by fp rounding at most
    # (feature_cache "on" with augmentation excepted: see lspt_cli/engine/feature_cache.py)
    compile: bool = False  # torch.compile the prompted forward (eager where compilation is unavailable)
    grad_checkpointing: bool = False  # recompute each frozen block in backward: less memory, more time
    feature_cache: str = "auto"  # linear probe: "auto" (when exact) | "on" | "off"

    def validate(self, where: str = "config") -> "TrainConfig":
        check_train(self, where)  # every number finite and in range, the device well-formed (validate.py)
        for name, allowed in CHOICES.items():
            if getattr(self, name) not in allowed:
                raise ConfigError(f"{where}: '{name}' must be {_one_of(allowed)}, got {getattr(self, name)!r}")
        if not NAMES_FORM.fullmatch(self.loggers):
            raise ConfigError(f"{where}: 'loggers' must be logger names separated by commas (lspt list loggers), "
                              f"got {self.loggers!r}")
        return self

    @property
    def scaled_lr(self) -> float:
        """The lr the schedule starts from: VPT's tune scripts multiply by batch/256 (tune_fgvc.py:31)."""
        return self.lr * self.batch_size / 256 if self.lr_scaling == "batch/256" else self.lr

    @classmethod
    def keys(cls) -> list[str]:
        return [f.name for f in fields(cls)]


def coerce_train_values(values: dict[str, Any], where: str) -> dict[str, Any]:
    """Check names and types of TrainConfig values (ints are accepted where floats are expected)."""
    types = {f.name: f.type for f in fields(TrainConfig)}
    out = {}
    for key, value in values.items():
        if key not in types:
            raise ConfigError(f"{where}: unknown key '{key}'; allowed: {', '.join(TrainConfig.keys())}")
        expected = types[key]
        if expected == "float" and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        ok = {"int": int, "float": float, "str": str, "bool": bool}[expected]
        if (isinstance(value, bool) and expected != "bool") or not isinstance(value, ok):
            raise ConfigError(f"{where}: '{key}' must be {expected}, got {type(value).__name__} {value!r}")
        out[key] = value
    return out


def parse_recipe_text(text: str, where: str) -> dict[str, Any]:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{where}: malformed TOML ({exc})") from None
    except RecursionError:  # e.g. an array nested 5000 deep
        raise ConfigError(f"{where}: malformed TOML (nested too deeply)") from None
    unknown = set(data) - RECIPE_KEYS
    if unknown:
        raise ConfigError(f"{where}: unknown key '{sorted(unknown)[0]}'; allowed: {', '.join(sorted(RECIPE_KEYS))}")
    for table in ("match", "train", "strategy", "tasks", "grid"):
        if table in data and not isinstance(data[table], dict):
            raise ConfigError(f"{where}: [{table}] must be a table")
    bad = set(data.get("match", {})) - MATCH_KEYS
    if bad:
        raise ConfigError(f"{where}: unknown key 'match.{sorted(bad)[0]}'; allowed: {', '.join(sorted(MATCH_KEYS))}")
    for key, value in data.get("match", {}).items():
        if not isinstance(value, str):
            raise ConfigError(f"{where}: match.{key} must be a string (a name or a '*' pattern), got {value!r}")
    train = coerce_train_values(data.get("train", {}), where)
    TrainConfig(**train).validate(where)  # values checked one by one (epochs > 0, ...), naming the file
    for task, override in data.get("tasks", {}).items():
        if not isinstance(override, dict) or set(override) - {"train", "strategy"}:
            raise ConfigError(f"{where}: [tasks.{task}] may only hold 'train' and 'strategy' tables")
        if not all(isinstance(v, dict) for v in override.values()):
            raise ConfigError(f"{where}: [tasks.{task}.train] and [tasks.{task}.strategy] must be tables")
        task_train = coerce_train_values(override.get("train", {}), f"{where} [tasks.{task}]")
        TrainConfig(**{**train, **task_train}).validate(f"{where} [tasks.{task}]")
    for key, values in data.get("grid", {}).items():
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{where}: grid.{key} must be a non-empty list")
    return data


MAX_RECIPE_BYTES = 1 * 2**20  # a recipe is a few hundred bytes; /dev/zero or a huge file is refused


def read_recipe_text(path: str | Path) -> str:
    """A recipe's text: a regular UTF-8 file of at most MAX_RECIPE_BYTES (a FIFO never hangs)."""
    from .atomic import read_regular_text

    return read_regular_text(path, "recipe file", ConfigError, MAX_RECIPE_BYTES)


def load_recipe_file(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    return parse_recipe_text(read_recipe_text(path), str(path))


def spec_from_file(path: Path) -> RecipeSpec:
    data = load_recipe_file(path)
    match = data.get("match", {})
    source = ""
    for line in read_recipe_text(path).splitlines():
        if line.startswith("# Source:"):
            source = line[len("# Source:") :].strip()
            break
    return RecipeSpec(
        name=path.stem,
        description=data.get("description", ""),
        values=data,
        strategy=match.get("strategy", "*"),
        backbone=match.get("backbone", "*"),
        benchmark=match.get("benchmark", "*"),
        task=match.get("task", "*"),
        source=source,
    )


def find_recipe(recipes, strategy: str, backbone: str, benchmark: str, task: str) -> RecipeSpec | None:
    """The most specific registered recipe matching the run (fewest wildcards wins)."""
    best, best_score = None, -1
    for spec in recipes:
        wanted = (spec.strategy, spec.backbone, spec.benchmark, spec.task)
        actual = (strategy, backbone, benchmark, task)
        if all(fnmatch.fnmatchcase(a, w) for w, a in zip(wanted, actual)):
            score = sum(w != "*" for w in wanted)
            if score > best_score:
                best, best_score = spec, score
    return best


def recipe_layers(data: dict[str, Any], task: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(train values, strategy values) of one recipe for one task, task overrides applied."""
    train = dict(data.get("train", {}))
    strategy = dict(data.get("strategy", {}))
    for pattern, override in data.get("tasks", {}).items():
        if fnmatch.fnmatchcase(task, pattern):
            train.update(override.get("train", {}))
            strategy.update(override.get("strategy", {}))
    return coerce_train_values(train, "recipe"), strategy


@dataclass
class ResolvedConfig:
    """Everything a run needs, with where each layer came from (printed by `tune --dry-run`)."""

    backbone: str
    strategy: str
    task: str
    benchmark: str
    weights: str | None = None
    train: TrainConfig = field(default_factory=TrainConfig)
    strategy_config: dict[str, Any] = field(default_factory=dict)
    final: bool = False
    recipes: list[str] = field(default_factory=list)
    grid: dict[str, list] = field(default_factory=dict)

    @property
    def protocol(self) -> str:
        return self.train.protocol

    def to_json(self) -> dict[str, Any]:
        return {"protocol": self.protocol, **dataclasses.asdict(self)}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "ResolvedConfig":
        d = dict(d)
        d.pop("protocol", None)  # a copy of train.protocol
        train = coerce_train_values(d.get("train", {}), "config")
        # a run from before `protocol` existed trained under what is now the `lspt` protocol
        protocol = train.setdefault("protocol", "lspt")
        d["train"] = TrainConfig(**{**PROTOCOL_DEFAULTS.get(protocol, {}), **train})
        return cls(**d)


def resolve_config(
    *,
    backbone: str,
    strategy: str,
    task: str,
    benchmark: str,
    registered_recipes,
    recipe_file: str | Path | None = None,
    train_overrides: dict[str, Any] | None = None,
    strategy_overrides: dict[str, Any] | None = None,
    weights: str | None = None,
    final: bool = False,
) -> ResolvedConfig:
    """Merge defaults < registered recipe < --recipe FILE < CLI flags."""
    train: dict[str, Any] = {}
    strat: dict[str, Any] = {}
    grid: dict[str, list] = {}
    used = []
    if benchmark in ("vtab", "fgvc"):  # VPT's batch on both (KMnP/vpt configs/base-prompt.yaml:25, demo.ipynb:824-828)
        train["batch_size"] = 128
    spec = find_recipe(registered_recipes, strategy, backbone, benchmark, task)
    if spec is not None:
        t, s = recipe_layers(spec.values, task)
        train.update(t), strat.update(s), grid.update(spec.values.get("grid", {}))
        used.append(spec.name)
    if recipe_file is not None:
        data = load_recipe_file(recipe_file)
        t, s = recipe_layers(data, task)
        train.update(t), strat.update(s), grid.update(data.get("grid", {}))
        used.append(str(recipe_file))
    cli_values = coerce_train_values(train_overrides or {}, "command line")
    check_options(cli_values)  # a bad flag is named as such: "--lr: must be a finite number ..."
    train.update(cli_values)
    strat.update(strategy_overrides or {})
    protocol = train.get("protocol", TrainConfig.protocol)
    if protocol not in PROTOCOLS:
        raise ConfigError(f"'protocol' must be {_one_of(PROTOCOLS)}, got {protocol!r}")
    config = TrainConfig(**{**PROTOCOL_DEFAULTS[protocol], **train}).validate()  # explicit values win
    return ResolvedConfig(
        backbone=backbone, strategy=strategy, task=task, benchmark=benchmark, weights=weights,
        train=config, strategy_config=strat, final=final, recipes=used, grid=grid,
    )
