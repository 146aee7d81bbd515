"""The trainer's files in a run directory (their names: lspt_cli/rundir.py), torch-free.

Every write is atomic (temp file, fsync, rename: lspt_cli/atomic.py), and a failed one (disk full,
read-only, ...) is one clear TrainingError that says what is still whole and how to go on.
"""

from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import atomic, schema
from ..errors import TrainingError, UsageError
from ..rundir import CHECKPOINT_NAME, CONFIG_NAME, METRICS_NAME, SUMMARY_NAME

if TYPE_CHECKING:
    from ..recipes import ResolvedConfig


def check_writable(run_dir: Path) -> None:
    """Fail before training when the output directory cannot be written."""
    probe = run_dir / ".lspt-write-test"
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        try:
            probe.write_bytes(b"x" * 4096)
        finally:
            probe.unlink(missing_ok=True)
    except OSError as exc:
        raise TrainingError(
            f"{run_dir}: output directory is not writable ({exc.strerror or exc})",
            hint="choose another --out or free some space",
        ) from None


@contextlib.contextmanager
def writing(run_dir: Path, what: str):
    """A failed write in the run directory (disk full, read-only, ...) is one clear TrainingError:
    the writes are atomic, so every file there, the last checkpoint included, is still whole."""
    try:
        yield
    except OSError as exc:
        kept = "the previous checkpoint is intact" if (run_dir / CHECKPOINT_NAME).exists() else "no checkpoint was written yet"
        again = f"resume with: lspt tune --resume {run_dir}" if (run_dir / CONFIG_NAME).exists() else "run the same command again"
        raise TrainingError(
            f"could not write {what} in {run_dir} ({exc.strerror or exc}); {kept}",
            hint=f"free some space, then {again}",
        ) from None


def remove_temp_files(run_dir: Path) -> None:
    """Temp files of atomic writes a kill interrupted (never read)."""
    for stale in run_dir.glob(".*.tmp"):
        stale.unlink(missing_ok=True)


def write_config(run_dir: Path, document: dict[str, Any]) -> None:
    """config.json, written when a new run starts."""
    with writing(run_dir, CONFIG_NAME):
        atomic.write_json(run_dir / CONFIG_NAME, document)


def append_metrics(run_dir: Path, record: dict[str, Any]) -> None:
    """One finished epoch's line of metrics.jsonl."""
    with writing(run_dir, METRICS_NAME):
        atomic.append_line(run_dir / METRICS_NAME, json.dumps(record))


def trim_metrics(run_dir: Path, epochs_done: int) -> None:
    """Drop metric lines of epochs the checkpoint does not cover (a kill between the two writes)."""
    path = run_dir / METRICS_NAME
    if not path.exists():
        return
    lines = [line for line in atomic.read_regular_text(path, "metrics log", TrainingError).splitlines() if line.strip()]
    kept = [line for line in lines if _metrics_epoch(line) <= epochs_done]
    if len(kept) != len(lines):
        with writing(run_dir, METRICS_NAME):
            atomic.write_text(path, "".join(line + "\n" for line in kept))


def _metrics_epoch(line: str) -> float:
    """The epoch of a metrics.jsonl line; a line that does not parse (torn by an older lspt) is dropped."""
    try:
        return float(json.loads(line)["epoch"])
    except (ValueError, TypeError, KeyError):
        return math.inf


def write_summary(run_dir: Path, summary: dict[str, Any]) -> None:
    """summary.json, written last: its presence means the run finished."""
    with writing(run_dir, SUMMARY_NAME):
        atomic.write_json(run_dir / SUMMARY_NAME, summary)


def read_run_config(run_dir: Path) -> ResolvedConfig:
    """The config of the run in RUN_DIR (every field checked: lspt_cli/schema.py)."""
    path = Path(run_dir) / CONFIG_NAME
    if not Path(run_dir).is_dir():
        raise UsageError(f"{run_dir}: no such run directory")
    if not path.exists() and not path.is_symlink():
        raise UsageError(f"{run_dir}: not an lspt run directory (no {CONFIG_NAME})")
    return schema.run_config(path)
