"""The training loop's details, each pinned to an expectation computed here (issue 16, mutation testing).

What the loop must do, step by step: the lr of every step is the schedule's formula; the gradient a
step applies is that step's loss gradient, clipped to the documented norm; metrics, progress bar,
event hooks and loggers get the numbers counted from the batches; the checkpoint, best bundle and
summary hold the selected state; Ctrl-C and `--resume` reproduce the uninterrupted run; a failed
write or a NaN names what is left; rank > 0 writes nothing. The runs use a generated 3-class task
of 8x8 images (no scikit-learn: fast in a fresh process) and vit-tiny; each run takes well under a
second, so `benchmarks/mutation.py` kills most mutants of lspt_cli/engine/train.py in seconds.
"""

from __future__ import annotations

import io
import json
import math
import os
import signal
import time
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from lspt_cli import LoggerSpec, hookimpl
from lspt_cli.engine import train as train_mod
from lspt_cli.engine.train import Interrupted, Trainer

N_CLASSES = 3


# -- helpers ----------------------------------------------------------------------------------------
def tiny_task(name: str = "tiny", n_train: int = 12, n_val: int = 6, n_test: int = 6, benchmark: str = "custom"):
    """Random 8x8 RGB images kept as one array (like digits); label i % 3."""
    import numpy as np

    from lspt_cli import atomic
    from lspt_cli.data.manifest import save_manifest, task_dir
    from lspt_plugins.datasets.common import finish

    n = n_train + n_val + n_test
    images = np.random.default_rng(0).integers(0, 256, size=(n, 8, 8, 3), dtype=np.uint8)
    items = [(f"tiny/{i:05d}", i % N_CLASSES) for i in range(n)]
    buf = io.BytesIO()
    np.save(buf, images)
    atomic.write_bytes(task_dir(name) / "tiny.npy", buf.getvalue())
    manifest = finish(task=name, benchmark=benchmark, classes=["a", "b", "c"], root=None, train=items[:n_train],
                      val=items[n_train : n_train + n_val], test=items[n_train + n_val :], split_source="generated",
                      extra={"array": "tiny.npy", "image_size": [8, 8]})
    save_manifest(manifest)
    return manifest


def config(task: str = "tiny", strategy: str = "vpt-deep", *, final: bool = False, options=None, **train):
    from lspt_cli.plugins import get_host
    from lspt_cli.recipes import resolve_config

    knobs = dict(protocol="lspt", schedule="per-step", lr_scaling="none", epochs=1, warmup_epochs=0, batch_size=4,
                 optimizer="sgd", lr=0.1, momentum=0.9, weight_decay=0.0, grad_clip=0.0, amp="off", device="cpu",
                 threads=1, seed=0, num_workers=0)
    knobs.update(train)
    strategy_options = {} if strategy == "linear" else {"num_prompts": 2, **(options or {})}
    return resolve_config(backbone="vit-tiny", strategy=strategy, task=task, benchmark="custom",
                          registered_recipes=get_host().recipes, train_overrides=knobs,
                          strategy_overrides=strategy_options, final=final)


