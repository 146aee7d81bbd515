"""What each named backbone costs: build time from its official checkpoint layout, parameters,
tokens per image, and one `vpt-deep` training step against the bare backbone's (issue 21).

For every registered backbone that tests/fake_checkpoints.py can fake (the authors' key names,
nesting and shapes, random tensors), a fake official file is written at the backbone's real
width, patch size and position grid and at a reduced depth (`--depth`, default 2 blocks: a
ViT-g/14 of 40 blocks does not train on a 2-core CPU; `--depth 0` builds every block), then:

- `build_s`: the backbone's own factory on that file, timed (read, convert, build the timm model,
  strict load, freeze; pos_embed resampled where lspt's input size differs from the file's);
- `params_built` (at the reduced depth) and `params_full` (at the spec's depth: the built model's
  count plus one block's for each block left out), `tokens_per_image` (prefix + patches at lspt's input size) and
  `tokens_vpt_deep` (+ the prompts);
- the step: one eager fp32 step (forward, backward, SGD) of `vpt-deep` with its default options
  and of the bare timm ViT over the same tokens (benchmarks/train_step.py's PromptedStep and
  BareStep, imported, not copied), side by side: every repeat runs both, alternating which goes
  first, and `vs_bare` is the median of the per-repeat ratios of wall time (the target: <= 1.10
  everywhere). On a shared machine wall time mostly measures the other jobs, so each row also has
  `vs_bare_cpu_time`, the same median over the process's CPU time (time.process_time: the work
  done, not the wait; clean with `--threads 1`, where no OpenMP thread spins), and
  `vs_bare_fastest`, the ratio of the fastest steps;
- memory: lspt_cli/engine/memory_estimate.py's activation estimate of that step against its
  measured peak (RSS above the level before the step, sampled as train_step.py samples it), in a
  child process with glibc's mmap threshold fixed at 64 KiB so that freed tensors leave the RSS at
  once: the measured peak is then the live tensors' peak, what the estimate counts.

    python benchmarks/backbones.py [--depth 2|0] [--batch 4] [--repeats 3] [--backbones a,b,...]
        [--threads N] [--no-memory]

Prints one JSON document on stdout (progress on stderr).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "tests")]  # train_step's steps; the fake checkpoints

from train_step import BareStep, PromptedStep, RssPeak, cpu_model, load_average, timed  # noqa: E402

TARGET_VS_BARE = 1.10
STRATEGY = "vpt-deep"


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def official_grid(name: str, family: str, patch: int, input_size: int) -> int:
    """Patches per side of the official file's pos_embed (DINOv2's hub files: 518 px)."""
    from fake_checkpoints import DINOV2_GRID

    return DINOV2_GRID if family == "dinov2" else input_size // patch


def full_params(backbone, full_depth: int) -> int:
    """Parameters at the spec's full depth: the built model's, plus its first block's for each block
    left out (every block of a ViT has the same shapes)."""
    model = backbone.model
    per_block = sum(p.numel() for p in model.blocks[0].parameters())
    return sum(p.numel() for p in model.parameters()) + (full_depth - len(model.blocks)) * per_block


def build(name: str, spec, depth: int, directory: Path) -> dict:
    """Write the fake official file, build the backbone from it (timed), count and describe it."""
    from fake_checkpoints import SPECS, fake_checkpoint

    from lspt_cli.plugins import resolve_factory

    family, patch = SPECS[name]
    input_size = int(getattr(spec, "input_size", None) or 224)
    depth = depth or int(spec.depth)  # 0: the spec's full depth
    fake = fake_checkpoint(name, embed_dim=int(spec.embed_dim), depth=depth,
                           grid=official_grid(name, family, patch, input_size), scale=0.02)
    file = fake.save(directory)
    factory = resolve_factory(spec.factory)
    start = time.perf_counter()
    backbone = factory(file, model_kwargs={"depth": depth})
    build_s = time.perf_counter() - start
    file.unlink()
    dims = backbone.dims
    return {"backbone": backbone, "build_s": build_s, "family": family,
            "params_built": sum(p.numel() for p in backbone.parameters()),
            "params_full": full_params(backbone, int(spec.depth)),
            "tokens_per_image": dims.num_prefix_tokens + dims.num_patches,
            "image_size": backbone.data_config["input_size"][-1]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depth", type=int, default=2,
                        help="blocks built (the real width, patch and tokens); 0: each backbone's full depth")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3, help="timed steps of each kind per backbone")
    parser.add_argument("--num-classes", type=int, default=100)
    parser.add_argument("--backbones", default="", help="comma-separated names (default: every one with a fake)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--no-memory", action="store_true", help="skip the estimate-vs-measured memory check")
    parser.add_argument("--memory-only", action="store_true", help=argparse.SUPPRESS)  # memory_check's child
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory_only:
        print(json.dumps(memory_rows(args.backbones.split(","), args.depth, args.batch)))
        return

    import timm
    from fake_checkpoints import SPECS

    from lspt_cli.plugins import get_host
    from lspt_cli.prompted import PromptedViT, build_strategy

    host = get_host()
    registered = host.backbones.names()
    wanted = [n.strip() for n in args.backbones.split(",") if n.strip()] or [n for n in registered if n in SPECS]
    unknown = [n for n in wanted if n not in registered or n not in SPECS]
    if unknown:
        parser.error(f"--backbones: {', '.join(unknown)} not registered or without a fake checkpoint")
    without_fake = [n for n in registered if n not in SPECS and not host.backbones.is_family(n)]
    load_start = load_average()
    device = torch.device("cpu")

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in wanted:
            spec = host.backbones.get(name)
            log(f"{name}: building from a fake official checkpoint at depth {args.depth or spec.depth}")
            built = build(name, spec, args.depth, Path(tmp))
            backbone = built.pop("backbone")
            torch.manual_seed(0)
            size = built["image_size"]
            images = torch.randn(args.batch, 3, size, size)
            labels = torch.randint(0, args.num_classes, (args.batch,))
            strategy = build_strategy(STRATEGY, backbone.dims, host=host)
            model = PromptedViT(backbone, strategy, args.num_classes).train()
            null = contextlib.nullcontext
            steps = {STRATEGY: PromptedStep(model, model, images, labels, null),
                     "bare": BareStep(backbone.model, strategy.num_prompts, args.num_classes, images, labels, null)}
            for step in steps.values():  # first step and one warm-up, untimed
                step()
                step()
            times = {k: [] for k in steps}
            cpu = {k: [] for k in steps}
            for r in range(args.repeats):
                for kind in (list(steps) if r % 2 == 0 else list(steps)[::-1]):
                    before = time.process_time()
                    times[kind].append(timed(steps[kind], device))
                    cpu[kind].append(time.process_time() - before)
            row = {"backbone": name, **built, "build_s": round(built["build_s"], 3),
                   "tokens_vpt_deep": built["tokens_per_image"] + strategy.num_prompts,
                   "num_prompts": strategy.num_prompts, "depth_built": backbone.dims.depth, "depth_full": int(spec.depth),
                   "embed_dim": backbone.dims.embed_dim, "patch_size": backbone.dims.patch_size,
                   "bare_step_s": round(statistics.median(times["bare"]), 4),
                   "vpt_deep_step_s": round(statistics.median(times[STRATEGY]), 4),
                   "vs_bare": round(statistics.median(a / b for a, b in zip(times[STRATEGY], times["bare"])), 3),
                   "vs_bare_cpu_time": round(statistics.median(a / b for a, b in zip(cpu[STRATEGY], cpu["bare"])), 3),
                   "vs_bare_fastest": round(min(times[STRATEGY]) / min(times["bare"]), 3),
                   "step_s_all": {k: [round(x, 4) for x in v] for k, v in times.items()},
                   "cpu_s_all": {k: [round(x, 4) for x in v] for k, v in cpu.items()}}
            row["meets_target"] = row["vs_bare"] <= TARGET_VS_BARE
            row["meets_target_cpu_time"] = row["vs_bare_cpu_time"] <= TARGET_VS_BARE
            log(f"{name}: build {row['build_s']}s, {row['params_full'] / 1e6:.1f}M params (full), "
                f"{row['tokens_vpt_deep']} tokens, vpt-deep {row['vpt_deep_step_s']}s vs bare {row['bare_step_s']}s "
                f"= {row['vs_bare']} (CPU time {row['vs_bare_cpu_time']})")
            rows.append(row)

    memory_note = "skipped (--no-memory)"
    if not args.no_memory and rows:
        memory_note = memory_check(rows, args.depth, args.batch, torch.get_num_threads())

    print(json.dumps({
        "benchmark": "backbones",
        "what": (f"each named backbone built from a fake official checkpoint (real width, patch size and "
                 f"tokens; {f'{args.depth} of its blocks' if args.depth else 'every block'}, random tensors), one "
                 f"eager fp32 {STRATEGY} step vs the "
                 "bare timm ViT over the same tokens, side by side"),
        "depth_built": args.depth or "full",
        "device": "cpu",
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "load_average_start": load_start,
        "load_average_end": load_average(),
        "batch": args.batch,
        "repeats": args.repeats,
        "torch": torch.__version__,
        "timm": timm.__version__,
        "target_vs_bare": TARGET_VS_BARE,
        "all_meet_target": all(r["meets_target"] for r in rows),
        "all_meet_target_cpu_time": all(r["meets_target_cpu_time"] for r in rows),
        "worst_vs_bare": max((r["vs_bare"] for r in rows), default=None),
        "worst_vs_bare_cpu_time": max((r["vs_bare_cpu_time"] for r in rows), default=None),
        "memory": memory_note,
        "registered_without_fake": without_fake,
        "results": rows,
    }, indent=2))


def memory_rows(names: list[str], depth: int, batch: int) -> dict[str, dict]:
    """--memory-only, in this process (started by memory_check with glibc's mmap threshold fixed):
    each backbone's vpt-deep step, its activation estimate and its measured peak."""
    from lspt_cli.engine import memory_estimate as me
    from lspt_cli.plugins import get_host
    from lspt_cli.prompted import PromptedViT, build_strategy

    host = get_host()
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            backbone = build(name, host.backbones.get(name), depth, Path(tmp))["backbone"]
            torch.manual_seed(0)
            size = backbone.data_config["input_size"][-1]
            images, labels = torch.randn(batch, 3, size, size), torch.randint(0, 10, (batch,))
            strategy = build_strategy(STRATEGY, backbone.dims, host=host)
            model = PromptedViT(backbone, strategy, 10).train()
            step = PromptedStep(model, model, images, labels, contextlib.nullcontext)
            step()
            step()
            peaks = []
            for _ in range(2):
                with RssPeak(interval=0.0005) as rss:
                    step()
                peaks.append(rss.delta)
            est = me.estimate(me.shape_from_model(backbone.model), batch=batch, num_prompts=strategy.num_prompts,
                              strategy_params=sum(p.numel() for p in strategy.parameters()))
            measured = min(peaks)
            out[name] = {"activations_estimate_mb": round(est.train_activation_bytes / 2**20, 1),
                         "activations_measured_mb": round(measured / 2**20, 1),
                         "estimate_over_measured": round(est.train_activation_bytes / measured, 3) if measured > 0 else None}
            log(f"{name}: activations estimated {out[name]['activations_estimate_mb']} MB, measured "
                f"{out[name]['activations_measured_mb']} MB")
            del model, step, backbone
    return out


def memory_check(rows: list[dict], depth: int, batch: int, threads: int) -> str:
    """Add each row's estimate and measured peak, measured in a child process whose glibc keeps
    its mmap threshold at 64 KiB (MALLOC_MMAP_THRESHOLD_): there every freed tensor leaves the RSS
    at once, so the RSS peak is the live tensors' peak. (With glibc's default, a heap that grew in
    earlier steps is reused and not returned, and the RSS peak measures fragmentation as well.)"""
    import subprocess

    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(64 * 1024)}
    command = [sys.executable, __file__, "--memory-only", "--depth", str(depth), "--batch", str(batch),
               "--threads", str(threads), "--backbones", ",".join(r["backbone"] for r in rows)]
    run = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    sys.stderr.write(run.stderr)
    measured = json.loads(run.stdout)
    for row in rows:
        row.update(measured[row["backbone"]])
    return ("the vpt-deep step's peak RSS above the pre-step level, min of 2 steps, in a child process with "
            "MALLOC_MMAP_THRESHOLD_=65536, against lspt_cli/engine/memory_estimate.py's train_activation_bytes "
            "at the built depth")


if __name__ == "__main__":
    main()
