"""`lspt sweep`: the VPT protocol as one resumable command.

1. **Grid search** per task: every point of the hyper-parameter grid (lr x weight decay x ... from
   `--grid` flags, else the recipe's `[grid]`), trained on train and selected on val, with the
   *first* seed only (Jia et al. 2022 search with one seed, then re-run the winner).
2. **Selection** per task: the highest val top-1 over the finished grid trials, where a trial's
   val top-1 is the one the protocol's rule names (selection.py, README "Protocol"): under `paper`,
   VTAB compares the val top-1 of each trial's *last* epoch (VPT's tune_vtab.py), FGVC the best
   epoch's; under `lspt` the best epoch's everywhere. Read from each trial's metrics.jsonl. Ties go
   to the smaller lr, then the smaller weight decay, then the smaller value of every other grid key
   in name order (e.g. fewer prompts). Failed trials are ignored (and reported).
3. **Final runs**: the selected point once per seed, as `lspt tune --final`, which trains on what
   the rule says: train+val (VTAB: train800val200; last epoch reported), except FGVC under `paper`,
   whose official code has no train+val split: train, test at the best val epoch. `lspt report`
   averages their test top-1.

Every trial is an ordinary `lspt tune` run directory under the sweep directory
(`<sweep>/<task>/lr0.1-wd0.0001-seed42`, finals `final-lr0.1-wd0.0001-seed44`). A trial whose
`summary.json` exists is skipped, one with a checkpoint but no summary is resumed by the engine, so
re-running the same sweep command continues it. `sweep.json` records every trial (status, metrics,
error), the selections and the finals; `sweep.md` and `sweep.csv` are the same as tables.

This module imports torch only when a trial runs in-process.
"""

from __future__ import annotations

import csv
import datetime as _dt
import fnmatch
import io
import itertools
import json
import math
import os
import shlex
import statistics
import subprocess
import sys
import threading
import traceback
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from .errors import LsptError, UsageError
from .rundir import CHECKPOINT_NAME, CONFIG_NAME, RUN_FILES, SUMMARY_NAME
from .selection import BEST_VAL, Rule, rule_for, selection_value

SWEEP_JSON = "sweep.json"
SWEEP_MD = "sweep.md"
SWEEP_CSV = "sweep.csv"

DEFAULT_SEEDS = (42, 44, 82, 100, 800)  # DESIGN.md section 7
GRID_ALIASES = {"wd": "weight_decay", "weight-decay": "weight_decay"}
# TrainConfig keys `lspt tune` has a flag for (a grid over them must be expressible as a command).
TRAIN_FLAGS = {
    "protocol": "--protocol",
    "epochs": "--epochs",
    "warmup_epochs": "--warmup-epochs",
    "batch_size": "--batch-size",
    "lr": "--lr",
    "weight_decay": "--weight-decay",
    "optimizer": "--optimizer",
    "grad_clip": "--grad-clip",
    "amp": "--amp",
    "schedule": "--schedule",
    "head_init": "--head-init",
    "ddp_batch": "--ddp-batch",
    "lr_scaling": "--lr-scaling",
    "readout": "--readout",
    "num_workers": "--num-workers",
    "device": "--device",
    "threads": "--threads",
    "loggers": "--log",
}
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
    """Training values of a grid have their TrainConfig types (`--grid lr=abc` is a usage error
    naming the value, not a command line with `--lr abc`); strategy keys are checked by the strategy."""
    from .errors import ConfigError
    from .recipes import TrainConfig, coerce_train_values

    if key not in TrainConfig.keys():
        return
    for value in values:
        try:
            coerce_train_values({key: value}, "--grid")
        except ConfigError as exc:
            raise UsageError(exc.message, hint="e.g. --grid lr=0.05,0.1,0.25 --grid wd=0,1e-4") from None