def state_of(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.trainable_state_dict().items()}


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def tensors(path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


def records(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]


class LoggerRecorder:
    def __init__(self, calls):
        self.calls = calls

    def start(self, run, config, state):
        self.calls.append(("start", run.dir))

    def log_epoch(self, epoch, metrics):
        self.calls.append(("epoch", epoch, dict(metrics)))

    def finish(self, summary, bundle):
        self.calls.append(("finish", dict(summary), bundle))

    def close(self):
        self.calls.append(("close",))


class Events:
    """A plugin: the run's event hooks and a logger named `recorder`, in call order."""

    def __init__(self):
        self.calls: list[tuple] = []
        self.logger: list[tuple] = []

    @hookimpl
    def lspt_register_loggers(self, register):
        register(LoggerSpec(name="recorder", description="records", factory=lambda: LoggerRecorder(self.logger)))

    @hookimpl
    def lspt_on_run_start(self, run, config):
        self.calls.append(("run_start", run.dir, config))

    @hookimpl
    def lspt_on_epoch_end(self, run, metrics):
        self.calls.append(("epoch_end", dict(metrics), time.time()))

    @hookimpl
    def lspt_on_run_end(self, run, summary):
        self.calls.append(("run_end", dict(summary)))


def events_host():
    from lspt_cli.plugins import get_host

    host, events = get_host(), Events()
    host.add_plugin(events, "test-events")
    return host, events


class Watch:
    """Records the training batches (labels, times), the global seed of each epoch, every step's loss
    and gradient (before the trainer clips it) and what the optimizer then applied."""

    def __init__(self, monkeypatch, interrupt_at=None, nan_at=None, grads: bool = True):
        self.trainer, self.nan = None, False
        self.loaders: list[dict] = []  # per training loader: epoch, order, created, seed, yields, labels
        self.steps: list[dict] = []
        self.interrupt_at, self.nan_at = interrupt_at, nan_at  # (epoch, batch index | "end")
        watch = self
        original_loader, original_init = Trainer.loader, Trainer.__init__

        def init(trainer, *args, **kwargs):
            original_init(trainer, *args, **kwargs)
            watch.trainer = trainer

        def loader(trainer, split, train, order=None, epoch=0):
            inner = original_loader(trainer, split, train, order, epoch)
            if not train or order is None:
                return inner
            entry = {"epoch": epoch, "order": list(order), "created": time.time(), "seed": torch.initial_seed(),
                     "yields": [], "labels": []}
            watch.loaders.append(entry)

            def batches():
                for i, (images, labels) in enumerate(inner):
                    if watch.interrupt_at == (epoch, i):
                        watch.interrupt_at = None
                        os.kill(os.getpid(), signal.SIGINT)
                    watch.nan = watch.nan_at == (epoch, i)
                    entry["yields"].append(time.time())
                    entry["labels"] += labels.tolist()
                    yield images, labels
                if watch.interrupt_at == (epoch, "end"):
                    watch.interrupt_at = None
                    os.kill(os.getpid(), signal.SIGINT)

            return batches()

        def cross_entropy(logits, labels, **kwargs):
            loss = F.cross_entropy(logits, labels, **kwargs)
            named = [(n, p) for n, p in watch.trainer.model.named_parameters() if p.requires_grad]
            found = torch.autograd.grad(loss, [p for _, p in named], retain_graph=True) if grads else [None] * len(named)
            watch.steps.append({"loss": loss.item(), "n": labels.numel(),
                                "correct": int((logits.argmax(1) == labels).sum()),
                                "grads": {n: g for (n, _), g in zip(named, found)}})
            if watch.nan:
                return loss * float("nan")
            return loss

        step = torch.optim.SGD.step

        def recording_step(optimizer, *args, **kwargs):
            named = [(n, p) for n, p in watch.trainer.model.named_parameters() if p.requires_grad]
            watch.steps[-1]["lr"] = [g["lr"] for g in optimizer.param_groups]
            watch.steps[-1]["applied"] = {n: p.grad.clone() for n, p in named if p.grad is not None}
            return step(optimizer, *args, **kwargs)

        monkeypatch.setattr(Trainer, "__init__", init)
        monkeypatch.setattr(Trainer, "loader", loader)
        monkeypatch.setattr(train_mod, "F", SimpleNamespace(cross_entropy=cross_entropy))
        monkeypatch.setattr(torch.optim.SGD, "step", recording_step)


def scripted_val(monkeypatch, values):
    """Val top-1 of each epoch is scripted; the real evaluation still runs (its loss is kept) and
    the trainable state at each evaluation is recorded: states[1..], states["test"]."""
    states: dict = {}
    real: dict = {}
    scripted = iter(values)
    original = Trainer._evaluate

    def evaluate(trainer, split):
        result = original(trainer, split)
        if split == "val":
            epoch = len([k for k in states if isinstance(k, int)]) + 1
            states[epoch], real[epoch] = state_of(trainer.model), result
            return dict(result, top1=next(scripted))
        states[split], real[split] = state_of(trainer.model), result
        return result

    monkeypatch.setattr(Trainer, "_evaluate", evaluate)
    return states, real


def eval_on(model, state, split: str, task: str = "tiny"):
    """Evaluate `state` on a split with the eval transform, outside the trainer."""
    from lspt_cli.data.loader import build_loader
    from lspt_cli.data.manifest import load_manifest
    from lspt_cli.engine.evaluate import evaluate

    model.load_trainable_state_dict(state)
    cfg = model.backbone.data_config
    loader = build_loader(load_manifest(task), split, input_size=32, mean=cfg["mean"], std=cfg["std"], train=False,
                          batch_size=64)
    return evaluate(model, loader, torch.device("cpu"), N_CLASSES)


def per_step_factor(step: int, warmup: int, total: int) -> float:
    """README "Protocol", lspt's per-step schedule: linear warm-up from 1/W, then cosine to 0."""
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / (total - warmup)))


# -- the schedule functions ---------------------------------------------------------------------------
def test_lr_factor_is_warmup_then_cosine_to_zero_at_chosen_steps():
    from lspt_cli.engine.schedule import lr_factor

    assert [lr_factor(s, 4, 12) for s in range(4)] == pytest.approx([0.25, 0.5, 0.75, 1.0])  # from 1/W, never 0
    assert lr_factor(4, 4, 12) == 1.0  # the cosine starts at the top
    assert lr_factor(6, 4, 12) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))
    assert lr_factor(8, 4, 12) == pytest.approx(0.5)  # half-way
    assert lr_factor(11, 4, 12) == pytest.approx(0.5 * (1 + math.cos(math.pi * 7 / 8)))
    assert lr_factor(0, 1, 5) == 1.0 and lr_factor(1, 1, 5) == 1.0  # one warm-up step, then the top
    assert lr_factor(0, 0, 4) == 1.0 and lr_factor(2, 0, 4) == pytest.approx(0.5)  # no warm-up
    # past the end it stays at 0 (a longer run never turns the lr back up)
    assert lr_factor(12, 4, 12) == pytest.approx(0.0, abs=1e-12) and lr_factor(16, 4, 12) == pytest.approx(0.0, abs=1e-12)
    assert lr_factor(15, 0, 10) == pytest.approx(0.0, abs=1e-12)
    assert 0.0 <= lr_factor(3, 3, 3) <= 1.0  # a warm-up as long as the run: no division by zero


def test_per_epoch_factor_equals_the_official_lambda_on_every_edge():
    from test_protocol import official_lr_lambda

    from lspt_cli.engine.schedule import epoch_lr_factor

    for warmup, epochs in ((0, 3), (1, 3), (2, 5), (3, 3), (5, 2)):
        for epoch in range(epochs + 3):  # past the end too: the official lambda is defined there
            assert epoch_lr_factor(epoch, warmup, epochs) == pytest.approx(official_lr_lambda(epoch, warmup, epochs), abs=1e-15)


def test_bf16_choice_follows_device_support(monkeypatch):
    from lspt_cli.engine import accel
    from lspt_cli.engine.train import use_bf16

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    for native in (True, False):
        monkeypatch.setattr(accel, "cpu_bf16_native", lambda n=native: n)
        assert use_bf16("auto", cpu) is native  # auto on the CPU: only with native bf16 matmuls
        assert use_bf16("off", cpu) is False and use_bf16("bf16", cpu) is True
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(accel, "cpu_bf16_native", lambda: True)
    assert use_bf16("auto", cuda) is False  # a CUDA device without CUDA: never the CPU's answer
    assert use_bf16("bf16", cuda) is True and use_bf16("off", cuda) is False


