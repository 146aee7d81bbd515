"""The grid and the selection: parsing `--grid`/`--seeds`/`--task`, trials (one `lspt tune` run dir
each, named after its grid point and seed), and the protocol's selection rule over finished trials."""

from __future__ import annotations

import fnmatch
import itertools
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from ..errors import LsptError, UsageError
from ..data.manifest import task_benchmark
from ..rundir import run_state
from ..selection import BEST_VAL, Rule, rule_for, selection_value

DEFAULT_SEEDS = (42, 44, 82, 100, 800)  # VPT's final-run seeds: KMnP/vpt@4410440 tune_vtab.py:284
GRID_ALIASES = {"wd": "weight_decay", "weight-decay": "weight_decay"}
TRIAL_CONFIG = "trial.json"  # a trial's resolved config, in its directory: what every executor runs
SHORT_NAMES = {"lr": "lr", "weight_decay": "wd"}
STDERR_TAIL = 2000


# -- parsing --------------------------------------------------------------------------------------
def _parse_value(raw: str) -> Any:
    raw = raw.strip()
    try:
        return json.loads(raw)
    except ValueError:
        return raw


def parse_grid(items: Iterable[str] | None) -> dict[str, list]:
    """`["lr=0.05,0.1", "wd=0,1e-4"]` -> {"lr": [0.05, 0.1], "weight_decay": [0, 0.0001]}."""
    grid: dict[str, list] = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        key = GRID_ALIASES.get(key.strip(), key.strip())
        values = [_parse_value(v) for v in raw.split(",") if v.strip()]
        if not sep or not key or not values:
            raise UsageError(f"--grid expects KEY=V1,V2,..., got {item!r}", hint="e.g. --grid lr=0.05,0.1,0.25 --grid wd=0,1e-4")
        if key in grid:
            raise UsageError(f"--grid {key} given twice")
        _check_grid_values(key, values)
        grid[key] = list(dict.fromkeys(values))  # keep order, drop duplicates
    return grid


def _check_grid_values(key: str, values: list) -> None:
    """Training values of a grid are valid values of their setting (type, bounds, choices), so
    `--grid lr=-1,0` is a usage error naming the value before anything is planned; strategy keys
    are checked against the strategy in check_grid_keys."""
    from ..settings import BY_NAME

    setting = BY_NAME.get(key)
    if setting is None:
        return
    for value in values:
        problem = setting.problem(value)
        if problem:
            raise UsageError(f"--grid {key}: {problem}", hint="e.g. --grid lr=0.05,0.1,0.25 --grid wd=0,1e-4")


def parse_seeds(text: str | None) -> list[int]:
    if text is None:
        return list(DEFAULT_SEEDS)
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise UsageError(f"--seeds expects integers separated by commas, got {text!r}") from None
    if not seeds:
        raise UsageError("--seeds needs at least one seed")
    from ..settings import TRAIN_RULES

    for seed in seeds:  # the same range as tune's --seed, refused before any trial is planned
        problem = TRAIN_RULES["seed"].problem(seed)
        if problem:
            raise UsageError(f"--seeds: each seed {problem}")
    return list(dict.fromkeys(seeds))


def prepared_task_ids() -> list[str]:
    """Ids of the tasks prepared under the data dir (`tasks/<id>/manifest.json`, ids may hold '/')."""
    from .. import paths

    root = paths.tasks_dir()
    if not root.is_dir():
        return []
    return sorted(p.parent.relative_to(root).as_posix() for p in root.rglob("manifest.json"))


def expand_tasks(patterns: Iterable[str], host) -> list[str]:
    """fnmatch patterns over registered datasets and prepared task ids; plain names pass through.

    A registered dataset that needs a `--root` and is not prepared is left out of a wildcard match
    (with a UsageError if nothing else matches), so `'vtab/*'` means the VTAB tasks you prepared.
    """
    from ..data.manifest import canonical_task

    prepared = set(prepared_task_ids())
    registered = set(host.datasets.names())
    usable = set(prepared)
    for name in registered:
        spec = host.datasets.get(name)
        if not getattr(spec, "needs_root", True) and name != "imagefolder":
            usable.add(name)  # auto-prepared on first use (digits)
    tasks: list[str] = []
    for pattern in patterns:
        if not any(ch in pattern for ch in "*?["):
            tasks.append(canonical_task(pattern))
            continue
        matched = sorted(n for n in usable if fnmatch.fnmatchcase(n, pattern))
        if not matched:
            unprepared = sorted(n for n in registered - usable if fnmatch.fnmatchcase(n, pattern))
            if unprepared:
                raise UsageError(
                    f"--task {pattern!r} matches no prepared task (registered but not prepared: {', '.join(unprepared[:5])}"
                    + (", ..." if len(unprepared) > 5 else "") + ")",
                    hint="prepare them first, e.g. lspt prepare-data vtab --root ~/data/vtab-1k",
                )
            raise UsageError(f"--task {pattern!r} matches no task", hint="see lspt list datasets")
        tasks.extend(matched)
    return list(dict.fromkeys(tasks))


