"""`lspt tune`: prompt-tune a frozen backbone on a task and write a bundle.

Options resolve as: CLI flags > --recipe FILE > the built-in recipe for (strategy, backbone,
benchmark) > defaults. `--dry-run` prints the resolved config. `--resume RUN_DIR` continues a
killed or interrupted run exactly where its last checkpoint left it.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
from pathlib import Path
from typing import Any, List, Optional

import typer

from .. import hookimpl, schema
from ..data.manifest import task_benchmark
from ..errors import UsageError
from ..run_handle import latest_link, point_latest
from ..settings import RESUME_MAY_CHANGE, one_of
from ..validate import option_name
from .output import complete_from, err, info, out, print_json, progress_enabled, safe, warning_line
from .train_options import given_values, with_train_options


def parse_assignments(items: list[str] | None) -> dict[str, Any]:
    """`--set num_prompts=50 --set spatial=none` -> {"num_prompts": 50, "spatial": "none"}."""
    result: dict[str, Any] = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--set expects KEY=VALUE, got {item!r}")
        try:
            value = json.loads(raw)
        except ValueError:
            value = raw
        result[key.strip()] = value
    return result


def default_run_dir(task: str, strategy: str, backbone: str) -> Path:
    from .. import paths

    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    from ..run_handle import unique_run_dir

    return unique_run_dir(paths.runs_dir() / f"{task.replace('/', '-')}-{strategy}-{backbone}-{stamp}")


class EpochProgress:
    """A rich progress bar on stderr per epoch: train loss and accuracy, images/s, ETA, and the epoch's
    val accuracy once it is measured (the bar observes the run through the `lspt_on_epoch_end` hook)."""

    def __init__(self):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.progress = Progress(
            TextColumn("epoch {task.fields[epoch]}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("train loss {task.fields[loss]:.4f}  train acc {task.fields[acc]:5.1f}%  {task.fields[ips]:.0f} img/s"
                       "{task.fields[val]}"),
            TimeRemainingColumn(),
            console=err,
            transient=False,
        )

    def __enter__(self):
        self.tasks: dict[int, Any] = {}  # epoch (1-based) -> its bar
        self.progress.start()
        return self

    @contextlib.contextmanager
    def watching(self, host):
        """Registered as a plugin for the run, so `lspt_on_epoch_end` brings each epoch's val accuracy."""
        if host is None:
            yield
            return
        host.add_plugin(self, "lspt-progress")
        try:
            yield
        finally:
            host.remove_plugin("lspt-progress")

    @hookimpl
    def lspt_on_epoch_end(self, run, metrics):
        task = self.tasks.get(metrics.get("epoch"))
        if task is not None and metrics.get("val_acc") is not None:
            self.progress.update(task, val=f"  val acc {metrics['val_acc']:5.1f}%")

    def __exit__(self, *exc):
        self.progress.stop()

    def factory(self, epoch: int, epochs: int, n_images: int):
        task = self.progress.add_task("train", total=n_images, epoch=f"{epoch + 1}/{epochs}", loss=0.0, acc=0.0, ips=0.0, val="")
        self.tasks[epoch + 1] = task

        def update(n: int, done: bool = False, **fields):
            if done:
                self.progress.update(task, visible=True)
                return
            self.progress.update(task, advance=n, **fields)

        return update


