"""The engine's small modules, each behaviour pinned to a hand-computed expectation (the survivors of
benchmarks/mutation.py on lspt_cli/engine/: accel, feature_cache, grad_watch, totals, distributed,
checkpoint, restore). Fast: no training except one 1-epoch linear probe for the checkpoint checks;
torch.compile and torch.distributed are replaced by recording fakes where only the call matters.
"""

from __future__ import annotations

import pytest
import torch
from conftest import mini_digits

from lspt_cli import bundle
from lspt_cli.engine import accel, checkpoint, grad_watch, totals
from lspt_cli.engine.distributed import DistContext
from lspt_cli.engine.feature_cache import FeatureCache, pass_through
from lspt_cli.errors import BundleError, RunFileError, TrainingError
from lspt_cli.prompted import PromptedViT, PromptStrategy, build_strategy


# -- accel ------------------------------------------------------------------------------------------
def test_cpu_capability_is_torchs_own_view():
    assert accel.cpu_capability() == str(torch.backends.cpu.get_cpu_capability())


def test_cpu_bf16_native_reads_the_cpu_once(monkeypatch):
    monkeypatch.delenv("LSPT_CPU_BF16", raising=False)  # detect, as a user's run does
    reads = []
    monkeypatch.setattr(accel, "cpu_flags", lambda *a: reads.append(1) or {"avx512_bf16"})
    accel.detect_cpu_bf16.cache_clear()
    try:
        assert accel.cpu_bf16_native() is True and accel.cpu_bf16_native() is True
        assert reads == [1]
    finally:
        accel.detect_cpu_bf16.cache_clear()


@pytest.mark.parametrize("flags", [set(), {"avx512_bf16"}])
def test_lspt_cpu_bf16_states_the_answer_whatever_the_cpu(monkeypatch, flags):
    """`LSPT_CPU_BF16=1|0` wins over the flags (the suite pins it: no result depends on the CPU);
    anything else, or nothing, detects."""
    monkeypatch.setattr(accel, "cpu_flags", lambda *a: set(flags))
    monkeypatch.setattr(accel, "cpu_capability", lambda: "AVX2")
    accel.detect_cpu_bf16.cache_clear()
    try:
        for stated, answer in (("1", True), ("0", False), (" 1 ", True), ("yes", bool(flags)), ("", bool(flags))):
            monkeypatch.setenv("LSPT_CPU_BF16", stated)
            assert accel.cpu_bf16_native() is answer
        monkeypatch.delenv("LSPT_CPU_BF16", raising=False)
        assert accel.cpu_bf16_native() is bool(flags)
    finally:
        accel.detect_cpu_bf16.cache_clear()


@pytest.fixture
def fake_compile(monkeypatch):
    """torch.compile replaced: records its keyword arguments, returns a marker (or raises `fail`)."""
    import torch._inductor.config as inductor_config

    before = inductor_config.fallback_random  # a config module: set and put back by hand, not monkeypatch
    inductor_config.fallback_random = False
    record = {"kwargs": None, "fail": None, "resets": 0}

    def compile(model, **kwargs):
        record["kwargs"] = kwargs
        if record["fail"] is not None:
            raise record["fail"]
        return ("compiled", model)

    monkeypatch.setattr(torch, "compile", compile)
    monkeypatch.setattr(torch._dynamo, "reset", lambda: record.__setitem__("resets", record["resets"] + 1))
    yield record
    inductor_config.fallback_random = before


def test_compile_forward_compiles_statically_with_eager_randomness_and_times_the_warm_up(fake_compile):
    import time

    import torch._inductor.config as inductor_config

    model, warmed, logs = torch.nn.Linear(2, 2), [], []
    fn, seconds = accel.compile_forward(model, lambda f: (warmed.append(f), time.sleep(0.05)), logs.append)
    assert fn == ("compiled", model) and warmed == [fn] and logs == []
    assert fake_compile["kwargs"] == {"dynamic": False} and inductor_config.fallback_random is True
    assert 0.05 <= seconds < 5.0