def parse_seeds(text: str | None) -> list[int]:
    if text is None:
        return list(DEFAULT_SEEDS)
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise UsageError(f"--seeds expects integers separated by commas, got {text!r}") from None
    if not seeds:
        raise UsageError("--seeds needs at least one seed")
    from .validate import TRAIN_RULES

    for seed in seeds:  # the same range as tune's --seed, refused before any trial is planned
        problem = TRAIN_RULES["seed"].problem(seed)
        if problem:
            raise UsageError(f"--seeds: each seed {problem}")
    return list(dict.fromkeys(seeds))


def prepared_task_ids() -> list[str]:
    """Ids of the tasks prepared under the data dir (`tasks/<id>/manifest.json`, ids may hold '/')."""
    from . import paths

    root = paths.tasks_dir()
    if not root.is_dir():
        return []
    return sorted(p.parent.relative_to(root).as_posix() for p in root.rglob("manifest.json"))


def expand_tasks(patterns: Iterable[str], host) -> list[str]:
    """fnmatch patterns over registered datasets and prepared task ids; plain names pass through.

    A registered dataset that needs a `--root` and is not prepared is left out of a wildcard match
    (with a UsageError if nothing else matches), so `'vtab/*'` means the VTAB tasks you prepared.
    """
    from .data.manifest import canonical_task

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
    """lr first, then weight decay, then the other keys by name (also the tie-break order)."""
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
    argv: list[str]  # `lspt tune` arguments (without the program name)
    config: Any = None  # ResolvedConfig, or None when it could not be resolved
    error: str | None = None  # a resolution error: the trial fails without running

    @property
    def name(self) -> str:
        return trial_name(self.point, self.seed, self.final)

    @property
    def phase(self) -> str:
        return "final" if self.final else "grid"

    def key(self) -> str:
        return f"{self.task}/{self.name}"

    def state(self) -> str:
        """'finished' (summary.json), 'partial' (a checkpoint to resume), 'stale' (leftovers) or 'new'."""
        if (self.run_dir / SUMMARY_NAME).exists():
            return "finished"
        if (self.run_dir / CHECKPOINT_NAME).exists() and (self.run_dir / CONFIG_NAME).exists():
            return "partial"
        if self.run_dir.exists() and any((self.run_dir / n).exists() for n in RUN_FILES):
            return "stale"
        return "new"

    def command(self, prefix: list[str] | None = None) -> list[str]:
        return (prefix or ["lspt"]) + ["tune"] + self.argv


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
    from .cli.tune import task_benchmark
    from .recipes import resolve_config

    return resolve_config(
        backbone=spec.backbone, strategy=spec.strategy, task=task, benchmark=task_benchmark(task),
        registered_recipes=host.recipes, recipe_file=spec.recipe, train_overrides=train,
        strategy_overrides=strat, weights=spec.weights, final=final,
    )


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
    from .recipes import TrainConfig

    options = host.strategies.get(spec.strategy).defaults or {}
    for key in grid:
        if key == "seed":
            raise UsageError("seeds are not a grid key; use --seeds 42,44,82")
        if key in TrainConfig.keys():
            if key not in TRAIN_FLAGS:
                raise UsageError(f"grid key '{key}' has no `lspt tune` flag; put it in a --recipe instead")
            if key in spec.train_overrides:
                raise UsageError(f"'{key}' is both a grid key and a fixed flag")
        elif key in options:
            if key in spec.strategy_overrides:
                raise UsageError(f"'{key}' is both a grid key and a --set value")
        else:
            allowed = sorted(TRAIN_FLAGS) + sorted(options)
            raise UsageError(f"unknown grid key '{key}'; allowed: {', '.join(allowed)} (and wd for weight_decay)")


def grid_points(grid: dict[str, list]) -> list[dict[str, Any]]:
    if not grid:
        return [{}]
    keys = [k for k, _ in ordered_point({k: None for k in grid})]
    return [dict(zip(keys, values)) for values in itertools.product(*(grid[k] for k in keys))]


