"""`lspt sweep --executor local|ray|slurm`: the issue's done-when commands on real engines (a local Ray
cluster started once for this module, submitit's local executor), a driver killed mid-sweep and re-run,
the same selections and bundle tensors on every executor, and one clear error for a missing extra."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lspt_cli import ExecutorSpec, hookimpl

pytestmark = pytest.mark.xdist_group("executors")  # `pytest -n`: one Ray cluster, one local reference

# The done-when sweep, with one thread per trial (bit-identical CPU results, 2 shared cores).
SWEEP = ["sweep", "--backbone", "vit-tiny", "--strategy", "vpt-shallow", "--task", "digits", "--grid", "lr=0.01,0.05",
         "--seeds", "42", "--epochs", "2", "--threads", "1"]
TRIALS = ["final-lr0.01-seed42", "lr0.01-seed42", "lr0.05-seed42"]  # names fixed by the grid, not by a run


@pytest.fixture(scope="module")
def ray_address():
    """One local Ray cluster for the whole module; drivers (subprocesses) join it by address."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


def executor_args(name: str, ray_address: str | None) -> list[str]:
    if name == "ray":
        return ["--executor", "ray", "--executor-opt", f"address={ray_address}"]
    if name == "slurm":
        return ["--executor", "slurm", "--executor-opt", "cluster=local", "--workers", "2"]
    return ["--executor", "local"]


def driver(out: Path, args: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "lspt_cli", *SWEEP, *args, "--out", str(out), "--json", "-q"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def bundle_tensors(run_dir: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(run_dir / "bundle.safetensors"))


def assert_same_bundles(a: Path, b: Path) -> None:
    """Every trial's bundle holds bit-identical tensors (metadata differs only in its creation time)."""
    import torch
    from safetensors import safe_open

    for name in TRIALS:
        ta, tb = bundle_tensors(a / "digits" / name), bundle_tensors(b / "digits" / name)
        assert sorted(ta) == sorted(tb) and ta
        assert all(torch.equal(ta[k], tb[k]) for k in ta), name
        with safe_open(str(a / "digits" / name / "bundle.safetensors"), "pt") as fa, \
                safe_open(str(b / "digits" / name / "bundle.safetensors"), "pt") as fb:
            ma, mb = fa.metadata(), fb.metadata()
        assert {k: v for k, v in ma.items() if k != "lspt.created_at"} == {k: v for k, v in mb.items() if k != "lspt.created_at"}


@pytest.fixture(scope="module")
def local_reference(tmp_path_factory):
    """The done-when sweep under the local executor: what every engine must reproduce."""
    out = tmp_path_factory.mktemp("local") / "sweep"
    home = tmp_path_factory.mktemp("home")
    proc = subprocess.run([sys.executable, "-m", "lspt_cli", *SWEEP, "--out", str(out), "--json", "-q"],
                          capture_output=True, text=True, env={**os.environ, "LSPT_HOME": str(home)})
    assert proc.returncode == 0, proc.stderr
    return out, json.loads(proc.stdout)


# -- engines, killed drivers -------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("name", ["local", "ray", "slurm"])
def test_killed_driver_rerun_completes_without_rerunning_and_matches_local(name, tmp_path, request, local_reference):
    ray_address = request.getfixturevalue("ray_address") if name == "ray" else None
    out = tmp_path / "sweep"
    first = driver(out, executor_args(name, ray_address))
    deadline = time.monotonic() + 240
    while not any((out / "digits" / t / "summary.json").exists() for t in TRIALS):  # a trial has finished
        assert first.poll() is None, first.stderr.read()
        assert time.monotonic() < deadline, "no trial finished"
        time.sleep(0.2)
    first.send_signal(signal.SIGKILL)  # the driver only: what it started elsewhere may go on
    first.wait()
    done_before = {t: (out / "digits" / t / "summary.json").stat().st_mtime_ns
                   for t in TRIALS if (out / "digits" / t / "summary.json").exists()}
    assert done_before and len(done_before) < len(TRIALS)

    second = driver(out, executor_args(name, ray_address))
    stdout, stderr = second.communicate(timeout=400)
    assert second.returncode == 0, stderr
    doc = json.loads(stdout)
    records = {r["name"]: r for r in doc["trials"]}
    assert sorted(records) == TRIALS and all(r["status"] == "finished" for r in records.values())
    for trial, mtime in done_before.items():  # finished before the kill: never run again
        assert records[trial]["outcome"] == "skipped"
        assert (out / "digits" / trial / "summary.json").stat().st_mtime_ns == mtime
    assert json.loads((out / "sweep.json").read_text())["counts"]["failed"] == 0

    ref_dir, ref = local_reference  # same trial set, same selection, same metrics, same tensors
    assert doc["selections"]["digits"]["point"] == ref["selections"]["digits"]["point"]
    assert doc["selections"]["digits"]["val_top1"] == ref["selections"]["digits"]["val_top1"]
    ref_records = {r["name"]: r for r in ref["trials"]}
    for trial in TRIALS:
        assert records[trial]["test_top1"] == ref_records[trial]["test_top1"]
    assert_same_bundles(out, ref_dir)


def ray_worker_of(pid: int) -> int:
    """The Ray worker process running `pid` (itself, or the ancestor whose title is `ray::...`)."""
    while pid > 1:
        if Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"ray::"):
            return pid
        pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])  # its parent
    raise AssertionError("the trial does not run in a Ray worker")