@pytest.mark.parametrize("message, shown", [
    ("no C++ compiler\nsecond line", "no C++ compiler"),
    ("", ""),
    ("x" * 300, "x" * 200),
])
def test_compile_failure_stays_eager_with_one_warning(fake_compile, message, shown):
    fake_compile["fail"] = RuntimeError(message)
    model, logs = torch.nn.Linear(2, 2), []
    assert accel.compile_forward(model, lambda f: None, logs.append) == (model, 0.0)
    assert logs == [f"Warning: --compile is unavailable here (RuntimeError: {shown}); running eager"]
    assert fake_compile["resets"] == 1  # the failed compile's caches dropped


def test_compile_without_torch_compile_stays_eager(monkeypatch):
    monkeypatch.delattr(torch, "compile")
    model, logs = torch.nn.Linear(2, 2), []
    assert accel.compile_forward(model, lambda f: pytest.fail("warm-up ran"), logs.append) == (model, 0.0)
    assert logs == ["Warning: --compile needs torch >= 2.0; running eager"]


# -- feature_cache ----------------------------------------------------------------------------------
class ParamsOnly(PromptStrategy):
    """No hook of its own, but a trainable tensor: not a pass-through."""

    def __init__(self, dims):
        super().__init__(dims)
        self.extra = torch.nn.Parameter(torch.zeros(1))


def test_a_strategy_with_parameters_is_not_a_pass_through(tiny_backbone):
    assert pass_through(build_strategy("linear", tiny_backbone.dims))
    assert not pass_through(ParamsOnly(tiny_backbone.dims))


class Doubler(torch.nn.Module):
    """forward_features = 2 * the first two pixels; draws a random number (the cache must not move the RNG)."""

    def forward_features(self, images):
        torch.rand(1)
        return 2.0 * images.flatten(1)[:, :2]


def test_feature_cache_stores_every_image_once_and_batches_in_any_order():
    images = torch.arange(5 * 3, dtype=torch.float32).reshape(5, 3, 1, 1)
    labels = torch.tensor([4, 3, 2, 1, 0])
    loader = [(images[:2], labels[:2]), (images[2:], labels[2:])]
    cache = FeatureCache(Doubler(), torch.device("cpu"), amp=False)
    assert "train" not in cache
    torch.manual_seed(0)
    expected_draw = torch.rand(1)
    torch.manual_seed(0)
    cache.add("train", loader)
    assert torch.equal(torch.rand(1), expected_draw)  # the RNG did not move
    assert "train" in cache and "val" not in cache
    expected = 2.0 * images.flatten(1)[:, :2]  # rows [0, 1], [3, 4], [6, 7], ... doubled
    assert torch.equal(cache.features["train"], expected) and torch.equal(cache.labels["train"], labels)
    got = list(cache.batches("train", [4, 0, 2, 1, 3], batch_size=2))
    assert [y.tolist() for _, y in got] == [[0, 4], [2, 3], [1]]
    assert torch.equal(got[0][0], expected[[4, 0]]) and torch.equal(got[2][0], expected[[3]])
    plain = list(cache.batches("train", None, batch_size=3))
    assert [y.tolist() for _, y in plain] == [[4, 3, 2], [1, 0]]
    assert cache.nbytes() == 5 * 2 * 4  # float32 [5, 2]
    assert cache.info() == {"splits": {"train": 5}, "bytes": 40}


# -- grad_watch -------------------------------------------------------------------------------------
def test_grad_watch_counts_steps_and_a_missing_gradient_is_dead():
    model = torch.nn.Linear(2, 1)
    watch = grad_watch.GradWatch(model)
    assert watch.steps == 0 and watch.dead() == ["weight", "bias"]
    watch.observe()  # no backward yet: every grad is None
    model(torch.ones(1, 2)).sum().backward()
    watch.observe()
    assert watch.steps == 2 and watch.dead() == []