def test_rank_batch_splits_exactly_down_to_one_image_per_rank():
    from lspt_cli.engine.train import rank_batch
    from lspt_cli.errors import UsageError
    from lspt_cli.settings import TrainConfig

    assert rank_batch(TrainConfig(batch_size=2), 2) == 1 and rank_batch(TrainConfig(batch_size=3), 3) == 1
    assert rank_batch(TrainConfig(batch_size=7), 2) == 3 and rank_batch(TrainConfig(batch_size=7), 1) == 7
    with pytest.raises(UsageError, match="cannot be split over 4 ranks"):
        rank_batch(TrainConfig(batch_size=3), 4)


def test_seeding_formulas_are_fixed(monkeypatch):
    """The data order of (seed, epoch) is randperm from a generator seeded seed * 100_003 + epoch
    (epoch_order's docstring: fixed, so a seed's runs keep their order across lspt versions); on a
    CUDA machine every GPU generator is seeded with the CPU's."""
    from lspt_cli.engine.rng import epoch_order, seed_everything

    for seed, epoch in ((0, 0), (3, 1), (7, 4)):
        expected = torch.randperm(20, generator=torch.Generator().manual_seed(seed * 100_003 + epoch)).tolist()
        assert epoch_order(20, seed, epoch) == expected
    seeded = []
    monkeypatch.setattr(torch.cuda, "manual_seed_all", seeded.append)  # what torch.manual_seed calls
    seed_everything(11)
    assert seeded == [11] and torch.initial_seed() == 11


def test_device_and_rng_helpers_on_cuda_without_a_gpu(monkeypatch):
    """Under torchrun a CUDA run uses its local rank's GPU; a mid-epoch checkpoint keeps and restores
    the GPU generator on CUDA only (torch.cuda's functions stand in for a GPU here)."""
    from lspt_cli.engine.distributed import DistContext
    from lspt_cli.engine.rng import restore_rng, rng_state
    from lspt_cli.engine.train import rank_device

    two = DistContext(world_size=2, rank=1, local_rank=1)
    assert rank_device(torch.device("cuda"), two) == torch.device("cuda", 1)
    assert rank_device(torch.device("cuda"), DistContext()) == torch.device("cuda")
    assert rank_device(torch.device("cpu"), two) == torch.device("cpu")
    got, put = [], []
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device: got.append(device) or torch.tensor([7], dtype=torch.uint8))
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device: put.append((state.tolist(), device)))
    gpu = torch.device("cuda", 1)
    state = rng_state(gpu)
    assert set(state) == {"rng_cpu", "rng_cuda"} and got == [gpu] and torch.equal(state["rng_cpu"], torch.get_rng_state())
    assert set(rng_state(torch.device("cpu"))) == {"rng_cpu"} and got == [gpu]
    before = torch.get_rng_state()
    torch.rand(3)
    restore_rng(state, gpu)
    assert torch.equal(torch.get_rng_state(), before) and put == [([7], gpu)]
    restore_rng(state, torch.device("cpu"))  # a CUDA checkpoint resumed on the CPU
    restore_rng({"rng_cpu": before}, gpu)  # a CPU checkpoint resumed on CUDA
    assert put == [([7], gpu)]


def test_check_writable_and_read_run_config(tmp_path, monkeypatch):
    from pathlib import Path

    from lspt_cli.engine.run_files import check_writable, read_run_config
    from lspt_cli.errors import TrainingError, UsageError

    check_writable(tmp_path / "a" / "b")  # a new nested directory
    check_writable(tmp_path / "a")  # an existing one
    assert (tmp_path / "a" / "b").is_dir() and [p.name for p in (tmp_path / "a").iterdir()] == ["b"]

    def full(self, data):
        raise OSError(28, "No space left on device")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Path, "write_bytes", full)
        with pytest.raises(TrainingError, match=r"output directory is not writable \(No space left on device\)") as exc:
            check_writable(tmp_path / "c")
    assert "choose another --out" in exc.value.hint

    with pytest.raises(UsageError, match="no such run directory"):
        read_run_config(tmp_path / "missing")
    with pytest.raises(UsageError, match=r"not an lspt run directory \(no config.json\)"):
        read_run_config(tmp_path / "a")
    tiny_task()
    config_path = tmp_path / "run" / "config.json"
    config_path.parent.mkdir()
    config_path.write_text(json.dumps(config().to_json()))
    assert read_run_config(tmp_path / "run").task == "tiny"


def test_order_sampler_yields_its_list():
    sampler = train_mod._OrderSampler([4, 1, 3])
    assert list(sampler) == [4, 1, 3] and len(sampler) == 3


# -- setup -----------------------------------------------------------------------------------------
def test_setup_seeds_the_init_sets_threads_and_counts_parameters(tmp_path, monkeypatch):
    tiny_task()
    threads = []
    monkeypatch.setattr(torch, "set_num_threads", threads.append)
    states = []
    for global_seed, seed in ((123, 5), (456, 5), (123, 6)):
        torch.manual_seed(global_seed)  # whatever the process drew before, the seed alone decides the init
        trainer = Trainer(config(seed=seed, threads=2, readout="mean-ln", batch_size=5, ddp_batch="split"), tmp_path / "r")
        trainer.setup()
        states.append(state_of(trainer.model))
    assert same(states[0], states[1]) and not same(states[0], states[2])
    assert threads == [2, 2, 2]
    assert trainer.model.readout == "mean-ln" and trainer.state_meta["backbone"]["readout"] == "mean-ln"  # not vit-tiny's cls
    # vit-tiny: dim 64, depth 4; vpt-deep with 2 prompts per block; a 3-class head
    assert trainer.params == {"strategy": 4 * 2 * 64, "head": 64 * 3 + 3, "trainable": 4 * 2 * 64 + 64 * 3 + 3}
    # one process: no batch split, nothing dropped even with --ddp-batch split; 12 images in batches of 5
    assert (trainer.batch_size, trainer.drop_last, trainer.steps_per_epoch) == (5, False, 3)
    assert trainer.device == torch.device("cpu")


