"""Run dirs, task data dirs and sweep dirs are locked while lspt writes them (lspt_cli/locks.py), with
two real processes: the second is refused at once with the holder's pid, the first finishes as if
alone, and a lock whose holder was SIGKILLed never blocks anyone.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from lspt_cli.locks import LOCK_NAME, LockedError, hold, holder_pid

from .conftest import (TUNE_ARGS, assert_clean_error, assert_run_dir_whole, kill, lspt_env, run_lspt,
                       start_lspt, wait_for)

# a longer run than TUNE_ARGS: long enough for a second process to start while it trains
LONG_ARGS = [a if a != "3" else "40" for a in TUNE_ARGS]


def _holder(directory: Path, home: Path) -> subprocess.Popen:
    """Another process holding `directory`'s lock (lspt's own lock code) until killed."""
    code = textwrap.dedent(f"""
        import sys, time
        from lspt_cli.locks import hold
        with hold({str(directory)!r}, "test directory"):
            print("held", flush=True)
            time.sleep(600)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], env=lspt_env(home), stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def _lock_pid(run: Path):
    return lambda: (run / LOCK_NAME).exists() and holder_pid(run / LOCK_NAME) is not None


def test_two_tunes_into_one_run_dir(tmp_path, tally):
    run = tmp_path / "run"
    first = start_lspt(tmp_path / "home", "tune", *TUNE_ARGS, "--out", str(run), "--json")
    try:
        assert wait_for(_lock_pid(run), first, timeout=120)
        assert holder_pid(run / LOCK_NAME) == first.pid
        second = run_lspt(tmp_path / "home", "tune", *TUNE_ARGS, "--out", str(run), "--json", timeout=120)
        assert_clean_error(second.returncode, second.stdout, second.stderr, str(run), "in use", f"pid {first.pid}", exit_code=1)
        tally.fault("second `tune --out D` while D trains: refused naming the pid")
        out, err = first.communicate(timeout=300)
    finally:
        kill(first)
    assert first.returncode == 0, err
    summary = json.loads(out)
    assert summary["epochs"] == 3
    info = assert_run_dir_whole(run)
    assert info["metrics.jsonl"] == 3 and info["checkpoint.pt"] == 3, "the first run lost or mixed epochs"
    assert not (run / LOCK_NAME).exists(), "a finished run leaves no lock file"


@pytest.mark.parametrize("second", ["resume", "overwrite"])
def test_resume_or_overwrite_while_training_is_refused(tmp_path, tally, second):
    run = tmp_path / "run"
    first = start_lspt(tmp_path / "home", "tune", *LONG_ARGS, "--out", str(run), "--json")
    try:
        assert wait_for(lambda: (run / "checkpoint.pt").exists() and _lock_pid(run)(), first, timeout=180)
        before = {p.name: p.stat().st_mtime_ns for p in run.iterdir() if not p.name.startswith(".")}
        args = ["--resume", str(run)] if second == "resume" else [*LONG_ARGS, "--out", str(run), "--overwrite"]
        result = run_lspt(tmp_path / "home", "tune", *args, "--json", timeout=120)
        assert_clean_error(result.returncode, result.stdout, result.stderr, "in use", f"pid {first.pid}", exit_code=1)
        assert (run / "checkpoint.pt").exists() and (run / "config.json").exists(), "the refused process deleted files"
        assert set(before) <= {p.name for p in run.iterdir()}
        tally.fault(f"`tune {args[0]}` on a run dir that is training: refused naming the pid")
    finally:
        kill(first)
        first.wait(timeout=60)


def test_a_lock_left_by_sigkill_never_blocks(tmp_path, tally):
    run = tmp_path / "run"
    first = start_lspt(tmp_path / "home", "tune", *TUNE_ARGS, "--out", str(run), "--json")
    try:
        assert wait_for(lambda: (run / "checkpoint.pt").exists(), first, timeout=180)
    finally:
        kill(first)
        first.wait(timeout=60)
    assert (run / LOCK_NAME).exists(), "the killed process left its lock file (the lock itself died with it)"
    assert holder_pid(run / LOCK_NAME) == first.pid
    started = time.monotonic()
    result = run_lspt(tmp_path / "home", "tune", "--resume", str(run), "--json", timeout=300)
    assert result.returncode == 0, result.stderr
    assert time.monotonic() - started < 300
    assert json.loads(result.stdout)["epochs"] == 3
    assert not (run / LOCK_NAME).exists()
    assert_run_dir_whole(run)
    tally.fault("stale lock file after SIGKILL: resume proceeds at once")