def _set_value(value: Any) -> str:
    """A --set value that `parse_assignments` reads back as the same value."""
    if isinstance(value, str):
        try:
            json.loads(value)
        except ValueError:
            return value
        return json.dumps(value)
    return json.dumps(value)


def _flag_value(value: Any) -> str:
    return repr(value) if isinstance(value, float) else str(value)


def make_trial(spec: SweepSpec, task: str, point: dict[str, Any], seed: int, final: bool, host) -> Trial:
    """Resolve one trial's config and its fully specified `lspt tune` command."""
    from .recipes import TrainConfig

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
    argv = ["--backbone", spec.backbone, "--task", task, "--strategy", spec.strategy]
    if spec.weights:
        argv += ["--weights", str(Path(spec.weights).resolve())]
    if spec.recipe:
        argv += ["--recipe", str(Path(spec.recipe).resolve())]
    fixed = dict(train)
    if config is not None:  # lr and weight decay always explicit, as resolved
        fixed.setdefault("lr", config.train.lr)
        fixed.setdefault("weight_decay", config.train.weight_decay)
    for key in ("seed",) + tuple(TRAIN_FLAGS):
        if key in fixed:
            argv += ["--seed" if key == "seed" else TRAIN_FLAGS[key], _flag_value(fixed[key])]
    for key, value in strat.items():
        argv += ["--set", f"{key}={_set_value(value)}"]
    if final:
        argv.append("--final")
    argv += ["--out", str(run_dir)]
    return Trial(task=task, point=point, seed=seed, final=final, run_dir=run_dir, argv=argv, config=config, error=error)


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
    """Sort key: best val top-1 first; ties -> smaller lr, then smaller wd, then other keys by name."""
    point = record.get("point") or {}
    return (-float(record[key]),) + tuple(_tie_value(v) for _, v in ordered_point(point))


def select_best(records: list[dict[str, Any]], key: str = "val_top1") -> dict[str, Any] | None:
    """The selected grid trial among finished ones (records with a numeric `key`), or None."""
    done = [r for r in records if r.get("status") == "finished" and isinstance(r.get(key), (int, float))
            and not isinstance(r.get(key), bool) and not math.isnan(r[key])]
    if not done:
        return None
    return min(done, key=lambda r: selection_key(r, key))


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


# -- running --------------------------------------------------------------------------------------
def read_summary(run_dir: Path) -> dict[str, Any] | None:
    """The trial's checked summary.json (lspt_cli/schema.py), None when missing or malformed."""
    from . import schema

    try:
        return schema.summary(Path(run_dir) / SUMMARY_NAME)
    except LsptError:
        return None


def config_mismatch(trial: Trial) -> str | None:
    """A difference between the run already in the trial's directory and what the trial asks for."""
    from . import schema

    try:
        existing = schema.load_json_file(trial.run_dir / CONFIG_NAME, "run config")
    except LsptError:
        return None
    if not isinstance(existing, dict) or not isinstance(existing.get("train", {}), dict):
        return "its config.json is malformed"
    wanted = trial.config.to_json()
    for key in ("backbone", "strategy", "task", "final"):
        if existing.get(key) != wanted.get(key):
            return f"{key} {existing.get(key)!r} != {wanted.get(key)!r}"
    for key, value in wanted["train"].items():
        if key in ("num_workers", "device", "eval_batch_size", "threads", "loggers"):
            continue  # do not change the result
        if existing.get("train", {}).get(key) != value:
            return f"{key} {existing.get('train', {}).get(key)!r} != {value!r}"
    old_strategy = existing.get("strategy_config", {})
    if old_strategy != wanted["strategy_config"]:
        return f"strategy options {old_strategy} != {wanted['strategy_config']}"
    return None


def record_for(trial: Trial) -> dict[str, Any]:
    return {
        "name": trial.name,
        "task": trial.task,
        "phase": trial.phase,
        "point": dict(trial.point),
        "seed": trial.seed,
        "final": trial.final,
        "run_dir": str(trial.run_dir),
        "command": shlex.join(trial.command()),
        "status": "pending",
        "outcome": None,
        "error": None,
    }


