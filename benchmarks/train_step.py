"""How fast is one prompt-tuning step, per strategy and per speed mode, against the bare backbone?

For every strategy, one training step (forward + backward + SGD step) of the prompted ViT-B/16
(timm `vit_base_patch16_224`, random init, wrapped in FrozenBackbone) is timed in five modes, side
by side in one run: eager fp32 (protocol `paper`), eager bf16 autocast, torch.compile'd fp32,
torch.compile'd bf16, and eager fp32 with gradient checkpointing of the frozen blocks. Next to
them runs the same step on the bare timm ViT over the same number of tokens (prefix + prompts +
patches): timm's own forward path (`patch_embed`, `_pos_embed`, `norm_pre`, `blocks`, `norm`) with
a trainable leaf of Np zero tokens inserted after CLS (so backward runs through every block, as
for the prompt strategies) and a trainable head; for `linear` the bare step has no extra tokens.
When bf16 modes run, the bare step runs in bf16 autocast too ("bare bf16"), and a bf16 mode's
`vs_bare` is against it: each precision against the backbone in the same precision.
Every repeat runs all modes and the bare steps of a strategy back to back (rotating the order), so
`vs_eager_fp32` and `vs_bare` are medians over repeats of per-repeat ratios: robust to load that
changes between repeats. A ratio below 1 vs eager fp32 is a speed-up (speedup = 1 / ratio).
Each step's process CPU time is recorded too (`cpu_s`, `vs_bare_cpu`): on a machine shared with
other jobs the wall time of a step swings with their load, its CPU time much less. `vs_bare_fastest`
is the fastest step over the fastest bare step: each the least disturbed of its repeats, the
estimate to trust when the machine's speed drifts during the run (another VM on the host).

bf16 modes run only where the device multiplies bf16 natively (CPU: AVX512-BF16/AMX flags; CUDA:
`is_bf16_supported`), unless `--bf16 on`: an emulating CPU is tens of times slower, measured here
by a probe matmul that is always reported (`bf16_probe`). Compiled modes report their compile time
(`compile_s`: the first step, compiling included) apart from the step time.

Peak memory: CUDA `max_memory_allocated` minus what was allocated before the step; CPU the peak RSS
(sampled from /proc/self/statm every millisecond, after `malloc_trim`) minus the RSS before the
step. Memory is measured on the last warm-up step (after compiling), never on a timed one.

The linear-probe part (`--probe-epochs`, 0 to skip) trains `lspt tune --backbone vit-tiny --task
digits --strategy linear --no-augment` for that many epochs with and without the feature cache
(two `lspt` processes, wall time each) and reports both test top-1 values.

`--profile` adds, for every strategy and for its bare step, the top operators (torch.profiler,
self CPU/CUDA time) of one eager fp32 step and how many operators the step launches (`ops`: aten
calls not made from inside another aten call): where the time goes when a mode does not pay off,
and what a strategy adds to the backbone's step. On a small CPU shared with other jobs each operator
pays the hand-over of its threads, so the operator count matters beside the FLOPs.

    python benchmarks/train_step.py [--device cpu|cuda] [--batch 8] [--repeats 3] [--warmup 1]
        [--strategies vpt-deep,gapt,lspt,spt-shallow,spt-deep,vfpt] [--modes ...] [--bf16 auto|on|off] [--probe-epochs 20]
        [--profile] [--model vit_base_patch16_224|tiny]

Prints one JSON document on stdout; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import platform
import statistics
import sys
import threading
import time

import torch
import torch.nn.functional as F
from torch import nn

STRATEGIES = ["linear", "vpt-shallow", "vpt-deep", "gapt", "lspt", "spt-shallow", "spt-deep", "vfpt"]
# mode -> (torch.compile, bf16 autocast, gradient checkpointing)
MODES = {
    "eager fp32": (False, False, False),
    "eager bf16": (False, True, False),
    "compiled fp32": (True, False, False),
    "compiled bf16": (True, True, False),
    "checkpointed fp32": (False, False, True),
}
# issue 14's goals: best mode >= 1.5x eager fp32 (speed-up), compiled fp32 >= 1.15x, checkpointing
# at most 1.4x the step time for at least 40% less peak memory
GOALS = {"best_speedup": 1.5, "compiled_fp32_speedup": 1.15, "checkpoint_time_ratio": 1.4, "checkpoint_memory_drop": 0.40}
TINY = dict(img_size=32, patch_size=8, embed_dim=64, depth=4, num_heads=4)  # --model tiny: for development


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# -- memory ---------------------------------------------------------------------------------------
class RssPeak:
    """Peak resident set size while the block runs (Linux /proc), in bytes above the starting RSS."""

    def __init__(self, interval: float = 0.001):
        self.interval = interval
        self.page = os.sysconf("SC_PAGE_SIZE")
        self.peak = 0
        self.start = 0
        self._stop = threading.Event()

    def rss(self) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * self.page

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.rss())
            time.sleep(self.interval)

    def __enter__(self) -> "RssPeak":
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6").malloc_trim(0)  # hand freed heap back so the delta is honest
        self.start = self.peak = self.rss()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.rss())

    @property
    def delta(self) -> int:
        return self.peak - self.start


@contextlib.contextmanager
def peak_memory(device: torch.device, out: dict):
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        yield
        torch.cuda.synchronize()
        out["peak_mb"] = round((torch.cuda.max_memory_allocated() - before) / 2**20, 1)
        out["peak_total_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    else:
        with RssPeak() as rss:
            yield
        out["peak_mb"] = round(rss.delta / 2**20, 1)
        out["peak_total_mb"] = round(rss.peak / 2**20, 1)


# -- the two steps --------------------------------------------------------------------------------
def autocast_for(device: torch.device, bf16: bool):
    if bf16:
        return lambda: torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext


class PromptedStep:
    def __init__(self, model, forward, images, labels, autocast):
        self.model, self.forward, self.images, self.labels, self.autocast = model, forward, images, labels, autocast
        self.opt = torch.optim.SGD(model.trainable_parameters(), lr=1e-3, momentum=0.9)

    def __call__(self) -> None:
        self.opt.zero_grad(set_to_none=True)
        with self.autocast():
            loss = F.cross_entropy(self.forward(self.images).float(), self.labels)
        loss.backward()
        self.opt.step()


class BareStep:
    """timm's own forward path over prefix + `extra` + patch tokens, backward, SGD step."""

    def __init__(self, vit, num_extra, num_classes, images, labels, autocast):
        self.vit, self.images, self.labels, self.autocast = vit, images, labels, autocast
        device = images.device
        self.head = nn.Linear(vit.embed_dim, num_classes).to(device)
        params = list(self.head.parameters())
        self.extra = None
        if num_extra:
            self.extra = nn.Parameter(torch.zeros(1, num_extra, vit.embed_dim, device=device))
            params.append(self.extra)
        self.opt = torch.optim.SGD(params, lr=1e-3, momentum=0.9)

    def __call__(self) -> None:
        vit = self.vit
        self.opt.zero_grad(set_to_none=True)
        with self.autocast():
            x = vit.norm_pre(vit._pos_embed(vit.patch_embed(self.images)))
            if self.extra is not None:
                p = vit.num_prefix_tokens
                x = torch.cat([x[:, :p], self.extra.expand(x.shape[0], -1, -1), x[:, p:]], dim=1)
            x = vit.norm(vit.blocks(x))
            loss = F.cross_entropy(self.head(x[:, 0]).float(), self.labels)
        loss.backward()
        self.opt.step()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(step, device: torch.device) -> float:
    return timed_both(step, device)[0]