def test_prepare_data_refuses_a_task_dir_in_use_and_proceeds_after_a_kill(tmp_path, tally):
    from PIL import Image

    home = tmp_path / "home"
    root = tmp_path / "imgs"
    for c in "ab":
        for i in range(4):
            (root / "train" / c).mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (12, 12), (i * 40, 0, 0)).save(root / "train" / c / f"{i}.png")
    task_dir = home / "data" / "tasks" / "mine"
    holder = _holder(task_dir, home)
    try:
        for extra in ([], ["--cache", "--input-size", "16"], ["--verify"]):
            # LSPT_PREPARE_WAIT=0: refused at once (by default it waits for the holder, bounded:
            # tests/reliability/test_prepare_concurrency.py)
            result = run_lspt(home, "prepare-data", "imagefolder", "--root", str(root), "--name", "mine", *extra,
                              timeout=120, LSPT_PREPARE_WAIT="0")
            assert_clean_error(result.returncode, result.stdout, result.stderr, "task data directory", "in use",
                               f"pid {holder.pid}", exit_code=1)
            assert not (task_dir / "manifest.json").exists()
            tally.fault("prepare-data " + " ".join(extra[:1] or ["(plain)"]) + " on a task dir another process holds")
    finally:
        kill(holder)
        holder.wait(timeout=60)
    result = run_lspt(home, "prepare-data", "imagefolder", "--root", str(root), "--name", "mine", "--json", timeout=120)
    assert result.returncode == 0, result.stderr
    assert (task_dir / "manifest.json").is_file() and not (task_dir / LOCK_NAME).exists()
    tally.fault("prepare-data after the holder of the task dir was SIGKILLed")


def test_sweep_dir_in_use_is_refused(tmp_path, tally):
    home = tmp_path / "home"
    sweep = tmp_path / "sweep"
    holder = _holder(sweep, home)
    try:
        result = run_lspt(home, "sweep", "--backbone", "vit-tiny", "--task", "digits", "--strategy", "linear",
                          "--epochs", "1", "--grid", "lr=0.1", "--seeds", "1", "--out", str(sweep), "-q", timeout=120)
        assert_clean_error(result.returncode, result.stdout, result.stderr, "sweep directory", "in use",
                           f"pid {holder.pid}", exit_code=1)
        assert not (sweep / "sweep.json").exists()
        tally.fault("a second sweep on a sweep dir in use")
    finally:
        kill(holder)
        holder.wait(timeout=60)


def test_in_process_trial_on_a_locked_run_dir_fails_naming_the_pid(tmp_path, tally):
    """A sweep's trial whose run dir another process trains is recorded as failed (pid named), not run twice."""
    from lspt_cli.recipes import ResolvedConfig
    from lspt_cli.sweep import Trial, run_in_process

    run = tmp_path / "trial"
    holder = _holder(run, tmp_path)
    try:
        trial = Trial(task="digits", point={"lr": 0.1}, seed=1, final=False, run_dir=run,
                      config=ResolvedConfig(backbone="vit-tiny", strategy="linear", task="digits", benchmark="custom"))
        outcome, summary, error = run_in_process(trial, host=None)
        assert outcome == "failed" and summary is None
        assert "in use" in error and f"pid {holder.pid}" in error
        assert list(run.iterdir()) == [run / LOCK_NAME], "the refused trial wrote into the run dir"
        tally.fault("in-process sweep trial on a run dir another process holds")
    finally:
        kill(holder)
        holder.wait(timeout=60)


def test_lock_semantics_in_one_process(tmp_path, tally):
    """Re-entry from the same process is refused too (flock is per open file), the pid is recorded
    while held, and the lock file is gone after release, also after an exception."""
    directory = tmp_path / "d"
    with hold(directory, "run directory") as path:
        assert path == directory / LOCK_NAME and holder_pid(path) == os.getpid()
        with pytest.raises(LockedError) as exc:
            with hold(directory, "run directory"):
                pass
        assert f"pid {os.getpid()}" in exc.value.message and exc.value.hint
    assert not (directory / LOCK_NAME).exists()
    with pytest.raises(ZeroDivisionError):
        with hold(directory, "run directory"):
            1 / 0
    assert not (directory / LOCK_NAME).exists()
    with hold(directory, "run directory"):  # free again
        pass
    (tmp_path / "file").write_text("x")
    with pytest.raises(Exception) as exc:
        with hold(tmp_path / "file", "run directory"):
            pass
    assert "file" in str(exc.value)
    tally.fault("lock re-entry from the same process")
    tally.bad_input("a lock on a path that is a file")


def test_lock_waits_only_when_asked(tmp_path, tally):
    """Auto-prepare (two first uses of digits at once) waits for the holder; runs never wait."""
    directory = tmp_path / "d"
    holder = _holder(directory, tmp_path)
    try:
        started = time.monotonic()
        with pytest.raises(LockedError):
            with hold(directory, "task data directory"):
                pass
        assert time.monotonic() - started < 5
        with pytest.raises(LockedError):
            with hold(directory, "task data directory", wait=0.5):
                pass
        assert time.monotonic() - started >= 0.5
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=60)
        with hold(directory, "task data directory", wait=30):
            pass
        tally.fault("a waiting lock acquires as soon as the holder dies")
    finally:
        kill(holder)
        holder.wait(timeout=60)
