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
    assert outcome == "failed" and "run config not found" in error  # it really ran lspt tune, in this process
    assert "\n" not in error and error.startswith("exit code ")  # its Error: line, one line
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


# -- executor options: declared (type, bounds, help) by each executor, checked before anything starts --
SWEEP = ["sweep", "--backbone", "vit-tiny", "--strategy", "linear", "--task", "digits", "--grid", "lr=0.1",
         "--epochs", "1"]
BAD_OPTIONS = [
    ("ray", "num_cpus", "nan"), ("ray", "num_cpus", "inf"), ("ray", "num_cpus", "0"), ("ray", "num_cpus", "-1"),
    ("ray", "num_cpus", "1e9"), ("ray", "num_gpus", "nan"), ("ray", "num_gpus", "-0.5"), ("ray", "max_retries", "1.5"),
    ("ray", "max_retries", "-1"), ("ray", "connect_timeout", "0"), ("ray", "num_gpus", "65"),
    ("slurm", "cpus", "0"), ("slurm", "gpus", "nan"), ("slurm", "time", "0"), ("slurm", "mem", "-1"),
    ("slurm", "mem", "NaN"), ("slurm", "max_requeue", "x"), ("slurm", "cluster", "kubernetes"),
    ("slurm", "connect_timeout", "-inf"),
]


@pytest.mark.parametrize("executor,key,value", BAD_OPTIONS)
def test_a_bad_executor_option_is_a_usage_error_naming_it_before_anything_starts(cli, tmp_path, executor, key,
                                                                                  value, tally):
    out = tmp_path / "sweep"
    result = cli(*SWEEP, "--executor", executor, "--executor-opt", f"{key}={value}", "--out", str(out))
    assert result.exit_code == 2, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and f"--executor-opt {key}={value}" in errors[0] and "must be" in errors[0], result.stderr
    assert "Traceback" not in result.output and "internal error" not in result.output
    assert not out.exists()  # refused before the sweep dir is touched (and before any engine starts)
    tally.bad_input(f"--executor {executor} --executor-opt {key}=<bad value>")


def test_good_executor_options_pass_and_reach_the_factory_as_typed(tally):
    from lspt_cli.plugins import get_host
    from lspt_cli.sweep.executors import check_executor

    host = get_host()
    for name, options in [("ray", {"num_cpus": "0.5", "num_gpus": "0", "max_retries": "0", "connect_timeout": "2.5",
                                   "address": "auto"}),
                          ("slurm", {"cluster": "local", "cpus": "2", "mem": "0.5", "time": "1", "partition": "gpu"})]:
        assert check_executor(name, dict(options), host).name == name
    tally.bad_input("valid executor options in range are accepted as typed (no false refusal)")


def test_a_plugin_executor_declares_its_own_option_rules(cli, tmp_path, tally):
    from lspt_cli import ExecutorSpec, hookimpl
    from lspt_cli.specs import ExecutorOption
    from lspt_cli.testing import register_plugin

    class Plugin:
        @hookimpl
        def lspt_register_executors(self, register):
            register(ExecutorSpec(name="pool", description="a test pool", factory=lambda *a, **k: None, options={
                "slots": ExecutorOption("parallel slots", "int", 1, 8, default="1"),
                "mode": ExecutorOption("how", choices=("fast", "safe")),
                "label": "free text"}))

    with register_plugin(Plugin(), "pool-executor"):
        for opt, needle in [("slots=9", "an integer >= 1 and <= 8"), ("slots=nan", "an integer"),
                            ("mode=quick", "one of fast, safe"), ("slots=0", ">= 1")]:
            result = cli(*SWEEP, "--executor", "pool", "--executor-opt", opt, "--out", str(tmp_path / "s"))
            assert result.exit_code == 2 and needle in result.stderr and opt.split("=")[0] in result.stderr, result.output
        rows = {row["name"]: row for row in __import__("json").loads(cli("list", "executors", "--json").output)}
    slots = rows["pool"]["options"]["slots"]
    assert slots["type"] == "int" and slots["minimum"] == 1 and slots["maximum"] == 8 and slots["help"] == "parallel slots"
    assert rows["pool"]["options"]["mode"]["choices"] == ["fast", "safe"]
    assert rows["pool"]["options"]["label"]["type"] == "str"  # a bare help string: a free-form option
    assert not (tmp_path / "s").exists()
    tally.bad_input("a plugin executor's declared option rules (bounds, choices) refuse bad values (and a bare help string declares a free-form one)")