def fill_metrics(record: dict[str, Any], summary: dict[str, Any]) -> dict[str, Any]:
    record.update(
        status="finished",
        val_top1=summary.get("val_top1"),
        protocol=summary.get("protocol"),
        train_split=summary.get("train_split"),
        reported_epoch_rule=summary.get("reported_epoch_rule"),
        test_top1=summary.get("test_top1"),
        test_mean_per_class=summary.get("test_mean_per_class"),
        selected_epoch=summary.get("selected_epoch"),
        epochs=summary.get("epochs"),
        seconds=summary.get("seconds"),
    )
    return record


def run_in_process(trial: Trial, host) -> tuple[str, dict | None, str | None]:
    """(outcome, summary, error) of one trial run in this process (Ctrl-C propagates)."""
    from .engine.train import Interrupted, Trainer, check_writable

    from .locks import hold

    state = trial.state()
    try:
        with hold(trial.run_dir, "run directory"):  # another sweep on the same trial: refused, pid named
            if state == "stale":
                for name in RUN_FILES:
                    (trial.run_dir / name).unlink(missing_ok=True)
            check_writable(trial.run_dir)
            summary = Trainer(trial.config, trial.run_dir, host=host).run(resume=state == "partial")
    except Interrupted:
        raise
    except LsptError as exc:
        return "failed", None, exc.message + (f" ({exc.hint})" if exc.hint else "")
    except Exception as exc:  # noqa: BLE001  (a crashing trial must not stop the sweep)
        tail = traceback.format_exc()[-STDERR_TAIL:]
        return "failed", None, f"{type(exc).__name__}: {exc}\n{tail}"
    return ("resumed" if state == "partial" else "ran"), summary, None


def subprocess_argv(trial: Trial) -> list[str]:
    state = trial.state()
    base = [sys.executable, "-m", "lspt_cli", "tune"]
    if state == "partial":
        return base + ["--resume", str(trial.run_dir), "--json", "-q"]
    return base + trial.argv + (["--overwrite"] if state == "stale" else []) + ["--json", "-q"]


def run_subprocess(trial: Trial, env: dict[str, str]) -> tuple[str, dict | None, str | None]:
    state = trial.state()
    proc = subprocess.run(subprocess_argv(trial), env=env, capture_output=True, text=True)
    if proc.returncode == 130:
        raise KeyboardInterrupt
    summary = read_summary(trial.run_dir)
    if proc.returncode != 0 or summary is None:
        tail = (proc.stderr or proc.stdout or "").strip()[-STDERR_TAIL:]
        return "failed", None, f"exit code {proc.returncode}: {tail}"
    return ("resumed" if state == "partial" else "ran"), summary, None


