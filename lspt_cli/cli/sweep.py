"""`lspt sweep`: grid search on val, selection, final runs with every seed (the VPT protocol).

See lspt_cli/sweep/ for the protocol. Trials are ordinary `lspt tune` run directories under the
sweep directory; re-running the same command resumes a sweep; `--executor` picks where they run
(local, slurm, ray, a plugin's); `--plan` prints one `lspt tune` command per trial instead.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

import typer

from ..errors import LsptError, UsageError
from ..messages import printable
from .output import complete_from, err, info, out, print_json, progress_enabled, warning_line
from .train_options import given_values, with_train_options


def default_sweep_dir(tasks: list[str], strategy: str, backbone: str) -> Path:
    """Deterministic (no timestamp), so running the same command again resumes the same sweep."""
    from .. import paths

    label = tasks[0].replace("/", "-").replace("*", "all") if len(tasks) == 1 else f"{len(tasks)}tasks"
    return paths.runs_dir() / f"sweep-{label}-{strategy}-{backbone}"


def _executor_options(items: list[str] | None) -> dict[str, str]:
    """`["partition=gpu", "gpus=1"]` -> {"partition": "gpu", "gpus": "1"} (values stay strings: the executor reads them)."""
    options: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise UsageError(f"--executor-opt expects KEY=VALUE, got {item!r}", hint="e.g. --executor-opt cluster=local")
        if key.strip() in options:
            raise UsageError(f"--executor-opt {key.strip()} given twice")
        options[key.strip()] = value.strip()
    return options


def register(app: typer.Typer) -> None:
    @app.command("sweep")
    @with_train_options("sweep", after="recipe")
    def sweep(
        backbone: str = typer.Option(..., "--backbone", "-b", help="Backbone name.", autocompletion=complete_from("backbone")),
        task: List[str] = typer.Option(..., "--task", "-t", help="Task or fnmatch pattern, e.g. 'vtab/*' (repeatable).",
                                       autocompletion=complete_from("dataset")),
        strategy: str = typer.Option("lspt", "--strategy", "-s", help="Prompt strategy.", autocompletion=complete_from("strategy")),
        grid: Optional[List[str]] = typer.Option(None, "--grid", help="KEY=V1,V2,... (repeatable), e.g. --grid lr=0.05,0.1 --grid wd=0,1e-4. Default: the recipe's [grid]."),
        seeds: Optional[str] = typer.Option(None, "--seeds", help="Comma-separated seeds; the first one runs the grid, all of them the final runs. Default 42,44,82,100,800."),
        workers: int = typer.Option(1, "--workers", "-j", min=1, help="Trials run concurrently (local: subprocesses, GPUs round-robin; slurm: the job array's parallelism; ray: the local cluster's size)."),
        executor: str = typer.Option("local", "--executor", "-x", help="Where trials run: local, slurm (submitit), ray, or a plugin's (lspt list executors).", autocompletion=complete_from("executor")),
        executor_opt: Optional[List[str]] = typer.Option(None, "--executor-opt", help="Executor option KEY=VALUE (repeatable), e.g. --executor-opt partition=gpu --executor-opt cluster=local (docs/cluster.md).  [default: none: the executor's defaults, see lspt list executors]"),
        out_dir: Optional[Path] = typer.Option(None, "--out", help="Sweep directory (default: under the data dir; the same command resumes it)."),
        plan_only: bool = typer.Option(False, "--plan", help="Print one `lspt tune` command per trial to run, run nothing."),
        finals: bool = typer.Option(True, "--finals/--no-finals", help="Run the selected point with every seed, as `lspt tune --final` (train+val; FGVC under protocol paper: train, test at the best val epoch)."),
        weights: Optional[Path] = typer.Option(None, "--weights", help="Backbone weights file.  [default: the backbone's file in <cache dir>/weights (lspt paths)]"),
        recipe: Optional[Path] = typer.Option(None, "--recipe", help="A TOML recipe overriding the built-in one.  [default: none: the built-in recipe]"),
        set_: Optional[List[str]] = typer.Option(None, "--set", help="Strategy option KEY=VALUE for every trial (repeatable).  [default: the recipe's, else the strategy's]"),
        json_: bool = typer.Option(False, "--json", help="Print sweep.json's document on stdout."),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress or logs on stderr."),
        **train,
    ):
        """Search a hyper-parameter grid on val, select per task, then run the finals with every seed."""
        from .. import paths
        from ..plugins import get_host
        from ..sweep import Sweep, SweepSpec, expand_tasks, parse_grid, parse_seeds, plan
        from .tune import parse_assignments

        host = get_host()
        host.backbones.get_buildable(backbone)
        spec_strategy = host.strategies.get(strategy)
        if weights is not None and not weights.is_file():
            raise UsageError(f"{weights}: no such weights file")
        tasks = expand_tasks(task, host)
        from ..loggers import check_loggers

        check_loggers(train["loggers"], host, train.get("log_options"))  # an unknown logger or a missing extra: before any trial
        from ..sweep import check_executor

        executor_options = _executor_options(executor_opt)
        check_executor(executor, executor_options, host)  # likewise, before the sweep dir is touched
        set_values = parse_assignments(set_)
        unknown = sorted(set(set_values) - set(spec_strategy.defaults or {}))
        if unknown and spec_strategy.defaults is not None:
            raise UsageError(f"unknown option '{unknown[0]}' for strategy '{strategy}'; allowed: "
                             f"{', '.join(sorted(spec_strategy.defaults)) or '(none)'}")
        overrides = given_values(train)
        spec = SweepSpec(
            backbone=backbone, strategy=strategy, tasks=tasks, seeds=parse_seeds(seeds),
            sweep_dir=(out_dir or default_sweep_dir(task if len(task) > 1 else [task[0]], strategy, backbone)),
            grid=parse_grid(grid), train_overrides=overrides, strategy_overrides=set_values,
            weights=str(weights) if weights else None, recipe=str(recipe) if recipe else None, finals=finals,
        )
        if not quiet:
            _warn_notes(spec, host)
        if plan_only:
            prefix = ["lspt"]
            for kind in ("cache", "data", "config"):
                where, source = paths.resolve(kind)
                if source == f"--{kind}-dir":
                    prefix += [f"--{kind}-dir", str(where.resolve())]
            commands, notes = plan(spec, host, prefix)
            for line in commands:
                sys.stdout.write(line + "\n")
            sys.stdout.flush()
            for note in notes:
                err.print(f"note: {printable(note)}", markup=False, highlight=False)
            if not quiet:
                err.print(f"{len(commands)} command(s) for {spec.sweep_dir}; afterwards run this sweep again "
                          "(same flags, without --plan) to select, run what is left and write sweep.json",
                          markup=False, highlight=False)
            return

        log = (lambda message: None) if (quiet or json_) else info
        log(f"Sweep directory: {spec.sweep_dir}")
        log(f"Tasks: {', '.join(tasks)}; seeds {','.join(map(str, spec.seeds))} (grid on seed {spec.seeds[0]})")
        bar = _SweepProgress() if progress_enabled(json_, quiet) else None

        def on_phase(phase: str, total: int) -> None:
            if bar is not None:
                bar.phase(phase, total)
            elif total:
                log(f"{phase}: {total} trial(s)")

        def on_trial(record: dict, done, total: int) -> None:
            if bar is not None:
                bar.advance(record)
                return
            if record["outcome"] == "skipped":
                return
            where = f"[{done}/{total}] " if done is not None else ""
            if record["status"] == "failed":
                first = (record.get("error") or "").strip().splitlines()
                log(f"{where}{record['task']} {record['name']}: FAILED ({first[-1] if first else 'no error text'})")
            else:
                val = record.get("val_top1")
                log(f"{where}{record['task']} {record['name']}: "
                    + (f"val {val:.2f}%, " if val is not None else "") + f"test {record['test_top1']:.2f}% "
                    f"({record.get('seconds') or 0:.1f} s{', resumed' if record['outcome'] == 'resumed' else ''})")

        runner = Sweep(spec, host, workers=workers, on_trial=on_trial, on_phase=on_phase,
                       executor=executor, executor_options=executor_options)
        try:
            if bar is not None:
                bar.start()
            doc = runner.run()
        except KeyboardInterrupt:
            runner.save()
            err.print(f"Interrupted: finished trials are kept in {spec.sweep_dir}; run the same command again to resume",
                      markup=False, highlight=False)
            raise typer.Exit(130)
        except Exception as exc:
            from ..engine.train import Interrupted

            if isinstance(exc, Interrupted):
                runner.save()
                err.print(f"Interrupted: the trial in {exc.run_dir} has a checkpoint; run the same command again to resume",
                          markup=False, highlight=False)
                raise typer.Exit(130)
            raise
        finally:
            if bar is not None:
                bar.stop()
        if json_:
            print_json(doc)
            _fail_if_trials_failed(doc, spec.sweep_dir)
            return
        c = doc["counts"]
        log(f"{c['total']} trials: {c['ran']} ran, {c['resumed']} resumed, {c['skipped']} skipped (already finished), "
            f"{c['failed']} failed; written {spec.sweep_dir / 'sweep.json'}, sweep.md, sweep.csv")
        from ..sweep import point_text

        for t in doc["tasks"]:
            sel, fin = doc["selections"].get(t, {}), doc["finals"].get(t)
            succeeded = sel.get("val_top1") is not None or bool(fin and fin["n"])
            line = f"{t} | {strategy} on {backbone}: "
            if sel.get("point") is not None and succeeded:
                line += f"selected {point_text(sel.get('point'))}"
                if sel.get("val_top1") is not None:
                    line += f" (val {sel['val_top1']:.2f}%)"
                if fin and fin["mean"] is not None:
                    line += f", test top-1 {fin['mean']:.2f} ± {fin['std']:.2f}% over {fin['n']} seed(s)"
            elif sel.get("point") is not None:  # never "selected" for a point none of whose trials succeeded
                line += f"no trial of {point_text(sel.get('point'))} succeeded"
            else:
                line += "nothing selected (" + sel.get("reason", "no selection") + ")"
            out.print(printable(line), markup=False)
        _fail_if_trials_failed(doc, spec.sweep_dir)


def _warn_notes(spec, host) -> None:
    """resolve_config's warnings (no recipe, a --recipe for another run, warm-up past the end), once."""
    from ..sweep import base_config

    seen: set[str] = set()
    for task in spec.tasks:
        try:
            notes = base_config(spec, task, host).notes
        except LsptError:
            continue  # the trials report it, each with its error
        for note in notes:
            if note not in seen:
                seen.add(note)
                warning_line(note)


def _fail_if_trials_failed(doc: dict, sweep_dir: Path) -> None:
    """A sweep with failed trials ends in one `Error:` line counting them (exit 1)."""
    c = doc["counts"]
    if c["failed"]:
        raise LsptError(f"{c['failed']} of {c['total']} trial(s) failed",
                        hint=f"each trial's error is in {sweep_dir / 'sweep.md'}; run the same command again to retry them")


class _SweepProgress:
    """One rich bar per phase on stderr."""

    def __init__(self):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[last]}"), TimeElapsedColumn(), console=err)
        self.task = None

    def start(self):
        self.progress.start()

    def stop(self):
        self.progress.stop()

    def phase(self, phase: str, total: int):
        self.task = self.progress.add_task(f"{phase} trials", total=total, last="")

    def advance(self, record: dict):
        last = f"{record['task']} {record['name']}: " + (
            "failed" if record["status"] == "failed" else f"test {record.get('test_top1') or 0:.1f}%")
        self.progress.update(self.task, advance=1, last=last)
