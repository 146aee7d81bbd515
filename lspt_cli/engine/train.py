"""The training loop of `lspt tune`: the VPT protocol, made reproducible and crash-safe.

- Select by validation top-1, evaluate test on the selected state; `final` trains on train+val.
- Every epoch ends with an atomic checkpoint; an epoch is a pure function of (state at its start,
  seed, epoch): the data order comes from a generator seeded by (seed, epoch) and the global RNG
  is re-seeded per epoch, so a resumed run produces the same bundle as an uninterrupted one.
- Ctrl-C writes a mid-epoch checkpoint (RNG state and position included) and exits 130.
- A non-finite loss stops the run naming the epoch; the last good checkpoint stays intact. Under
  protocol `paper` the run then ends as VPT's trainer ends it (src/engine/trainer.py:104-113,187-189:
  return at the bad batch, keep the epochs evaluated so far): it finishes on the last finished
  epoch, with `diverged` in summary.json, so a sweep's selection still compares it
  (tune_vtab.py:54-61 reads whatever epochs eval_results.pth holds). Protocol `lspt` fails the run.

The Trainer conducts: the lr schedule is engine/schedule.py, the optimizer engine/optimizer.py,
the random streams and their state engine/rng.py, the run directory's files engine/run_files.py.
"""

from __future__ import annotations

import json
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F

from .. import bundle, schema
from ..errors import DataError, TrainingError, UsageError
from ..loggers import RunLoggers
from ..data.transforms import transform_style
from ..recipes import ResolvedConfig
from ..rundir import BEST_NAME, BUNDLE_NAME, METRICS_NAME
from ..selection import BEST_VAL, LAST, describe_report, rule_for, summary_fields, val_curve
from .bundle_check import check_run_bundle
from .checkpoint import CHECKPOINT_NAME, load_checkpoint, restore_into, save_checkpoint
from .data_init import run_data_init
from .distributed import DistContext
from .evaluate import autocast, evaluate
from .grad_watch import GradWatch, warn_dead
from .loss_watch import LossWatch
from .optimizer import make_optimizer
from .rng import epoch_order, restore_rng, rng_state, seed_epoch, seed_everything
from .run_files import append_metrics, remove_temp_files, trim_metrics, write_config, write_summary, writing
from .schedule import Schedule, epoch_steps
from .totals import DeviceTotals



class Diverged(TrainingError):
    """A non-finite training loss in `epoch` (from 0) at `step` (from 0 in the epoch)."""

    def __init__(self, message: str, hint: str, epoch: int, step: int, value: float):
        super().__init__(message, hint=hint)
        self.epoch, self.step, self.value = epoch, step, value


class Interrupted(Exception):
    """Ctrl-C: a checkpoint was written; the CLI exits 130 with the resume command."""

    def __init__(self, run_dir: Path, epoch: int):
        super().__init__(f"interrupted in epoch {epoch}")
        self.run_dir, self.epoch = run_dir, epoch


@dataclass
class RunInfo:
    """What event hooks receive as `run`."""

    dir: Path
    name: str
    config: dict[str, Any] = field(default_factory=dict)


def resolve_device(name: str) -> torch.device:
    """A malformed name or a device this machine lacks is a usage error (validate.torch_device)."""
    from ..validate import torch_device

    return torch_device(name)


def use_bf16(amp: str, device: torch.device) -> bool:
    """bf16 autocast: `off` (the papers' fp32, protocol paper), `bf16` always, `auto` (protocol lspt)
    on a CUDA device that supports bf16 and on a CPU with native bf16 matmuls (AVX512-BF16/AMX:
    elsewhere the CPU emulates bf16, slower than fp32); older GPUs and other CPUs stay fp32."""
    if amp == "auto" and device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if amp == "auto" and device.type == "cpu":
        from .accel import cpu_bf16_native

        return cpu_bf16_native()
    return amp == "bf16"


def rank_batch(cfg, world_size: int) -> int:
    """The batch of one rank: `split` divides the configured batch over the ranks as VPT does
    (int(BATCH_SIZE / NUM_GPUS), src/data/loader.py:62), `per-rank` gives every rank all of it."""
    if cfg.ddp_batch == "per-rank" or world_size <= 1:
        return cfg.batch_size
    if cfg.batch_size < world_size:
        raise UsageError(f"--batch-size {cfg.batch_size} cannot be split over {world_size} ranks",
                         hint="use a batch of at least one image per rank, or --ddp-batch per-rank")
    return cfg.batch_size // world_size