def test_dead_tensor_warning_lists_ten_names_and_goes_to_stderr(capsys):
    names = [f"strategy.t{i}" for i in range(11)]
    text = grad_watch.dead_tensor_warning(names, 3, "epoch 1")
    assert text.startswith("Warning: 11 trainable tensor(s) got no non-zero gradient in 3 step(s) of epoch 1: ")
    assert "strategy.t9" in text and "strategy.t10" not in text and "1 more" in text
    grad_watch.warn_dead(names[:1], 3, "epoch 1")
    grad_watch.warn_dead([], 3, "epoch 1")
    out = capsys.readouterr()
    assert out.out == "" and out.err.count("Warning:") == 1 and "strategy.t0" in out.err


# -- totals -----------------------------------------------------------------------------------------
def _add(sums, step, loss=1.0):
    sums.add(torch.tensor(loss), torch.tensor([[1.0, 0.0]]), torch.tensor([0]), step)


def test_totals_are_due_every_16_steps():
    """README "Performance": the running loss is read once per 16 steps."""
    sums = totals.DeviceTotals(torch.device("cpu"))
    assert sums.seen == 0
    for step in range(15):
        _add(sums, step)
        assert not sums.due()
    _add(sums, 15)
    assert sums.due() and sums.seen == 16
    assert sums.read() == (16.0, 16, None)
    for step in range(15):
        _add(sums, 16 + step)
    assert not sums.due()
    _add(sums, 31)
    assert sums.due()


def test_totals_keep_a_bad_loss_at_step_0_and_sum_in_float64():
    sums = totals.DeviceTotals(torch.device("cpu"))
    _add(sums, 0, float("nan"))
    _add(sums, 1, float("inf"))
    bad = sums.read()[2]
    assert bad[0] == 0 and bad[1] != bad[1]  # step 0's nan, not step 1's inf
    big = totals.DeviceTotals(torch.device("cpu"), loss_sum=2.0**25)
    _add(big, 0, 1.0)
    assert big.read()[0] == 2.0**25 + 1  # float32 would round this to 2**25


# -- distributed ------------------------------------------------------------------------------------
def test_a_single_process_context_and_the_shard_sizes():
    single = DistContext()
    assert (single.world_size, single.rank, single.local_rank) == (1, 0, 0)
    assert not single.enabled and single.is_main and single.shard([3, 1, 2]) == [3, 1, 2]
    assert DistContext(world_size=2).enabled and not DistContext(world_size=2, rank=1).is_main
    order = list(range(10))  # 10 items, 3 ranks: 3 each, rank r takes r, r+3, r+6
    assert [DistContext(world_size=3, rank=r).shard(order) for r in range(3)] == [[0, 3, 6], [1, 4, 7], [2, 5, 8]]


@pytest.fixture
def fake_dist(monkeypatch):
    """torch.distributed's calls recorded (no process group is started)."""
    import torch.distributed as dist

    calls = []
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group", lambda backend: calls.append(("init", backend)))
    monkeypatch.setattr(dist, "all_reduce", lambda t: (calls.append(("all_reduce",)), t.mul_(2)))  # two equal ranks
    monkeypatch.setattr(dist, "barrier", lambda: calls.append(("barrier",)))
    monkeypatch.setattr(dist, "broadcast", lambda t, src: (calls.append(("broadcast", src)), t.fill_(1)))  # rank 0: True
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    return calls


