"""`--executor slurm`: every trial a SLURM job (a job array) through submitit.

A job runs `lspt_cli.sweep.executors.run_trial`: it claims the trial and runs (or resumes) its
`lspt tune` command, so the sweep dir on the shared filesystem stays the source of truth. A job that
is preempted or hits its time limit is requeued by submitit (`checkpoint` below) and its trial resumes
from the last epoch's checkpoint (`lspt tune --resume`). `cluster=local` runs the same jobs with
submitit's local executor: on one machine, how the tests exercise this path.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import submitit

from lspt_cli import UsageError
from lspt_cli.sweep.executors import payload, run_trial, stop_running_trial

from .options import CONNECT_TIMEOUT_ENV, connect_timeout, number

POLL_S = 0.5


class TrialJob(submitit.helpers.Checkpointable):
    """The job function; Checkpointable's `checkpoint` resubmits it with the same payload on
    preemption/timeout, and run_trial then resumes the trial's checkpoint."""

    def __call__(self, job: dict) -> tuple:
        return run_trial(job)

    def checkpoint(self, job: dict):
        stop_running_trial()  # the trainer checkpoints its epoch and exits; the requeued job resumes it
        return super().checkpoint(job)


class SlurmExecutor:
    def __init__(self, options: dict[str, str], *, workers: int, sweep_dir: Path, host) -> None:
        self.workers = max(1, workers)
        cluster = options.get("cluster", "slurm")
        if cluster not in ("slurm", "local"):
            raise UsageError(f"--executor-opt cluster={cluster}: expected slurm or local")
        if cluster == "slurm" and shutil.which("sbatch") is None:
            raise UsageError("--executor slurm: no `sbatch` on PATH (not a SLURM login node)",
                             hint="run the sweep where sbatch works, or try it here with --executor-opt cluster=local")
        if cluster == "slurm":
            check_controller(connect_timeout(options))
        cpus = number(options, "cpus", 1, int, 1)
        requeues = number(options, "max_requeue", 3, int, 0)
        self.local = cluster == "local"
        self.executor = submitit.AutoExecutor(folder=Path(sweep_dir) / ".submitit" / "%j", cluster=cluster,
                                              slurm_max_num_timeout=requeues, local_max_num_timeout=requeues)
        params = dict(name="lspt-sweep", timeout_min=number(options, "time", 240, int, 1), cpus_per_task=cpus,
                      gpus_per_node=number(options, "gpus", 0, int, 0), slurm_array_parallelism=self.workers)
        if "mem" in options:
            params["mem_gb"] = number(options, "mem", None, float, 0.001)
        for key in ("partition", "account"):
            if key in options:
                params[f"slurm_{key}"] = options[key]
        self.executor.update_parameters(**params)
        self.env = {"OMP_NUM_THREADS": str(cpus), "MKL_NUM_THREADS": str(cpus), "LSPT_NO_PROGRESS": "1"}

    def run(self, trials):
        pending = list(trials)
        running: list[tuple] = []  # (job, trial)
        if not self.local:  # one job array; SLURM runs --workers of it at once
            jobs = self.executor.map_array(TrialJob(), [payload(t, self.env) for t in pending])
            running, pending = list(zip(jobs, pending)), []
        try:
            while running or pending:
                while pending and len(running) < self.workers:  # the local executor has no array limit
                    trial = pending.pop(0)
                    running.append((self.executor.submit(TrialJob(), payload(trial, self.env)), trial))
                finished = [(job, trial) for job, trial in running if job.done()]
                for job, trial in finished:
                    running.remove((job, trial))
                    yield (trial, *_result(job))
                if not finished:
                    time.sleep(POLL_S)
        finally:
            for job, _ in running:  # Ctrl-C: stop what this driver started (a killed driver cannot: claims guard)
                try:
                    job.cancel(check=False)
                except Exception:  # noqa: BLE001
                    pass

    def close(self) -> None:
        pass


def check_controller(timeout: float) -> None:
    """The SLURM controller must answer (`sinfo`, bounded by `timeout` seconds) before any job is
    submitted: sbatch and submitit's polling would otherwise wait on a dead slurmctld without end."""
    from lspt_cli import LsptError

    sinfo = shutil.which("sinfo")
    if sinfo is None:  # sbatch without sinfo: nothing to ask; submission reports its own errors
        return
    hint = (f"check that `sinfo` answers on this node (slurmctld up and reachable, munge running); "
            f"the wait is --executor-opt connect_timeout=S or {CONNECT_TIMEOUT_ENV}")
    try:
        done = subprocess.run([sinfo, "--noheader", "--format=%P"], capture_output=True, text=True,
                              timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise LsptError(f"the SLURM controller did not answer within {timeout:g} s (`sinfo` hung)", hint=hint) from None
    except OSError as exc:
        raise LsptError(f"cannot run {sinfo} ({exc.strerror or exc})", hint=hint) from None
    if done.returncode != 0:
        why = next((line.strip() for line in (done.stderr or done.stdout).splitlines() if line.strip()), "")
        raise LsptError(f"the SLURM controller did not answer: `sinfo` exited with {done.returncode}"
                        + (f" ({why})" if why else ""), hint=hint)


def _result(job) -> tuple:
    """(outcome, summary, error) of a finished job; a job that failed outright is a failed trial."""
    try:
        return tuple(job.result())
    except Exception as exc:  # noqa: BLE001  (submitit's FailedJobError, UncompletedJobError, ...)
        from lspt_cli.messages import debug_enabled, process_error_line

        if debug_enabled():
            return "failed", None, f"SLURM job {job.job_id} failed: {type(exc).__name__}: {str(exc).strip()[-4000:]}"
        try:
            logs = f" (log: {job.paths.stderr})"
        except Exception:  # noqa: BLE001
            logs = ""
        return "failed", None, f"SLURM job {job.job_id} failed: {process_error_line(str(exc))}{logs}"