# -- one run, step by step -------------------------------------------------------------------------
def test_a_run_follows_the_protocol_step_by_step(tmp_path, monkeypatch):
    """12 images in batches of 5 (3 steps per epoch: 5, 5, 2), 3 epochs, warm-up 1 epoch, clip 0.5,
    val top-1 scripted 40, 60, 50: every number below is counted from the batches or computed here."""
    from lspt_cli.engine import totals
    from lspt_cli.engine.rng import epoch_order

    manifest = tiny_task()
    label_of = dict(manifest.splits["train"])
    keys = [k for k, _ in manifest.splits["train"]]
    monkeypatch.setattr(totals, "SYNC_EVERY", 2)  # the progress bar hears every 2 steps
    watch = Watch(monkeypatch)
    states, real = scripted_val(monkeypatch, [40.0, 60.0, 50.0])
    host, events = events_host()
    bar_calls: list[tuple] = []

    def progress(epoch, epochs, n_images):
        bar_calls.append(("new", epoch, epochs, n_images))

        def update(n, done=False, **fields):
            bar_calls.append(("update", epoch, n, done, fields, time.time()))

        return update

    logs: list[str] = []
    handler = signal.getsignal(signal.SIGINT)
    lr, clip, seed = 0.2, 0.5, 3
    run_dir = tmp_path / "run"
    (run_dir).mkdir()
    (run_dir / ".config.json.x.tmp").write_text("torn")  # an atomic write a kill interrupted
    cfg = config(epochs=3, warmup_epochs=1, batch_size=5, lr=lr, grad_clip=clip, seed=seed, loggers="recorder")
    started = time.time()
    trainer = Trainer(cfg, run_dir, host=host, log=logs.append, progress_factory=progress)
    summary = trainer.run()
    wall = time.time() - started

    assert logs == [] and signal.getsignal(signal.SIGINT) == handler
    assert not (run_dir / ".config.json.x.tmp").exists()
    # the data: each epoch's order, and the batches follow it; dropout draws from seed * 100_003 + epoch + 1
    assert [e["epoch"] for e in watch.loaders] == [0, 1, 2]
    for epoch, entry in enumerate(watch.loaders):
        order = epoch_order(12, seed, epoch)
        assert entry["order"] == order and entry["labels"] == [label_of[keys[i]] for i in order]
        assert entry["seed"] == seed * 100_003 + epoch + 1
    # every step: the schedule's lr, and the applied gradient = this step's loss gradient, clipped
    assert len(watch.steps) == 9
    for step, rec in enumerate(watch.steps):
        assert rec["lr"] == pytest.approx([lr * per_step_factor(step, 3, 9)] * 2, rel=1e-12), step
        grads = rec["grads"]
        norm = torch.sqrt(sum(g.pow(2).sum() for g in grads.values()))
        scale = min(1.0, clip / (float(norm) + 1e-6))
        assert set(rec["applied"]) == set(grads)
        for name, g in grads.items():
            assert torch.allclose(rec["applied"][name], g * scale, rtol=1e-4, atol=1e-7), (step, name)
    assert any(float(torch.sqrt(sum(g.pow(2).sum() for g in rec["grads"].values()))) > clip for rec in watch.steps)

    # metrics.jsonl: counted from the steps of each epoch
    recs = records(run_dir)
    assert [r["epoch"] for r in recs] == [1, 2, 3]
    for epoch, r in enumerate(recs):
        steps = watch.steps[3 * epoch : 3 * epoch + 3]
        assert [s["n"] for s in steps] == [5, 5, 2]
        assert r["train_loss"] == pytest.approx(sum(s["loss"] * s["n"] for s in steps) / 12, rel=1e-6)
        assert r["train_acc"] == pytest.approx(100.0 * sum(s["correct"] for s in steps) / 12)
        assert r["lr"] == pytest.approx(lr * per_step_factor(3 * epoch + 2, 3, 9), rel=1e-12)
        assert (r["steps"], r["batch_per_rank"]) == (3, 5)
        assert r["images_per_s"] == pytest.approx(12 / r["seconds"], rel=1e-9)
        entry, ended = watch.loaders[epoch], events.calls[1 + epoch][2]
        assert entry["yields"][-1] - entry["yields"][0] <= r["seconds"] <= ended - entry["created"]
        assert (r["val_acc"], r["val_loss"], r["val_mean_per_class"]) == (
            [40.0, 60.0, 50.0][epoch], real[epoch + 1]["loss"], real[epoch + 1]["mean_per_class"])
        assert ("dead_tensors" in r) == (epoch == 0)  # the first epoch is watched, whole
    assert recs[0]["dead_tensors"] == []
    assert [r["best_val_acc"] for r in recs] == [40.0, 60.0, 60.0]

    # the progress bar: (advance, running loss and accuracy, images/s) every 2 steps and at the end
    assert [c[1:] for c in bar_calls if c[0] == "new"] == [(0, 3, 12), (1, 3, 12), (2, 3, 12)]
    for epoch in range(3):
        calls = [c for c in bar_calls if c[0] == "update" and c[1] == epoch]
        assert [(c[2], c[3]) for c in calls] == [(10, False), (2, False), (0, True)]
        steps, entry = watch.steps[3 * epoch : 3 * epoch + 3], watch.loaders[epoch]
        for call, upto in zip(calls[:2], (2, 3)):
            seen = sum(s["n"] for s in steps[:upto])
            fields = call[4]
            assert fields["loss"] == pytest.approx(sum(s["loss"] * s["n"] for s in steps[:upto]) / seen, rel=1e-6)
            assert fields["acc"] == pytest.approx(100.0 * sum(s["correct"] for s in steps[:upto]) / seen)
            assert call[5] - entry["yields"][0] <= seen / fields["ips"] <= call[5] - entry["created"]

    # selection: epoch 2 (best val); the best bundle, the bundle and the test numbers are its state
    assert not same(states[1], states[2]) and not same(states[2], states[3])
    assert same(tensors(run_dir / "best.safetensors"), states[2]) and same(tensors(run_dir / "bundle.safetensors"), states[2])
    assert same(states["test"], states[2])
    from lspt_cli import bundle

    assert bundle.read_header(run_dir / "best.safetensors").meta("lspt.metrics") == {"val_top1": 60.0, "epoch": 2}
    test = eval_on(trainer.model, states[2], "test")
    assert (summary["test_top1"], summary["test_loss"], summary["test_mean_per_class"], summary["test_n"]) == (
        test["top1"], pytest.approx(test["loss"], rel=1e-6), test["mean_per_class"], 6)
    assert (summary["selected_epoch"], summary["selection"], summary["reported_epoch_rule"]) == (2, "best val top-1", "best val epoch")
    assert (summary["val_top1"], summary["val_top1_best"], summary["val_top1_last"]) == (60.0, 60.0, 50.0)
    assert (summary["seed"], summary["epochs"], summary["final"], summary["train_split"]) == (seed, 3, False, "train")
    assert summary["seconds"] == pytest.approx(sum(r["seconds"] for r in recs), rel=1e-9) and summary["seconds"] <= wall
    assert summary["images_per_s"] == recs[-1]["images_per_s"]
    assert summary["params"] == {"strategy": 512, "head": 195, "trainable": 707}
    assert summary["feature_cache"].startswith("off") and "dead_tensors" not in summary and "compile_seconds" not in summary
    assert summary["bundle"] == str(run_dir / "bundle.safetensors")
    assert summary["bundle_bytes"] == (run_dir / "bundle.safetensors").stat().st_size
    assert json.loads((run_dir / "summary.json").read_text()) == summary
    written = json.loads((run_dir / "config.json").read_text())
    assert written["meta"] == json.loads(json.dumps(trainer.state_meta)) and written["params"] == summary["params"]
    assert written["task"] == "tiny" and written["train"]["grad_clip"] == clip

    # the checkpoint: the end of epoch 3, the best of epoch 2, no mid-epoch state
    ckpt = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    assert (ckpt["epoch"], ckpt["position"], ckpt["step"], ckpt["running"]) == (3, 0, 9, {})
    assert ckpt["best"] == {"top1": 60.0, "epoch": 1} and "rng_cpu" not in ckpt
    assert same(ckpt["trainable"], states[3])

    # the hooks and the logger saw the same records and summary, in order
    assert [c[0] for c in events.calls] == ["run_start", "epoch_end", "epoch_end", "epoch_end", "run_end"]
    assert events.calls[0][1] == run_dir and events.calls[0][2] == cfg.to_json()
    assert [c[1] for c in events.calls[1:4]] == recs and events.calls[4][1] == summary
    assert events.logger[0] == ("start", run_dir)
    assert events.logger[1:4] == [("epoch", i + 1, recs[i]) for i in range(3)]
    assert events.logger[4:] == [("finish", summary, run_dir / "bundle.safetensors")]