def test_from_env_starts_the_process_group_only_with_several_ranks(monkeypatch, fake_dist):
    import torch.distributed as dist

    monkeypatch.delenv("RANK", raising=False)
    for world in (None, "1"):
        if world is None:
            monkeypatch.delenv("WORLD_SIZE", raising=False)
        else:
            monkeypatch.setenv("WORLD_SIZE", world)
        assert DistContext.from_env() == DistContext() and fake_dist == []
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert DistContext.from_env() == DistContext(world_size=2, rank=1, local_rank=1)
    assert fake_dist == [("init", "gloo")]
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    DistContext.from_env()
    assert fake_dist == [("init", "gloo")]  # already initialised: not twice
    devices = []
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_device", devices.append)
    DistContext.from_env()
    assert fake_dist[-1] == ("init", "nccl") and devices == [1]  # each rank on its own GPU


def test_collectives_run_only_with_several_ranks(fake_dist):
    single = DistContext()
    assert single.all_reduce_sum([1.0, 2.5], "cpu") == [1.0, 2.5]
    assert single.broadcast_flag(False, "cpu") is False and single.broadcast_flag(True, "cpu") is True
    single.barrier()
    assert fake_dist == []
    two = DistContext(world_size=2, rank=1)
    assert two.all_reduce_sum([1.0, 2.5], "cpu") == [2.0, 5.0]
    assert two.broadcast_flag(False, "cpu") is True  # rank 0's decision wins
    two.barrier()
    assert fake_dist == [("all_reduce",), ("broadcast", 0), ("barrier",)]


def test_broadcast_flag_sends_the_flag_itself(monkeypatch, fake_dist):
    import torch.distributed as dist

    sent = []
    monkeypatch.setattr(dist, "broadcast", lambda t, src: sent.append(t.tolist()))  # rank 0: sends as is
    rank0 = DistContext(world_size=2, rank=0)
    assert rank0.broadcast_flag(True, "cpu") is True and rank0.broadcast_flag(False, "cpu") is False
    assert sent == [[1], [0]]


# -- checkpoint -------------------------------------------------------------------------------------
def _config(strategy="linear", epochs=1):
    from lspt_cli.plugins import get_host
    from lspt_cli.recipes import resolve_config

    knobs = dict(protocol="lspt", epochs=epochs, warmup_epochs=0, batch_size=16, optimizer="sgd", lr=0.1,
                 amp="off", device="cpu", threads=1, seed=0, num_workers=0, augment=False)
    return resolve_config(backbone="vit-tiny", strategy=strategy, task="mini", benchmark="custom",
                          registered_recipes=get_host().recipes, train_overrides=knobs,
                          strategy_overrides={"num_prompts": 2} if strategy != "linear" else {})


class Evil:
    """Not a tensor, number, string, list or dict: loading it needs unpickling."""


def test_checkpoint_load_checks_version_pickles_size_and_the_run(tmp_path, monkeypatch):
    from lspt_cli.engine.train import Trainer

    mini_digits(n_train=16, n_val=8, n_test=8)
    config = _config()
    run = tmp_path / "run"
    Trainer(config, run).run()
    path = run / "checkpoint.pt"
    assert torch.load(path, weights_only=True)["version"] == 1  # the format's version

    seen = []
    real_open = checkpoint.atomic.open_regular
    def spy(path, what, error, max_bytes):
        if what == "checkpoint":
            seen.append(max_bytes)
        return real_open(path, what, error, max_bytes)

    monkeypatch.setattr(checkpoint.atomic, "open_regular", spy)
    state = checkpoint.load_checkpoint(path, config)  # one metrics record, epoch 1: fits
    assert state["epoch"] == 1 and seen == [8 * 2**30]  # checkpoints up to 8 GiB
    monkeypatch.setattr(checkpoint.atomic, "open_regular", real_open)
    assert checkpoint.load_checkpoint(path)["epoch"] == 1  # no config: not compared with a run

    other = _config("vpt-deep")
    with pytest.raises(RunFileError, match="the checkpoint is of strategy 'linear'"):
        checkpoint.load_checkpoint(path, other)
    (run / "metrics.jsonl").write_text("")
    with pytest.raises(RunFileError, match="0 epoch record"):
        checkpoint.load_checkpoint(path, config)

    bad = tmp_path / "bad.pt"
    for content, message in (
        ([1, 2], "not an lspt checkpoint of version 1"),
        ({"version": 2}, "not an lspt checkpoint of version 1"),
        ({"version": 1, "epoch": 1}, "epoch|position|trainable|missing"),
        ({"version": 1, "x": Evil()}, r"unreadable checkpoint \(UnpicklingError"),
    ):
        torch.save(content, bad)
        with pytest.raises((TrainingError, RunFileError), match=message):
            checkpoint.load_checkpoint(bad)
    monkeypatch.setattr(torch, "load", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("a\n  b " + "x" * 500)))
    with pytest.raises(TrainingError) as info:
        checkpoint.load_checkpoint(bad)
    assert str(info.value).endswith("(RuntimeError: a b " + "x" * 296 + ")")  # whitespace folded, 300 chars