def worker_envs(workers: int) -> list[dict[str, str]]:
    """One environment per worker slot: GPUs round-robin, or a share of the CPU threads each."""
    gpus: list[str] = []
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        gpus = [g.strip() for g in visible.split(",") if g.strip() and g.strip() != "-1"]
    else:
        try:
            import torch

            gpus = [str(i) for i in range(torch.cuda.device_count())]
        except Exception:  # noqa: BLE001
            gpus = []
    envs = []
    threads = max(1, (os.cpu_count() or 1) // workers)
    if "OMP_NUM_THREADS" in os.environ:
        try:
            threads = max(1, min(threads, int(os.environ["OMP_NUM_THREADS"])))
        except ValueError:
            pass
    for slot in range(workers):
        env = dict(os.environ)
        if len(gpus) > 1:
            env["CUDA_VISIBLE_DEVICES"] = gpus[slot % len(gpus)]
        if not gpus:
            env["OMP_NUM_THREADS"] = str(threads)
            env["MKL_NUM_THREADS"] = str(threads)
        env.setdefault("LSPT_NO_PROGRESS", "1")
        envs.append(env)
    return envs


class Sweep:
    """Runs a SweepSpec: grid trials, selection, final runs; keeps sweep.json up to date."""

    def __init__(self, spec: SweepSpec, host, *, workers: int = 1, on_trial: Callable | None = None,
                 on_phase: Callable | None = None):
        self.spec = spec
        self.host = host
        self.workers = max(1, workers)
        self.on_trial = on_trial or (lambda record, done, total: None)
        self.on_phase = on_phase or (lambda phase, total: None)
        self.records: dict[str, dict[str, Any]] = {}
        self.selections: dict[str, dict[str, Any]] = {}
        self.finals: dict[str, dict[str, Any]] = {}
        self.grids: dict[str, dict[str, list]] = {}
        self.rules: dict[str, Rule] = {}
        self.lock = threading.Lock()
        self.started = _dt.datetime.now().isoformat(timespec="seconds")

    # -- orchestration --------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        """The whole sweep, holding the sweep dir's lock: a second sweep on it is refused (its pid named)."""
        from .locks import hold

        if self.spec.sweep_dir.exists() and not self.spec.sweep_dir.is_dir():
            raise UsageError(f"{self.spec.sweep_dir}: --out must be a directory (it is a file)")
        with hold(self.spec.sweep_dir, "sweep directory"):
            return self._run()

    def _run(self) -> dict[str, Any]:
        grid_trials = build_grid_trials(self.spec, self.host)
        for task in self.spec.tasks:
            self.grids[task] = task_grid(self.spec, task, self.host)
            self.rules[task] = task_rule(self.spec, task, self.host)
        for trials in grid_trials.values():
            for t in trials:
                self.records[t.key()] = record_for(t)
        self.save()
        self.run_trials([t for ts in grid_trials.values() for t in ts], "grid")
        final_trials = []
        for task in self.spec.tasks:
            selection = self.select(task, grid_trials[task])
            self.selections[task] = selection
            if self.spec.finals and selection.get("point") is not None:
                trials = build_final_trials(self.spec, task, selection["point"], self.host)
                for t in trials:
                    self.records[t.key()] = record_for(t)
                final_trials += trials
        self.save()
        self.run_trials(final_trials, "final")
        self.summarise_finals()
        self.save()
        return self.document()

    def select(self, task: str, trials: list[Trial]) -> dict[str, Any]:
        if not trials:
            points = grid_points(self.grids[task])
            return {"point": points[0], "trial": None, "val_top1": None, "candidates": 1, "failed": 0,
                    "reason": "one grid point: nothing to select"}
        records = [self.records[t.key()] for t in trials]
        rule = self.rules[task]
        best = select_trial(records, rule.select_by)
        failed = sum(r["status"] == "failed" for r in records)
        if best is None:
            return {"point": None, "trial": None, "val_top1": None, "candidates": len(records), "failed": failed,
                    "reason": "no grid trial finished"}
        return {"point": best["point"], "trial": best["name"], "val_top1": best["select_val"],
                "val_epoch": best["select_epoch"], "select_by": rule.select_by,
                "candidates": len(records), "failed": failed,
                "reason": f"highest val top-1 of the {rule.select_by} (ties: smaller lr, then smaller wd)"}

    def run_trials(self, trials: list[Trial], phase: str) -> None:
        self.on_phase(phase, len(trials))
        todo = []
        for index, trial in enumerate(trials):
            record = self.records[trial.key()]
            if trial.error is None and trial.state() == "finished" and config_mismatch(trial) is None:
                fill_metrics(record, read_summary(trial.run_dir) or {})
                record["outcome"] = "skipped"
                self.on_trial(record, None, len(trials))
            else:
                todo.append(trial)
        done = len(trials) - len(todo)
        if self.workers == 1 or len(todo) <= 1:
            for trial in todo:
                self.finish(trial, *self.execute(trial, None))
                done += 1
                self.on_trial(self.records[trial.key()], done, len(trials))
            return
        envs = worker_envs(self.workers)
        slots = list(range(self.workers))
        slot_lock = threading.Lock()

        def job(trial: Trial):
            with slot_lock:
                slot = slots.pop(0)
            try:
                return self.execute(trial, envs[slot])
            finally:
                with slot_lock:
                    slots.append(slot)

        with ThreadPoolExecutor(self.workers) as pool:
            futures = {pool.submit(job, t): t for t in todo}
            try:
                for future in as_completed(futures):
                    trial = futures[future]
                    self.finish(trial, *future.result())
                    done += 1
                    self.on_trial(self.records[trial.key()], done, len(trials))
            except KeyboardInterrupt:
                for f in futures:
                    f.cancel()
                self.save()
                raise

    def execute(self, trial: Trial, env: dict[str, str] | None) -> tuple[str, dict | None, str | None]:
        if trial.error is not None:
            return "failed", None, trial.error
        if trial.state() in ("finished", "partial"):
            mismatch = config_mismatch(trial)
            if mismatch:
                return "failed", None, (f"{trial.run_dir} holds a run with another config ({mismatch}); "
                                        "use another --out, or delete that directory")
        if env is None:
            return run_in_process(trial, self.host)
        return run_subprocess(trial, env)

    def finish(self, trial: Trial, outcome: str, summary: dict | None, error: str | None) -> None:
        with self.lock:
            record = self.records[trial.key()]
            if summary is not None:
                fill_metrics(record, summary)
                record["outcome"] = outcome
                record["error"] = None
            else:
                record.update(status="failed", outcome="failed", error=error)
            self.save()

    def summarise_finals(self) -> None:
        for task in self.spec.tasks:
            rows = [r for r in self.records.values() if r["task"] == task and r["final"]]
            if not rows:
                continue
            tops = [r["test_top1"] for r in rows if r["status"] == "finished"]
            self.finals[task] = {
                "point": self.selections[task]["point"],
                "seeds": [r["seed"] for r in rows if r["status"] == "finished"],
                "test_top1": tops,
                "mean": statistics.fmean(tops) if tops else None,
                "std": statistics.stdev(tops) if len(tops) > 1 else (0.0 if tops else None),
                "n": len(tops),
                "failed": sum(r["status"] == "failed" for r in rows),
            }

    # -- output ---------------------------------------------------------------------------------
    def counts(self) -> dict[str, int]:
        counts = {"total": len(self.records), "ran": 0, "resumed": 0, "skipped": 0, "failed": 0, "pending": 0}
        for record in self.records.values():
            counts[record["outcome"] or "pending"] += 1
        return counts

    def document(self) -> dict[str, Any]:
        spec = self.spec
        return {
            "sweep_dir": str(spec.sweep_dir.resolve()),
            "backbone": spec.backbone,
            "strategy": spec.strategy,
            "tasks": spec.tasks,
            "grid": {t: g for t, g in self.grids.items()},
            "seeds": spec.seeds,
            "protocols": {t: r.protocol for t, r in self.rules.items()},
            "rules": {t: "grid on train/val with the first seed; " + r.describe() + "; final runs with every seed; "
                      "report test top-1" for t, r in self.rules.items()},
            "started": self.started,
            "updated": _dt.datetime.now().isoformat(timespec="seconds"),
            "counts": self.counts(),
            "trials": list(self.records.values()),
            "selections": self.selections,
            "finals": self.finals,
        }

    def save(self) -> None:
        from . import atomic

        doc = self.document()
        atomic.write_json(self.spec.sweep_dir / SWEEP_JSON, doc)
        atomic.write_text(self.spec.sweep_dir / SWEEP_MD, render_markdown(doc))
        atomic.write_text(self.spec.sweep_dir / SWEEP_CSV, render_csv(doc))


# -- tables ---------------------------------------------------------------------------------------
def _num(value: Any, digits: int = 2) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def point_text(point: dict[str, Any] | None) -> str:
    if point is None:
        return "—"
    return " ".join(f"{SHORT_NAMES.get(k, k)}={v}" for k, v in ordered_point(point)) or "(defaults)"


def render_markdown(doc: dict[str, Any]) -> str:
    lines = [f"# Sweep: {doc['strategy']} on {doc['backbone']}", ""]
    lines += ["| task | selected | val top-1 | final test top-1 (mean ± std) | seeds |", "|---|---|---:|---:|---|"]
    for task in doc["tasks"]:
        sel = doc["selections"].get(task, {})
        fin = doc["finals"].get(task)
        test = f"{fin['mean']:.2f} ± {fin['std']:.2f}" if fin and fin["mean"] is not None else "—"
        seeds = ",".join(map(str, fin["seeds"])) if fin else ""
        lines.append(f"| {task} | {point_text(sel.get('point'))} | {_num(sel.get('val_top1')) or '—'} | {test} | {seeds} |")
    lines += ["", "| task | phase | trial | status | val top-1 | test top-1 | seconds |", "|---|---|---|---|---:|---:|---:|"]
    for r in doc["trials"]:
        status = r["status"] + (f" ({r['outcome']})" if r.get("outcome") in ("skipped", "resumed") else "")
        lines.append(f"| {r['task']} | {r['phase']} | {r['name']} | {status} | {_num(r.get('val_top1'))} | "
                     f"{_num(r.get('test_top1'))} | {_num(r.get('seconds'), 1)} |")
    return "\n".join(lines) + "\n"


def render_csv(doc: dict[str, Any]) -> str:
    keys = sorted({k for r in doc["trials"] for k in r["point"]}, key=lambda k: (k != "lr", k != "weight_decay", k))
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["task", "phase", "name", *keys, "seed", "status", "outcome", "val_top1", "test_top1",
                     "test_mean_per_class", "selected_epoch", "seconds", "run_dir", "error"])
    for r in doc["trials"]:
        writer.writerow([r["task"], r["phase"], r["name"], *[r["point"].get(k, "") for k in keys], r["seed"],
                         r["status"], r.get("outcome") or "", r.get("val_top1", ""), r.get("test_top1", ""),
                         r.get("test_mean_per_class", ""), r.get("selected_epoch", ""), r.get("seconds", ""),
                         r["run_dir"], (r.get("error") or "").splitlines()[0] if r.get("error") else ""])
    return buf.getvalue()