def timed_both(step, device: torch.device) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of one step."""
    sync(device)
    start, cpu = time.perf_counter(), time.process_time()
    step()
    sync(device)
    return time.perf_counter() - start, time.process_time() - cpu


# -- machine facts --------------------------------------------------------------------------------
def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in open("/proc/cpuinfo", encoding="utf-8", errors="replace"):
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    return platform.processor() or platform.machine()


def load_average() -> list[float] | None:
    with contextlib.suppress(OSError, AttributeError):
        return [round(x, 2) for x in os.getloadavg()]
    return None


def bf16_probe(device: torch.device, n: int = 3) -> dict:
    """One [1576 x 768] @ [768 x 3072] matmul (ViT-B's MLP at batch 8) in fp32 and in bf16."""
    a, w = torch.randn(1576, 768, device=device), torch.randn(768, 3072, device=device)
    out = {}
    for name, dtype in (("fp32_ms", torch.float32), ("bf16_ms", torch.bfloat16)):
        x, y = a.to(dtype), w.to(dtype)
        x @ y
        times = []
        for _ in range(n):
            sync(device)
            t = time.perf_counter()
            x @ y
            sync(device)
            times.append(time.perf_counter() - t)
        out[name] = round(1000 * statistics.median(times), 2)
    out["bf16_over_fp32"] = round(out["bf16_ms"] / out["fp32_ms"], 2)
    return out


def profile_step(step, device: torch.device, rows: int = 12) -> dict:
    """One step under torch.profiler: the operators that take the time (self time, descending) and
    the operator count (aten calls not made from inside another aten call: what the step launches)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        step()
        sync(device)
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    events = sorted(prof.key_averages(), key=lambda e: getattr(e, key, 0), reverse=True)
    total = sum(getattr(e, key, 0) for e in events) or 1
    top = [{"op": e.key, "self_ms": round(getattr(e, key, 0) / 1000, 1), "share": round(getattr(e, key, 0) / total, 3),
            "calls": e.count} for e in events[:rows]]
    outer = [e for e in prof.events() if e.name.startswith("aten::")
             and not (e.cpu_parent is not None and e.cpu_parent.name.startswith("aten::"))]
    return {"self_ms": round(total / 1000, 1), "ops": len(outer), "top_ops": top}


# -- the linear probe's feature cache -------------------------------------------------------------
def linear_probe(epochs: int, threads: int) -> dict:
    """`lspt tune` linear probe on vit-tiny digits, --no-augment, with and without the feature cache."""
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory() as home:
        env = {**os.environ, "LSPT_HOME": home, "LSPT_NO_PROGRESS": "1", "LSPT_LOAD_PLUGINS": ""}
        base = [sys.executable, "-m", "lspt_cli", "tune", "--backbone", "vit-tiny", "--task", "digits",
                "--strategy", "linear", "--epochs", str(epochs), "--no-augment", "--threads", str(threads),
                "--json", "-q"]
        subprocess.run(base[:-2] + ["--epochs", "1", "--out", os.path.join(home, "prepare"), "-q"], env=env,
                       check=True, capture_output=True)  # digits prepares itself on first use: not timed
        out = {"command": " ".join(["lspt"] + base[3:]), "epochs": epochs}
        for name, extra in (("uncached", ["--no-feature-cache"]), ("cached", [])):
            log(f"linear probe: {name}, {epochs} epochs")
            start = time.perf_counter()
            run = subprocess.run(base + extra + ["--out", os.path.join(home, name)], env=env, check=True,
                                 capture_output=True, text=True)
            wall = time.perf_counter() - start
            summary = json.loads(run.stdout)
            out[name] = {"wall_s": round(wall, 2), "train_s": round(summary["seconds"], 2),
                         "test_top1": round(summary["test_top1"], 2), "feature_cache": summary["feature_cache"],
                         **({"feature_cache_s": summary["feature_cache_seconds"]} if "feature_cache_seconds" in summary else {})}
        out["speedup"] = round(out["uncached"]["wall_s"] / out["cached"]["wall_s"], 2)
        out["top1_difference"] = round(abs(out["uncached"]["test_top1"] - out["cached"]["test_top1"]), 2)
        out["meets_goal"] = out["speedup"] >= 3 and out["top1_difference"] <= 1
    return out


# -- the step benchmark ---------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3, help="timed steps per mode")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps per mode after the first (compiling) one")
    parser.add_argument("--num-classes", type=int, default=100)
    parser.add_argument("--strategies", default="vpt-deep,gapt,lspt", help="comma-separated, of: " + ",".join(STRATEGIES))
    parser.add_argument("--modes", default=",".join(MODES), help="comma-separated, of: " + ",".join(MODES))
    parser.add_argument("--bf16", choices=["auto", "on", "off"], default="auto",
                        help="bf16 modes: auto = only where the device runs bf16 natively")
    parser.add_argument("--probe-epochs", type=int, default=20, help="linear-probe feature-cache benchmark (0: skip)")
    parser.add_argument("--profile", action="store_true", help="top operators of one eager fp32 step")
    parser.add_argument("--model", default="vit_base_patch16_224", help="timm model name, or 'tiny' (development)")
    args = parser.parse_args()

    import timm

    from lspt_cli.backbone import FrozenBackbone
    from lspt_cli.engine.accel import bf16_report
    from lspt_cli.plugins import get_host
    from lspt_cli.prompted import PromptedViT, build_strategy

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device")
    names = [n.strip() for n in args.strategies.split(",") if n.strip()]
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if "eager fp32" not in modes or any(m not in MODES for m in modes):
        parser.error(f"--modes: a subset of {', '.join(MODES)} that includes 'eager fp32'")
    load_start = load_average()
    bf16 = bf16_report(device)
    probe = bf16_probe(device)
    skipped = {}
    if args.bf16 == "off" or (args.bf16 == "auto" and not bf16["bf16_native"]):
        why = "--bf16 off" if args.bf16 == "off" else (
            f"no native bf16 on this device: a bf16 matmul takes {probe['bf16_over_fp32']}x the fp32 one (bf16_probe)")
        skipped = {m: why for m in modes if MODES[m][1]}
        modes = [m for m in modes if not MODES[m][1]]
    torch._dynamo.config.cache_size_limit = 64  # one graph per (strategy, precision): never fall back silently

    torch.manual_seed(0)
    if args.model == "tiny":
        from timm.models.vision_transformer import VisionTransformer

        vit = VisionTransformer(**TINY, num_classes=0)
    else:
        vit = timm.create_model(args.model, pretrained=False, num_classes=0)
    backbone = FrozenBackbone(vit, name=args.model, readout="cls").to(device)
    dims = backbone.dims
    size = vit.patch_embed.img_size[0]
    images = torch.randn(args.batch, 3, size, size, device=device)
    labels = torch.randint(0, args.num_classes, (args.batch,), device=device)
    host = get_host()

    runs = {}
    for name in names:
        steps, compile_s, memory = {}, {}, {}
        for mode in modes:
            compiled, use_bf16, checkpointed = MODES[mode]
            torch.manual_seed(0)  # every mode starts from the same strategy and head
            strategy = build_strategy(name, dims, host=host)
            model = PromptedViT(backbone, strategy, args.num_classes).to(device).train()
            model.grad_checkpointing = checkpointed
            forward = torch.compile(model, dynamic=False) if compiled else model
            steps[mode] = PromptedStep(model, forward, images, labels, autocast_for(device, use_bf16))
        steps["bare"] = BareStep(vit, strategy.num_prompts, args.num_classes, images, labels, autocast_for(device, False))
        if any(MODES[m][1] for m in modes):
            steps["bare bf16"] = BareStep(vit, strategy.num_prompts, args.num_classes, images, labels,
                                          autocast_for(device, True))
        for mode, step in steps.items():
            first = timed(step, device)  # compiles the compiled modes
            if MODES.get(mode, (False,))[0]:
                compile_s[mode] = round(first, 2)
            for i in range(args.warmup):
                if i == args.warmup - 1:
                    memory[mode] = {}
                    with peak_memory(device, memory[mode]):
                        step()
                else:
                    step()
            log(f"warm: {name} {mode} (first step {first:.2f}s)")
        runs[name] = {"steps": steps, "compile_s": compile_s, "memory": memory, "times": {m: [] for m in steps},
                      "cpu": {m: [] for m in steps},
                      "tokens": dims.num_prefix_tokens + strategy.num_prompts + dims.num_patches}

    order = list(modes) + ["bare"] + (["bare bf16"] if any(MODES[m][1] for m in modes) else [])
    for r in range(args.repeats):
        for name, run in runs.items():
            shift = r % len(order)
            for mode in order[shift:] + order[:shift]:  # rotate: no mode always runs first
                wall, cpu = timed_both(run["steps"][mode], device)
                run["times"][mode].append(wall)
                run["cpu"][mode].append(cpu)
        log(f"repeat {r + 1}/{args.repeats}: " + "; ".join(
            f"{n} " + ", ".join(f"{m} {run['times'][m][-1]:.2f}s" for m in order) for n, run in runs.items()))

    results = []
    for name, run in runs.items():
        times, cpus = run["times"], run["cpu"]
        eager = times["eager fp32"]
        row = {"strategy": name, "tokens": run["tokens"], "bare_step_s": round(statistics.median(times["bare"]), 4),
               "bare_cpu_s": round(statistics.median(cpus["bare"]), 4),
               "bare_peak_mem_mb": run["memory"]["bare"].get("peak_mb"), "modes": {}}
        if "bare bf16" in times:
            row["bare_bf16_step_s"] = round(statistics.median(times["bare bf16"]), 4)
            row["bare_bf16_cpu_s"] = round(statistics.median(cpus["bare bf16"]), 4)
        for mode in modes:
            t, c = times[mode], cpus[mode]
            bare = "bare bf16" if MODES[mode][1] else "bare"  # the backbone in the mode's precision
            row["modes"][mode] = {
                "step_s": round(statistics.median(t), 4),
                "cpu_s": round(statistics.median(c), 4),
                "vs_eager_fp32": round(statistics.median(a / b for a, b in zip(t, eager)), 3),
                "vs_bare": round(statistics.median(a / b for a, b in zip(t, times[bare])), 3),
                "vs_bare_cpu": round(statistics.median(a / b for a, b in zip(c, cpus[bare])), 3),
                "vs_bare_fastest": round(min(t) / min(times[bare]), 3),
                "peak_mem_mb": run["memory"][mode].get("peak_mb"),
                **({"compile_s": run["compile_s"][mode]} if mode in run["compile_s"] else {}),
                "step_s_all": [round(x, 4) for x in t],
            }
        m = row["modes"]
        best = min(m, key=lambda k: m[k]["vs_eager_fp32"])
        row["best_mode"] = best
        row["best_speedup"] = round(1 / m[best]["vs_eager_fp32"], 3)
        goals = {"best_speedup >= 1.5": row["best_speedup"] >= GOALS["best_speedup"]}
        if "compiled fp32" in m:
            row["compiled_fp32_speedup"] = round(1 / m["compiled fp32"]["vs_eager_fp32"], 3)
            goals["compiled fp32 speedup >= 1.15"] = row["compiled_fp32_speedup"] >= GOALS["compiled_fp32_speedup"]
        if "checkpointed fp32" in m and m["eager fp32"]["peak_mem_mb"]:
            drop = 1 - m["checkpointed fp32"]["peak_mem_mb"] / m["eager fp32"]["peak_mem_mb"]
            row["checkpoint_memory_drop"] = round(drop, 3)
            goals["checkpointing: memory -40%, time <= 1.4x"] = (
                drop >= GOALS["checkpoint_memory_drop"] and m["checkpointed fp32"]["vs_eager_fp32"] <= GOALS["checkpoint_time_ratio"])
        row["goals"] = goals
        results.append(row)

    profile = None
    if args.profile and runs:
        profile = {"mode": "eager fp32", "strategies": {}}
        for name, run in runs.items():
            log(f"profiling one eager fp32 step of {name} and of its bare step")
            profile["strategies"][name] = {"strategy": profile_step(run["steps"]["eager fp32"], device),
                                           "bare": profile_step(run["steps"]["bare"], device)}

    probe_result = None
    if args.probe_epochs > 0:
        probe_result = linear_probe(args.probe_epochs, torch.get_num_threads())

    print(json.dumps({
        "benchmark": "train_step",
        "model": f"{args.model} (random init, frozen)",
        "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "load_average_start": load_start,
        "load_average_end": load_average(),
        "bf16": bf16,
        "bf16_probe": probe,
        "skipped_modes": skipped,
        "batch": args.batch,
        "repeats": args.repeats,
        "warmup": args.warmup,
        "torch": torch.__version__,
        "timm": timm.__version__,
        "memory": "peak above the pre-step level: " + (
            "torch.cuda.max_memory_allocated" if device.type == "cuda" else "RSS sampled from /proc/self/statm"
        ),
        "goals": GOALS,
        "results": results,
        "profile": profile,
        "linear_probe": probe_result,
    }, indent=2))


if __name__ == "__main__":
    main()