@pytest.mark.slow
def test_a_ray_worker_killed_mid_trial_is_retried_and_the_sweep_matches_local(tmp_path, ray_address, local_reference):
    """A trial's Ray worker SIGKILLed after its first epoch (what an OOM kill or a lost node does): Ray
    retries the task (`max_retries`), the retry gets the claim and run dir locks the dead processes held,
    resumes the epoch-1 checkpoint, and the sweep equals an undisturbed local one, bundles bit for bit."""
    out = tmp_path / "sweep"
    first = driver(out, ["--executor", "ray", "--executor-opt", f"address={ray_address}",
                         "--executor-opt", "max_retries=1"])
    checkpoints = [out / "digits" / t / "checkpoint.pt" for t in TRIALS[1:]]  # the grid trials run at once
    deadline = time.monotonic() + 240
    while not any(c.exists() for c in checkpoints):
        assert first.poll() is None, first.stderr.read()
        assert time.monotonic() < deadline, "no epoch finished"
        time.sleep(0.02)
    run_dir = next(c.parent for c in checkpoints if c.exists())
    trial_pid = int((run_dir / ".lspt.lock").read_text().strip())  # the process training it holds its run dir
    os.kill(trial_pid, signal.SIGSTOP)  # frozen mid-trial: epoch 2 is not finished
    assert not (run_dir / "summary.json").exists()
    worker = ray_worker_of(trial_pid)
    os.kill(worker, signal.SIGKILL)
    if trial_pid != worker:
        os.kill(trial_pid, signal.SIGKILL)  # it dies with its worker (Ray does the same to a dead worker's children)
    stdout, stderr = first.communicate(timeout=400)
    assert first.returncode == 0, stderr
    doc = json.loads(stdout)
    records = {r["name"]: r for r in doc["trials"]}
    assert sorted(records) == TRIALS and all(r["status"] == "finished" for r in records.values())
    assert doc["counts"]["failed"] == 0
    assert records[run_dir.name]["outcome"] == "resumed"  # the retry continued from the epoch-1 checkpoint
    epochs = [json.loads(line)["epoch"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2]  # each epoch logged once

    ref_dir, ref = local_reference
    assert doc["selections"]["digits"]["point"] == ref["selections"]["digits"]["point"]
    assert doc["selections"]["digits"]["val_top1"] == ref["selections"]["digits"]["val_top1"]
    assert {t: records[t]["test_top1"] for t in TRIALS} == {r["name"]: r["test_top1"] for r in ref["trials"]}
    assert_same_bundles(out, ref_dir)


@pytest.mark.slow
def test_ray_max_retries_0_a_killed_worker_fails_its_trial_without_stopping_the_driver(tmp_path, ray_address):
    """`max_retries=0` reaches Ray: the dead worker's task is not retried, and its trial is a failed
    result naming Ray's error (the sweep records it and goes on), not an exception in the driver."""
    from concurrent.futures import ThreadPoolExecutor
    from types import SimpleNamespace

    from lspt_plugins.executors.ray_executor import RayExecutor

    run_dir = tmp_path / "digits" / "lr0.01-seed42"
    argv = ["--backbone", "vit-tiny", "--task", "digits", "--strategy", "vpt-shallow", "--epochs", "1", "--lr", "0.01",
            "--seed", "42", "--threads", "1", "--out", str(run_dir)]
    trial = SimpleNamespace(name=run_dir.name, argv=argv, run_dir=run_dir)  # what payload() reads of a Trial
    executor = RayExecutor({"address": ray_address, "max_retries": "0"}, workers=1, sweep_dir=tmp_path, host=None)
    with ThreadPoolExecutor(1) as pool:
        results = pool.submit(lambda: list(executor.run([trial])))
        deadline = time.monotonic() + 120
        lock = run_dir / ".lspt.lock"  # the trial has started: its process holds its run dir, pid inside
        while not (lock.exists() and lock.read_text().strip()):
            assert not results.done() and time.monotonic() < deadline, "the trial did not start"
            time.sleep(0.02)
        os.kill(ray_worker_of(int(lock.read_text().strip())), signal.SIGKILL)
        [(got, outcome, summary, error)] = results.result(timeout=120)
    executor.close()
    assert got is trial and outcome == "failed" and summary is None
    assert error.startswith("Ray task failed: WorkerCrashedError") and not (run_dir / "summary.json").exists()


def test_a_trial_is_claimed_a_second_claim_waits(tmp_path):
    """Two drivers on one trial: the second claim blocks until the first is released (another process)."""
    from lspt_cli.sweep import claim

    run_dir = tmp_path / "digits" / "lr0.1-seed42"
    code = ("import sys, time; from lspt_cli.sweep import claim\n"
            f"with claim({str(run_dir)!r}):\n    print('held', flush=True); time.sleep(3)\n")
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    start = time.monotonic()
    with claim(run_dir):
        waited = time.monotonic() - start
    holder.wait()
    assert waited > 2.0  # granted only once the holder let go (it held the claim for 3 s)
    assert not any(p.name.endswith(".claim") for p in run_dir.parent.iterdir())  # released claims leave no file


# -- errors --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name,module", [("ray", "ray"), ("slurm", "submitit")])
def test_missing_extra_is_one_error_naming_it(cli, tmp_path, monkeypatch, name, module):
    monkeypatch.setitem(sys.modules, module, None)  # `import ray` now fails as if not installed
    result = cli(*SWEEP, "--executor", name, "--out", str(tmp_path / "sweep"))
    assert result.exit_code == 2
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and f"'{module}'" in errors[0] and f"--executor {name}" in errors[0]
    assert f"pip install 'lspt[{name}]'" in result.output
    assert not (tmp_path / "sweep").exists()  # refused before the sweep dir is touched
    rows = {row["name"]: row for row in json.loads(cli("list", "executors", "--json").output)}
    assert rows[name]["installed"] is False and rows[name]["extra"] == name


def test_unknown_executor_and_options_are_usage_errors(cli, tmp_path):
    out = str(tmp_path / "sweep")
    result = cli(*SWEEP, "--executor", "kubernetes", "--out", out)
    assert result.exit_code == 2 and "unknown executor 'kubernetes'" in result.output and "ray" in result.output
    result = cli(*SWEEP, "--executor", "ray", "--executor-opt", "gpus=1", "--out", out)
    assert result.exit_code == 2 and "unknown --executor-opt 'gpus'" in result.output and "num_gpus" in result.output
    result = cli(*SWEEP, "--executor", "slurm", "--executor-opt", "partition", "--out", out)
    assert result.exit_code == 2 and "KEY=VALUE" in result.output
    assert not (tmp_path / "sweep").exists()


def test_list_executors_names_the_builtins_their_options_and_extras(cli):
    rows = {row["name"]: row for row in json.loads(cli("list", "executors", "--json").output)}
    assert set(rows) >= {"local", "ray", "slurm"}
    assert rows["local"]["extra"] == "" and rows["local"]["options"] == {}
    assert {"partition", "gpus", "cpus", "mem", "time", "account", "cluster"} <= set(rows["slurm"]["options"])
    assert {"address", "num_cpus", "num_gpus"} <= set(rows["ray"]["options"])
    assert rows["ray"]["extra"] == "ray" and rows["slurm"]["extra"] == "slurm"
    assert all(row["plugin"] for row in rows.values())


# -- a third-party executor ------------------------------------------------------------------------
class ReversePlugin:
    """An executor plugin that runs trials through the public payload/run_trial contract, last first
    (results in any order must not change the sweep) and records what it was given."""

    def __init__(self):
        self.options, self.seen = None, []

    @hookimpl
    def lspt_register_executors(self, register):
        register(ExecutorSpec(name="reverse", description="runs trials last first", factory=self.open,
                              options={"tag": "a label it records"}))

    def open(self, options, *, workers, sweep_dir, host):
        self.options = (options, workers, sweep_dir)
        return self

    def run(self, trials):
        from lspt_cli.sweep import payload, run_trial

        for trial in reversed(trials):
            self.seen.append(trial.name)
            yield (trial, *run_trial(payload(trial)))

    def close(self):
        self.seen.append("closed")


@pytest.mark.slow
def test_a_plugin_executor_runs_the_sweep_through_the_hook(cli, tmp_path):
    from lspt_cli.testing import register_plugin

    plugin = ReversePlugin()
    out = tmp_path / "sweep"
    with register_plugin(plugin, "reverse-executor"):
        result = cli(*SWEEP[:-4], "--epochs", "1", "--threads", "1", "--no-finals", "--executor", "reverse",
                     "--executor-opt", "tag=x", "--out", str(out), "--json", "-q")
    assert result.exit_code == 0, result.output
    assert plugin.options == ({"tag": "x"}, 1, out.resolve())
    assert plugin.seen == ["lr0.05-seed42", "lr0.01-seed42", "closed"]
    doc = json.loads(result.output)
    assert [r["name"] for r in doc["trials"]] == ["lr0.01-seed42", "lr0.05-seed42"]  # the grid's order, not the run's
    assert all(r["status"] == "finished" and r["outcome"] == "ran" for r in doc["trials"])
    best = max(doc["trials"], key=lambda r: (r["select_val"], -r["point"]["lr"]))
    assert doc["selections"]["digits"]["trial"] == best["name"]


@pytest.mark.slow
def test_a_preempted_slurm_job_is_requeued_and_resumes_its_checkpoint(tmp_path):
    """submitit's local executor, the job signalled as SLURM signals a preemption/timeout: its `lspt tune`
    checkpoints and stops, the job is requeued, and the trial resumes (each epoch logged once)."""
    submitit = pytest.importorskip("submitit")
    from lspt_plugins.executors.slurm import TrialJob

    run_dir = tmp_path / "digits" / "lr0.01-seed42"
    argv = ["--backbone", "vit-tiny", "--task", "digits", "--strategy", "vpt-shallow", "--epochs", "5", "--lr", "0.01",
            "--seed", "42", "--threads", "1", "--out", str(run_dir)]
    executor = submitit.AutoExecutor(folder=tmp_path / "submitit", cluster="local")
    executor.update_parameters(timeout_min=10)
    job = executor.submit(TrialJob(), {"argv": argv, "run_dir": str(run_dir), "env": {}})
    deadline = time.monotonic() + 180
    while not (run_dir / "checkpoint.pt").exists():  # epoch 1 done: something to resume
        assert not job.done() and time.monotonic() < deadline, "no checkpoint"
        time.sleep(0.2)
    tune_pid = int((run_dir / ".lspt.lock").read_text().strip())  # the trial's `lspt tune` holds its run dir
    task_pid = int(Path(f"/proc/{tune_pid}/stat").read_text().rsplit(")", 1)[1].split()[1])  # its parent: the job
    os.kill(task_pid, signal.SIGUSR2)  # what SLURM sends a job before preempting it or at its time limit
    outcome, summary, error = job.result()
    assert error is None and outcome == "resumed"
    epochs = [json.loads(line)["epoch"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2, 3, 4, 5] and summary["epochs"] == 5
