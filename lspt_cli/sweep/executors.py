"""Executors: where trials run. `local` (in-process, or worker slots of subprocesses) is here; the
engines (`slurm`, `ray`) are plugins (plugins/executors/) registered with `lspt_register_executors`.

Every executor runs a trial from its resolved config file (`<trial dir>/trial.json`, grid.py) as
`python -m lspt_cli tune --config FILE --out DIR` (in a new process, or in the engine's worker
process: run_trial_here; the local executor's one worker builds the Trainer from the same file)
under the trial's claim (state.py), so what runs, and where its files go, never depends on the engine.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import traceback
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any, Iterator

from .. import schema
from ..errors import LsptError
from ..messages import debug_enabled, one_line, process_error_line
from ..rundir import clear_run_files
from .grid import STDERR_TAIL, Trial, run_state
from .state import claim, read_summary

ORPHAN_WAIT_S = 7 * 24 * 3600.0  # a trial never runs twice at once, however long the first one takes
_RUNNING: subprocess.Popen | None = None  # the trial run_trial is running in this process

def run_in_process(trial: Trial, host) -> tuple[str, dict | None, str | None]:
    """(outcome, summary, error) of one trial run in this process (Ctrl-C propagates)."""
    state = "new"
    from ..engine.run_files import check_writable
    from ..engine.train import Interrupted, Trainer

    from ..locks import hold

    try:
        with claim(trial.run_dir), hold(trial.run_dir, "run directory"):  # a stray `lspt tune` on it: refused, pid named
            state = trial.state()  # after the claim: another driver may have finished it meanwhile
            if state == "finished" and read_summary(trial.run_dir) is not None:
                return "skipped", read_summary(trial.run_dir), None
            if state == "stale":
                clear_run_files(trial.run_dir)
            check_writable(trial.run_dir)
            config = schema.run_config(trial.config_file)  # what every executor runs: the trial's file
            summary = Trainer(config, trial.run_dir, host=host).run(resume=state == "partial")
    except Interrupted:
        raise
    except LsptError as exc:
        return "failed", None, exc.message + (f" ({exc.hint})" if exc.hint else "")
    except Exception as exc:  # noqa: BLE001  (a crashing trial must not stop the sweep)
        if debug_enabled():  # the stack only with LSPT_DEBUG=1; else the one line of the error
            return "failed", None, f"{type(exc).__name__}: {exc}\n{traceback.format_exc()[-STDERR_TAIL:]}"
        return "failed", None, one_line(f"{type(exc).__name__}: {exc}")
    return ("resumed" if state == "partial" else "ran"), summary, None


def subprocess_argv(trial: Trial) -> list[str]:
    return tune_argv(trial.argv, str(trial.run_dir))


def tune_argv(argv: list[str], run_dir: str) -> list[str]:
    """The `lspt tune` command for the trial's state now: resume a checkpoint, overwrite leftovers."""
    state = run_state(Path(run_dir))
    base = [sys.executable, "-m", "lspt_cli", "tune"]
    if state == "partial":
        return base + ["--resume", run_dir, "--json", "-q"]
    return base + list(argv) + (["--overwrite"] if state == "stale" else []) + ["--json", "-q"]


def payload(trial: Trial, env: dict[str, str] | None = None) -> dict[str, Any]:
    """What a remote worker needs to run a trial: plain data (no config objects, no host)."""
    return {"argv": list(trial.argv), "run_dir": str(trial.run_dir), "env": dict(env or {})}


def run_trial(job: dict[str, Any]) -> tuple[str, dict | None, str | None]:
    """Run one trial from its payload, on whatever machine the engine picked (the sweep dir is shared).

    Claims the trial first (waiting while another driver or a retried job still runs it), then runs
    what its directory says is left: nothing when finished, `--resume` from a checkpoint, else the
    whole command. Returns (outcome, summary, error); a crash of the trial is a result, not an exception."""
    return _claimed_run(job, _tune_subprocess)


def run_trial_here(job: dict[str, Any]) -> tuple[str, dict | None, str | None]:
    """run_trial, with its `lspt tune` in this process instead of a new one: for an engine's long-lived
    worker (Ray reuses one per CPU slot), which then imports torch once, not once per trial (~4 s).
    The payload's env is applied to this process for the trial and undone after it (os.environ and
    torch's thread count), so the worker's next trial never inherits it."""
    return _claimed_run(job, _tune_here)


