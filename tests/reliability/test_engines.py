"""Engines and trials (issue 23): a trial's environment does not outlive it in a reused worker, executor
options are checked against what each executor declares before anything starts, and a connection to an
engine that never answers ends, within its bounded wait, in one `Error:` line naming the address."""

from __future__ import annotations

import os
import runpy
import socket
import sys
import threading
import time
from pathlib import Path

import pytest

from .conftest import assert_clean_error, run_lspt


# -- a trial's environment, inside a long-lived worker (run_trial_here, as Ray runs it) ------------
def _failing_job(tmp_path: Path, name: str, env: dict[str, str]) -> dict:
    """A trial whose `lspt tune --config` fails fast (its file is missing): run in-process all the same."""
    run_dir = tmp_path / name
    return {"argv": ["--config", str(tmp_path / f"{name}-missing.json"), "--out", str(run_dir)],
            "run_dir": str(run_dir), "env": env}


@pytest.fixture
def seen_env(monkeypatch):
    """os.environ as each in-process trial saw it (recorded as its `lspt tune` starts)."""
    seen: list[dict[str, str]] = []
    real = runpy.run_module

    def recording(name, *args, **kwargs):
        seen.append(dict(os.environ))
        return real(name, *args, **kwargs)

    monkeypatch.setattr(runpy, "run_module", recording)
    return seen


def test_a_trial_env_is_restored_after_each_trial_in_the_same_process(tmp_path, seen_env, tally):
    import torch

    from lspt_cli.sweep.executors import run_trial_here

    os.environ.pop("LSPT_TRIAL_MARK", None)
    before, threads = dict(os.environ), torch.get_num_threads()
    first = {"OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "LSPT_TRIAL_MARK": "first"}
    outcome, _, error = run_trial_here(_failing_job(tmp_path, "a", first))
    assert outcome == "failed" and "Error:" in error  # the trial really ran lspt tune, in this process
    assert dict(os.environ) == before and torch.get_num_threads() == threads
    outcome, _, _ = run_trial_here(_failing_job(tmp_path, "b", {"LSPT_OTHER": "2"}))
    assert outcome == "failed"
    assert dict(os.environ) == before and torch.get_num_threads() == threads
    # each trial saw its own env, and the second none of the first's
    assert seen_env[0]["LSPT_TRIAL_MARK"] == "first" and seen_env[0]["CUDA_VISIBLE_DEVICES"] == ""
    assert "LSPT_TRIAL_MARK" not in seen_env[1] and seen_env[1]["LSPT_OTHER"] == "2"
    assert seen_env[1].get("CUDA_VISIBLE_DEVICES") == before.get("CUDA_VISIBLE_DEVICES")
    tally.fault("a trial's env (added keys, CUDA_VISIBLE_DEVICES, threads) is undone before the worker's next trial")


def test_a_changed_variable_gets_its_old_value_back(tmp_path, seen_env, monkeypatch, tally):
    from lspt_cli.sweep.executors import run_trial_here

    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    monkeypatch.setenv("LSPT_NO_PROGRESS", "")
    run_trial_here(_failing_job(tmp_path, "a", {"OMP_NUM_THREADS": "1", "LSPT_NO_PROGRESS": "1"}))
    assert seen_env[0]["OMP_NUM_THREADS"] == "1"
    assert os.environ["OMP_NUM_THREADS"] == "2" and os.environ["LSPT_NO_PROGRESS"] == ""
    tally.fault("a trial's env overriding a worker's variable: the worker's value is restored")


def test_the_env_is_restored_when_the_trial_raises(tmp_path, monkeypatch, tally):
    from lspt_cli.sweep import executors

    before = dict(os.environ)

    def crash(name, *args, **kwargs):
        os.environ["LSPT_SET_BY_TRIAL"] = "1"  # the trial itself changes the env, then crashes
        raise RuntimeError("boom")

    monkeypatch.setattr(runpy, "run_module", crash)
    with pytest.raises(RuntimeError):
        executors._tune_here(["python", "-m", "lspt_cli", "tune"], {"LSPT_TRIAL_MARK": "x"})
    assert dict(os.environ) == before
    tally.fault("a trial that crashes inside the worker leaves the worker's env as it was")
