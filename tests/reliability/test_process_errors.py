"""Errors that cross a process boundary (issue 23): what a DataLoader worker, a Ray worker or a submitit
job raised arrives as its one-line message (and hint), never as the other process's stack inside an
`Error:` line; LSPT_DEBUG=1 keeps the full trace. And Ctrl-C during `prepare-data --cache` is a flag the
work loop checks, never an exception raised from inside a signal handler."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from .conftest import assert_clean_error, lspt_cmd, lspt_env, run_lspt
from .test_resources import BOMBS, _imagefolder

NOISE = ("Original Traceback", "DataLoader worker", "Traceback", 'File "')


def assert_no_worker_stack(text: str) -> None:
    for noise in NOISE:
        assert noise not in text, f"{noise!r} in {text!r}"


# -- DataLoader workers (num_workers >= 1) -------------------------------------------------------------
@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_bomb_met_by_a_dataloader_worker_in_prepare_data_cache_is_one_error_line(cli_err, tmp_path, workers,
                                                                                   isolated_lspt_home, tally):
    root = _imagefolder(tmp_path / "imgs", BOMBS["30000x30000 RGB"])
    code, out, err = cli_err("prepare-data", "imagefolder", "--root", root, "--name", "bombs", "--cache", "-j", workers, "-q")
    line = assert_clean_error(code, out, err, "zz-bomb.png", "too large to decode safely", exit_code=1)
    assert_no_worker_stack(err)
    assert "Hint: resize it, or remove it from the dataset" in err  # the worker's hint crossed too
    assert len(line) < 300
    assert not list((isolated_lspt_home / "data" / "tasks" / "bombs").glob("cache-*.json"))
    tally.bad_input(f"decompression bomb met by a DataLoader worker (prepare-data --cache -j {workers})")


def test_a_bomb_met_by_a_dataloader_worker_in_tune_is_one_error_line(cli_err, tmp_path, isolated_lspt_home, tally):
    root = _imagefolder(tmp_path / "imgs", BOMBS["30000x30000 RGB"])
    code, out, err = cli_err("prepare-data", "imagefolder", "--root", root, "--name", "bombs", "-q")
    assert code == 0, err
    code, out, err = cli_err("tune", "-b", "vit-tiny", "-t", "bombs", "-s", "linear", "--epochs", "1", "--batch-size", "4",
                             "--num-workers", "2", "--threads", "1", "--out", tmp_path / "run", "-q")
    assert_clean_error(code, out, err, "zz-bomb.png", "too large to decode safely", exit_code=1)
    assert_no_worker_stack(err)
    tally.bad_input("decompression bomb met by a DataLoader worker (tune --num-workers 2)")


def test_lspt_debug_keeps_the_worker_trace(tmp_path, tally):
    root = _imagefolder(tmp_path / "imgs", BOMBS["30000x30000 RGB"])
    result = run_lspt(tmp_path / "home", "prepare-data", "imagefolder", "--root", str(root), "--name", "bombs",
                      "--cache", "-j", "1", "-q", LSPT_DEBUG="1")
    assert result.returncode != 0
    assert "Original Traceback" in result.stderr and "__getitem__" in result.stderr
    tally.bad_input("LSPT_DEBUG=1: a DataLoader worker's error keeps its full trace")


class _Raising:
    """A map-style dataset whose item 3 raises `exc` (in whichever worker process reads it)."""

    def __init__(self, exc):
        self.exc = exc

    def __len__(self):
        return 6

    def __getitem__(self, i):
        if i == 3:
            raise self.exc
        return i


@pytest.mark.parametrize("case", ["ValueError, two lines", "KeyError", "DataError with hint", "OSError"])
def test_any_exception_in_a_real_dataloader_worker_arrives_as_its_message(case, monkeypatch, tally):
    from lspt_cli.data.cache import carried
    from lspt_cli.data.loader import TaskLoader
    from lspt_cli.errors import DataError

    monkeypatch.delenv("LSPT_DEBUG", raising=False)
    exc, kind, text = {
        "ValueError, two lines": (ValueError("bad sample 3\nsecond line"), ValueError, "bad sample 3\nsecond line"),
        "KeyError": (KeyError("missing-key"), KeyError, "missing-key"),
        "DataError with hint": (DataError("image x.png is unreadable", hint="re-download it"), DataError,
                                "image x.png is unreadable"),
        "OSError": (OSError(5, "Input/output error"), OSError, "Input/output error"),
    }[case]

    class Dataset(_Raising):
        __getitem__ = carried(_Raising.__getitem__)

    loader = TaskLoader(Dataset(exc), batch_size=None, num_workers=1)
    with pytest.raises(kind) as info:
        list(loader)
    assert text in str(info.value)
    assert_no_worker_stack(str(info.value))
    if case == "DataError with hint":
        assert info.value.message == text and info.value.hint == "re-download it"
    tally.fault(f"an exception ({case}) in a real DataLoader worker arrives as its own message")


# -- Ray workers and submitit jobs ---------------------------------------------------------------------
def test_a_real_ray_task_error_is_one_line(monkeypatch, tally):
    ray = pytest.importorskip("ray")
    from lspt_plugins.executors.ray_executor import ray_error_line

    monkeypatch.delenv("LSPT_DEBUG", raising=False)
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        with pytest.raises(ray.exceptions.RayError) as info:
            ray.get(ray.remote(max_retries=0)(json.loads).remote("{broken trial.json"))  # raises in the worker
    finally:
        if started:
            ray.shutdown()
    line = ray_error_line(info.value)
    assert line.startswith("JSONDecodeError: Expecting property name"), line
    assert 'File "' in str(info.value) and "pid=" in str(info.value)  # Ray's text: the worker's stack; the line: not
    assert_no_worker_stack(line)
    assert "\n" not in ray_error_line(ray.exceptions.WorkerCrashedError())
    monkeypatch.setenv("LSPT_DEBUG", "1")
    assert 'File "' in ray_error_line(info.value)  # the worker's stack, on demand
    tally.fault("an exception raised in a real Ray worker: one line (ValueError: ...), stack only with LSPT_DEBUG")


def test_a_real_submitit_job_failure_is_one_line(tmp_path, monkeypatch, tally):
    submitit = pytest.importorskip("submitit")
    from lspt_plugins.executors.slurm import _result

    monkeypatch.delenv("LSPT_DEBUG", raising=False)
    executor = submitit.AutoExecutor(folder=tmp_path / "submitit", cluster="local")
    executor.update_parameters(timeout_min=2)
    job = executor.submit(json.loads, "{broken trial.json")  # raises in the job's process
    job.wait()
    outcome, summary, error = _result(job)
    assert outcome == "failed" and summary is None
    assert "JSONDecodeError: Expecting property name" in error and "log:" in error, error
    assert_no_worker_stack(error)
    assert "\n" not in error
    tally.fault("an exception raised in a real submitit job: one line naming it and the job's log")


@pytest.mark.parametrize("output,expected", [
    ("Error: the run dir is locked by pid 12\nHint: wait for it\n", "the run dir is locked by pid 12 (wait for it)"),
    ("Traceback (most recent call last):\n  File \"x\", line 1, in <module>\nMemoryError\n", "MemoryError"),
    ("Caught DataError in DataLoader worker process 0.\nOriginal Traceback (most recent call last):\n"
     "  File \"w.py\", line 1, in f\n    x()\nlspt_cli.errors.DataError: bad image\n", "DataError: bad image"),
    ("Segmentation fault (core dumped)\n", "Segmentation fault (core dumped)"),
])
def test_a_trial_process_output_comes_down_to_one_line(output, expected, monkeypatch, tally):
    from lspt_cli.messages import process_error_line

    monkeypatch.delenv("LSPT_DEBUG", raising=False)
    assert process_error_line(output) == expected
    tally.fault(f"a failed trial process's output reduced to one line ({expected.split(':')[0]})")
