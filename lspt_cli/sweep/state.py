"""Trial state on disk: the sweep directory is the source of truth.

A trial's run dir says whether it is finished (summary.json), resumable (checkpoint) or new; its
record in sweep.json is rebuilt from it. A trial is *claimed* with a file lock next to its run dir
while an executor works on it, so two drivers (or an engine's retry of a job still running) never
run one trial at once: the second waits for the claim, then finds the trial finished or resumable.
"""

from __future__ import annotations

import contextlib
import shlex
from pathlib import Path
from typing import Any, Iterator

from ..errors import LsptError
from ..rundir import CONFIG_NAME, SUMMARY_NAME
from .grid import Trial

CLAIM_SUFFIX = ".claim"


@contextlib.contextmanager
def claim(run_dir: str | Path) -> Iterator[None]:
    """Hold the claim of a trial (`<task dir>/.<trial>.claim`), waiting for another holder to finish.

    An OS lock (filelock/flock): a holder that dies, SIGKILL included, releases it. The file is
    removed on release while still held, as in lspt_cli/locks.py (a waiter retries on the new path)."""
    from filelock import FileLock

    run_dir = Path(run_dir)
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    path = run_dir.parent / f".{run_dir.name}{CLAIM_SUFFIX}"
    lock = FileLock(str(path))
    with lock:
        try:
            yield
        finally:
            with contextlib.suppress(OSError):
                path.unlink()


# -- running --------------------------------------------------------------------------------------
def read_summary(run_dir: Path) -> dict[str, Any] | None:
    """The trial's checked summary.json (lspt_cli/schema.py), None when missing or malformed."""
    from .. import schema

    try:
        return schema.summary(Path(run_dir) / SUMMARY_NAME)
    except LsptError:
        return None


def config_mismatch(trial: Trial) -> str | None:
    """A difference between the run already in the trial's directory and what the trial asks for."""
    from .. import schema
    from ..settings import BY_NAME, RESULT_NEUTRAL

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
        if key in RESULT_NEUTRAL:
            continue  # how the run is carried out, not what it computes
        # a key an older lspt did not write trained at its default (ResolvedConfig.from_json reads it so)
        old = existing.get("train", {}).get(key, BY_NAME[key].default if key in BY_NAME else None)
        if old != value:
            return f"{key} {old!r} != {value!r}"
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
    if summary.get("diverged"):  # a `paper` run that stopped at a NaN loss and still competes (selection.py)
        record["diverged"] = summary["diverged"]
    return record