def register(app: typer.Typer) -> None:
    @app.command("tune")
    @with_train_options("tune", after="recipe")
    def tune(
        ctx: typer.Context,
        backbone: Optional[str] = typer.Option(None, "--backbone", "-b", help="Backbone name (lspt list backbones); required unless --resume.", autocompletion=complete_from("backbone")),
        task: Optional[str] = typer.Option(None, "--task", "-t", help="Task (lspt list datasets; prepare it first); required unless --resume.", autocompletion=complete_from("dataset")),
        strategy: str = typer.Option("lspt", "--strategy", "-s", help="Prompt strategy.", autocompletion=complete_from("strategy")),
        weights: Optional[Path] = typer.Option(None, "--weights", help="Backbone weights file (.safetensors/.pth/.pth.tar).  [default: the backbone's file in <cache dir>/weights (lspt paths); vit-tiny: random init]"),
        recipe: Optional[Path] = typer.Option(None, "--recipe", help="A TOML recipe overriding the built-in one.  [default: none: the built-in recipe for strategy x backbone x benchmark]"),
        set_: Optional[List[str]] = typer.Option(None, "--set", help="Strategy option KEY=VALUE (repeatable), e.g. --set num_prompts=50; VALUE is parsed as JSON, else a string.  [default: the recipe's, else the strategy's (lspt list strategies)]"),
        final: bool = typer.Option(False, "--final", help="Train on train+val (VTAB: train800val200) and report test."),
        out_dir: Optional[Path] = typer.Option(None, "--out", help="Run directory (default: under the data dir)."),
        config_file: Optional[Path] = typer.Option(None, "--config", help="Run the resolved config in FILE exactly (a sweep trial's trial.json, or a run's config.json); only --out, --overwrite and how the run is shown may be given with it.  [default: resolve one from the options]"),
        resume: Optional[Path] = typer.Option(None, "--resume", help=f"Continue the run in RUN_DIR from its last checkpoint, with the options it started with (only {RESUME_FLAGS} may change).  [default: start a new run]"),
        dry_run: bool = typer.Option(False, "--dry-run", help="Print the resolved config as JSON and exit."),
        json_: bool = typer.Option(False, "--json", help="Print one JSON summary on stdout."),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress or logs."),
        allow_existing: bool = typer.Option(False, "--overwrite", help="Start over in an --out dir that already holds a run."),
        **train,
    ):
        """Prompt-tune BACKBONE on TASK with STRATEGY; writes a run directory and a bundle."""
        from ..plugins import get_host
        from ..recipes import resolve_config

        host = get_host()
        if resume is not None:
            from ..engine.run_files import read_run_config

            config = _resume_config(ctx, read_run_config(resume), {k: train[k] for k in RESUME_MAY_CHANGE})
            run_dir = resume
        elif config_file is not None:
            _refuse_given(ctx, CONFIG_OPTIONS, "--config runs the config in its file as it is", "given with it",
                          "change the file, or resolve a new config from options without --config")
            config = schema.run_config(config_file)
            host.backbones.get_buildable(config.backbone)  # unknown names: before "Run directory:"
            host.strategies.get(config.strategy).options(config.strategy_config)
            run_dir = out_dir or default_run_dir(config.task, config.strategy, config.backbone)
        else:
            if not backbone or not task:
                raise UsageError("tune needs --backbone and --task (or --resume RUN_DIR)",
                                 hint="e.g. lspt tune --backbone vit-tiny --task digits")
            host.backbones.get_buildable(backbone)
            host.strategies.get(strategy)
            overrides = given_values(train)
            config = resolve_config(
                backbone=backbone, strategy=strategy, task=task, benchmark=task_benchmark(task),
                registered_recipes=host.recipes, recipe_file=recipe, train_overrides=overrides,
                strategy_overrides=parse_assignments(set_), weights=str(weights) if weights else None, final=final,
            )
            host.strategies.get(strategy).options(config.strategy_config)  # before any training
            run_dir = out_dir or default_run_dir(task, strategy, backbone)
            if not quiet:
                for note in config.notes:
                    warning_line(note)
        if dry_run:
            memory = _say_memory(config, host, quiet)  # what the backbone needs, and whether it fits
            options = host.strategies.get(config.strategy).options(config.strategy_config)
            sources = {**config.sources, **{f"strategy.{key}": f"strategy {config.strategy}'s default (docs/strategies.md)"
                                            for key in options if f"strategy.{key}" not in config.sources}}
            print_json({**config.to_json(), "strategy_options": options, "lr_trained": config.train.scaled_lr,
                        "run_dir": str(run_dir), "memory": memory, "sources": sources})
            return
        from ..loggers import check_loggers

        check_loggers(config.train.loggers, host, config.train.log_options)  # an unknown logger or a missing extra: before any training
        if resume is None:
            _check_task_ready(config.task)  # before "Run directory:": a missing task leaves nothing behind
        _say_memory(config, host, quiet)  # after the checks that refuse a run, before training
        summary = run_tune(config, run_dir, resume=resume is not None, json_=json_, quiet=quiet, host=host,
                           allow_existing=allow_existing)
        if os.environ.get("RANK", "0") != "0":  # under torchrun, rank 0 alone reports
            return
        point_latest(Path(run_dir).resolve())  # runs/<task>-<strategy>-<backbone>-latest (lspt_cli/run_handle.py)
        if json_:
            print_json(summary)
        else:
            _print_summary(summary, quiet=quiet)


