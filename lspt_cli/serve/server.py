"""Run `lspt serve`: load the tasks, start the batcher and the directory watcher, serve with uvicorn.

Shutdown (SIGTERM or Ctrl-C, handled by uvicorn): the listening socket closes, requests already
received run to completion (their images are still batched) for up to --drain-timeout seconds, then
the batcher finishes what is queued and stops, and the process exits 0.
"""

from __future__ import annotations

import contextlib
import ipaddress
import signal
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UsageError
from .app import Limits, create_app
from .batcher import Batcher
from .metrics import Metrics
from .registry import Registry, check_task_name

LOOPBACK_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost"}


@dataclass
class ServeOptions:
    bundles: list[tuple[str, Path]] = field(default_factory=list)  # (task name, file)
    watch: Path | None = None
    watch_interval: float = 1.0
    host: str = "127.0.0.1"
    port: int = 8000
    token: str | None = None
    insecure: bool = False
    weights: dict[str | None, Path] = field(default_factory=dict)
    device: str = "auto"
    max_batch: int = 32
    max_wait_ms: float = 5.0
    max_queue: int = 1024
    limits: Limits = field(default_factory=Limits)
    drain_timeout: float = 30.0


def is_loopback(host: str) -> bool:
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_exposure(host: str, token: str | None, insecure: bool) -> None:
    """Binding anything but loopback needs --token (bearer auth) or an explicit --insecure."""
    if not is_loopback(host) and not token and not insecure:
        raise UsageError(
            f"--host {host} exposes the server beyond this machine; give it a --token (or LSPT_SERVE_TOKEN) "
            "that clients send as 'Authorization: Bearer <token>', or pass --insecure",
            hint="the default --host 127.0.0.1 serves only this machine",
        )


def parse_bundle_argument(text: str) -> tuple[str, Path]:
    """FILE (task named after its stem) or NAME=FILE."""
    name, sep, rest = text.partition("=")
    if sep and name and not name.endswith(".safetensors") and "/" not in name:
        path = Path(rest)
    else:
        name, path = Path(text).stem, Path(text)
    check_task_name(name, text)
    if path.suffix != ".safetensors":
        raise UsageError(f"{text}: a bundle is a .safetensors file")
    return name, path


def build(options: ServeOptions, log=None):
    """(registry, batcher, metrics) with every explicit bundle loaded (any failure raises)."""
    from ..engine.train import resolve_device

    device = resolve_device(options.device)
    metrics = Metrics()
    registry = Registry(options.weights, device=str(device), log=log)
    for name, path in options.bundles:
        if name in registry.tasks:
            raise UsageError(f"two bundles are served as task '{name}': name them with NAME=FILE")
        registry.load(name, path)
    if options.watch is not None:
        if not options.watch.is_dir():
            raise UsageError(f"--watch {options.watch}: not a directory")
        registry.scan(options.watch)

    def changed():
        metrics.tasks.set(len(registry.tasks))
        metrics.backbones.set(registry.num_backbones)

    registry.on_change = changed
    changed()
    batcher = Batcher(options.max_batch, options.max_wait_ms, options.max_queue, device=device, metrics=metrics)
    return registry, batcher, metrics


def describe(registry: Registry) -> dict:
    """What `lspt serve --dry-run` prints: the tasks and the batch groups they form. Tasks in one
    group go through every frozen block in one call (same backbone, same token count); all tasks
    of one backbone share the patch embedding and the batch."""
    groups: dict[tuple, list[str]] = {}
    tasks = []
    for task in sorted(registry.tasks.values(), key=lambda t: t.name):
        key = (task.backbone.name, task.fingerprint, task.info["tokens"])
        groups.setdefault(key, []).append(task.name)
        tasks.append({"name": task.name, "strategy": task.info["strategy"]["name"],
                      "prompts": int(getattr(task.model.model.strategy, "num_prompts", 0) or 0),
                      "classes": task.classes, "backbone": task.backbone.name, "fingerprint": task.fingerprint,
                      "batch_group": list(groups).index(key) + 1})
    return {"tasks": tasks, "backbones": registry.num_backbones,
            "batch_groups": [{"backbone": k[0], "fingerprint": k[1], "tokens": k[2], "tasks": v} for k, v in groups.items()]}


def make_app(options: ServeOptions, registry: Registry, batcher: Batcher, metrics: Metrics, log=None):
    log = log or (lambda line: print(line, file=sys.stderr, flush=True))
    stop = threading.Event()

    def watch_loop():
        while not stop.wait(options.watch_interval):
            try:
                registry.scan(options.watch)
            except Exception as exc:  # the watcher never dies of one bad file
                log(f"Warning: watching {options.watch}: {type(exc).__name__}: {exc}")

    @contextlib.asynccontextmanager
    async def lifespan(app):
        batcher.start()
        watcher = None
        if options.watch is not None:
            watcher = threading.Thread(target=watch_loop, name="lspt-watch", daemon=True)
            watcher.start()
        log(f"lspt serve: {len(registry.tasks)} task(s) on {registry.num_backbones} backbone(s) at "
            f"http://{_url_host(options.host)}:{options.port} (max batch {options.max_batch}, max wait {options.max_wait_ms:g} ms"
            f"{', token required' if options.token else ''})")
        try:
            yield
        finally:
            stop.set()
            batcher.stop()  # in-flight requests have finished (uvicorn drains first); finish the queue
            if watcher is not None:
                watcher.join(timeout=5)
            log("lspt serve: stopped")

    return create_app(registry, batcher, metrics, options.limits, options.token, lifespan=lifespan)


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def serve(options: ServeOptions) -> None:
    import uvicorn

    check_exposure(options.host, options.token, options.insecure)
    registry, batcher, metrics = build(options)
    app = make_app(options, registry, batcher, metrics)
    config = uvicorn.Config(app, host=options.host, port=options.port, log_level="warning", access_log=False,
                            lifespan="on", timeout_graceful_shutdown=options.drain_timeout, server_header=False)
    # uvicorn handles SIGTERM (stop accepting, drain, lifespan shutdown) and then re-raises it with
    # the handler it found installed: a no-op one makes a drained shutdown exit 0, not -15.
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: None)
    try:
        uvicorn.Server(config).run()
    finally:
        signal.signal(signal.SIGTERM, previous)