def test_checkpoint_larger_than_8_gib_is_refused(tmp_path):
    big = tmp_path / "big.pt"
    with open(big, "wb") as f:  # sparse
        f.truncate(8 * 2**30 + 1)
    with pytest.raises(RunFileError, match="too large"):
        checkpoint.load_checkpoint(big)


def test_restore_into_loads_tensors_and_optimizer_or_says_what_does_not_fit(tmp_path, monkeypatch):
    class Model:
        def __init__(self, value):
            self.w = torch.nn.Parameter(torch.full((2,), value))

        def trainable_state_dict(self):
            return {"head.weight": self.w.data}

        def load_trainable_state_dict(self, tensors):
            self.w.data.copy_(tensors["head.weight"])

    source = Model(1.0)
    opt = torch.optim.SGD([source.w], lr=0.1, momentum=0.9)
    source.w.grad = torch.ones(2)
    opt.step()
    state = {"trainable": {"head.weight": source.w.data.clone()}, "optimizer": opt.state_dict()}
    target = Model(0.0)
    target_opt = torch.optim.SGD([target.w], lr=0.5, momentum=0.9)
    checkpoint.restore_into(state, tmp_path / "c.pt", target, target_opt)
    assert torch.equal(target.w.data, torch.full((2,), 0.9))  # 1 - 0.1 * 1
    assert target_opt.param_groups[0]["lr"] == 0.1
    assert torch.equal(target_opt.state[target.w]["momentum_buffer"], torch.ones(2))

    wrong = {"trainable": {"head.weight": torch.zeros(3)}, "optimizer": opt.state_dict()}
    with pytest.raises(RunFileError, match=r"c.pt: tensor 'head.weight' has shape \(3,\), the model expects \(2,\)"):
        checkpoint.restore_into(wrong, tmp_path / "c.pt", Model(0.0), target_opt)
    two_groups = torch.optim.SGD([{"params": [torch.nn.Parameter(torch.zeros(1))]},
                                 {"params": [torch.nn.Parameter(torch.zeros(1))]}], lr=0.1).state_dict()
    with pytest.raises(RunFileError, match="optimizer state does not fit the run"):
        checkpoint.restore_into({**state, "optimizer": two_groups}, tmp_path / "c.pt", Model(0.0), target_opt)
    monkeypatch.setattr(target_opt, "load_state_dict", lambda s: (_ for _ in ()).throw(ValueError("y" * 500)))
    with pytest.raises(RunFileError) as info:
        checkpoint.restore_into(state, tmp_path / "c.pt", Model(0.0), target_opt)
    assert str(info.value).endswith("(" + "y" * 200 + ")")


