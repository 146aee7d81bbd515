"""Issue 14, the speed options, each pinned to the plain path it must equal.

- `--compile`: torch.compile'd logits and gradients equal eager ones; `lspt tune --compile` ends
  with the plain run's bundle (fp tolerance); where compiling fails the run says so and stays eager.
- `--grad-checkpointing`: the same gradients as without it for every built-in strategy (GaPT's and
  LSPT's attention temperature included), and the blocks really run twice (forward + recompute).
- bf16 on CPU: detected from the CPU flags; protocol `lspt`'s `amp: auto` follows it, `paper` never.
- The linear probe's feature cache: the same head, metrics, selection and bundle format as the
  uncached run; used only where exact unless asked; a Ctrl-C + --resume ends in the same bundle.
- Fewer host syncs: the running loss is read once per SYNC_EVERY steps, and a NaN still stops
  the run naming its epoch and step, at most SYNC_EVERY - 1 steps late, before any checkpoint.

Runs use a mini digits task (48/24/24 images, 8x8 digits upsampled) on vit-tiny.
"""

from __future__ import annotations

import json
import os
import signal

import pytest
from registered import STRATEGIES
from conftest import mini_digits
import torch
import torch.nn.functional as F

from lspt_cli.engine import accel, totals
from lspt_cli.engine import train as train_mod
from lspt_cli.engine.feature_cache import FeatureCache, cache_decision, pass_through
from lspt_cli.engine.train import Trainer, use_bf16
from lspt_cli.errors import TrainingError
from lspt_cli.prompted import PromptedViT, PromptStrategy, build_strategy



# -- helpers ----------------------------------------------------------------------------------------


def make_config(strategy: str = "linear", task: str = "mini", **train):
    from lspt_cli.plugins import get_host
    from lspt_cli.recipes import resolve_config

    knobs = dict(protocol="lspt", schedule="per-step", lr_scaling="none", epochs=3, warmup_epochs=1, batch_size=8,
                 optimizer="sgd", lr=0.5, momentum=0.9, weight_decay=1e-4, grad_clip=1.0, amp="off", device="cpu",
                 threads=1, seed=0, num_workers=0)
    knobs.update(train)
    return resolve_config(backbone="vit-tiny", strategy=strategy, task=task, benchmark="custom",
                          registered_recipes=get_host().recipes, train_overrides=knobs,
                          strategy_overrides={"num_prompts": 2} if strategy != "linear" else {})


def bundle_tensors(run_dir) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(run_dir / "bundle.safetensors"))


def close_states(a: dict, b: dict, atol: float = 1e-5) -> bool:
    return a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=atol, rtol=1e-4) for k in a)