def _claimed_run(job: dict[str, Any], launch) -> tuple[str, dict | None, str | None]:
    run_dir = Path(job["run_dir"])
    with claim(run_dir):
        state = run_state(run_dir)
        if state == "finished" and read_summary(run_dir) is not None:
            return "skipped", read_summary(run_dir), None
        if state != "finished":
            wait_until_free(run_dir)  # a killed worker's orphaned `lspt tune` may still be writing it
            state = run_state(run_dir)
            if state == "finished" and read_summary(run_dir) is not None:
                return "skipped", read_summary(run_dir), None
        code, output = launch(tune_argv(job["argv"], str(run_dir)), dict(job.get("env") or {}))
    if code == 130:
        return "failed", None, "interrupted (exit code 130)"
    summary = read_summary(run_dir)
    if code != 0 or summary is None:  # its Error: line (or the last exception of a crash), not its stack
        return "failed", None, f"exit code {code}: {process_error_line(output[-STDERR_TAIL:])}"
    return ("resumed" if state == "partial" else "ran"), summary, None


def _tune_subprocess(argv: list[str], env: dict[str, str]) -> tuple[int, str]:
    """(exit code, stderr or stdout) of `lspt tune` in a new process."""
    global _RUNNING
    env = {**os.environ, **env}
    env.setdefault("LSPT_NO_PROGRESS", "1")
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _RUNNING = proc  # for stop_running_trial (one trial per job process; local threads never use it)
    try:
        stdout, stderr = proc.communicate()
    finally:
        if _RUNNING is proc:
            _RUNNING = None
    return proc.returncode, stderr or stdout or ""


def _tune_here(argv: list[str], env: dict[str, str]) -> tuple[int, str]:
    """(exit code, stderr or stdout) of `python -m lspt_cli tune ...` (argv) run in this process: the
    same entry point and error boundary as the subprocess, its output captured."""
    import contextlib
    import io
    import runpy

    import torch

    saved_env, saved_threads = dict(os.environ), torch.get_num_threads()
    out, err, saved_argv = io.StringIO(), io.StringIO(), sys.argv
    try:
        os.environ.update(env)  # before the trial touches CUDA: CUDA_VISIBLE_DEVICES="" keeps a CPU trial off GPUs
        os.environ.setdefault("LSPT_NO_PROGRESS", "1")
        if env.get("OMP_NUM_THREADS"):
            torch.set_num_threads(int(env["OMP_NUM_THREADS"]))  # OMP_NUM_THREADS counts only at torch's import
        sys.argv = ["lspt", *argv[3:]]  # argv: [python, -m, lspt_cli, tune, ...]
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            runpy.run_module(argv[2], run_name="__main__")
        code = 0
    except SystemExit as exc:  # the CLI always exits; --json's summary is read from summary.json
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:  # the worker runs the next trial: it starts from the worker's own environment, not this one's
        sys.argv = saved_argv
        restore_environ(saved_env)
        torch.set_num_threads(saved_threads)
    return code, err.getvalue() or out.getvalue()


def restore_environ(saved: dict[str, str]) -> None:
    """Make os.environ equal `saved` again: keys a trial added are removed, changed ones restored."""
    for key in [k for k in os.environ if k not in saved]:
        del os.environ[key]
    for key, value in saved.items():
        if os.environ.get(key) != value:
            os.environ[key] = value


def stop_running_trial(grace_s: float = 120.0) -> None:
    """Ctrl-C the `lspt tune` this process runs (run_trial), and wait for it: the trainer saves its
    checkpoint and exits, so a requeued job (SLURM preemption or timeout) resumes it exactly."""
    proc = _RUNNING
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()


def wait_until_free(run_dir: Path) -> None:
    """Wait while another process (an orphan of a killed driver or worker, whose claim died with it)
    still holds the run dir's own lock, then let go: the `lspt tune` we start takes it next."""
    if not run_dir.is_dir():
        return
    from ..locks import hold

    with hold(run_dir, "run directory", wait=ORPHAN_WAIT_S):
        pass


