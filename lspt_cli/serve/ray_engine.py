"""`lspt serve --engine ray`: the same app as a Ray Serve deployment with replicas.

Each replica builds exactly what `lspt serve` builds in-process (the registry with its shared
backbones, the cross-task batcher, the directory watcher, the FastAPI app with every limit, the token
check and /metrics), so batching happens per replica; Ray Serve's HTTP proxy on --host/--port
spreads requests over the replicas. Bundles are checked in the driver first (a fingerprint
mismatch stops the command with exit 1 before anything is deployed). Without --ray-address a
local Ray cluster is started for the command and stopped with it. SIGTERM or Ctrl-C shuts the
deployment down gracefully (Ray Serve lets in-flight requests finish) and exits 0.

Ray and Ray Serve come with `pip install 'lspt[ray-serve]'` (ray[serve]).
"""

from __future__ import annotations

import os
import signal
import sys
import threading

from ..errors import UsageError
from .server import ServeOptions, build, check_exposure, make_app

APP_NAME = "lspt"


def deployment(options: ServeOptions, replicas: int, cpus_per_replica: float):
    """The bound Ray Serve application: `replicas` copies of the lspt app."""
    from ray import serve

    @serve.deployment(name="lspt", num_replicas=replicas, ray_actor_options={"num_cpus": cpus_per_replica},
                      max_ongoing_requests=max(64, options.max_queue), graceful_shutdown_timeout_s=options.drain_timeout)
    @serve.ingress()
    class LsptServe:
        def __init__(self, options: ServeOptions):
            self.options = options

        def __serve_build_asgi_app__(self):
            registry, batcher, metrics = build(self.options)
            return make_app(self.options, registry, batcher, metrics)

    return LsptServe.bind(options)


def serve_ray(options: ServeOptions, replicas: int = 1, address: str | None = None, cpus_per_replica: float = 1.0) -> None:
    try:
        import ray
        from ray import serve
    except ImportError as exc:
        raise UsageError(f"--engine ray needs Ray Serve ({exc.name} is missing)", hint="pip install 'lspt[ray-serve]'") from None
    check_exposure(options.host, options.token, options.insecure)
    build(options)  # every bundle loads here, or the command stops before deploying anything
    log = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
    env = {k: v for k, v in os.environ.items() if k.startswith("LSPT_") or k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    ray.init(address=address, runtime_env={"env_vars": env}, include_dashboard=False, logging_level="ERROR",
             log_to_driver=False, configure_logging=False)
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda signum, frame: stop.set()) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        serve.start(http_options={"host": options.host, "port": options.port}, logging_config={"log_level": "ERROR"})
        serve.run(deployment(options, replicas, cpus_per_replica), name=APP_NAME, route_prefix="/", blocking=False)
        log(f"lspt serve: {len(options.bundles)} bundle(s){' + ' + str(options.watch) if options.watch else ''} on "
            f"{replicas} Ray Serve replica(s) at http://{options.host}:{options.port}")
        stop.wait()
        log("lspt serve: shutting down the Ray Serve deployment")
    finally:
        try:
            serve.shutdown()
        finally:
            ray.shutdown()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
    log("lspt serve: stopped")