def metrics(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def grads_of(model, images, labels) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    F.cross_entropy(model(images), labels).backward()
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def prompted(tiny_backbone, strategy: str, seed: int = 0) -> PromptedViT:
    torch.manual_seed(seed)
    options = {} if strategy == "linear" else {"num_prompts": 3}
    if strategy == "gapt":
        options["temperature_init"] = 0.7  # tau != 1: the q scaling is exercised, not a no-op
    try:
        s = build_strategy(strategy, tiny_backbone.dims, options)
    except Exception:  # a strategy without temperature_init
        options.pop("temperature_init", None)
        s = build_strategy(strategy, tiny_backbone.dims, options)
    return PromptedViT(tiny_backbone, s, 10).train()


# -- gradient checkpointing ---------------------------------------------------------------------
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_grad_checkpointing_gives_the_same_gradients(tiny_backbone, strategy):
    model = prompted(tiny_backbone, strategy)
    with torch.no_grad():  # move the gates/temperatures off their init: the test covers every path
        for name, p in model.named_parameters():
            if p.requires_grad and p.ndim <= 1 and "head" not in name:
                p.add_(0.3)
    torch.manual_seed(1)
    images, labels = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    calls = []
    # a pre-hook: the recomputation stops as soon as it has what backward needs (torch's early stop)
    hooks = [b.register_forward_pre_hook(lambda *a: calls.append(1)) for b in tiny_backbone.blocks]
    torch.manual_seed(2)  # prompt dropout (if any) draws the same masks in both runs
    plain = grads_of(model, images, labels)
    plain_calls = len(calls)
    model.grad_checkpointing = True
    torch.manual_seed(2)
    checkpointed = grads_of(model, images, labels)
    for h in hooks:
        h.remove()
    depth = len(tiny_backbone.blocks)
    assert plain_calls == depth
    if strategy != "linear":  # the linear probe's blocks need no backward at all: nothing to recompute
        assert len(calls) - plain_calls == 2 * depth  # forward + the recomputation in backward
    assert plain.keys() == checkpointed.keys() and plain
    for name in plain:
        assert torch.allclose(plain[name], checkpointed[name], atol=1e-6, rtol=1e-5), name
    assert tiny_backbone._q_scales is None  # the recomputation left no temperature behind


# -- torch.compile ----------------------------------------------------------------------------------
def _compiles() -> bool:
    try:
        torch.compile(torch.nn.Linear(2, 2))(torch.zeros(1, 2))
        return True
    except Exception:
        return False


@pytest.mark.slow
def test_compiled_forward_and_gradients_equal_eager(tiny_backbone):
    if not _compiles():
        pytest.skip("torch.compile does not work on this machine (the fallback is tested below)")
    model = prompted(tiny_backbone, "gapt")  # strategy hooks + the temperature's q scaling
    images, labels = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    model.eval()  # no prompt dropout: both paths see the same tokens
    eager = grads_of(model, images, labels)
    eager_logits = model(images).detach()
    compiled = torch.compile(model, dynamic=False)
    model.zero_grad(set_to_none=True)
    logits = compiled(images)
    F.cross_entropy(logits, labels).backward()
    assert torch.allclose(logits.detach(), eager_logits, atol=1e-4, rtol=1e-4)
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert torch.allclose(p.grad, eager[name], atol=1e-4, rtol=1e-3), name
    torch._dynamo.reset()


@pytest.mark.slow
def test_tune_compile_ends_with_the_plain_runs_bundle(cli, tmp_path):
    if not _compiles():
        pytest.skip("torch.compile does not work on this machine (the fallback is tested below)")
    mini_digits()
    args = ["tune", "--backbone", "vit-tiny", "--task", "mini", "--strategy", "vpt-deep", "--set", "num_prompts=2",
            "--protocol", "lspt", "--epochs", "1", "--batch-size", "8", "--lr", "0.5", "--seed", "0", "--amp", "off",
            "--device", "cpu", "--threads", "1", "--json", "-q"]
    result = cli(*args, "--out", str(tmp_path / "plain"))
    assert result.exit_code == 0, result.output
    plain = json.loads(result.stdout)
    result = cli(*args, "--compile", "--out", str(tmp_path / "compiled"))
    torch._dynamo.reset()
    assert result.exit_code == 0, result.output
    compiled = json.loads(result.stdout)
    assert compiled["compiled"] is True and compiled["compile_seconds"] > 0
    assert "compile_seconds" not in plain
    # compile time is reported apart: the epoch's seconds do not contain it (6 tiny steps < compiling)
    assert metrics(tmp_path / "compiled")[0]["seconds"] < compiled["compile_seconds"]
    assert close_states(bundle_tensors(tmp_path / "plain"), bundle_tensors(tmp_path / "compiled"), atol=1e-4)
    assert abs(plain["test_top1"] - compiled["test_top1"]) <= 100.0 / 24 + 1e-9  # at most one image flips


def test_compile_unavailable_falls_back_to_eager_with_one_warning(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("no C++ compiler found\nlong traceback")

    monkeypatch.setattr(torch, "compile", broken)
    mini_digits()
    plain = Trainer(make_config("vpt-deep", epochs=1), tmp_path / "plain").run()
    lines = []
    run = Trainer(make_config("vpt-deep", epochs=1, compile=True), tmp_path / "fallback", log=lines.append).run()
    warnings = [line for line in lines if "--compile" in line]
    assert warnings == ["Warning: --compile is unavailable here (RuntimeError: no C++ compiler found); running eager"]
    assert run["compiled"] is False and run["compile_seconds"] == 0
    a, b = bundle_tensors(tmp_path / "plain"), bundle_tensors(tmp_path / "fallback")
    assert all(torch.equal(a[k], b[k]) for k in a)  # eager is eager: bit for bit


def test_compile_warm_up_changes_nothing(tmp_path, monkeypatch):
    """The warm-up step that triggers compilation (forward + backward on zeros, RNG restored) leaves
    the run bit-identical: checked with an identity 'compiler', so only the warm-up differs."""
    monkeypatch.setattr(torch, "compile", lambda model, **kw: model)
    mini_digits()
    config = dict(epochs=1, batch_size=10)  # 48 = 4 x 10 + 8: the last batch is warmed up too
    plain = Trainer(make_config("gapt", **config), tmp_path / "plain").run()
    warmed = Trainer(make_config("gapt", **config, compile=True), tmp_path / "warmed").run()
    assert warmed["compiled"] is True
    a, b = bundle_tensors(tmp_path / "plain"), bundle_tensors(tmp_path / "warmed")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert plain["test_top1"] == warmed["test_top1"]


# -- bf16 on CPU ------------------------------------------------------------------------------------
def test_cpu_flags_are_read_from_cpuinfo(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16 amx_tile\n\nprocessor\t: 1\n")
    assert {"avx2", "avx512_bf16", "amx_tile"} <= accel.cpu_flags(str(info))
    assert "amx_bf16" not in accel.cpu_flags(str(info))
    assert accel.cpu_flags(str(tmp_path / "missing")) == set()


@pytest.mark.parametrize("flags, native", [({"avx2"}, False), ({"avx2", "avx512_bf16"}, True), ({"amx_bf16"}, True)])
def test_amp_auto_uses_bf16_on_cpu_only_where_native(monkeypatch, flags, native):
    monkeypatch.delenv("LSPT_CPU_BF16", raising=False)  # detect from the (faked) flags
    monkeypatch.setattr(accel, "cpu_flags", lambda *a: set(flags))
    monkeypatch.setattr(accel, "cpu_capability", lambda: "AVX2")
    accel.detect_cpu_bf16.cache_clear()
    try:
        cpu = torch.device("cpu")
        assert use_bf16("auto", cpu) is native  # protocol lspt's default
        assert use_bf16("off", cpu) is False  # protocol paper's: fp32 whatever the CPU
        assert use_bf16("bf16", cpu) is True  # asked for explicitly
        report = accel.bf16_report(cpu)
        assert report["bf16_native"] is native and report["cpu_bf16_flags"] == sorted(flags & {"avx512_bf16", "amx_bf16"})
    finally:
        accel.detect_cpu_bf16.cache_clear()


def test_protocols_amp_defaults():
    from lspt_cli.settings import PROTOCOL_DEFAULTS

    assert PROTOCOL_DEFAULTS["paper"]["amp"] == "off" and PROTOCOL_DEFAULTS["lspt"]["amp"] == "auto"


# -- the linear probe's feature cache ---------------------------------------------------------------
class Shifted(PromptStrategy):
    """Adds nothing trainable but changes the tokens: its features are not the backbone's."""

    def after_block(self, index, x, state):
        return x + 1.0


def test_cache_decision(tiny_backbone):
    linear = build_strategy("linear", tiny_backbone.dims)
    vpt = build_strategy("vpt-deep", tiny_backbone.dims, {"num_prompts": 2})
    assert pass_through(linear) and not pass_through(vpt) and not pass_through(Shifted(tiny_backbone.dims))
    assert cache_decision("auto", linear, deterministic=True, distributed=False)[0] is True
    assert cache_decision("auto", linear, deterministic=False, distributed=False)[0] is False  # augmentation
    assert cache_decision("on", linear, deterministic=False, distributed=False)[0] is True  # asked for
    assert cache_decision("off", linear, deterministic=True, distributed=False)[0] is False
    assert cache_decision("on", vpt, deterministic=True, distributed=False)[0] is False
    assert cache_decision("on", Shifted(tiny_backbone.dims), deterministic=True, distributed=False)[0] is False
    assert cache_decision("auto", linear, deterministic=True, distributed=True)[0] is False


def count_backbone_passes(monkeypatch) -> list[int]:
    """Images that went through the frozen backbone (FrozenBackbone.embed) for training, evaluation and
    the test, per call; the end-of-run bundle check's few inputs (engine/bundle_check.py) not counted."""
    from lspt_cli.backbone import FrozenBackbone
    from lspt_cli.engine import train

    seen, original, checking = [], FrozenBackbone.embed, []

    def embed(self, images):
        if not checking:
            seen.append(images.shape[0])
        return original(self, images)

    real_check = train.check_run_bundle

    def check(*args, **kwargs):
        checking.append(True)
        try:
            return real_check(*args, **kwargs)
        finally:
            checking.pop()

    monkeypatch.setattr(FrozenBackbone, "embed", embed)
    monkeypatch.setattr(train, "check_run_bundle", check)
    return seen


def test_feature_cache_trains_the_same_head_as_the_uncached_run(tmp_path, monkeypatch):
    mini_digits()
    seen = count_backbone_passes(monkeypatch)
    plain = Trainer(make_config(augment=False, feature_cache="off"), tmp_path / "plain").run()
    plain_passes = sum(seen)
    seen.clear()
    cached = Trainer(make_config(augment=False), tmp_path / "cached").run()  # auto: exact here, so on
    # 3 epochs x (48 train + 24 val) + 24 test images uncached; once each (48 + 24) + 24 test cached
    assert plain_passes == 3 * (48 + 24) + 24 and sum(seen) == 48 + 24 + 24
    assert cached["feature_cache"].startswith("on") and plain["feature_cache"].startswith("off")
    a, b = bundle_tensors(tmp_path / "plain"), bundle_tensors(tmp_path / "cached")
    assert a.keys() == b.keys() == {"head.weight", "head.bias"}
    assert close_states(a, b, atol=1e-5)
    assert cached["test_top1"] == plain["test_top1"] and cached["selected_epoch"] == plain["selected_epoch"]
    assert abs(cached["test_loss"] - plain["test_loss"]) < 1e-4
    ma, mb = metrics(tmp_path / "plain"), metrics(tmp_path / "cached")
    assert [m.keys() for m in ma] == [m.keys() for m in mb]
    for x, y in zip(ma, mb):
        assert x["val_acc"] == y["val_acc"] and abs(x["train_loss"] - y["train_loss"]) < 1e-4
    assert sorted(p.name for p in (tmp_path / "plain").iterdir()) == sorted(p.name for p in (tmp_path / "cached").iterdir())
    from lspt_cli import bundle

    meta_a, meta_b = (bundle.read_header(tmp_path / run / "bundle.safetensors").metadata for run in ("plain", "cached"))
    assert meta_a.keys() == meta_b.keys()  # the same bundle format


def test_feature_cache_stays_off_with_augmentation_unless_asked(tmp_path, monkeypatch):
    mini_digits()
    seen = count_backbone_passes(monkeypatch)
    augmented = Trainer(make_config(epochs=2), tmp_path / "augmented").run()
    assert augmented["feature_cache"].startswith("off (augmentation") and sum(seen) == 2 * (48 + 24) + 24
    seen.clear()
    asked = Trainer(make_config(epochs=2, feature_cache="on"), tmp_path / "asked").run()
    assert asked["feature_cache"].startswith("on, asked for with augmentation") and sum(seen) == 48 + 24 + 24


def test_feature_cache_interrupt_then_resume_equals_uninterrupted(tmp_path, monkeypatch):
    mini_digits()
    whole = Trainer(make_config(augment=False), tmp_path / "whole").run()
    original = FeatureCache.batches

    yielded: list[int] = []

    def batches_then_interrupt(self, split, order, batch_size):
        for batch in original(self, split, order, batch_size):
            if split == "train":
                yielded.append(1)
                if len(yielded) == 2 * 6 + 4:  # Ctrl-C in epoch 3 (6 batches of 8 per epoch), after 3 batches
                    os.kill(os.getpid(), signal.SIGINT)
            yield batch

    monkeypatch.setattr(FeatureCache, "batches", batches_then_interrupt)
    with pytest.raises(train_mod.Interrupted):
        Trainer(make_config(augment=False), tmp_path / "stopped").run()
    monkeypatch.setattr(FeatureCache, "batches", original)
    state = torch.load(tmp_path / "stopped" / "checkpoint.pt", weights_only=True)
    assert (state["epoch"], state["position"]) == (2, 3)
    from lspt_cli.engine.run_files import read_run_config

    resumed = Trainer(read_run_config(tmp_path / "stopped"), tmp_path / "stopped").run(resume=True)
    a, b = bundle_tensors(tmp_path / "whole"), bundle_tensors(tmp_path / "stopped")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert resumed["test_top1"] == whole["test_top1"]


def test_tune_flags_reach_the_config(cli):
    result = cli("tune", "--backbone", "vit-tiny", "--task", "digits", "--strategy", "linear", "--compile",
                 "--grad-checkpointing", "--no-augment", "--no-feature-cache", "--dry-run")
    assert result.exit_code == 0, result.output
    train = json.loads(result.stdout)["train"]
    assert (train["compile"], train["grad_checkpointing"], train["augment"], train["feature_cache"]) == (True, True, False, "off")
    default = json.loads(cli("tune", "--backbone", "vit-tiny", "--task", "digits", "--dry-run").stdout)["train"]
    assert (default["compile"], default["grad_checkpointing"], default["augment"], default["feature_cache"]) == (False, False, True, "auto")


# -- fewer host syncs, and the NaN stop ----------------------------------------------------------------
def test_device_totals_sum_like_python_and_keep_the_first_bad_loss():
    sums = totals.DeviceTotals(torch.device("cpu"), loss_sum=1.5, correct=3, seen=4)
    losses = [0.5, 0.25, float("nan"), float("inf"), 0.125]
    expected = 1.5
    for step, value in enumerate(losses):
        logits = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
        sums.add(torch.tensor(value), logits, torch.tensor([1, 1]), step)
        expected += value * 2
    loss_sum, correct, bad = sums.read()
    assert correct == 3 + 5 and sums.seen == 4 + 10
    assert bad[0] == 2 and bad[1] != bad[1]  # the first non-finite loss: step 2, nan (not the later inf)
    clean = totals.DeviceTotals(torch.device("cpu"))
    for step, value in enumerate([0.5, 0.25]):
        clean.add(torch.tensor(value, dtype=torch.float32), torch.zeros(3, 2), torch.zeros(3, dtype=torch.long), step)
    assert clean.read() == (0.5 * 3 + 0.25 * 3, 6, None)


def test_loss_is_read_once_per_sync_interval(tmp_path, monkeypatch):
    mini_digits(n_train=48)
    reads = []
    original = totals.DeviceTotals.read

    def read(self):
        reads.append(self.unread)
        return original(self)

    monkeypatch.setattr(totals.DeviceTotals, "read", read)
    monkeypatch.setattr(totals, "SYNC_EVERY", 4)
    Trainer(make_config("vpt-deep", epochs=1, batch_size=4), tmp_path / "run").run()  # 12 steps
    assert reads == [4, 4, 4, 0]  # three interval reads and the end-of-epoch read: no per-step sync


def test_nan_stops_within_the_sync_interval_naming_epoch_and_step(tmp_path, monkeypatch):
    mini_digits(n_train=48)
    monkeypatch.setattr(totals, "SYNC_EVERY", 5)
    steps = []
    original_setup = Trainer.setup

    def setup(self):
        original_setup(self)

        def poison(module, inputs, output):
            if not module.training:  # validation batches
                return output
            steps.append(1)
            return output * float("nan") if len(steps) == 12 + 7 else output  # epoch 2 (12 steps each), step 7

        self.model.head.register_forward_hook(poison)

    monkeypatch.setattr(Trainer, "setup", setup)
    with pytest.raises(TrainingError) as info:
        Trainer(make_config("vpt-deep", epochs=3, batch_size=4), tmp_path / "run").run()
    assert "loss became nan in epoch 2 (step 7)" in str(info.value)
    # training ran at most SYNC_EVERY - 1 steps past the bad one: read at epoch 2's step 10
    assert 19 <= len(steps) <= 19 + 5 - 1
    state = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert state["epoch"] == 1 and all(torch.isfinite(v).all() for v in state["trainable"].values())