def test_paper_vtab_reports_the_last_epoch_though_a_best_bundle_exists(tmp_path, monkeypatch):
    """Protocol paper on VTAB (selection.py): the test of the *last* epoch, and its val as val_top1;
    lr per epoch from the official LambdaLR (epoch 1 at lr 0)."""
    from test_protocol import official_lr_lambda

    tiny_task("tinyv", benchmark="vtab")
    states, _ = scripted_val(monkeypatch, [40.0, 60.0, 50.0])
    cfg = config("tinyv", protocol="paper", schedule="per-epoch", epochs=3, warmup_epochs=1, batch_size=6, lr=0.3)
    summary = Trainer(cfg, tmp_path / "run").run()
    assert (tmp_path / "run" / "best.safetensors").exists()  # epoch 2 was the best val
    assert (summary["selected_epoch"], summary["reported_epoch_rule"]) == (3, "last epoch")
    assert (summary["val_top1"], summary["val_top1_best"], summary["val_top1_last"]) == (50.0, 60.0, 50.0)
    assert same(tensors(tmp_path / "run" / "bundle.safetensors"), states[3]) and same(states["test"], states[3])
    assert [r["lr"] for r in records(tmp_path / "run")] == pytest.approx([0.3 * official_lr_lambda(e, 1, 3) for e in range(3)])


def test_a_zero_val_accuracy_is_still_selected_and_a_final_has_no_val(tmp_path, monkeypatch):
    tiny_task(n_train=8)
    states, _ = scripted_val(monkeypatch, [0.0, 0.0])
    summary = Trainer(config(epochs=2, batch_size=8), tmp_path / "run").run()
    assert summary["selected_epoch"] == 1 and same(tensors(tmp_path / "run" / "bundle.safetensors"), states[1])
    assert [r["best_val_acc"] for r in records(tmp_path / "run")] == [0.0, 0.0]
    final = Trainer(config(epochs=2, batch_size=8, final=True), tmp_path / "final").run()
    assert [r["best_val_acc"] for r in records(tmp_path / "final")] == [None, None]
    assert all("val_acc" not in r for r in records(tmp_path / "final"))
    assert (final["selected_epoch"], final["val_top1"], final["val_top1_best"], final["val_top1_last"]) == (2, None, None, None)
    assert not (tmp_path / "final" / "best.safetensors").exists()