def rank_device(device: torch.device, dist: DistContext) -> torch.device:
    """Under torchrun a CUDA run trains on its rank's own GPU (LOCAL_RANK); a CPU run stays on the CPU."""
    if dist.enabled and device.type == "cuda":
        return torch.device("cuda", dist.local_rank)
    return device


class _OrderSampler(torch.utils.data.Sampler):
    """Yields a fixed list of indices: the epoch's order, possibly resumed mid-way."""

    def __init__(self, indices: list[int]):
        self.indices = indices

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def count_parameters(model) -> dict[str, int]:
    strategy = sum(p.numel() for p in model.strategy.parameters() if p.requires_grad)
    head = sum(p.numel() for p in model.head.parameters())
    return {"strategy": strategy, "head": head, "trainable": strategy + head}


class Trainer:
    """One `lspt tune` run in one run directory."""

    def __init__(
        self,
        config: ResolvedConfig,
        run_dir: Path,
        *,
        host=None,
        log: Callable[[str], None] = lambda message: None,
        progress_factory=None,
    ):
        self.config = config
        self.cfg = config.train
        self.run_dir = Path(run_dir)
        self.host = host
        self.log = log
        self.progress_factory = progress_factory
        self.dist = DistContext.from_env()
        self._interrupt = False
        self._watch: GradWatch | None = None  # the dead-tensor watch, until it has seen steps that moved parameters
        self._loss_watch: LossWatch | None = None  # the loss warnings (engine/loss_watch.py), set by run()
        self.resuming = False  # run(resume=True) from a checkpoint: setup skips the data-aware init

    # -- setup -------------------------------------------------------------------------------
    def setup(self) -> None:
        from ..data.manifest import load_manifest
        from ..prompted import PromptedViT, build_strategy, load_backbone

        cfg = self.cfg
        self.device = rank_device(resolve_device(cfg.device), self.dist)
        self.amp = use_bf16(cfg.amp, self.device)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.manifest = load_manifest(self.config.task)
        self.num_classes = len(self.manifest.classes)
        # the protocol's rule (selection.py, docs/protocol.md): what a final trains on, which epoch is reported
        self.rule = rule_for(cfg.protocol, self.manifest.benchmark)
        self.train_split = self.rule.train_split(self.config.final)
        self.watch_val = self.train_split != "trainval"  # on train+val there is no val to select on
        for split in (self.train_split, "test") + (("val",) if self.watch_val else ()):
            if not self.manifest.splits.get(split):
                raise DataError(
                    f"task '{self.config.task}' has no '{split}' split in its manifest",
                    hint=f"re-run: lspt prepare-data {self.config.task} --root DIR",
                )
        backbone = load_backbone(self.config.backbone, self.config.weights, host=self.host, img_size=cfg.img_size or None)
        self.backbone = backbone
        data_cfg = backbone.data_config
        self.input_size = int(data_cfg["input_size"][-1])
        self.style = transform_style(self.manifest.benchmark, self.manifest.extra, cfg.protocol)  # VTAB paper: TF1 resize
        self.mean, self.std = data_cfg["mean"], data_cfg["std"]
        seed_everything(cfg.seed)
        strategy = build_strategy(self.config.strategy, backbone.dims, self.config.strategy_config, host=self.host)
        self.model = PromptedViT(backbone, strategy, self.num_classes, head_init=cfg.head_init,
                                 readout=cfg.readout or None).to(self.device)
        self.params = count_parameters(self.model)
        # the strategy's data-aware init (engine/data_init.py): once, before the optimizer; never on resume
        data_init = {} if self.resuming else run_data_init(
            self.model, lambda order: self.loader(self.train_split, train=False, order=order),
            len(self.manifest.splits[self.train_split]), cfg.seed, self.device, self.dist, self.log)
        self.train_model = self.model
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.train_model = DistributedDataParallel(self.model, device_ids=ids)
        self.optimizer = make_optimizer(self.model, cfg)
        n_train = len(self.manifest.splits[self.train_split])
        self.order_length = len(self.dist.shard(list(range(n_train))))
        self.batch_size = rank_batch(cfg, self.dist.world_size)
        # VPT drops the last partial batch when it splits over GPUs (src/data/loader.py:55-58)
        self.drop_last = self.dist.enabled and cfg.ddp_batch == "split"
        self.steps_per_epoch = epoch_steps(self.order_length, self.batch_size, self.drop_last)
        self.schedule = Schedule(cfg.schedule, cfg.scaled_lr, cfg.epochs, cfg.warmup_epochs, self.steps_per_epoch)
        self._speed_up(strategy)
        self.speed.update(data_init)  # summary.json: data_init_images, data_init_seconds
        self.state_meta = {
            "backbone": {  # backbone.identity(): also the input size and timm's model name (restore rebuilds it)
                **backbone.identity(),
                "name": self.config.backbone,
                "weights": str(Path(self.config.weights).resolve()) if self.config.weights else None,
                "readout": self.model.readout,
            },
            "strategy": {"name": self.config.strategy, "config": strategy.config()},
            "task": {"name": self.config.task, "classes": list(self.manifest.classes), "benchmark": self.manifest.benchmark,
                     "style": self.style},
            "data_config": dict(data_cfg),
            "protocol": cfg.protocol,
            "precision": "bf16" if self.amp else "fp32",  # what `amp` resolved to on this device (auto: either)
        }

    def _speed_up(self, strategy) -> None:
        """docs/performance.md: gradient checkpointing, the linear probe's feature cache, torch.compile."""
        from .feature_cache import FeatureCache, cache_decision

        cfg = self.cfg
        self.model.grad_checkpointing = cfg.grad_checkpointing
        deterministic = self.style != "crop" or not cfg.augment  # VTAB's resize, or --no-augment
        use, why = cache_decision(cfg.feature_cache, strategy, deterministic, self.dist.enabled)
        self.features, self.speed = None, {"feature_cache": why}
        if use:
            tick = time.time()
            self.features = FeatureCache(self.model, self.device, self.amp)
            n = len(self.manifest.splits[self.train_split])
            self.features.add(self.train_split, self.loader(self.train_split, train=True, order=list(range(n))))
            if self.watch_val:
                self.features.add("val", self.loader("val", train=False))
            self.train_model = self.model.head  # what trains on the cached features
            self.speed["feature_cache_seconds"] = round(time.time() - tick, 3)
            self.log(f"Feature cache: {why}; {self.features.info()['splits']} computed in {time.time() - tick:.1f}s")
        if cfg.compile:
            if use:
                self.log("--compile: skipped, the feature cache trains the head alone")
                return
            from .accel import compile_forward

            self.train_model, seconds = compile_forward(self.train_model, self._compile_warm_up, self.log)
            self.speed["compile_seconds"] = round(seconds, 3)
            self.speed["compiled"] = seconds > 0

    def _compile_warm_up(self, forward) -> None:
        """One forward + backward on a batch of zeros, so compilation happens (and is timed) before
        training. No parameter changes; the RNG is restored: the run computes what eager computes."""
        last = self.order_length % self.batch_size  # an epoch's last, shorter batch compiles a graph too
        sizes = [self.batch_size] + ([last] if last and not self.drop_last else [])
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            self.train_model.train()
            for size in sizes:
                images = torch.zeros(size, 3, self.input_size, self.input_size, device=self.device)
                with autocast(self.device, self.amp):
                    logits = forward(images)
                logits.float().sum().backward()
        self.optimizer.zero_grad(set_to_none=True)

    def loader(self, split: str, train: bool, order: list[int] | None = None, epoch: int = 0):
        from ..data.loader import build_loader

        batch = self.batch_size if train else (self.cfg.eval_batch_size or self.cfg.batch_size)
        train = train and self.cfg.augment  # --no-augment: the training split through the eval transform
        return build_loader(
            self.manifest, split, input_size=self.input_size, mean=self.mean, std=self.std, train=train,
            batch_size=batch, seed=self.cfg.seed, epoch=epoch, num_workers=self.cfg.num_workers,
            sampler=_OrderSampler(order) if order is not None else None, style=self.style,
        )

    # -- state -------------------------------------------------------------------------------
    def _checkpoint_state(self, epoch: int, position: int, best: dict, running: dict | None) -> dict:
        state = {
            "epoch": epoch,  # the epoch in progress (== next epoch to run when position == 0)
            "position": position,  # batches of `epoch` already done
            "step": self.schedule.step(epoch, position),
            "trainable": {k: v.detach().cpu().clone() for k, v in self.model.trainable_state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "best": best,
            "running": running or {},
            "meta": json.dumps(self.state_meta),
        }
        if position:
            state.update(rng_state(self.device))
        return state

    def _write_checkpoint(self, state: dict) -> None:
        if not self.dist.is_main:
            return
        with writing(self.run_dir, "the checkpoint"):
            save_checkpoint(self.run_dir / CHECKPOINT_NAME, state)

    def _save_best(self, metrics: dict) -> None:
        if not self.dist.is_main:
            return
        meta = bundle.make_metadata(metrics=metrics, **self.state_meta)
        with writing(self.run_dir, BEST_NAME):
            bundle.save(self.run_dir / BEST_NAME, self.model.trainable_state_dict(), meta)

    # -- the loop ----------------------------------------------------------------------------
    def run(self, resume: bool = False) -> dict[str, Any]:
        self.resuming = resume and (self.run_dir / CHECKPOINT_NAME).exists()  # setup: no data-aware init then
        self.setup()
        cfg = self.cfg
        run = RunInfo(dir=self.run_dir, name=self.run_dir.name, config=self.config.to_json())
        start_epoch, position, best, running = 0, 0, {"top1": -1.0, "epoch": -1}, {}
        last_good = None  # trainable tensors at the end of the last finished epoch (a diverged `paper` run ends there)
        diverged = None
        if self.dist.is_main:
            remove_temp_files(self.run_dir)
        if resume and not (self.run_dir / CHECKPOINT_NAME).exists():
            # killed before its first checkpoint: the config is there, so start over (same result)
            self.log(f"{self.run_dir} has no checkpoint yet: starting it from the beginning")
            if self.dist.is_main:  # a metrics line past the checkpoint (a kill between the writes)
                trim_metrics(self.run_dir, 0)
            resume = False
        if resume:
            state = load_checkpoint(self.run_dir / CHECKPOINT_NAME, self.config)  # checked (lspt_cli/schema.py)
            if json.loads(state["meta"])["backbone"]["fingerprint"] != self.state_meta["backbone"]["fingerprint"]:
                raise TrainingError(f"{self.run_dir}: the backbone weights differ from the ones this run started with")
            restore_into(state, self.run_dir / CHECKPOINT_NAME, self.model, self.optimizer)
            start_epoch, position, best, running = state["epoch"], state["position"], state["best"], state["running"]
            last_good = state["trainable"] if position == 0 and start_epoch > 0 else None
            if position:
                restore_rng(state, self.device)
            if self.dist.is_main:  # a metrics line past the checkpoint (a kill between the writes)
                trim_metrics(self.run_dir, start_epoch)
            self.log(f"Resuming {self.run_dir} at epoch {start_epoch + 1}" + (f", batch {position + 1}" if position else ""))
        elif self.dist.is_main:
            write_config(self.run_dir, {**self.config.to_json(), "meta": self.state_meta, "params": self.params})
        # a loss far above log(classes), or growing: settings that do not suit the backbone (issue 21)
        self._loss_watch = LossWatch(self.num_classes, cfg.protocol, cfg.grad_clip,
                                     schema.metrics_records(self.run_dir / METRICS_NAME) if resume else [],
                                     **({} if self.dist.is_main else {"say": lambda message: None}))
        if self.host is not None:
            self.host.emit("lspt_on_run_start", run=run, config=run.config)
        # docs/tracking.md: --log's loggers, rank 0 only; they never stop or change the run
        loggers = RunLoggers.open(cfg.loggers if self.dist.is_main else "", run, run.config, resume=resume, host=self.host)

        previous_handler = signal.getsignal(signal.SIGINT)
        signal.signal(signal.SIGINT, self._on_sigint)
        started = time.time()
        try:
            for epoch in range(start_epoch, cfg.epochs):
                self.best = best
                try:
                    record = self._train_epoch(epoch, position, running)
                except Diverged as exc:
                    if cfg.protocol != "paper" or last_good is None:
                        raise  # `lspt`, or nothing finished to fall back on: the run fails
                    diverged = self._end_diverged(exc, last_good)
                    break
                position, running = 0, {}
                if self.watch_val:
                    val = self._evaluate("val")
                    record.update(val_loss=val["loss"], val_acc=val["top1"], val_mean_per_class=val["mean_per_class"])
                    if val["top1"] > best["top1"]:  # strictly better: ties keep the earlier epoch
                        best = {"top1": val["top1"], "epoch": epoch}
                        self._save_best({"val_top1": val["top1"], "epoch": epoch + 1})
                record["best_val_acc"] = best["top1"] if best["epoch"] >= 0 else None
                if self.dist.is_main:  # metrics first: a resume trims lines past its checkpoint
                    append_metrics(self.run_dir, record)
                state = self._checkpoint_state(epoch + 1, 0, best, None)
                self._write_checkpoint(state)
                last_good = state["trainable"]
                if self.host is not None:
                    self.host.emit("lspt_on_epoch_end", run=run, metrics=record)
                loggers.log_epoch(record)
        except BaseException:
            loggers.close()  # flushed; `--resume` continues the same tracker runs
            raise
        finally:
            signal.signal(signal.SIGINT, previous_handler)
        try:
            summary = self._finish(best, time.time() - started, diverged)
        except BaseException:
            loggers.close()
            raise
        loggers.finish(summary)
        if self.host is not None:
            self.host.emit("lspt_on_run_end", run=run, summary=summary)
        return summary

    def _end_diverged(self, exc: Diverged, last_good: dict) -> dict[str, Any]:
        """Protocol `paper`: stop as VPT's trainer does at a NaN/inf loss and keep the epochs done.
        The trainable state goes back to the end of the last finished epoch (its val is in
        metrics.jsonl, its checkpoint on disk); the bad epoch's partial steps are dropped."""
        self.model.load_trainable_state_dict(last_good)
        done = exc.epoch
        self.log(f"Warning: {exc.message}; protocol paper ends the run at epoch {done}, as VPT's trainer does "
                 "(src/engine/trainer.py:104-113,187-189), and a sweep still compares it")
        return {"epoch": exc.epoch + 1, "step": exc.step + 1, "loss": str(exc.value), "epochs_done": done}

    def _on_sigint(self, signum, frame) -> None:
        if self._interrupt:  # a second Ctrl-C: stop right now, the last epoch checkpoint stays
            raise KeyboardInterrupt
        self._interrupt = True

    def _train_epoch(self, epoch: int, position: int, running: dict) -> dict[str, Any]:
        cfg = self.cfg
        if position == 0:
            seed_epoch(cfg.seed, epoch)
        order = self.dist.shard(epoch_order(len(self.manifest.splits[self.train_split]), cfg.seed, epoch))
        if self.drop_last:
            order = order[: self.steps_per_epoch * self.batch_size]
        remaining = order[position * self.batch_size :]
        if self.features is not None:  # the linear probe on cached features (engine/feature_cache.py)
            loader = self.features.batches(self.train_split, remaining, self.batch_size)
        else:
            loader = self.loader(self.train_split, train=True, order=remaining, epoch=epoch)
        self.train_model.train()
        sums = DeviceTotals(self.device, running.get("loss_sum", 0.0), running.get("correct", 0), running.get("seen", 0))
        shown = sums.seen  # images the progress bar has been told about
        train_seconds = running.get("seconds", 0.0)
        params = self.model.trainable_parameters()
        if epoch == 0 and position == 0:  # a fresh run: watched whole, from its first step
            self._watch = GradWatch(self.model)
            if self._loss_watch is not None:
                self._loss_watch.begin()
        watch, loss_watch = self._watch, self._loss_watch
        bar = self.progress_factory(epoch, cfg.epochs, len(remaining)) if self.progress_factory else None
        tick = time.time()
        step_in_epoch = position
        try:
            for images, labels in loader:
                if self._interrupt:
                    loss_sum, correct, seen = self._read_totals(sums, epoch)
                    raise self._interrupted(epoch, step_in_epoch, running_state(loss_sum, correct, seen, train_seconds + time.time() - tick))
                self.schedule.apply(self.optimizer, epoch, step_in_epoch)
                images, labels = images.to(self.device, non_blocking=True), labels.to(self.device, non_blocking=True)
                with autocast(self.device, self.amp):
                    logits = self.train_model(images)
                loss = F.cross_entropy(logits.float(), labels, label_smoothing=self.cfg.label_smoothing)
                sums.add(loss, logits, labels, step_in_epoch)  # on the device: no sync (engine/totals.py)
                if loss_watch is not None:
                    loss_watch.observe(loss)  # its first steps only, read once
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if watch is not None and self.schedule.factor(epoch, step_in_epoch) > 0:
                    watch.observe()  # only steps that move parameters (the paper's warm-up epoch 1 trains at lr 0)
                if cfg.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
                self.optimizer.step()
                step_in_epoch += 1
                if sums.due():  # one read per SYNC_EVERY steps: the NaN stop comes at most that late
                    loss_sum, correct, seen = self._read_totals(sums, epoch)
                    if bar is not None:
                        elapsed = train_seconds + time.time() - tick
                        bar(seen - shown, loss=loss_sum / seen, acc=100.0 * correct / seen, ips=seen / max(elapsed, 1e-9))
                        shown = seen
            loss_sum, correct, seen = self._read_totals(sums, epoch)  # before anything is written
            if bar is not None and seen > shown:
                elapsed = train_seconds + time.time() - tick
                bar(seen - shown, loss=loss_sum / seen, acc=100.0 * correct / seen, ips=seen / max(elapsed, 1e-9))
        finally:
            if bar is not None:
                bar(0, done=True)
        if self._interrupt:  # Ctrl-C after the last batch: checkpoint the finished epoch
            raise self._interrupted(epoch, step_in_epoch, running_state(loss_sum, correct, seen, train_seconds + time.time() - tick))
        seconds = train_seconds + time.time() - tick
        # docs/plugins.md "Tensors that never learn": judged at the end of the first epoch whose steps moved
        # parameters (a tensor dead at init by design, LSPT's LSTM behind a zero W_out, comes alive in it)
        dead = {}
        if watch is not None and watch.steps:
            dead = {"dead_tensors": watch.dead()}
            self._watch = None
            if dead["dead_tensors"] and self.dist.is_main:
                warn_dead(dead["dead_tensors"], watch.steps, f"epoch {epoch + 1}")
        totals = self.dist.all_reduce_sum([loss_sum, correct, seen], self.device)
        loss_sum, correct, seen = totals[0], totals[1], max(totals[2], 1)
        first_steps = loss_watch.end_epoch(loss_sum / seen) if loss_watch is not None else {}
        return {
            "epoch": epoch + 1,
            "train_loss": loss_sum / seen,
            "train_acc": 100.0 * correct / seen,
            "lr": self.optimizer.param_groups[0]["lr"],
            "batch_per_rank": self.batch_size,
            "steps": step_in_epoch,
            "images_per_s": seen / max(seconds, 1e-9),
            "seconds": seconds,
            **dead,
            **first_steps,  # epoch 1: the first steps' mean loss (engine/loss_watch.py)
        }

    def _read_totals(self, totals: DeviceTotals, epoch: int) -> tuple[float, int, int]:
        """(loss sum, correct, seen) from the device; a non-finite loss since the last read stops the run."""
        loss_sum, correct, bad = totals.read()
        if bad is not None:
            step, value = bad
            raise Diverged(
                f"loss became {value} in epoch {epoch + 1} (step {step + 1}); training stopped",
                hint=_nan_hint(self.run_dir, epoch), epoch=epoch, step=step, value=value,
            )
        return loss_sum, correct, totals.seen

    def _interrupted(self, epoch: int, position: int, running: dict) -> Interrupted:
        self._write_checkpoint(self._checkpoint_state(epoch, position, self.best, running))
        return Interrupted(self.run_dir, epoch + 1)

    def _evaluate(self, split: str) -> dict[str, Any]:
        if self.features is not None and split in self.features:  # the head on the cached features
            batch = self.cfg.eval_batch_size or self.cfg.batch_size
            loader = self.features.batches(split, None, batch)
            return evaluate(self.model.head, loader, self.device, self.num_classes, amp=self.amp)
        loader = self.loader(split, train=False)
        return evaluate(self.model, loader, self.device, self.num_classes, amp=self.amp)

    def _finish(self, best: dict, seconds: float, diverged: dict | None = None) -> dict[str, Any]:
        """Evaluate test on the state the protocol's rule reports (selection.py): best val or the last
        epoch (of a diverged `paper` run: the last one finished)."""
        report = self.rule.report(self.config.final)
        if report == BEST_VAL and (self.run_dir / BEST_NAME).exists():
            selected = bundle.load(self.run_dir / BEST_NAME)
            self.model.load_trainable_state_dict(selected.tensors)
            selected_epoch = best["epoch"] + 1
        else:
            selected_epoch = diverged["epochs_done"] if diverged else self.cfg.epochs
        curve = val_curve(self.run_dir) if self.watch_val else []
        test = self._evaluate("test")
        records = schema.metrics_records(self.run_dir / METRICS_NAME) if self.dist.is_main else []
        metrics = {
            "selected_epoch": selected_epoch,
            "selection": describe_report(report, self.train_split),
            # val top-1 of the reported epoch; best and last for the record (None on train+val)
            "val_top1": ((curve[-1][1] if curve else None) if report == LAST else best["top1"]) if self.watch_val else None,
            "val_top1_best": best["top1"] if self.watch_val else None,
            "val_top1_last": curve[-1][1] if curve else None,
            "test_top1": test["top1"],
            "test_mean_per_class": test["mean_per_class"],
            "test_loss": test["loss"],
            "test_n": test["n"],
            "seed": self.cfg.seed,
        }
        cfg = self.cfg
        summary = {
            "run_dir": str(self.run_dir),
            "task": self.config.task,
            "backbone": self.config.backbone,
            "strategy": self.config.strategy,
            "protocol": cfg.protocol,
            "precision": self.state_meta["precision"],
            "final": self.config.final,
            **summary_fields(self.rule, self.config.final),  # train_split, reported_epoch_rule
            "readout": self.model.readout,
            "params": self.params,
            **metrics,
            "epochs": self.cfg.epochs,
            "seconds": sum(r.get("seconds", 0.0) for r in records) or seconds,
            "images_per_s": records[-1]["images_per_s"] if records else None,
            **self.speed,  # feature_cache, compile_seconds (not part of `seconds`): docs/performance.md
            **({"dead_tensors": dead} if (dead := next((r["dead_tensors"] for r in records if "dead_tensors" in r), None)) else {}),
            **({"diverged": diverged} if diverged else {}),  # epoch, step, loss, epochs_done
            "warnings": self._loss_watch.warnings if self._loss_watch is not None else [],  # engine/loss_watch.py
        }
        if self.dist.is_main:
            meta = bundle.make_metadata(metrics=metrics, **self.state_meta)
            with writing(self.run_dir, BUNDLE_NAME):
                size = bundle.save(self.run_dir / BUNDLE_NAME, self.model.trainable_state_dict(), meta)
            summary.update(bundle=str(self.run_dir / BUNDLE_NAME), bundle_bytes=size)
            # the bundle reloads with the same outputs, count_params and the seed hold (a wrong plugin fails here)
            check_run_bundle(self.model, self.run_dir / BUNDLE_NAME, strategy=self.config.strategy,
                             config=self.config.strategy_config, seed=self.cfg.seed, host=self.host)
            write_summary(self.run_dir, summary)
        return summary


def running_state(loss_sum: float, correct: int, seen: int, seconds: float) -> dict[str, Any]:
    return {"loss_sum": loss_sum, "correct": correct, "seen": seen, "seconds": seconds}


def _nan_hint(run_dir: Path, epoch: int) -> str:
    """What is left after a non-finite loss: name the checkpoint only when there is one."""
    if (run_dir / CHECKPOINT_NAME).exists():
        return f"the last good checkpoint (end of epoch {epoch}) is intact in {run_dir}; lower --lr or keep --grad-clip on"
    return "no checkpoint was written before it (it failed in the first epoch); start again with a lower --lr, or keep --grad-clip on"