def test_list_executors_shows_every_builtin_option_with_its_rule(cli, tally):
    import json

    rows = {row["name"]: row for row in json.loads(cli("list", "executors", "--json").output)}
    for name in ("ray", "slurm"):
        for key, option in rows[name]["options"].items():
            assert option["help"] and option["rule"] and option["type"] in ("str", "int", "float", "bool"), (name, key)
    assert rows["ray"]["options"]["num_cpus"]["exclusive_minimum"] is True
    table = cli("list", "executors", "ray").output
    assert "num_cpus: a number > 0" in " ".join(table.split())
    tally.bad_input("lspt list executors shows each option's type and bounds")


# -- engines that never answer: a bounded wait, then one Error: naming the address ---------------------
@pytest.fixture
def silent_server():
    """A real TCP server that accepts connections and never says a byte (a hung or foreign service)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept():
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except (socket.timeout, OSError):
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(2)
        for conn in held:
            conn.close()
        server.close()


def closed_port() -> int:
    """A port nothing listens on (bound once by us, then closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sweep_on(home: Path, out: Path, *opts: str, executor: str, timeout: float = 60, **env: str):
    args = [*SWEEP, "--threads", "1", "--executor", executor, "--out", str(out)]
    for opt in opts:
        args += ["--executor-opt", opt]
    start = time.monotonic()
    result = run_lspt(home, *args, timeout=timeout, **env)
    return result, time.monotonic() - start


@pytest.mark.parametrize("case", ["closed port", "silent server", "silent server, LSPT_CONNECT_TIMEOUT",
                                  "unresolvable host", "not host:port"])
def test_a_ray_address_that_never_answers_is_one_error_within_the_wait(tmp_path, silent_server, case, tally):
    pytest.importorskip("ray")
    env, opts = {}, ["connect_timeout=3"]
    if case == "closed port":
        address = f"127.0.0.1:{closed_port()}"
    elif case == "silent server":
        address = silent_server
    elif case == "silent server, LSPT_CONNECT_TIMEOUT":
        address, opts, env = silent_server, [], {"LSPT_CONNECT_TIMEOUT": "2"}
    elif case == "unresolvable host":
        address = "no-such-ray-head.invalid:6379"
    else:
        address = "just-a-name"
    result, took = sweep_on(tmp_path / "home", tmp_path / "sweep", "address=" + address, *opts, executor="ray", **env)
    line = assert_clean_error(result.returncode, result.stdout, result.stderr, address.split(":")[0] if case ==
                              "unresolvable host" else address, exit_code=1)
    assert "Hint:" in result.stderr and "ray start --head" in result.stderr  # what to check
    if case.startswith("silent"):
        assert "did not answer within " + ("2" if env else "3") + " s" in line
    assert took < 30, f"took {took:.1f} s"
    assert not list((tmp_path / "sweep").rglob("trial.json"))  # no trial was planned onto it
    tally.fault(f"Ray address that never answers ({case}): one Error within the bounded wait")


def _fake_slurm(tmp_path: Path, sinfo_body: str) -> dict[str, str]:
    """PATH with an `sbatch` that must never be called and an `sinfo` doing `sinfo_body`."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in [("sbatch", "echo sbatch must not run >&2; exit 99"), ("sinfo", sinfo_body)]:
        path = bin_dir / name
        path.write_text(f"#!/bin/sh\n{body}\n")
        path.chmod(0o755)
    return {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}


@pytest.mark.parametrize("case", ["hung controller", "hung controller, LSPT_CONNECT_TIMEOUT", "controller down"])
def test_a_slurm_controller_that_never_answers_is_one_error_within_the_wait(tmp_path, case, tally):
    pytest.importorskip("submitit")
    if case == "controller down":
        env = _fake_slurm(tmp_path, "echo 'slurm_load_partitions: Unable to contact slurm controller (connect failure)' >&2; exit 1")
        opts = ["connect_timeout=3"]
    else:
        env = _fake_slurm(tmp_path, "exec sleep 120")
        opts = [] if "LSPT_CONNECT_TIMEOUT" in case else ["connect_timeout=2"]
        if not opts:
            env["LSPT_CONNECT_TIMEOUT"] = "2"
    result, took = sweep_on(tmp_path / "home", tmp_path / "sweep", *opts, executor="slurm", **env)
    needle = "Unable to contact slurm controller" if case == "controller down" else "did not answer within 2 s"
    assert_clean_error(result.returncode, result.stdout, result.stderr, "SLURM controller", needle, exit_code=1)
    assert "sinfo" in result.stderr and "sbatch must not run" not in result.stderr
    assert took < 30, f"took {took:.1f} s"
    tally.fault(f"SLURM controller that never answers ({case}): one Error within the bounded wait")


# -- an MLflow tracking server that never answers: bounded, one line naming it, the run unaffected ------
@pytest.mark.parametrize("case", ["silent server", "closed port", "unresolvable host"])
def test_an_mlflow_server_that_never_answers_is_named_within_the_wait(silent_server, case, tally):
    pytest.importorskip("mlflow")
    from lspt_plugins.loggers.mlflow_logger import check_server

    address = {"silent server": silent_server, "closed port": f"127.0.0.1:{closed_port()}",
               "unresolvable host": "no-such-mlflow.invalid:5000"}[case]
    start = time.monotonic()
    with pytest.raises(ConnectionError) as info:
        check_server(f"http://{address}", 1.5)
    assert time.monotonic() - start < 10
    assert f"http://{address}" in str(info.value) and "mlflow server" in str(info.value)
    assert ("did not answer within 1.5 s" in str(info.value)) == (case == "silent server")
    tally.fault(f"MLflow tracking server that never answers ({case}): bounded check naming the URI")


@pytest.mark.parametrize("command", ["tune", "sweep"])
def test_a_silent_mlflow_server_is_one_error_before_anything_is_written(tmp_path, silent_server, tally, command):
    """`--log mlflow` against a server that never answers: one `Error:` naming it after the bounded
    wait (LSPT_CONNECT_TIMEOUT), exit 1, before a run or sweep directory exists."""
    pytest.importorskip("mlflow")
    start = time.monotonic()
    args = ("tune",) if command == "tune" else ("sweep", "--grid", "lr=0.1,0.2", "--seeds", "1")
    result = run_lspt(tmp_path / "home", *args, "--backbone", "vit-tiny", "--task", "digits", "--strategy", "linear",
                      "--epochs", "1", "--warmup-epochs", "0", "--threads", "1", "--log", "mlflow",
                      "--out", str(tmp_path / "out"), "--json", "-q", timeout=120,
                      MLFLOW_TRACKING_URI=f"http://{silent_server}", LSPT_CONNECT_TIMEOUT="2")
    assert result.returncode == 1, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and silent_server in errors[0] and "did not answer within 2 s" in errors[0], result.stderr
    assert "Hint: check MLFLOW_TRACKING_URI" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists() and result.stdout == ""
    assert time.monotonic() - start < 90
    tally.fault(f"{command} --log mlflow against a server that never answers: one Error naming it after 2 s, nothing written")