def test_dead_tensors_are_reported_from_the_first_epoch(tmp_path, monkeypatch, capsys):
    """A tensor whose gradient is always zero (the head's bias, by a hook) is named in epoch 1's
    record, the summary and one warning on stderr."""
    tiny_task()
    original = Trainer.setup

    def setup(trainer):
        original(trainer)
        trainer.model.head.bias.register_hook(torch.zeros_like)

    monkeypatch.setattr(Trainer, "setup", setup)
    from lspt_cli.engine import totals

    monkeypatch.setattr(totals, "SYNC_EVERY", 1)  # the bar hears every step (5, 5, 2 images), nothing left at the end
    bar: list[tuple] = []
    summary = Trainer(config(epochs=2, batch_size=5), tmp_path / "run",
                      progress_factory=lambda epoch, epochs, n: lambda k, done=False, **f: bar.append((epoch, k, done))).run()
    assert bar == [(e, k, k == 0) for e in (0, 1) for k in (5, 5, 2, 0)]
    recs = records(tmp_path / "run")
    assert recs[0]["dead_tensors"] == ["head.bias"] and "dead_tensors" not in recs[1]
    assert summary["dead_tensors"] == ["head.bias"]
    err = capsys.readouterr().err
    assert err.count("got no non-zero gradient") == 1
    assert "Warning: 1 trainable tensor(s) got no non-zero gradient in 3 step(s) of epoch 1: head.bias" in err


# -- Ctrl-C and --resume ---------------------------------------------------------------------------
def reference_bundle(tmp_path, cfg) -> dict[str, torch.Tensor]:
    Trainer(cfg, tmp_path / "reference").run()
    return tensors(tmp_path / "reference" / "bundle.safetensors")


def resume_config():
    # prompt dropout 0.5: the global generator matters, so a resume that loses it differs
    return config(strategy="vpt-shallow", options={"dropout": 0.5}, epochs=2, batch_size=4, lr=0.3, loggers="recorder")


def test_ctrl_c_mid_epoch_checkpoints_and_resume_equals_the_uninterrupted_run(tmp_path, monkeypatch):
    tiny_task()
    host, events = events_host()
    cfg = resume_config()
    expected = reference_bundle(tmp_path, cfg)
    reference = records(tmp_path / "reference")
    handler = signal.getsignal(signal.SIGINT)
    run_dir, started = tmp_path / "run", time.time()
    with pytest.MonkeyPatch.context() as mp, pytest.raises(Interrupted) as exc:
        watch = Watch(mp, interrupt_at=(1, 1))  # Ctrl-C while batch 2 of epoch 2 is fetched
        Trainer(cfg, run_dir, host=host).run()
    wall = time.time() - started
    assert (exc.value.epoch, exc.value.run_dir, str(exc.value)) == (2, run_dir, "interrupted in epoch 2")
    assert signal.getsignal(signal.SIGINT) == handler and events.logger[-1] == ("close",)
    ckpt = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    assert (ckpt["epoch"], ckpt["position"], ckpt["step"]) == (1, 1, 4) and "rng_cpu" in ckpt
    assert ckpt["best"]["epoch"] == 0 and ckpt["best"]["top1"] == records(run_dir)[0]["val_acc"]
    running = ckpt["running"]
    first = watch.steps[3]  # epoch 2's one finished batch
    assert (running["seen"], running["correct"]) == (4, first["correct"])
    assert running["loss_sum"] == pytest.approx(4 * first["loss"], rel=1e-6) and 0 <= running["seconds"] <= wall
    with open(run_dir / "metrics.jsonl", "a") as f:  # a line past the checkpoint (killed between the writes)
        f.write(json.dumps({"epoch": 2, "train_loss": 9.9}) + "\n")
    logs: list[str] = []
    Trainer(cfg, run_dir, log=logs.append).run(resume=True)
    assert logs == [f"Resuming {run_dir} at epoch 2, batch 2"]
    assert same(tensors(run_dir / "bundle.safetensors"), expected)
    resumed = records(run_dir)
    assert [r["epoch"] for r in resumed] == [1, 2] and resumed[1]["steps"] == 3
    assert resumed[1]["train_loss"] == pytest.approx(reference[1]["train_loss"], rel=1e-6)
    assert resumed[1]["train_acc"] == reference[1]["train_acc"]


def test_ctrl_c_after_the_last_batch_and_resume_without_a_checkpoint(tmp_path, monkeypatch):
    tiny_task()
    events_host()
    cfg = resume_config()
    expected = reference_bundle(tmp_path, cfg)
    reference = records(tmp_path / "reference")
    run_dir, started = tmp_path / "run", time.time()
    with pytest.MonkeyPatch.context() as mp, pytest.raises(Interrupted) as exc:
        Watch(mp, interrupt_at=(0, "end"))  # Ctrl-C after epoch 1's last batch, before its val
        Trainer(cfg, run_dir).run()
    wall = time.time() - started
    assert exc.value.epoch == 1 and not (run_dir / "metrics.jsonl").exists()
    ckpt = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    assert (ckpt["epoch"], ckpt["position"], ckpt["step"], ckpt["best"]["epoch"]) == (0, 3, 3, -1)  # no val yet
    assert ckpt["best"]["top1"] < 0
    assert ckpt["running"]["seen"] == 12 and 0 <= ckpt["running"]["seconds"] <= wall
    logs: list[str] = []
    Trainer(cfg, run_dir, log=logs.append).run(resume=True)
    assert logs == [f"Resuming {run_dir} at epoch 1, batch 4"]
    assert same(tensors(run_dir / "bundle.safetensors"), expected)
    assert [r["train_loss"] for r in records(run_dir)] == pytest.approx([r["train_loss"] for r in reference], rel=1e-6)

    # killed before its first checkpoint (config written, one metrics line torn off later): start over
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    (fresh / "config.json").write_text((run_dir / "config.json").read_text())
    (fresh / "metrics.jsonl").write_text(json.dumps({"epoch": 1, "train_loss": 9.9}) + "\n")
    logs.clear()
    Trainer(cfg, fresh, log=logs.append).run(resume=True)
    assert logs == [f"{fresh} has no checkpoint yet: starting it from the beginning"]
    assert same(tensors(fresh / "bundle.safetensors"), expected)
    assert [r["train_loss"] for r in records(fresh)] == pytest.approx([r["train_loss"] for r in reference], rel=1e-6)


