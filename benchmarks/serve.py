"""`lspt serve` under load: 1, 4 and 16 tasks on one backbone; prints one JSON document.

    python benchmarks/serve.py [--tasks 1,4,16] [--seconds 8] [--clients 16] [--threads 1]
                               [--process-tasks 1,4] [--strategy vpt-deep --num-prompts 2]
                               [--backbone mae-vitb [--weights FILE] --image-size 224]

For every task count N it starts a real server (a subprocess on a free loopback port) serving N
bundles (random prompts and heads on a registered backbone: vit-tiny by default; mae-vitb without
--weights gets random ViT-B/16 weights, which run exactly as fast as MAE's) and runs --clients
closed-loop HTTP clients (one keep-alive connection each, one --image-size PNG per request, tasks in
round robin) for --seconds, in three set-ups:

  batched     one server, cross-task batching on (--max-batch 32 --max-wait-ms 5)
  unbatched   the same server with batching off (--max-batch 1)
  per-task    one server process per task, each with batching off: what "one `lspt predict`-style
              process per task, the model kept loaded" costs (only for N in --process-tasks)

Reported per run: images/s and client-side latency p50/p99 (ms) of the requests answered inside
the window, the batches the server formed (mean/max images, mean tasks per batch, from /metrics),
and resident memory (RSS, summed over the processes) once loaded (`rss_idle_mb`) and after the load.
Ratios: throughput of N tasks vs 1 task (batched), batched vs unbatched vs per-task,
and the RSS each extra task adds. Clients and servers share this machine's CPUs: compare figures
of one run with each other, not across machines.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_bundles(directory: Path, n: int, strategy: str, num_prompts: int, backbone: str = "vit-tiny",
                 weights: Path | None = None) -> list[Path]:
    """n bundles on one registered backbone, random prompts and heads (the speed does not depend on them)."""
    import torch

    import lspt
    from lspt_cli.prompted import PromptedViT, build_strategy, load_backbone

    directory.mkdir(parents=True, exist_ok=True)
    frozen = load_backbone(backbone, weights)
    options = {} if strategy == "linear" else {"num_prompts": num_prompts}
    paths = []
    for i in range(n):
        torch.manual_seed(1000 + i)
        model = PromptedViT(frozen, build_strategy(strategy, frozen.dims, options), 10)
        with torch.no_grad():
            for p in model.trainable_parameters():
                p.add_(torch.randn_like(p) * 0.5)
        net = lspt.PromptedModel(model, strategy)
        paths.append(net.save(directory / f"task{i:02d}.safetensors", classes=[f"c{j}" for j in range(10)]))
    return paths


def random_mae_weights(path: Path) -> Path:
    """A timm-format ViT-B/16 (MAE layout) state dict with random values: ViT-B's speed without a download."""
    import timm
    from safetensors.torch import save_file

    model = timm.create_model("vit_base_patch16_224.mae", pretrained=False, num_classes=0)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def png(seed: int, size: int = 32) -> bytes:
    import io

    import numpy as np
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


