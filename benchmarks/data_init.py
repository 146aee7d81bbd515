"""What does SPT's data-aware initialisation cost, as a fraction of one training epoch on a CUB-sized task?

For each strategy with a data-aware init (default spt-shallow and spt-deep) and each of its `init`
kinds (random, mean_pooling, max_pooling, kmeans), a fresh strategy on ViT-B/16 (timm
`vit_base_patch16_224`, random init, frozen) is initialised by the Trainer's own code path,
`lspt_cli.engine.data_init.run_data_init` (eval mode, no_grad, fp32, the global RNG seeded inside
fork_rng), from `--init-images` images (default 1000, the strategies' default `init_images`). The
images are random tensors already at 224 px: reading and transforming them from disk is not counted
(it is the data loader's cost, the same as for an epoch's first 1000 images).

One epoch is estimated as the strategy's training step (forward + backward + SGD, eager fp32 as in
protocol `paper`, batch `--batch`, default 64) timed over `--steps` steps after one warm-up, times
ceil(`--train-images` / batch) steps; `--train-images` defaults to 5994, CUB-200-2011's training
split, so 94 steps at batch 64. Evaluation passes and data loading are left out of the epoch, which
makes the reported fraction an upper bound. Issue 22's goal: init <= 0.5 epoch.

    python benchmarks/data_init.py [--strategies spt-shallow,spt-deep] [--inits random,...]
        [--init-images 1000] [--batch 64] [--steps 2] [--train-images 5994] [--model vit_base_patch16_224|tiny]

Prints one JSON document on stdout; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from train_step import TINY, PromptedStep, cpu_model, load_average, log  # noqa: E402

INITS = ("random", "mean_pooling", "max_pooling", "kmeans")
GOAL = 0.5  # issue 22: the init costs at most half an epoch


class OneProcess:
    """run_data_init's `dist`: a single process (nothing to broadcast)."""

    is_main = True

    def broadcast_tensors(self, tensors) -> None:
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--strategies", default="spt-shallow,spt-deep")
    parser.add_argument("--inits", default=",".join(INITS), help="comma-separated, of: " + ",".join(INITS))
    parser.add_argument("--init-images", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=64, help="training batch of the epoch estimate")
    parser.add_argument("--steps", type=int, default=2, help="timed training steps (after one warm-up)")
    parser.add_argument("--train-images", type=int, default=5994, help="training images per epoch (CUB: 5994)")
    parser.add_argument("--num-classes", type=int, default=200)
    parser.add_argument("--model", default="vit_base_patch16_224", help="timm model name, or 'tiny' (development)")
    args = parser.parse_args()
    names = [n.strip() for n in args.strategies.split(",") if n.strip()]
    inits = [i.strip() for i in args.inits.split(",") if i.strip()]
    if any(i not in INITS for i in inits):
        parser.error(f"--inits: a subset of {', '.join(INITS)}")
    if min(args.init_images, args.batch, args.steps, args.train_images) < 1:
        parser.error("--init-images, --batch, --steps and --train-images must be >= 1")

    import timm

    from lspt_cli.backbone import FrozenBackbone
    from lspt_cli.engine.data_init import run_data_init
    from lspt_cli.plugins import get_host
    from lspt_cli.prompted import PromptedViT, build_strategy

    load_start = load_average()
    torch.manual_seed(0)
    if args.model == "tiny":
        from timm.models.vision_transformer import VisionTransformer

        vit = VisionTransformer(**TINY, num_classes=0)
    else:
        vit = timm.create_model(args.model, pretrained=False, num_classes=0)
    backbone = FrozenBackbone(vit, name=args.model, readout="cls")
    size = vit.patch_embed.img_size[0]
    pool = torch.randn(args.init_images, 3, size, size)  # the decoded init images (index i: image i)
    host, device = get_host(), torch.device("cpu")
    steps_per_epoch = math.ceil(args.train_images / args.batch)

    def load(indices):  # run_data_init's loader: the drawn images, in order, in batches of 64
        for start in range(0, len(indices), 64):
            chunk = indices[start : start + 64]
            yield pool[torch.tensor(chunk) % len(pool)], torch.zeros(len(chunk), dtype=torch.long)

    results = []
    for name in names:
        torch.manual_seed(0)
        model = PromptedViT(backbone, build_strategy(name, backbone.dims, host=host), args.num_classes).train()
        images = torch.randn(args.batch, 3, size, size)
        labels = torch.randint(0, args.num_classes, (args.batch,))
        step = PromptedStep(model, model, images, labels, lambda: torch.autocast("cpu", enabled=False))
        step()  # warm-up
        times = []
        for i in range(args.steps):
            start = time.perf_counter()
            step()
            times.append(time.perf_counter() - start)
            log(f"{name}: training step {i + 1}/{args.steps} at batch {args.batch}: {times[-1]:.1f}s")
        step_s = statistics.median(times)
        epoch_s = step_s * steps_per_epoch
        row = {"strategy": name, "train_step_s": round(step_s, 3), "train_step_s_all": [round(t, 3) for t in times],
               "epoch_s": round(epoch_s, 1), "inits": {}}
        for init in inits:
            torch.manual_seed(0)
            config = {"init": init, "init_images": args.init_images}
            if args.model == "tiny":  # 16 patches: room for a few pooling windows only
                config["num_prompts"] = 4
            fresh = PromptedViT(backbone, build_strategy(name, backbone.dims, config, host=host), args.num_classes)
            before = fresh.strategy.prompts.detach().clone()
            out = run_data_init(fresh, load, n_train=len(pool), seed=0, device=device, dist=OneProcess())
            changed = not torch.equal(before, fresh.strategy.prompts.detach())
            seconds = out["data_init_seconds"]
            row["inits"][init] = {"init_s": round(seconds, 2), "epochs": round(seconds / epoch_s, 4),
                                  "prompts_changed": changed, "meets_goal": seconds / epoch_s <= GOAL}
            log(f"{name} init={init}: {seconds:.1f}s = {seconds / epoch_s:.3f} epoch")
        results.append(row)

    print(json.dumps({
        "benchmark": "data_init",
        "model": f"{args.model} (random init, frozen)",
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "load_average_start": load_start,
        "load_average_end": load_average(),
        "torch": torch.__version__,
        "timm": timm.__version__,
        "init_images": args.init_images,
        "epoch": (f"the median of {args.steps} eager fp32 training steps (forward + backward + SGD) at batch "
                  f"{args.batch}, times ceil({args.train_images} / {args.batch}) = {steps_per_epoch} steps "
                  "(CUB-200-2011's training split by default); no evaluation, no data loading"),
        "init": ("run_data_init (engine/data_init.py) on already-decoded random 224 px images: image reading "
                 "and transforms not counted"),
        "goal": f"init <= {GOAL} epoch",
        "results": results,
    }, indent=2))


if __name__ == "__main__":
    main()
