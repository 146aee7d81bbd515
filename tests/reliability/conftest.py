"""Shared machinery of the reliability suite: a tally of what was proven, real `lspt` subprocesses,
the reference bundle of an uninterrupted run, and checks that every file of a run directory is whole.

Counting is honest: a test adds entries with `tally.fault(...)` / `tally.bad_input(...)` /
`tally.fuzz(...)`, and they count only if that test's call phase passed (tests/conftest.py sums
them, also across the workers of `pytest -n`). The terminal summary prints the totals.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import TALLY, shared_tmp

# The run every fault test uses: small enough to take ~2 s of training, long enough (3 epochs of
# 21 batches) that a random kill lands in every phase: startup, mid-epoch, validation, writes.
TUNE_ARGS = ["--backbone", "vit-tiny", "--task", "digits", "--strategy", "vpt-deep", "--epochs", "3",
             "--warmup-epochs", "1", "--batch-size", "64", "--set", "num_prompts=2", "--seed", "7"]

class Tally:
    """What one test proved; counted by the root conftest (tests/conftest.py) if the test passes."""

    def __init__(self, node):
        self.node = node

    def _add(self, kind: str, what: str, n: int = 1) -> None:
        self.node.user_properties.append((TALLY, (kind, what, n)))

    def fault(self, what: str) -> None:
        self._add("fault", what)

    def bad_input(self, what: str) -> None:
        self._add("bad_input", what)

    def fuzz(self, what: str, n: int = 1) -> None:
        self._add("fuzz", what, n)


@pytest.fixture
def tally(request) -> Tally:
    return Tally(request.node)


# -- subprocesses -----------------------------------------------------------------------------------
def lspt_env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LSPT_", "PYTEST_"))}
    # the CPU's bf16 answer stays the suite's (tests/conftest.py): a subprocess run and an in-process
    # reference must compute in the same precision, whatever this machine's CPU offers
    env.update(LSPT_CPU_BF16=os.environ.get("LSPT_CPU_BF16", "0"))
    env.update(LSPT_HOME=str(home), LSPT_LOAD_PLUGINS="", NO_COLOR="1", LSPT_NO_PROGRESS="1",
               OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.update(extra)
    return env


def lspt_cmd(*args: str) -> list[str]:
    # torch.set_num_threads(1) too: the bundle must not depend on how busy the shared cores are
    boot = "import sys, torch; torch.set_num_threads(1); from lspt_cli.cli import main; sys.argv[0] = 'lspt'; main()"
    return [sys.executable, "-c", boot, *args]


def run_lspt(home: Path, *args: str, timeout: float = 120, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(lspt_cmd(*args), env=lspt_env(home, **env), capture_output=True, text=True, timeout=timeout)


def start_lspt(home: Path, *args: str, **env: str) -> subprocess.Popen:
    return subprocess.Popen(lspt_cmd(*args), env=lspt_env(home, **env), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def wait_for(predicate, proc: subprocess.Popen, timeout: float = 60.0) -> bool:
    """Poll until predicate() or the process ends; True if the predicate came true."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.01)
    raise TimeoutError("the lspt subprocess never reached the expected point")


def kill(proc: subprocess.Popen, sig=signal.SIGKILL) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)


# -- the reference run ----------------------------------------------------------------------------
@pytest.fixture(scope="session")
def reference_bundle(tmp_path_factory) -> Path:
    """The bundle of an uninterrupted run of TUNE_ARGS (subprocess, own LSPT_HOME); read-only.
    Trained once per test run: the workers of `pytest -n` share it (the first one trains it)."""
    from filelock import FileLock

    base = shared_tmp(tmp_path_factory) / "reference"
    done = base / "run" / "summary.json"
    with FileLock(str(base) + ".lock"):
        if not done.exists():
            shutil.rmtree(base, ignore_errors=True)  # a worker that failed here left a partial run
            result = run_lspt(base / "home", "tune", *TUNE_ARGS, "--out", str(base / "run"), "--json")
            assert result.returncode == 0, result.stderr
    return base / "run" / "bundle.safetensors"