# -- failures ----------------------------------------------------------------------------------------
def test_a_nan_or_a_failed_write_names_what_is_left(tmp_path, monkeypatch):
    from lspt_cli import atomic
    from lspt_cli.errors import TrainingError

    tiny_task()
    host, events = events_host()
    run_dir = tmp_path / "nan"
    with pytest.MonkeyPatch.context() as mp, pytest.raises(TrainingError, match=r"loss became nan in epoch 2 \(step 2\); training stopped") as exc:
        Watch(mp, nan_at=(1, 1))
        Trainer(config(epochs=2, batch_size=5, loggers="recorder"), run_dir, host=host).run()
    assert exc.value.hint.startswith(f"the last good checkpoint (end of epoch 1) is intact in {run_dir}")
    assert events.logger[-1] == ("close",) and torch.load(run_dir / "checkpoint.pt", weights_only=True)["epoch"] == 1
    with pytest.MonkeyPatch.context() as mp, pytest.raises(TrainingError, match=r"epoch 1 \(step 1\)") as exc:
        Watch(mp, nan_at=(0, 0))
        Trainer(config(epochs=2, batch_size=5), tmp_path / "nan1").run()
    assert exc.value.hint.startswith("no checkpoint was written before it")

    appended = []
    append = atomic.append_line

    def append_then_fail(path, line):
        appended.append(line)
        if len(appended) == 2:
            raise OSError(28, "No space left on device")
        return append(path, line)

    run_dir = tmp_path / "full"
    with pytest.MonkeyPatch.context() as mp, pytest.raises(TrainingError) as exc:
        mp.setattr(atomic, "append_line", append_then_fail)
        Trainer(config(epochs=2, batch_size=5), run_dir).run()
    assert str(exc.value) == (f"could not write metrics.jsonl in {run_dir} (No space left on device); "
                              "the previous checkpoint is intact")
    assert exc.value.hint == f"free some space, then resume with: lspt tune --resume {run_dir}"
    write_json = atomic.write_json
    monkeypatch.setattr(atomic, "write_json", lambda path, doc: (_ for _ in ()).throw(OSError(28, "No space left on device"))
                        if path.name == "config.json" else write_json(path, doc))
    with pytest.raises(TrainingError) as exc:
        Trainer(config(), tmp_path / "noconfig").run()
    assert str(exc.value).endswith("(No space left on device); no checkpoint was written yet")
    assert exc.value.hint == "free some space, then run the same command again"


def test_a_failing_test_evaluation_closes_the_loggers(tmp_path, monkeypatch):
    tiny_task(n_train=4)
    host, events = events_host()
    original = Trainer._evaluate

    def evaluate(trainer, split):
        if split == "test":
            raise RuntimeError("test images gone")
        return original(trainer, split)

    monkeypatch.setattr(Trainer, "_evaluate", evaluate)
    with pytest.raises(RuntimeError, match="test images gone"):
        Trainer(config(loggers="recorder"), tmp_path / "run", host=host).run()
    assert [c[0] for c in events.logger] == ["start", "epoch", "close"]
    assert [c[0] for c in events.calls] == ["run_start", "epoch_end"]


# -- several ranks: rank 1 of 2 in one process (a 1-process gloo group stands in for the collectives) --
def test_rank_one_trains_its_shard_drops_the_partial_batch_and_writes_nothing(tmp_path, monkeypatch, capsys):
    import torch.distributed as dist

    from lspt_cli.engine.distributed import DistContext
    from lspt_cli.engine.rng import epoch_order

    manifest = tiny_task(n_train=10)
    label_of = dict(manifest.splits["train"])
    keys = [k for k, _ in manifest.splits["train"]]
    watch = Watch(monkeypatch, grads=False)  # DDP's backward is the trainer's own
    original = Trainer.setup

    def setup(trainer):
        trainer.dist = DistContext(world_size=2, rank=1, local_rank=1)
        original(trainer)
        trainer.model.head.bias.register_hook(torch.zeros_like)  # dead: rank 1 must not warn about it

    monkeypatch.setattr(Trainer, "setup", setup)
    host, events = events_host()
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        run_dir = tmp_path / "run"
        started = time.time()
        summary = Trainer(config(epochs=2, batch_size=8, ddp_batch="split", seed=2, loggers="recorder"),
                          run_dir, host=host).run()
        wall = time.time() - started
    finally:
        dist.destroy_process_group()
    # 10 images: rank 1's shard is order[1::2] (5 images), batch 8 / 2 ranks = 4: one step of 4
    for epoch, entry in enumerate(watch.loaders):
        shard = epoch_order(10, 2, epoch)[1::2][:4]
        assert entry["order"] == shard and entry["labels"] == [label_of[keys[i]] for i in shard]
    assert [s["n"] for s in watch.steps] == [4, 4]
    assert not run_dir.exists() or list(run_dir.iterdir()) == []
    assert "bundle" not in summary and summary["images_per_s"] is None and "dead_tensors" not in summary
    assert watch.loaders[1]["yields"][0] - watch.loaders[0]["created"] <= summary["seconds"] <= wall
    assert "Warning" not in capsys.readouterr().err and events.logger == []


