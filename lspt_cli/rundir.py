"""The files of a `lspt tune` run directory (torch-free, shared by the engine, sweep and report)."""

from __future__ import annotations

from pathlib import Path

CONFIG_NAME = "config.json"  # the resolved config, written at the start
METRICS_NAME = "metrics.jsonl"  # one JSON record per finished epoch
CHECKPOINT_NAME = "checkpoint.pt"  # everything needed to resume, rewritten atomically every epoch
BEST_NAME = "best.safetensors"  # the best-val trainable state so far
BUNDLE_NAME = "bundle.safetensors"  # the final bundle
SUMMARY_NAME = "summary.json"  # written last: its presence means the run finished

RUN_FILES = (CONFIG_NAME, METRICS_NAME, CHECKPOINT_NAME, BEST_NAME, BUNDLE_NAME, SUMMARY_NAME)


def run_state(run_dir: Path) -> str:
    """'finished' (summary.json), 'partial' (a checkpoint to resume), 'stale' (leftovers) or 'new'."""
    run_dir = Path(run_dir)
    if (run_dir / SUMMARY_NAME).exists():
        return "finished"
    if (run_dir / CHECKPOINT_NAME).exists() and (run_dir / CONFIG_NAME).exists():
        return "partial"
    if run_dir.exists() and any((run_dir / n).exists() for n in RUN_FILES):
        return "stale"
    return "new"


def clear_run_files(run_dir: Path) -> None:
    """Remove an earlier run's files (`--overwrite`, a sweep trial's stale leftovers): the one cleanup
    every way of starting a run over uses. Other files in the directory (a trial's trial.json) stay."""
    for name in RUN_FILES:
        (Path(run_dir) / name).unlink(missing_ok=True)