# -- planning -------------------------------------------------------------------------------------
def plan(spec: SweepSpec, host, prefix: list[str] | None = None) -> tuple[list[str], list[str]]:
    """(commands, notes): the grid trials not yet finished, plus the finals of every task whose grid
    is complete on disk (selection possible); notes say which tasks still need a sweep re-run."""
    commands, notes = [], []
    grid_trials = build_grid_trials(spec, host)
    for task in spec.tasks:
        trials = grid_trials[task]
        for t in trials:
            if t.error:
                notes.append(f"{t.key()}: {t.error}")
            elif t.state() != "finished":
                commands.append(shlex.join(t.command(prefix)))
        if not spec.finals:
            continue
        if trials and not all(t.state() == "finished" for t in trials):
            notes.append(f"{task}: the final runs ({len(spec.seeds)} seeds) depend on the selection; "
                         "re-run this sweep (or `--plan`) once the grid trials have finished")
            continue
        if trials:
            rule = task_rule(spec, task, host)
            best = select_trial([fill_metrics(record_for(t), read_summary(t.run_dir) or {}) for t in trials], rule.select_by)
            if best is None:
                notes.append(f"{task}: no finished grid trial to select from")
                continue
            point = best["point"]
        else:
            point = grid_points(task_grid(spec, task, host))[0]
        for t in build_final_trials(spec, task, point, host):
            if t.state() != "finished":
                commands.append(shlex.join(t.command(prefix)))
    return commands, notes