@pytest.fixture(scope="session")
def reference(reference_bundle):
    """The reference bundle's tensors."""
    from safetensors.torch import load_file

    return load_file(str(reference_bundle))


def assert_same_bundle(path: Path, reference) -> None:
    import torch
    from safetensors.torch import load_file

    got = load_file(str(path))
    assert got.keys() == reference.keys()
    for key in reference:
        assert torch.equal(got[key], reference[key]), f"tensor {key} differs from the uninterrupted run"


# -- whole files ----------------------------------------------------------------------------------
def assert_run_dir_whole(run_dir: Path, *, allow_temp: bool = False) -> dict[str, int]:
    """Every file in the run directory parses completely; no temp file is left behind (with
    `allow_temp`, after a SIGKILL: the hidden temp file of the interrupted atomic write may remain,
    never read, and is swept by the resume). Returns {file name: detail} (checkpoint epoch, metrics
    lines) for the caller's assertions."""
    import torch
    from safetensors.torch import load_file

    from lspt_cli import bundle

    info: dict[str, int] = {}
    if not run_dir.exists():
        return info
    for path in sorted(run_dir.iterdir()):
        name = path.name
        if allow_temp and name.startswith(".") and (name.endswith(".tmp") or name == ".lspt-write-test"):
            continue
        if allow_temp and name == ".lspt.lock":  # the lock file of a killed run (its lock died with it)
            continue
        assert not name.endswith(".tmp"), f"temp file left behind: {path}"
        assert name != ".lspt-write-test", f"write probe left behind: {path}"
        if name in ("config.json", "summary.json"):
            assert isinstance(json.loads(path.read_text()), dict), name
        elif name == "metrics.jsonl":
            text = path.read_text()
            assert text == "" or text.endswith("\n"), "metrics.jsonl ends in a torn line"
            epochs = [json.loads(line)["epoch"] for line in text.splitlines()]
            assert epochs == list(range(1, len(epochs) + 1)), f"metrics epochs {epochs}"
            info[name] = len(epochs)
        elif name == "checkpoint.pt":
            state = torch.load(path, map_location="cpu", weights_only=True)
            assert state["version"] == 1 and all(torch.isfinite(v).all() for v in state["trainable"].values())
            info[name] = state["epoch"]
        elif name.endswith(".safetensors"):
            bundle.read_header(path)
            assert load_file(str(path))
        else:
            raise AssertionError(f"unexpected file in the run directory: {path}")
    return info


# -- clean CLI errors -----------------------------------------------------------------------------
def assert_clean_error(code: int, stdout: str, stderr: str, *needles: str, exit_code: int | None = None) -> str:
    """Non-zero exit, exactly one `Error:` line on stderr containing every needle, no traceback,
    nothing on stdout. Returns the Error line."""
    assert code != 0, f"exit code 0; stderr: {stderr}"
    if exit_code is not None:
        assert code == exit_code, f"exit code {code}, expected {exit_code}; stderr: {stderr}"
    assert "Traceback" not in stderr and "Traceback" not in stdout, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, f"expected one Error: line, got {errors!r}; stderr: {stderr}"
    for needle in needles:
        assert needle in errors[0], f"{needle!r} not in {errors[0]!r}"
    assert stdout.strip() == "", f"stdout should be empty on error: {stdout!r}"
    return errors[0]


@pytest.fixture
def cli_err():
    """Run the CLI in-process and return (exit code, stdout, stderr); exceptions escape (no catch)."""
    from typer.testing import CliRunner

    from lspt_cli.cli import create_app

    def invoke(*args):
        result = CliRunner().invoke(create_app(), [str(a) for a in args], catch_exceptions=False)
        return result.exit_code, result.stdout, result.stderr

    return invoke