class Server:
    def __init__(self, bundles: list[Path], home: Path, threads: int, extra: list[str]):
        self.port = free_port()
        env = {**os.environ, "LSPT_HOME": str(home), "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
        self.proc = subprocess.Popen(  # noqa: S603
            [sys.executable, "-m", "lspt_cli", "serve", *map(str, bundles), "--port", str(self.port), "--device", "cpu",
             "--threads", str(threads), "--max-queue", "100000", *extra],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 300
        while True:
            if self.proc.poll() is not None:
                raise SystemExit(f"server exited: {self.proc.stderr.read()}")
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
                conn.request("GET", "/healthz")
                if conn.getresponse().status == 200:
                    conn.close()
                    break
            except OSError:
                if time.time() > deadline:
                    raise SystemExit("server did not start")
                time.sleep(0.2)
        self.rss_idle_mb = self.rss_mb()  # backbone + bundles loaded, before any request

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def metrics(self) -> dict[str, float]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
        conn.close()
        out = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                key, value = line.rsplit(" ", 1)
                out[key] = float(value)
        return out

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def load(routes: list[tuple[int, bytes]], clients: int, seconds: float, warmup: float = 1.0) -> dict:
    """Closed loop: each client sends its next request as soon as the last one is answered.
    routes[k] = (port, body) for task k; clients take tasks in round robin from their own offset."""
    latencies: list[float] = []
    lock = threading.Lock()
    start_at = time.perf_counter() + warmup
    stop_at = start_at + seconds
    errors = [0]

    def client(offset: int) -> None:
        conns: dict[int, http.client.HTTPConnection] = {}
        mine = []
        k = offset
        while True:
            now = time.perf_counter()
            if now >= stop_at:
                break
            port, body = routes[k % len(routes)]
            k += 1
            conn = conns.get(port) or conns.setdefault(port, http.client.HTTPConnection("127.0.0.1", port, timeout=120))
            t0 = time.perf_counter()
            try:
                conn.request("POST", "/v1/predict", body=body, headers={"Content-Type": "application/json"})
                response = conn.getresponse()
                response.read()
                ok = response.status == 200
            except OSError:
                ok = False
                conns.pop(port, None)
            t1 = time.perf_counter()
            if not ok:
                errors[0] += 1
            elif start_at <= t1 <= stop_at:  # answered inside the window (slow models: started before it)
                mine.append(t1 - t0)
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    latencies.sort()
    n = len(latencies)
    return {
        "requests": n, "images_per_s": round(n / seconds, 1), "errors": errors[0],
        "p50_ms": round(1000 * latencies[n // 2], 2) if n else None,
        "p99_ms": round(1000 * latencies[min(n - 1, int(0.99 * n))], 2) if n else None,
        "mean_ms": round(1000 * statistics.fmean(latencies), 2) if n else None,
    }


def batch_stats(before: dict, after: dict) -> dict:
    def delta(key):
        return after.get(key, 0.0) - before.get(key, 0.0)

    batches = delta("lspt_batch_images_count")
    if not batches:
        return {}
    buckets = sorted((float(k.split('"')[1]) if "+Inf" not in k else float("inf"), k)
                     for k in after if k.startswith("lspt_batch_images_bucket"))
    largest = next((bound for bound, key in buckets if delta(key) >= batches), None)
    return {"batches": int(batches), "mean_batch_images": round(delta("lspt_batch_images_sum") / batches, 2),
            "max_batch_images_le": largest, "mean_batch_tasks": round(delta("lspt_batch_tasks_sum") / batches, 2)}


def run_server(bundles, home, threads, extra, clients, seconds) -> dict:
    servers = [Server(bundles, home, threads, extra)]
    return measure(servers, [(servers[0].port, i) for i in range(len(bundles))], clients, seconds)


IMAGE_SIZE = [32]


def measure(servers: list[Server], routes_by_task: list[tuple[int, int]], clients: int, seconds: float) -> dict:
    bodies = {}
    for k, (port, index) in enumerate(routes_by_task):
        bodies[k] = (port, json.dumps({"task": f"task{index:02d}", "images": [base64.b64encode(png(k, IMAGE_SIZE[0])).decode()], "top_k": 1}).encode())
    try:
        before = [s.metrics() for s in servers]
        result = load([bodies[k] for k in range(len(bodies))], clients, seconds)
        after = [s.metrics() for s in servers]
        stats = [batch_stats(b, a) for b, a in zip(before, after)]
        batches = sum(s.get("batches", 0) for s in stats)
        if batches:
            result["mean_batch_images"] = round(sum(s["mean_batch_images"] * s["batches"] for s in stats) / batches, 2)
            result["mean_batch_tasks"] = round(sum(s["mean_batch_tasks"] * s["batches"] for s in stats) / batches, 2)
            result["max_batch_images_le"] = max(s["max_batch_images_le"] for s in stats if s)
        result["rss_mb"] = round(sum(s.rss_mb() for s in servers), 1)
        result["rss_idle_mb"] = round(sum(s.rss_idle_mb for s in servers), 1)
        result["processes"] = len(servers)
    finally:
        for s in servers:
            s.stop()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", default="1,4,16")
    parser.add_argument("--process-tasks", default="1,4", help="Task counts for the one-process-per-task baseline.")
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1, help="CPU threads per server process.")
    parser.add_argument("--backbone", default="vit-tiny", help="A registered backbone; mae-vitb without --weights uses random ViT-B weights.")
    parser.add_argument("--weights", type=Path, default=None)
    parser.add_argument("--image-size", type=int, default=32, help="Side of the PNGs sent (the server resizes them).")
    parser.add_argument("--strategy", default="vpt-deep")
    parser.add_argument("--num-prompts", type=int, default=2)
    parser.add_argument("--max-batch", type=int, default=32)
    parser.add_argument("--max-wait-ms", type=float, default=5.0)
    args = parser.parse_args()
    tasks = [int(x) for x in args.tasks.split(",") if x]
    IMAGE_SIZE[0] = args.image_size
    per_task = [int(x) for x in args.process_tasks.split(",") if x]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        os.environ["LSPT_HOME"] = str(tmp / "home")
        weights = args.weights
        if weights is None and args.backbone == "mae-vitb":
            weights = random_mae_weights(tmp / "mae-random.safetensors")
        bundles = make_bundles(tmp / "bundles", max(tasks), args.strategy, args.num_prompts, args.backbone, weights)
        rows = []
        for n in tasks:
            chosen = bundles[:n]
            batched = run_server(chosen, tmp / "home", args.threads,
                                 ["--max-batch", str(args.max_batch), "--max-wait-ms", str(args.max_wait_ms)], args.clients, args.seconds)
            rows.append({"tasks": n, "mode": "batched", **batched})
            unbatched = run_server(chosen, tmp / "home", args.threads, ["--max-batch", "1"], args.clients, args.seconds)
            rows.append({"tasks": n, "mode": "unbatched", **unbatched})
            if n in per_task:
                servers = [Server([b], tmp / "home", args.threads, ["--max-batch", "1"]) for b in chosen]
                routes = [(s.port, i) for i, s in enumerate(servers)]
                rows.append({"tasks": n, "mode": "per-task processes", **measure(servers, routes, args.clients, args.seconds)})
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    by = {(r["tasks"], r["mode"]): r for r in rows}
    ratios = {}
    lo, hi = min(tasks), max(tasks)
    if (lo, "batched") in by and (hi, "batched") in by:
        ratios[f"batched_{hi}_vs_{lo}_tasks_throughput"] = round(by[(hi, "batched")]["images_per_s"] / by[(lo, "batched")]["images_per_s"], 3)
        if hi > lo:
            ratios["idle_rss_mb_per_extra_task"] = round(
                (by[(hi, "batched")]["rss_idle_mb"] - by[(lo, "batched")]["rss_idle_mb"]) / (hi - lo), 2)
    for n in tasks:
        if (n, "unbatched") in by:
            ratios[f"batched_vs_unbatched_{n}_tasks"] = round(by[(n, "batched")]["images_per_s"] / by[(n, "unbatched")]["images_per_s"], 3)
        if (n, "per-task processes") in by:
            ratios[f"batched_vs_per_task_processes_{n}_tasks"] = round(
                by[(n, "batched")]["images_per_s"] / by[(n, "per-task processes")]["images_per_s"], 3)
    import torch

    doc = {
        "benchmark": "lspt serve", "command": " ".join(["python", "benchmarks/serve.py", *sys.argv[1:]]),
        "backbone": args.backbone, "weights": "random" if args.backbone == "mae-vitb" and args.weights is None else str(args.weights or ""),
        "strategy": args.strategy, "num_prompts": args.num_prompts, "device": "cpu",
        "clients": args.clients, "image_size": args.image_size, "seconds": args.seconds, "threads_per_server": args.threads,
        "max_batch": args.max_batch, "max_wait_ms": args.max_wait_ms,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__},
        "results": rows, "ratios": ratios,
    }
    print(json.dumps(doc, indent=2))


if __name__ == "__main__":
    main()
