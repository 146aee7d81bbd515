"""`--executor ray`: every trial a Ray task with its resources (num_cpus, num_gpus).

`address=auto` (or host:port) joins a running cluster; without an address a local cluster sized for
--workers trials is started, and shut down at the end. A trial's `lspt tune` runs inside its Ray
worker (run_trial_here), which Ray reuses. A task whose worker process dies (node lost, OOM kill) is
retried by Ray (`max_retries`); the retry claims the trial and resumes its checkpoint.
"""

from __future__ import annotations

from pathlib import Path

import ray

from lspt_cli.sweep.executors import payload, run_trial_here

from .options import CONNECT_TIMEOUT_ENV, connect_timeout, number, reach


class RayExecutor:
    def __init__(self, options: dict[str, str], *, workers: int, sweep_dir: Path, host) -> None:
        self.num_cpus = number(options, "num_cpus", 1.0, float, 0.001)
        self.num_gpus = number(options, "num_gpus", 0.0, float, 0)
        self.retries = number(options, "max_retries", 2, int, 0)
        self.started = False
        if not ray.is_initialized():
            address = options.get("address")
            if address:
                join(address, connect_timeout(options))
            else:
                cpus = max(1, round(max(1, workers) * self.num_cpus))
                ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False, configure_logging=False)
            self.started = True
        errors_to_stderr()
        threads = str(max(1, int(self.num_cpus)))
        self.env = {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "LSPT_NO_PROGRESS": "1"}
        if self.num_gpus == 0:
            self.env["CUDA_VISIBLE_DEVICES"] = ""  # Ray sets it for GPU tasks; a CPU trial sees none
        # the trial runs in the Ray worker, which Ray keeps for the next CPU trial: torch is imported once
        # per worker, not per trial; a GPU task gets a fresh worker (Ray's max_calls=1 for GPU tasks)
        self.task = ray.remote(num_cpus=self.num_cpus, num_gpus=self.num_gpus, max_retries=self.retries,
                               retry_exceptions=False)(run_trial_here)

    def run(self, trials):
        refs = {self.task.remote(payload(t, self.env)): t for t in trials}
        try:
            while refs:
                done, _ = ray.wait(list(refs), num_returns=1)
                for ref in done:
                    trial = refs.pop(ref)
                    try:
                        result = tuple(ray.get(ref))
                    except ray.exceptions.RayError as exc:  # retries exhausted: the trial failed
                        result = ("failed", None, f"Ray task failed: {ray_error_line(exc)}")
                    yield (trial, *result)
        finally:
            for ref in refs:
                ray.cancel(ref, force=True)

    def close(self) -> None:
        if self.started:
            ray.shutdown()


def join(address: str, timeout: float) -> None:
    """ray.init(address=...), but never a hang: the cluster must answer within `timeout` seconds
    (a TCP connection, then gRPC's handshake with the GCS), else one LsptError naming the address.
    Ray itself would retry for minutes on a closed port or a server that never speaks."""
    from lspt_cli import LsptError

    hint = (f"check that `ray start --head` runs there and the port is its GCS port (ray status --address "
            f"{address}), or use address=auto on a cluster node; the wait is --executor-opt connect_timeout=S "
            f"or {CONNECT_TIMEOUT_ENV}")
    target = address
    if address == "auto":
        from ray._private import services

        try:
            target = services.canonicalize_bootstrap_address(address)
        except Exception as exc:  # noqa: BLE001  (no running cluster recorded on this machine)
            raise LsptError(f"address=auto: no running Ray cluster found on this machine ({_first_line(exc)})",
                            hint="start one with `ray start --head`, or give address=host:port") from None
        if target is None:
            raise LsptError("address=auto: no running Ray cluster found on this machine",
                            hint="start one with `ray start --head`, or give address=host:port")
    left = reach(target, timeout, "Ray cluster", hint)
    if not address.startswith("ray://"):
        _gcs_handshake(target, max(left, 0.5), address, timeout, hint)
    try:
        ray.init(address=address, log_to_driver=False, configure_logging=False)
    except Exception as exc:  # noqa: BLE001  (ConnectionError, version mismatch, ...)
        raise LsptError(f"cannot join the Ray cluster at {address}: {_first_line(exc)}", hint=hint) from None


def _gcs_handshake(target: str, timeout: float, address: str, total: float, hint: str) -> None:
    """Something accepts TCP connections at target: it must also complete gRPC's HTTP/2 handshake
    (Ray's GCS does at once; a silent or foreign server never does)."""
    import grpc

    from lspt_cli import LsptError

    channel = grpc.insecure_channel(target)
    try:
        grpc.channel_ready_future(channel).result(timeout=timeout)
    except grpc.FutureTimeoutError:
        raise LsptError(f"the Ray cluster at {address} accepted a connection but did not answer within "
                        f"{total:g} s (not a Ray GCS port, or the cluster is hung)", hint=hint) from None
    finally:
        channel.close()


def ray_error_line(exc: BaseException) -> str:
    """A Ray task's failure in one line: the exception the task raised ("ValueError: boom", not Ray's
    rendering of the worker's stack), or what happened to its worker. LSPT_DEBUG=1: all of it."""
    from lspt_cli.messages import debug_enabled, one_line, process_error_line

    if debug_enabled():
        return f"{type(exc).__name__}: {str(exc)[-4000:]}"
    cause = getattr(exc, "cause", None)
    if isinstance(exc, ray.exceptions.RayTaskError) and isinstance(cause, BaseException):
        text = str(cause)
        return one_line(f"{type(cause).__name__}: {process_error_line(text) if 'Traceback' in text else text}")
    return one_line(f"{type(exc).__name__}: {process_error_line(str(exc))}")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def errors_to_stderr() -> None:
    """Send the driver's Ray error lines (a worker died, a task is retried) to stderr, for good.

    Ray prints them on stdout (ray/_private/worker.py, listen_error_messages -> print_to_stdstream,
    from a thread that outlives the sweep when it joined a cluster), where they would break
    `lspt sweep --json`'s document. A Ray without that hook is left as it is."""
    from ray._private import worker

    original = getattr(worker, "print_to_stdstream", None)
    if original is None or getattr(original, "lspt_to_stderr", False):
        return

    def to_stderr(data, ignore_prefix):
        return original({**data, "is_err": True}, ignore_prefix)

    to_stderr.lspt_to_stderr = True
    worker.print_to_stdstream = to_stderr