# -- trials ---------------------------------------------------------------------------------------
def format_value(value: Any) -> str:
    """A value as it appears in a trial directory name: 0.1 -> '0.1', 0.0 -> '0', 1e-4 -> '0.0001'."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if value == int(value) and abs(value) < 1e15:
            return str(int(value))
        text = repr(value)
        if "e" in text:
            text = f"{value:.12f}".rstrip("0")
        return text
    text = str(value)
    return "".join(ch if ch.isalnum() or ch in "._+" else "_" for ch in text)


def trial_name(point: dict[str, Any], seed: int, final: bool) -> str:
    parts = [f"{SHORT_NAMES.get(k, k)}{format_value(v)}" for k, v in ordered_point(point)]
    return ("final-" if final else "") + "-".join(parts + [f"seed{seed}"])


def ordered_point(point: dict[str, Any]) -> list[tuple[str, Any]]:
    """lr first, then weight decay, then the other keys by name (names and the plan's order)."""
    first = [k for k in ("lr", "weight_decay") if k in point]
    return [(k, point[k]) for k in first + sorted(k for k in point if k not in first)]


def task_dir_name(task: str) -> str:
    return task.replace("/", "-")


@dataclass
class Trial:
    task: str
    point: dict[str, Any]
    seed: int
    final: bool
    run_dir: Path
    config: Any = None  # ResolvedConfig (written to config_file), or None when it could not be resolved
    error: str | None = None  # a resolution error: the trial fails without running

    @property
    def name(self) -> str:
        return trial_name(self.point, self.seed, self.final)

    @property
    def phase(self) -> str:
        return "final" if self.final else "grid"

    @property
    def config_file(self) -> Path:
        return self.run_dir / TRIAL_CONFIG

    @property
    def argv(self) -> list[str]:
        """`lspt tune` arguments (without the program name): the trial's resolved config file, never
        its options one by one, so every setting reaches the trial whatever the executor."""
        return ["--config", str(self.config_file), "--out", str(self.run_dir)]

    def key(self) -> str:
        return f"{self.task}/{self.name}"

    def state(self) -> str:
        return run_state(self.run_dir)

    def command(self, prefix: list[str] | None = None) -> list[str]:
        return (prefix or ["lspt"]) + ["tune"] + self.argv

    def write_config(self) -> None:
        """The resolved config as `lspt tune --config` reads it (config.json's schema), atomically."""
        from .. import atomic

        self.run_dir.mkdir(parents=True, exist_ok=True)
        atomic.write_json(self.config_file, self.config.to_json())


@dataclass
class SweepSpec:
    """Everything the user asked for; `build_trials` turns it into trials."""

    backbone: str
    strategy: str
    tasks: list[str]
    seeds: list[int]
    sweep_dir: Path
    grid: dict[str, list] = field(default_factory=dict)  # from --grid (empty: the recipe's)
    train_overrides: dict[str, Any] = field(default_factory=dict)  # pass-through flags
    strategy_overrides: dict[str, Any] = field(default_factory=dict)  # --set
    weights: str | None = None
    recipe: str | None = None
    finals: bool = True


def _resolve(spec: SweepSpec, task: str, host, train: dict, strat: dict, final: bool):
    from ..recipes import resolve_config

    return resolve_config(
        backbone=spec.backbone, strategy=spec.strategy, task=task, benchmark=task_benchmark(task, host),
        registered_recipes=host.recipes, recipe_file=spec.recipe, train_overrides=train,
        strategy_overrides=strat, weights=spec.weights, final=final,
    )


def base_config(spec: SweepSpec, task: str, host):
    """The config a task's trials start from (before grid points and seeds), with its notes."""
    return _resolve(spec, task, host, spec.train_overrides, spec.strategy_overrides, False)


def task_grid(spec: SweepSpec, task: str, host) -> dict[str, list]:
    """The grid of one task: `--grid` flags, else the recipe's [grid] minus keys pinned by flags."""
    if spec.grid:
        grid = dict(spec.grid)
    else:
        base = _resolve(spec, task, host, spec.train_overrides, spec.strategy_overrides, False)
        grid = {GRID_ALIASES.get(k, k): list(v) for k, v in base.grid.items()}
        for key in list(grid):
            if key in spec.train_overrides or key in spec.strategy_overrides:
                del grid[key]  # an explicit --lr / --set pins that key
    check_grid_keys(grid, spec, host)
    return grid


def check_grid_keys(grid: dict[str, list], spec: SweepSpec, host) -> None:
    from ..settings import TrainConfig

    options = host.strategies.get(spec.strategy).defaults or {}
    for key in grid:
        if key == "seed":
            raise UsageError("seeds are not a grid key; use --seeds 42,44,82")
        if key in TrainConfig.keys():
            if key in spec.train_overrides:
                raise UsageError(f"'{key}' is both a grid key and a fixed flag")
            _check_grid_values(key, grid[key])  # a recipe's [grid] too
        elif key in options:
            if key in spec.strategy_overrides:
                raise UsageError(f"'{key}' is both a grid key and a --set value")
            _check_strategy_values(spec, key, grid[key], host)
        else:
            allowed = sorted(k for k in TrainConfig.keys() if k != "seed") + sorted(options)
            raise UsageError(f"unknown grid key '{key}'; allowed: {', '.join(allowed)} (and wd for weight_decay)")


def _check_strategy_values(spec: SweepSpec, key: str, values: list, host) -> None:
    """Each value of a strategy option builds the strategy (on ViT-B/16 shapes, no weights), so
    `--grid num_prompts=-1` is a usage error up front instead of a sweep of failed trials."""
    from ..backbone_dims import VIT_B16
    from ..errors import ConfigError
    from ..prompted import build_strategy

    for value in values:
        try:
            build_strategy(spec.strategy, VIT_B16, {**spec.strategy_overrides, key: value}, host=host)
        except ConfigError as exc:
            raise UsageError(f"--grid {key}={value!r}: {exc.message}") from None


def grid_points(grid: dict[str, list]) -> list[dict[str, Any]]:
    if not grid:
        return [{}]
    keys = [k for k, _ in ordered_point({k: None for k in grid})]
    return [dict(zip(keys, values)) for values in itertools.product(*(grid[k] for k in keys))]


def make_trial(spec: SweepSpec, task: str, point: dict[str, Any], seed: int, final: bool, host) -> Trial:
    """Resolve one trial's config and write it into the trial's directory (`lspt tune --config`)."""
    from ..recipes import TrainConfig

    train = dict(spec.train_overrides)
    strat = dict(spec.strategy_overrides)
    for key, value in point.items():
        (train if key in TrainConfig.keys() else strat)[key] = value
    train["seed"] = seed
    run_dir = (spec.sweep_dir / task_dir_name(task) / trial_name(point, seed, final)).resolve()
    config, error = None, None
    try:
        config = _resolve(spec, task, host, train, strat, final)
    except LsptError as exc:
        error = exc.message
    trial = Trial(task=task, point=point, seed=seed, final=final, run_dir=run_dir, config=config, error=error)
    if config is not None:
        trial.write_config()
    return trial


def build_grid_trials(spec: SweepSpec, host) -> dict[str, list[Trial]]:
    """Per task: one trial per grid point with the first seed (none when the grid has one point)."""
    trials = {}
    for task in spec.tasks:
        points = grid_points(task_grid(spec, task, host))
        if len(points) == 1:
            trials[task] = []  # nothing to select: go straight to the final runs
            continue
        trials[task] = [make_trial(spec, task, p, spec.seeds[0], False, host) for p in points]
    return trials


def build_final_trials(spec: SweepSpec, task: str, point: dict[str, Any], host) -> list[Trial]:
    return [make_trial(spec, task, point, seed, True, host) for seed in spec.seeds]


# -- selection ------------------------------------------------------------------------------------
def _tie_value(value: Any) -> tuple:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (0, float(value), "")
    return (1, 0.0, str(value))


def selection_key(record: dict[str, Any], key: str = "val_top1") -> tuple:
    """Sort key: best val top-1 first; ties -> smaller lr (KMnP/vpt tune_vtab.py:63-71, "the smallest
    lr to break tie for stability"), then smaller wd (lspt's: for one lr the official winner is
    whichever file glob lists first). Other grid keys are not compared: on a tie `select_best` keeps
    the trial planned first, so `--grid num_prompts=200,100` prefers 200 and no value is favoured
    for being small."""
    point = record.get("point") or {}
    return (-float(record[key]),) + tuple(_tie_value(point[k]) for k in ("lr", "weight_decay") if k in point)


def select_best(records: list[dict[str, Any]], key: str = "val_top1") -> dict[str, Any] | None:
    """The selected grid trial among finished ones (records with a numeric `key`, in plan order), or None."""
    done = [r for r in records if r.get("status") == "finished" and isinstance(r.get(key), (int, float))
            and not isinstance(r.get(key), bool) and not math.isnan(r[key])]
    if not done:
        return None
    return min(done, key=lambda r: selection_key(r, key))  # min keeps the first of equal keys


def select_trial(records: list[dict[str, Any]], select_by: str) -> dict[str, Any] | None:
    """Select by the rule's val top-1 (selection.py): each finished record gets `select_val` and
    `select_epoch` from its run directory's metrics.jsonl (the last epoch's val, or the best's)."""
    for record in records:
        if record.get("status") != "finished":
            continue
        value, epoch = selection_value(record["run_dir"], select_by) if record.get("run_dir") else (None, None)
        if value is None and select_by == BEST_VAL:  # no per-epoch log: the summary's best val
            value = record.get("val_top1")
        record.update(select_val=value, select_epoch=epoch, select_by=select_by)
    return select_best(records, key="select_val")


def task_rule(spec: "SweepSpec", task: str, host) -> Rule:
    """The selection/final rule of a task: its resolved protocol and benchmark."""
    config = _resolve(spec, task, host, spec.train_overrides, spec.strategy_overrides, False)
    return rule_for(config.train.protocol, config.benchmark)