def run_subprocess(trial: Trial, env: dict[str, str]) -> tuple[str, dict | None, str | None]:
    outcome, summary, error = run_trial(payload(trial, env))
    if error == "interrupted (exit code 130)":
        raise KeyboardInterrupt
    return outcome, summary, error


def worker_envs(workers: int) -> list[dict[str, str]]:
    """One environment per worker slot: GPUs round-robin, or a share of the CPU threads each."""
    gpus: list[str] = []
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        gpus = [g.strip() for g in visible.split(",") if g.strip() and g.strip() != "-1"]
    else:
        try:
            import torch

            gpus = [str(i) for i in range(torch.cuda.device_count())]
        except Exception:  # noqa: BLE001
            gpus = []
    envs = []
    threads = max(1, (os.cpu_count() or 1) // workers)
    if "OMP_NUM_THREADS" in os.environ:
        try:
            threads = max(1, min(threads, int(os.environ["OMP_NUM_THREADS"])))
        except ValueError:
            pass
    for slot in range(workers):
        env = dict(os.environ)
        if len(gpus) > 1:
            env["CUDA_VISIBLE_DEVICES"] = gpus[slot % len(gpus)]
        if not gpus:
            env["OMP_NUM_THREADS"] = str(threads)
            env["MKL_NUM_THREADS"] = str(threads)
        env.setdefault("LSPT_NO_PROGRESS", "1")
        envs.append(env)
    return envs




Result = tuple  # (trial, outcome, summary | None, error | None)


class LocalExecutor:
    """Today's scheduler: one worker runs trials in this process; N workers are N subprocess slots,
    each with one GPU (round-robin over the visible ones) or a share of the CPU threads."""

    def __init__(self, options: dict[str, str], *, workers: int, sweep_dir: Path, host) -> None:
        self.workers, self.host = max(1, workers), host

    def run(self, trials: list[Trial]) -> Iterator[Result]:
        if self.workers == 1 or len(trials) <= 1:
            for trial in trials:
                yield (trial, *run_in_process(trial, self.host))
            return
        envs = worker_envs(self.workers)
        slots = list(range(self.workers))
        slot_lock = threading.Lock()

        def job(trial: Trial):
            with slot_lock:
                slot = slots.pop(0)
            try:
                return run_subprocess(trial, envs[slot])
            finally:
                with slot_lock:
                    slots.append(slot)

        with ThreadPoolExecutor(self.workers) as pool:
            futures = {pool.submit(job, t): t for t in trials}
            try:
                for future in as_completed(futures):
                    yield (futures[future], *future.result())
            except (KeyboardInterrupt, GeneratorExit):
                for f in futures:
                    f.cancel()
                raise

    def close(self) -> None:
        pass


def check_executor(name: str, options: dict[str, str], host):
    """The ExecutorSpec of `--executor NAME --executor-opt K=V`; an unknown name or option, or a
    missing extra, is one `Error:` before the sweep dir is touched."""
    from ..errors import UsageError
    from ..plugins import check_requirements

    spec = host.executors.get(name)  # "unknown executor 'x'; available: ..."
    unknown = sorted(set(options) - set(spec.options))
    if unknown:
        raise UsageError(f"unknown --executor-opt '{unknown[0]}' for executor '{name}'; allowed: "
                         f"{', '.join(sorted(spec.options)) or '(none)'}", hint="see lspt list executors")
    for key, value in options.items():  # every value against its declaration: nan, -1, "abc" never reach an engine
        try:
            spec.option(key).parse(value)
        except ValueError as exc:
            raise UsageError(f"--executor-opt {key}={value}: {exc} (executor '{name}')",
                             hint=f"{key}: {spec.option(key).help}; see lspt list executors") from None
    check_requirements(spec, f"--executor {name}", import_it=False)  # importing ray takes seconds: looked up only
    return spec


def open_executor(name: str, options: dict[str, str], *, workers: int, sweep_dir: Path, host):
    """Check the executor (check_executor), then build it with its spec's factory."""
    from ..plugins import resolve_factory

    spec = check_executor(name, options, host)
    return resolve_factory(spec.factory)(dict(options), workers=workers, sweep_dir=Path(sweep_dir), host=host)