def test_a_shard_smaller_than_a_batch_still_trains_one_step(tmp_path):
    import torch.distributed as dist

    from lspt_cli.engine.distributed import DistContext

    tiny_task(n_train=6)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        trainer = Trainer(config(batch_size=8, ddp_batch="split"), tmp_path / "run")
        trainer.dist = DistContext(world_size=2, rank=0)
        trainer.setup()
    finally:
        dist.destroy_process_group()
    assert (trainer.order_length, trainer.batch_size, trainer.drop_last, trainer.steps_per_epoch) == (3, 4, True, 1)


# -- the linear probe's feature cache, --compile, --eval-batch-size --------------------------------
def features_of(trainer, split: str, train: bool, epoch: int = 0):
    from lspt_cli.data.loader import build_loader

    n = len(trainer.manifest.splits[split])
    loader = build_loader(trainer.manifest, split, input_size=32, mean=trainer.mean, std=trainer.std, train=train,
                          batch_size=64, seed=trainer.cfg.seed, epoch=epoch, sampler=list(range(n)))
    with torch.no_grad():
        return torch.cat([trainer.model.forward_features(x) for x, _ in loader])


def test_feature_cache_holds_the_documented_views_and_eval_batches(tmp_path, monkeypatch):
    from lspt_cli.engine import accel
    from lspt_cli.engine.feature_cache import FeatureCache

    tiny_task()
    batches, loaders = [], []
    original_batches, original_loader = FeatureCache.batches, Trainer.loader
    logs: list[str] = []
    started = time.time()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(FeatureCache, "batches", lambda self, split, order, size: batches.append((split, size))
                   or original_batches(self, split, order, size))
        mp.setattr(Trainer, "loader", lambda self, split, train, order=None, epoch=0: loaders.append(
            (split, train, (made := original_loader(self, split, train, order, epoch)).batch_size)) or made)
        mp.setattr(accel, "compile_forward", lambda *a: pytest.fail("compiled although the cache trains the head alone"))
        trainer = Trainer(config(strategy="linear", augment=False, compile=True, epochs=2, batch_size=5, eval_batch_size=4),
                          tmp_path / "run", log=logs.append)
        summary = trainer.run()
    wall = time.time() - started
    assert summary["feature_cache"].startswith("on (linear probe")
    seconds = summary["feature_cache_seconds"]
    assert 0 <= seconds <= wall and seconds == round(seconds, 3) and "compile_seconds" not in summary
    assert logs[0].startswith("Feature cache: on (linear probe") and logs[1] == "--compile: skipped, the feature cache trains the head alone"
    assert ("val", 4) in batches and ("train", 5) in batches and ("test", 4) not in batches
    assert ("test", False, 4) in loaders and ("val", False, 4) in loaders  # --eval-batch-size
    assert torch.allclose(trainer.features.features["train"], features_of(trainer, "train", False), atol=1e-5)
    assert torch.allclose(trainer.features.features["val"], features_of(trainer, "val", False), atol=1e-5)

    # --feature-cache on with augmentation: train holds each image's epoch-1 augmented view, val its eval view
    trainer = Trainer(config(strategy="linear", feature_cache="on", epochs=1, batch_size=5), tmp_path / "on")
    trainer.setup()
    assert trainer.speed["feature_cache"].startswith("on, asked for")
    assert torch.allclose(trainer.features.features["train"], features_of(trainer, "train", True, epoch=0), atol=1e-5)
    assert not torch.allclose(trainer.features.features["train"], features_of(trainer, "train", False), atol=1e-3)
    assert torch.allclose(trainer.features.features["val"], features_of(trainer, "val", False), atol=1e-5)


def test_compile_is_timed_and_its_warm_up_leaves_the_run_untouched(tmp_path, monkeypatch):
    from lspt_cli.engine import accel

    tiny_task()
    timings = iter([0.123456, 0.0])

    def fake_compile(model, warm_up, log):
        calls.append(model)
        return model, next(timings)

    calls: list = []
    monkeypatch.setattr(accel, "compile_forward", fake_compile)
    for compiled, seconds in ((True, 0.123), (False, 0.0)):  # recorded to the millisecond
        trainer = Trainer(config(strategy="linear", compile=True, batch_size=5), tmp_path / "c")  # augmented: no cache
        trainer.setup()
        assert trainer.features is None and trainer.speed["compiled"] is compiled
        assert trainer.speed["compile_seconds"] == seconds and calls[-1] is trainer.train_model
    assert len(calls) == 2

    # the warm-up itself: a training-mode forward + backward per batch size of the epoch (5, and the
    # last batch's 2 of 12 images); no parameter, gradient or random state changes
    trainer = Trainer(config(strategy="vpt-shallow", options={"dropout": 0.5}, batch_size=5), tmp_path / "w")
    trainer.setup()
    seen = []

    def forward(images):
        seen.append((tuple(images.shape), trainer.model.training))
        logits = trainer.model(images)
        logits.register_hook(lambda g: seen.append("backward"))
        return logits

    before, rng = state_of(trainer.model), torch.get_rng_state()
    trainer.model.eval()
    trainer._compile_warm_up(forward)
    assert seen == [((5, 3, 32, 32), True), "backward", ((2, 3, 32, 32), True), "backward"]
    assert same(state_of(trainer.model), before) and torch.equal(torch.get_rng_state(), rng)
    assert all(p.grad is None for p in trainer.model.parameters())
    seen.clear()
    trainer.order_length = 10  # no shorter last batch
    trainer._compile_warm_up(forward)
    assert [s for s in seen if s != "backward"] == [((5, 3, 32, 32), True)]
    seen.clear()
    trainer.order_length, trainer.drop_last = 12, True  # a dropped last batch never runs
    trainer._compile_warm_up(forward)
    assert [s for s in seen if s != "backward"] == [((5, 3, 32, 32), True)]