# What `--resume` may change: where and how fast the run continues, never what it computes.
RESUME_OPTIONS = {"resume", "json_", "quiet", "dry_run", *RESUME_MAY_CHANGE}
RESUME_FLAGS = one_of(option_name(k) for k in RESUME_MAY_CHANGE).replace("'", "")


# What may stand beside `--config FILE`: where the run goes and how it is shown, never what it computes.
CONFIG_OPTIONS = {"config_file", "out_dir", "allow_existing", "json_", "quiet", "dry_run"}


def _refuse_given(ctx, allowed: set[str], why: str, verb: str, hint: str) -> None:
    """Options given on the command line besides `allowed` are refused, never silently ignored."""
    given = [p.opts[0] for p in ctx.command.params if p.name not in allowed
             and getattr(ctx.get_parameter_source(p.name), "name", "") == "COMMANDLINE"]
    if given:
        raise UsageError(f"{why}; {', '.join(given)} cannot be {verb}", hint=hint)


def _resume_config(ctx, config, changes: dict):
    """The recorded config of a resumed run, with --device/--num-workers/--threads applied.

    Any other option on the command line is refused rather than silently ignored: changing e.g.
    --epochs would change the lr schedule of the epochs already done."""
    import dataclasses

    _refuse_given(ctx, RESUME_OPTIONS, "--resume continues a run with the options it started with", "changed",
                  f"only {RESUME_FLAGS} may change; start a new run (--out DIR) for other options")
    config.train = dataclasses.replace(config.train, **{k: v for k, v in changes.items() if v is not None})
    config.train.validate("--resume")
    return config


def _say_memory(config, host, quiet: bool) -> dict | None:
    """One line on stderr before the run: the backbone's parameters, tokens per image and the memory
    the run needs against what is free, and a warning suggesting --grad-checkpointing (then a
    smaller batch) when it will not fit (engine/memory_estimate.py). A warning, never a refusal."""
    from ..engine.memory_estimate import run_memory

    memory = run_memory(config, host)
    if memory and not quiet and os.environ.get("RANK", "0") == "0":
        info(memory["line"])
        for index, line in enumerate(memory["warnings"]):
            warning_line(line) if index == 0 else info("  " + line)
    return memory


def _check_task_ready(task: str) -> None:
    """The task's manifest loads (digits prepares itself), or its DataError says how to prepare it."""
    from ..data.manifest import load_manifest

    load_manifest(task)


def _check_fresh_run_dir(run_dir: Path, allow_existing: bool) -> None:
    """A new run starts in an empty directory, or over an earlier run's files with --overwrite."""
    from ..rundir import clear_run_files, run_state

    if run_dir.exists() and not run_dir.is_dir():
        raise UsageError(f"{run_dir}: --out must be a directory")
    state = run_state(run_dir)
    if state != "new":
        if not allow_existing:
            what = "a run" if state in ("finished", "partial") else "files of an earlier run"
            raise UsageError(
                f"{run_dir} already holds {what}",
                hint=f"continue it with: lspt tune --resume {run_dir}  (or pass --overwrite to start over)"
                if state == "partial" else "pass --overwrite to start over, or choose another --out",
            )
        clear_run_files(run_dir)


