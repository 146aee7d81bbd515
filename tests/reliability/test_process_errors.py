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


# -- Ctrl-C during prepare-data --cache: a flag, never an exception raised from the handler ----------------
@pytest.fixture(scope="module")
def many_images(tmp_path_factory) -> Path:
    from PIL import Image

    root = tmp_path_factory.mktemp("sigint") / "imgs"
    for c in "ab":
        (root / "train" / c).mkdir(parents=True)
        for i in range(150):
            Image.new("RGB", (300, 200), (i, 0, 0)).save(root / "train" / c / f"{i}.png")
    return root


@pytest.mark.parametrize("workers,delay", [("2", 0.0), ("2", 0.003), ("2", 0.02), ("2", 0.2), ("1", 0.0), ("0", 0.05)])
def test_ctrl_c_to_the_process_group_during_prepare_data_cache(tmp_path, many_images, workers, delay, tally):
    """SIGINT to the whole process group, as a terminal's Ctrl-C sends it (the DataLoader workers get it
    too), at moments from "the workers are being forked" to "mid-cache": exit 130, one line, nothing
    printed by Python about an exception ignored in a finaliser, and nothing that looks complete."""
    home = tmp_path / "home"
    task_dir = home / "data" / "tasks" / "big"
    proc = subprocess.Popen(lspt_cmd("prepare-data", "imagefolder", "--root", str(many_images), "--name", "big",
                                     "--cache", "-j", workers), env=lspt_env(home), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not list(task_dir.glob(".cache-*.tmp")):
            assert proc.poll() is None, f"prepare-data ended before caching: {proc.communicate()}"
            assert time.monotonic() < deadline, "the cache never started"
            time.sleep(0.001)
        time.sleep(delay)
        os.killpg(proc.pid, signal.SIGINT)
        signalled = time.monotonic()
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, (proc.returncode, err)
    assert "Exception ignored" not in err and "Traceback" not in err and "_releaseLock" not in err, err
    assert err.strip().splitlines() == ["Interrupted: no manifest or cache was completed by this run"], err
    assert time.monotonic() - signalled < 30
    assert not (task_dir / "manifest.json").exists()
    assert not list(task_dir.glob("cache-*.json")), "a cache index (a usable-looking cache) was written"
    assert not list(task_dir.glob("*.tmp")) and not list(task_dir.glob(".*.tmp")), "temp files left"
    tally.fault(f"Ctrl-C to the process group during prepare-data --cache -j {workers} ({delay * 1000:g} ms in)")


def test_the_sigint_handler_only_sets_a_flag(tally):
    """In-process: the handler prepare-data installs returns (raises nothing) on the first Ctrl-C; the
    work loop's check raises KeyboardInterrupt; the previous handler is back afterwards."""
    from lspt_cli.cli import prepare_data

    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        with prepare_data._interruptible():
            handler = signal.getsignal(signal.SIGINT)
            assert handler(signal.SIGINT, None) is None  # no exception from the handler itself
            assert prepare_data._interrupted()
            prepare_data._check_interrupted()
    assert signal.getsignal(signal.SIGINT) is before
    tally.fault("the prepare-data SIGINT handler sets a flag and never raises")
