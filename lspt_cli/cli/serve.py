"""`lspt serve [NAME=]BUNDLE... [--watch DIR]`: many tasks on shared frozen backbones over HTTP.

The server lives in lspt_cli/serve/ (docs/serve.md); this module only turns options into a
ServeOptions. FastAPI, uvicorn and python-multipart come with the `serve` extra.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from ..errors import UsageError
from .output import out, print_json, safe


def parse_weights(values: list[str]) -> dict[str | None, Path]:
    """--weights FILE (every backbone) or --weights BACKBONE=FILE, repeatable."""
    out: dict[str | None, Path] = {}
    for value in values:
        name, sep, rest = value.partition("=")
        key, path = (name, Path(rest)) if sep and name and "/" not in name else (None, Path(value))
        if key in out:
            raise UsageError(f"--weights given twice for {'every backbone' if key is None else key!r}")
        out[key] = path
    return out


def register(app: typer.Typer) -> None:
    @app.command("serve")
    def serve(
        bundles: Optional[List[str]] = typer.Argument(None, metavar="[NAME=]BUNDLE...", help="Bundles to serve; a task is named after its file's stem unless NAME= is given."),
        watch: Optional[Path] = typer.Option(None, "--watch", help="Serve every *.safetensors in this directory; new, changed and removed files are picked up while running.  [default: no directory: only the BUNDLE arguments]"),
        host: str = typer.Option("127.0.0.1", "--host", help="Address to bind. Anything but loopback needs --token or --insecure."),
        port: int = typer.Option(8000, "--port", min=1, max=65535, help="TCP port."),
        token: Optional[str] = typer.Option(None, "--token", envvar="LSPT_SERVE_TOKEN", help="Require 'Authorization: Bearer TOKEN' (all endpoints but /healthz).  [default: none: loopback only]", show_default=False),
        insecure: bool = typer.Option(False, "--insecure", help="Allow a non-loopback --host without a token."),
        weights: Optional[List[str]] = typer.Option(None, "--weights", help="Backbone weights: FILE, or BACKBONE=FILE (repeatable).  [default: the file each bundle was trained with, else the cache dir's]"),
        device: str = typer.Option("auto", "--device", help="auto (cuda if available), cpu, cuda or cuda:N."),
        threads: Optional[int] = typer.Option(None, "--threads", min=1, help="CPU threads for the model.  [default: torch's]"),
        max_batch: int = typer.Option(32, "--max-batch", min=1, help="Images per backbone pass, across tasks; 1 turns batching off."),
        max_wait_ms: float = typer.Option(5.0, "--max-wait-ms", min=0.0, help="How long the oldest queued request waits for others to join its batch."),
        max_queue: int = typer.Option(1024, "--max-queue", min=1, help="Images allowed to wait; beyond it requests get 503."),
        max_body_mb: float = typer.Option(16.0, "--max-body-mb", min=0.001, help="Largest request body, in MiB (413 above)."),
        max_images: int = typer.Option(64, "--max-images", min=1, help="Images per request (413 above)."),
        max_pixels: int = typer.Option(4096 * 4096, "--max-pixels", min=1, help="Pixels per image, checked before decoding (413 above)."),
        read_timeout: float = typer.Option(30.0, "--read-timeout", min=0.1, help="Seconds a client may take to send its body (408 after)."),
        watch_interval: float = typer.Option(1.0, "--watch-interval", min=0.05, help="Seconds between scans of --watch."),
        drain_timeout: float = typer.Option(30.0, "--drain-timeout", min=0.0, help="On SIGTERM, seconds to let in-flight requests finish."),
        engine: str = typer.Option("local", "--engine", help="local (uvicorn in this process) or ray (a Ray Serve deployment with --replicas)."),
        replicas: int = typer.Option(1, "--replicas", min=1, help="--engine ray: copies of the app, each with its own backbones and batcher."),
        ray_address: Optional[str] = typer.Option(None, "--ray-address", help="--engine ray: a running cluster (ray://... or auto).  [default: a local cluster for this command]"),
        cpus_per_replica: float = typer.Option(1.0, "--cpus-per-replica", min=0.0, help="--engine ray: CPUs Ray reserves per replica."),
        dry_run: bool = typer.Option(False, "--dry-run", help="Load and check every bundle, print the tasks and what batches with what, serve nothing."),
        json_: bool = typer.Option(False, "--json", help="With --dry-run: print one JSON document."),
    ):
        """Serve bundles over HTTP: one backbone per weights, requests of all tasks batched together."""
        import importlib.util

        missing = [m for m in ("fastapi", "uvicorn", "multipart") if importlib.util.find_spec(m) is None]
        if missing:
            raise UsageError(f"lspt serve needs the 'serve' extra ({', '.join(missing)} missing)",
                             hint="pip install 'lspt[serve]'")
        from ..serve.app import Limits
        from ..serve.server import ServeOptions, check_exposure, parse_bundle_argument
        from ..serve.server import serve as run_server
        if engine not in ("local", "ray"):
            raise UsageError(f"--engine must be local or ray, got {engine!r}")
        if engine == "local" and (replicas != 1 or ray_address):
            raise UsageError("--replicas and --ray-address need --engine ray")
        check_exposure(host, token, insecure)  # before loading anything
        parsed = [parse_bundle_argument(b) for b in bundles or []]
        if not parsed and watch is None:
            raise UsageError("serve needs bundles or --watch DIR", hint="lspt serve cub.safetensors dogs=dogs-v2.safetensors")
        if threads:
            import os

            import torch

            torch.set_num_threads(threads)
            os.environ["OMP_NUM_THREADS"] = str(threads)  # --engine ray: the replicas' torch reads it
        options = ServeOptions(
            bundles=parsed, watch=watch, watch_interval=watch_interval, host=host, port=port, token=token or None,
            insecure=insecure, weights=parse_weights(weights or []), device=device, max_batch=max_batch,
            max_wait_ms=max_wait_ms, max_queue=max_queue, drain_timeout=drain_timeout,
            limits=Limits(max_body_bytes=int(max_body_mb * 2**20), max_images=max_images, max_pixels=max_pixels,
                          read_timeout_s=read_timeout),
        )
        if dry_run:
            from ..serve.server import build, describe

            registry, _, _ = build(options)
            doc = describe(registry)
            if json_:
                print_json(doc)
            else:
                for task in doc["tasks"]:
                    out.print(f"{safe(task['name'])}: {safe(task['strategy'])} {task['prompts']} prompt(s), {len(task['classes'])} classes, "
                              f"backbone {safe(task['backbone'])} {task['fingerprint'][:19]}..., batch group {task['batch_group']}")
                out.print(f"{len(doc['tasks'])} task(s) on {doc['backbones']} backbone(s) in {len(doc['batch_groups'])} batch group(s)")
            return
        if engine == "ray":
            from ..serve.ray_engine import serve_ray

            serve_ray(options, replicas=replicas, address=ray_address, cpus_per_replica=cpus_per_replica)
        else:
            run_server(options)