def run_tune(config, run_dir: Path, *, resume: bool, json_: bool, quiet: bool, host, allow_existing: bool = False) -> dict:
    """Run training with progress on stderr; Ctrl-C -> checkpoint + exit 130.

    The run dir is locked for the whole run (lspt_cli/locks.py): a second `--out D` or `--resume D`
    while D trains is refused naming the pid; under torchrun rank 0 holds the lock for all ranks."""
    from ..engine.run_files import check_writable
    from ..locks import hold

    if run_dir.exists() and not run_dir.is_dir():
        raise UsageError(f"{run_dir}: --out must be a directory")
    created = not run_dir.exists()
    log = (lambda message: None) if (quiet or json_) else (lambda message: info(message))
    show = progress_enabled(json_, quiet)
    lock = hold(run_dir, "run directory") if os.environ.get("RANK", "0") == "0" else contextlib.nullcontext()
    try:
        with lock:
            if not resume:  # under the lock: a run that started meanwhile is seen here
                _check_fresh_run_dir(run_dir, allow_existing)
            check_writable(run_dir)
            if not resume:
                log(f"Run directory: {run_dir}")
            return _run(config, run_dir, resume=resume, log=log, show=show, host=host)
    except BaseException:
        if created and run_dir.is_dir() and not any(run_dir.iterdir()):
            run_dir.rmdir()  # a run that failed before writing anything leaves no empty directory
        raise


def _run(config, run_dir: Path, *, resume: bool, log, show: bool, host) -> dict:
    from ..engine.train import Interrupted, Trainer

    try:
        if show:
            with EpochProgress() as bar, bar.watching(host):
                trainer = Trainer(config, run_dir, host=host, log=log, progress_factory=bar.factory)
                summary = trainer.run(resume=resume)
        else:
            trainer = Trainer(config, run_dir, host=host, log=log, progress_factory=None)
            summary = trainer.run(resume=resume)
    except Interrupted as exc:
        err.print(
            f"Interrupted in epoch {exc.epoch}: checkpoint written to {exc.run_dir / 'checkpoint.pt'}\n"
            f"Resume with: lspt tune --resume {exc.run_dir}",
            markup=False, highlight=False,
        )
        raise typer.Exit(130)
    return summary


def _print_summary(summary: dict, quiet: bool = False) -> None:
    val = summary.get("val_top1")
    out.print(
        f"{safe(summary['task'])} | {safe(summary['strategy'])} on {safe(summary['backbone'])}: "
        f"test top-1 {summary['test_top1']:.2f}% (mean per class {summary['test_mean_per_class']:.2f}%)"
        + (f", val top-1 {val:.2f}%" if val is not None else "")
        + f", {_selected(summary)}, {summary['seconds']:.1f} s, "
        f"{summary['params']['trainable']:,} trainable parameters"
    )
    if summary.get("bundle"):
        out.print(f"bundle: {safe(summary['bundle'])} ({summary['bundle_bytes']:,} bytes)")
    link = latest_link(Path(summary["run_dir"]))
    if link is not None and link.resolve() == Path(summary["run_dir"]).resolve():
        out.print(f"latest: {safe(str(link))}")
    note = None if quiet else _baseline_note(Path(summary["run_dir"]))
    if note:
        err.print(note, markup=False, highlight=False)


def _selected(summary: dict) -> str:
    """"epoch 19/25 selected on val (best val top-1)" or "epoch 25/25 (last epoch (train+val))"."""
    epoch = f"epoch {summary['selected_epoch']}/{summary['epochs']}"
    selection = summary.get("selection") or ""
    if selection.startswith("best val"):
        return f"{epoch} selected on val ({selection})"
    return f"{epoch} ({selection})" if selection else epoch


def _baseline_note(run_dir: Path) -> str | None:
    """What the accuracy is measured against: chance (1 / classes), and a random-init backbone."""
    from ..rundir import CONFIG_NAME

    try:
        meta = json.loads((run_dir / CONFIG_NAME).read_text())["meta"]
        classes = len(meta["task"]["classes"])
        source = str(meta["backbone"].get("source") or "")
    except (OSError, ValueError, KeyError, TypeError):
        return None
    note = f"Note: chance is {100.0 / classes:.1f}% ({classes} classes)"
    if source.startswith("random init"):
        note += f"; the backbone is not pretrained ({source}), so the number only shows that the pipeline learns"
    return note + "."
