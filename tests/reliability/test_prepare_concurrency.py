"""Preparing a task that another process is preparing (issue 23): the second waits for the first (its
pid named, bounded by LSPT_PREPARE_WAIT) and then reuses its work, since the result is the same; three
`prepare-data digits` started together on a fresh home all succeed. Real concurrent processes."""

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

from .conftest import assert_clean_error, lspt_cmd, lspt_env, run_lspt


def start_prepare(home: Path, *args: str, **env: str) -> subprocess.Popen:
    return subprocess.Popen(lspt_cmd("prepare-data", "digits", *args), env=lspt_env(home, **env),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def hold_task_dir(home: Path, seconds: float, release: Path | None = None) -> subprocess.Popen:
    """Another process holding digits' task-dir lock (as a prepare-data in progress does) for `seconds`,
    or until the file `release` appears (a test that must see the other process wait, on a loaded machine)."""
    code = textwrap.dedent(f"""
        import time
        from pathlib import Path
        from lspt_cli.data.manifest import task_dir
        from lspt_cli.locks import hold
        release = {str(release) if release else ""!r}
        with hold(task_dir("digits"), "task data directory"):
            print("held", flush=True)
            end = time.monotonic() + {seconds}
            while time.monotonic() < end and not (release and Path(release).exists()):
                time.sleep(0.05)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], env=lspt_env(home), stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_three_prepare_data_started_together_on_a_fresh_home_all_succeed(tmp_path, tally):
    home = tmp_path / "home"
    procs = [start_prepare(home, "--json") for _ in range(3)]
    results = [(p.wait(timeout=180), *p.communicate()) for p in procs]
    for code, out, err in results:
        assert code == 0, err
        assert "Error" not in err and "Traceback" not in err
    docs = [json.loads(out) for _, out, _ in results]
    assert sorted(d["tasks"][0]["changed"] for d in docs) == [False, False, True]  # one prepared, two reused it
    assert len({d["tasks"][0]["created_at"] for d in docs}) == 1  # the very same manifest
    manifest = home / "data" / "tasks" / "digits" / "manifest.json"
    assert json.loads(manifest.read_text())["task"] == "digits"
    tally.fault("three prepare-data digits started together on a fresh home: all succeed, one prepares")


def test_a_second_prepare_waits_naming_the_pid_then_reuses_the_work(tmp_path, tally):
    """The holder keeps the lock until the second process has said it waits (however long that
    process takes to start on a loaded machine), then lets go: the second one reuses the work."""
    import threading

    home, release = tmp_path / "home", tmp_path / "release"
    assert run_lspt(home, "prepare-data", "digits", "-q").returncode == 0
    holder = hold_task_dir(home, 120, release)
    watchdog = threading.Timer(90, release.touch)  # never a hang: the holder lets go after 90 s at most
    watchdog.start()
    try:
        second = start_prepare(home)
        said = ""
        while "Waiting for pid" not in said:  # blocks until the second process says it waits (or exits)
            line = second.stderr.readline()
            if not line:
                break
            said += line
        released_after_it_said = not release.exists()
        release.touch()
        out, err = second.communicate(timeout=60)
    finally:
        watchdog.cancel()
        release.touch()
        holder.wait(10)
    assert second.returncode == 0, said + err
    assert f"Waiting for pid {holder.pid}, which is preparing digits" in said
    assert released_after_it_said  # it waited for the holder instead of failing at once
    assert "unchanged" in out
    tally.fault("prepare-data of a task another process prepares: waits (pid named), then succeeds")


def test_the_wait_is_bounded_and_names_the_pid(tmp_path, tally):
    home = tmp_path / "home"
    holder = hold_task_dir(home, 60)
    try:
        start = time.monotonic()
        result = run_lspt(home, "prepare-data", "digits", timeout=60, LSPT_PREPARE_WAIT="1")
        took = time.monotonic() - start
    finally:
        holder.kill()
        holder.wait()
    assert_clean_error(result.returncode, result.stdout, result.stderr, f"pid {holder.pid}",
                       "still after waiting 1 s", exit_code=1)
    assert took < 20
    tally.fault("prepare-data waiting on a holder that never finishes: one Error after LSPT_PREPARE_WAIT, pid named")


def test_quiet_waits_silently_and_json_stays_one_document(tmp_path, tally):
    home = tmp_path / "home"
    assert run_lspt(home, "prepare-data", "digits", "-q").returncode == 0
    holder = hold_task_dir(home, 2)
    result = run_lspt(home, "prepare-data", "digits", "--json", timeout=60)
    holder.wait(10)
    assert result.returncode == 0 and result.stderr.strip() == "", result.stderr
    assert json.loads(result.stdout)["tasks"][0]["changed"] is False
    tally.fault("prepare-data --json waiting for another process: silent on stderr, one JSON document")


def test_a_holder_killed_mid_wait_releases_the_waiter(tmp_path, tally):
    home = tmp_path / "home"
    holder = hold_task_dir(home, 120)
    waiter = start_prepare(home)
    try:
        deadline = time.monotonic() + 60
        while "Waiting" not in (line := waiter.stderr.readline()):
            assert line and time.monotonic() < deadline, "the waiter never said it waits"
        holder.send_signal(signal.SIGKILL)  # the kernel drops its flock
        out, err = waiter.communicate(timeout=120)
    finally:
        holder.kill()
        waiter.kill()
    assert waiter.returncode == 0, err
    assert "digits (custom, 10 classes): written" in out  # the holder prepared nothing: the waiter did
    tally.fault("the process prepare-data waits for is SIGKILLed: the waiter takes over and prepares")


def test_ctrl_c_while_waiting_exits_130_at_once(tmp_path, tally):
    home = tmp_path / "home"
    holder = hold_task_dir(home, 120)
    waiter = start_prepare(home)
    try:
        deadline = time.monotonic() + 60
        while "Waiting" not in (line := waiter.stderr.readline()):
            assert line and time.monotonic() < deadline, "the waiter never said it waits"
        waiter.send_signal(signal.SIGINT)
        start = time.monotonic()
        _, err = waiter.communicate(timeout=30)
        took = time.monotonic() - start
    finally:
        holder.kill()
        waiter.kill()
    assert waiter.returncode == 130, err
    assert "Traceback" not in err and "Exception ignored" not in err
    assert took < 10
    tally.fault("Ctrl-C while prepare-data waits for another process: exit 130 within seconds")


@pytest.mark.parametrize("value", ["abc", "-1", "nan"])
def test_a_bad_prepare_wait_is_a_usage_error(tmp_path, value, tally):
    result = run_lspt(tmp_path / "home", "prepare-data", "digits", LSPT_PREPARE_WAIT=value)
    assert_clean_error(result.returncode, result.stdout, result.stderr, "LSPT_PREPARE_WAIT", exit_code=2)
    tally.bad_input(f"LSPT_PREPARE_WAIT={value}")