# -- restore ----------------------------------------------------------------------------------------
def _bundle(tmp_path, backbone, stem="b", strategy=None, classes=("a", "b", "c"), tensors=None, **backbone_meta):
    torch.manual_seed(1)
    model = PromptedViT(backbone, build_strategy("vpt-deep", backbone.dims, {"num_prompts": 2}), 3)
    info = {"name": backbone.name, "fingerprint": backbone.fingerprint, **backbone_meta}
    md = bundle.make_metadata(backbone={k: v for k, v in info.items() if v is not None},
                              strategy=strategy if strategy is not None else {"name": "vpt-deep", "config": {"num_prompts": 2}},
                              task={"name": "t", "classes": list(classes)}, data_config={})
    path = tmp_path / f"{stem}.safetensors"
    state = tensors if tensors is not None else model.trainable_state_dict()
    bundle.save(path, state, md)
    return path, state


def test_model_from_bundle_rebuilds_the_saved_model(tmp_path, tiny_backbone):
    from lspt_cli.engine.restore import model_from_bundle

    path, state = _bundle(tmp_path, tiny_backbone)
    model, header = model_from_bundle(path, backbone=tiny_backbone)
    assert not model.training and header.num_classes == 3 and model.readout == tiny_backbone.readout
    assert model.strategy.num_prompts == 2  # the recorded config, not the class default
    assert all(torch.equal(model.trainable_state_dict()[k], v) for k, v in state.items())
    with_readout, _ = _bundle(tmp_path, tiny_backbone, "r", readout="mean-ln")
    assert model_from_bundle(with_readout, backbone=tiny_backbone)[0].readout == "mean-ln"


def test_model_from_bundle_refuses_what_does_not_fit(tmp_path, tiny_backbone, tiny_backbone_mean):
    from lspt_cli.engine.restore import model_from_bundle

    checks = [
        (_bundle(tmp_path, tiny_backbone, "noname", name=None)[0], tiny_backbone, "names no backbone"),
        (_bundle(tmp_path, tiny_backbone, "nostrat", strategy={"config": {}})[0], tiny_backbone, "lacks the strategy"),
        (_bundle(tmp_path, tiny_backbone, "noclass", classes=())[0], tiny_backbone, "lacks the strategy or the class"),
        (_bundle(tmp_path, tiny_backbone, "readout", readout="attention-pool")[0], tiny_backbone, "'attention-pool'"),
        (_bundle(tmp_path, tiny_backbone, "shape", tensors={"head.weight": torch.zeros(3, 5)})[0], tiny_backbone,
         "does not fit the model"),
        (_bundle(tmp_path, tiny_backbone, "other")[0], tiny_backbone_mean, "trained on backbone 'tiny-test', not 'tiny-test-mean'"),
    ]
    for path, backbone, message in checks:
        with pytest.raises(BundleError, match=message):
            model_from_bundle(path, backbone=backbone)
    changed = _bundle(tmp_path, tiny_backbone, "fp", fingerprint="sha256:" + "0" * 64)[0]
    with pytest.raises(BundleError, match="fingerprint"):
        model_from_bundle(changed, backbone=tiny_backbone)
    assert model_from_bundle(changed, backbone=tiny_backbone, allow_backbone_mismatch=True)[1].num_classes == 3


def test_model_from_bundle_loads_the_recorded_weights_unless_told_otherwise(tmp_path, tiny_backbone, monkeypatch):
    import lspt_cli.prompted as prompted
    from lspt_cli.engine.restore import model_from_bundle

    loads = []
    monkeypatch.setattr(prompted, "load_backbone", lambda name, weights, host=None, **options: loads.append((name, weights)) or tiny_backbone)
    recorded = tmp_path / "w.safetensors"
    recorded.write_bytes(b"weights")
    path = _bundle(tmp_path, tiny_backbone, weights=str(recorded))[0]
    model_from_bundle(path)
    model_from_bundle(path, weights="mine.safetensors")
    gone = _bundle(tmp_path, tiny_backbone, "gone", weights=str(tmp_path / "deleted.safetensors"))[0]
    model_from_bundle(gone)
    assert loads == [("tiny-test", str(recorded)), ("tiny-test", "mine.safetensors"), ("tiny-test", None)]
