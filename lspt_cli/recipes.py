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
`protocol` those layers name) > TrainConfig defaults. Which keys exist, their types, bounds and
defaults: lspt_cli/settings.py.

The protocol none of the layers names (`auto`, the default) is resolved by `auto_protocol`: `paper`
where a paper recipe (one whose [train] says protocol = "paper") covers the run's backbone,
benchmark and task, whatever its strategy; `lspt` everywhere else. The papers' settings were tuned
for their backbones and benchmarks; on any other backbone (DINOv2's large feature scale, issue 21)
a kaiming head and SGD without clipping blow up, while lspt's settings learn (docs/protocol.md).
"""

from __future__ import annotations

import dataclasses
import fnmatch
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .settings import BY_NAME, PROTOCOL_CHOICES, PROTOCOL_DEFAULTS, PROTOCOLS, TrainConfig, check_flags, coerce_train_values, one_of
from .specs import RecipeSpec

RECIPE_KEYS = {"description", "match", "train", "strategy", "tasks", "grid"}
MATCH_KEYS = {"strategy", "backbone", "benchmark", "task"}


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
        value_sources=value_comments(read_recipe_text(path)),
        name=path.stem,
        description=data.get("description", ""),
        values=data,
        strategy=match.get("strategy", "*"),
        backbone=match.get("backbone", "*"),
        benchmark=match.get("benchmark", "*"),
        task=match.get("task", "*"),
        source=source,
    )


def value_comments(text: str) -> dict[str, str]:
    """Each value's comment in a recipe's text, by dotted key: `lr = 0.05  # Source: README.md:83`
    under `[tasks.cub.train]` gives {"tasks.cub.train.lr": "Source: README.md:83"}. A `#` inside a
    string is not a comment: the part before a candidate `#` must parse as TOML on its own."""
    comments: dict[str, str] = {}
    table = ""
    for line in text.splitlines():
        stripped = line.strip()
        header = re.fullmatch(r"\[\s*([^\[\]]+?)\s*\](?:\s*#.*)?", stripped)
        if header:
            table = header.group(1).replace('"', "").replace(" ", "")
            continue
        if not stripped or stripped.startswith("#") or "=" not in stripped or "#" not in stripped:
            continue
        for at in [m.start() for m in re.finditer("#", stripped)]:
            try:
                parsed = tomllib.loads(stripped[:at])
            except tomllib.TOMLDecodeError:
                continue
            if len(parsed) == 1:
                key = next(iter(parsed))
                comments[f"{table}.{key}" if table else key] = stripped[at + 1 :].strip()
            break
    return comments


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


def paper_recipe_for(recipes, backbone: str, benchmark: str, task: str) -> RecipeSpec | None:
    """A registered recipe that trains this backbone on this benchmark (and task) under `paper`,
    whatever its strategy: the run is a paper setup. The first one, by name, or None."""
    for spec in sorted(recipes, key=lambda r: r.name):
        if spec.values.get("train", {}).get("protocol") != "paper":
            continue
        wanted, actual = (spec.backbone, spec.benchmark, spec.task), (backbone, benchmark, task)
        if all(fnmatch.fnmatchcase(a, w) for w, a in zip(wanted, actual)):
            return spec
    return None


def auto_protocol(recipes, backbone: str, benchmark: str, task: str) -> tuple[str, str]:
    """(protocol, why) for a run whose layers name no protocol (`auto`)."""
    spec = paper_recipe_for(recipes, backbone, benchmark, task)
    if spec is not None:
        return "paper", (f"auto: {backbone} on {benchmark} is a paper setup (recipe {spec.name}); "
                         "the official training")
    return "lspt", (f"auto: no paper recipe covers {backbone} on {benchmark}; lspt's settings (small head init, "
                    "gradient clipping, per-step warm-up), which learn on backbones nobody tuned. "
                    "--protocol paper for the official training")


def recipe_layers(data: dict[str, Any], task: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(train values, strategy values) of one recipe for one task, task overrides applied."""
    train = dict(data.get("train", {}))
    strategy = dict(data.get("strategy", {}))
    for pattern, override in data.get("tasks", {}).items():
        if fnmatch.fnmatchcase(task, pattern):
            train.update(override.get("train", {}))
            strategy.update(override.get("strategy", {}))
    return coerce_train_values(train, "recipe"), strategy


def layer_sources(data: dict[str, Any], comments: dict[str, str], task: str, label: str) -> dict[str, str]:
    """Where each value of one recipe layer comes from, keyed like ResolvedConfig.sources: the
    train key ("lr") or "strategy.<option>", each "<label>: <its comment>" (or the label alone)."""
    def cite(dotted: str) -> str:
        return f"{label}: {comments[dotted]}" if comments.get(dotted) else label

    sources = {key: cite(f"train.{key}") for key in data.get("train", {})}
    sources.update({f"strategy.{key}": cite(f"strategy.{key}") for key in data.get("strategy", {})})
    for pattern, override in data.get("tasks", {}).items():
        if fnmatch.fnmatchcase(task, pattern):
            sources.update({key: cite(f"tasks.{pattern}.train.{key}") for key in override.get("train", {})})
            sources.update({f"strategy.{key}": cite(f"tasks.{pattern}.strategy.{key}") for key in override.get("strategy", {})})
    return sources


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
    # how `protocol` was chosen: "auto: ..." (auto_protocol), or who named it; recorded, never compared
    protocol_reason: str = field(default="", compare=False)
    # warnings about how the config came about (resolve_config), shown by tune and sweep; not recorded
    notes: list[str] = field(default_factory=list, compare=False, repr=False)
    # where each value came from ("lr": "recipe spt-deep-mae-vitb-fgvc: Source: README.md:83"; strategy
    # options as "strategy.<key>"): shown by `tune --dry-run`, not recorded
    sources: dict[str, str] = field(default_factory=dict, compare=False, repr=False)

    @property
    def protocol(self) -> str:
        return self.train.protocol

    def to_json(self) -> dict[str, Any]:
        doc = {"protocol": self.protocol, **dataclasses.asdict(self)}
        doc.pop("notes")
        doc.pop("sources")
        return doc

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "ResolvedConfig":
        d = dict(d)
        d.pop("protocol", None)  # a copy of train.protocol
        train = coerce_train_values(d.get("train", {}), "config")
        # a run from before `protocol` existed trained under what is now the `lspt` protocol
        protocol = train.setdefault("protocol", "lspt")
        if protocol not in PROTOCOLS:  # `auto` is resolved when a run is planned: a config names what it trains
            raise ConfigError(f"config: 'protocol' must be {one_of(PROTOCOLS)} in a resolved config, got {protocol!r}")
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
    named_by = ""  # the layer that names the protocol, if one does
    sources: dict[str, str] = {}
    if benchmark in ("vtab", "fgvc"):  # VPT's batch on both (KMnP/vpt configs/base-prompt.yaml:25, demo.ipynb:824-828)
        train["batch_size"] = 128
        sources["batch_size"] = f"{benchmark} default: KMnP/vpt configs/base-prompt.yaml:25"
    spec = find_recipe(registered_recipes, strategy, backbone, benchmark, task)
    if spec is not None:
        t, s = recipe_layers(spec.values, task)
        train.update(t), strat.update(s), grid.update(spec.values.get("grid", {}))
        sources.update(layer_sources(spec.values, spec.value_sources, task, f"recipe {spec.name}"))
        used.append(spec.name)
        named_by = f"recipe {spec.name}" if "protocol" in t else named_by
    notes = []
    if recipe_file is not None:
        data = load_recipe_file(recipe_file)
        notes += _mismatches(data.get("match", {}), recipe_file, strategy=strategy, backbone=backbone,
                             benchmark=benchmark, task=task)
        t, s = recipe_layers(data, task)
        train.update(t), strat.update(s), grid.update(data.get("grid", {}))
        sources.update(layer_sources(data, value_comments(read_recipe_text(recipe_file)), task, f"--recipe {recipe_file}"))
        used.append(str(recipe_file))
        named_by = f"--recipe {recipe_file}" if "protocol" in t else named_by
    cli_values = coerce_train_values(train_overrides or {}, "command line")
    check_flags(cli_values)  # a bad flag is named as such: "--lr: must be a finite number ..."
    train.update(cli_values)
    sources.update({key: "command line" for key in cli_values})
    named_by = "--protocol" if "protocol" in cli_values else named_by
    strat.update(strategy_overrides or {})
    sources.update({f"strategy.{key}": "command line (--set)" for key in strategy_overrides or {}})
    protocol = train.get("protocol", TrainConfig.protocol)
    if protocol not in PROTOCOL_CHOICES:
        raise ConfigError(f"'protocol' must be {one_of(PROTOCOL_CHOICES)}, got {protocol!r}")
    if protocol == "auto":  # no layer names one, or one names `auto`
        protocol, reason = auto_protocol(registered_recipes, backbone, benchmark, task)
    else:
        reason = f"{protocol}: named by {named_by}"
    train["protocol"] = protocol
    sources["protocol"] = reason
    for name, setting in BY_NAME.items():
        if name not in sources:
            where = f"{protocol} protocol default" if name in PROTOCOL_DEFAULTS[protocol] else "lspt default"
            sources[name] = f"{where}: {setting.source}" if setting.source else where
    if spec is None and recipe_file is None:
        notes.append(f"no recipe for {strategy} on {backbone} ({benchmark}): the {protocol} protocol's fallbacks apply "
                     f"({TrainConfig.epochs} epochs, lr {TrainConfig.lr}, the strategy's default options); pass "
                     f"--recipe FILE or the flags for a setup that suits this backbone")
    config = TrainConfig(**{**PROTOCOL_DEFAULTS[protocol], **train}).validate()  # explicit values win
    if config.warmup_epochs >= config.epochs:
        notes.append(f"--warmup-epochs {config.warmup_epochs} is not below --epochs {config.epochs}: the lr never "
                     f"leaves its warm-up (nor reaches --lr); pass --warmup-epochs below {config.epochs}")
    resolved = ResolvedConfig(
        backbone=backbone, strategy=strategy, task=task, benchmark=benchmark, weights=weights,
        train=config, strategy_config=strat, final=final, recipes=used, grid=grid, protocol_reason=reason, notes=notes,
        sources=sources,
    )
    return resolved


def _mismatches(match: dict[str, str], recipe_file, **run: str) -> list[str]:
    """A --recipe FILE written for another run is still applied (the user asked for it), with a
    warning naming what its [match] says."""
    return [f"{recipe_file}: [match] {key} = {pattern!r} does not match this run's {key} {run[key]!r}; applied anyway"
            for key, pattern in match.items() if not fnmatch.fnmatchcase(run[key], pattern)]
