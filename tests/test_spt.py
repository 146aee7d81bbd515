"""SPT (plugins/strategies/spt.py) and the data-aware initialisation hook it uses
(`PromptStrategy.init_from_data`, lspt_cli/engine/data_init.py): the hook runs once, before the
optimizer, on eval-transform images; it is deterministic for a seed, never rerun on resume, computed
on rank 0 and broadcast, and `--compile`'s warm-up leaves it alone. The initial prompts equal an
independent re-implementation of the official code's `prompt_generator`
(WangYZ1608/Self-Prompt-Tuning@ce0754f train_MAE.py:99-225, utils.py:123-185) in fp64."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import interrupt_after, make_tiny_vit, mini_digits

from lspt_cli.errors import ConfigError


def make_config(strategy="spt-deep", options=None, **train):
    from lspt_cli.plugins import get_host
    from lspt_cli.recipes import resolve_config

    knobs = dict(protocol="lspt", schedule="per-step", lr_scaling="none", epochs=2, warmup_epochs=0, batch_size=16,
                 optimizer="sgd", lr=0.1, momentum=0.9, weight_decay=0.0, grad_clip=0.0, amp="off", device="cpu",
                 threads=1, seed=0, num_workers=0)
    knobs.update(train)
    return resolve_config(backbone="vit-tiny", strategy=strategy, task="mini", benchmark="custom",
                          registered_recipes=get_host().recipes, train_overrides=knobs,
                          strategy_overrides={"num_prompts": 3, **({"init_images": 20} if strategy.startswith("spt") else {}),
                                              **(options or {})})


def trainer_for(tmp_path, name="run", **kwargs):
    from lspt_cli.engine.train import Trainer
    from lspt_cli.plugins import get_host

    return Trainer(make_config(**kwargs), tmp_path / name, host=get_host())


def bundle(run_dir) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(run_dir / "bundle.safetensors"))


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture
def calls(monkeypatch):
    """Every init_from_data call of the SPT strategies: (strategy, images, optimizer built yet?)."""
    from lspt_plugins.strategies import spt

    seen = []
    for cls in (spt.SPTShallow, spt.SPTDeep):
        original = cls.init_from_data

        def spy(self, backbone, images, original=original):
            seen.append((self, images.clone(), backbone.training, torch.is_grad_enabled()))
            return original(self, backbone, images)

        monkeypatch.setattr(cls, "init_from_data", spy)
    return seen


# -- the hook ---------------------------------------------------------------------------------------
def test_hook_runs_once_before_the_optimizer_on_eval_images(tmp_path, calls, monkeypatch):
    from lspt_cli.engine import train
    from lspt_cli.engine.data_init import init_indices

    mini_digits()
    built = []
    original = train.make_optimizer
    monkeypatch.setattr(train, "make_optimizer", lambda model, cfg: (built.append(len(calls)), original(model, cfg))[1])
    trainer = trainer_for(tmp_path)
    summary = trainer.run()
    assert len(calls) == 1 and built == [1]  # once, and before the optimizer was built
    strategy, images, backbone_training, grad = calls[0]
    assert strategy is trainer.model.strategy and not backbone_training and not grad
    # init_images training images, drawn with replacement by the seed, through the eval transform
    order = init_indices(48, 20, 0)
    expected = torch.cat([x for x, _ in trainer.loader("train", train=False, order=order)])
    assert images.shape == (20, 3, 32, 32) and torch.equal(images, expected)
    assert summary["data_init_images"] == 20 and 0 <= summary["data_init_seconds"] < 60
    assert "data_init_images" not in trainer_for(tmp_path, "vpt", strategy="vpt-deep").run()  # no hook: nothing recorded


def test_the_init_is_deterministic_for_a_seed(tmp_path):
    mini_digits()
    prompts = []
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        trainer = trainer_for(tmp_path, name, seed=seed, options={"init": "kmeans"})
        trainer.setup()
        prompts.append(trainer.model.strategy.prompts.detach().clone())
    assert torch.equal(prompts[0], prompts[1]) and not torch.equal(prompts[0], prompts[2])
    # the prompts are the init's, not VPT's uniform placeholder: each is a k-means centre of real tokens
    assert prompts[0].abs().max() > 0.2


def test_a_resumed_run_does_not_rerun_it_and_ends_in_the_same_bundle(tmp_path, calls, monkeypatch):
    from lspt_cli.engine.train import Interrupted

    mini_digits()
    trainer_for(tmp_path, "whole").run()
    assert len(calls) == 1
    with pytest.MonkeyPatch.context() as mp:
        interrupt_after(mp, 1, 1)  # Ctrl-C after one batch of the second epoch
        with pytest.raises(Interrupted):
            trainer_for(tmp_path, "cut").run()
    assert len(calls) == 2
    trainer_for(tmp_path, "cut").run(resume=True)
    assert len(calls) == 2  # the resume restored the initialised tensors from the checkpoint
    assert same(bundle(tmp_path / "cut"), bundle(tmp_path / "whole"))


def test_a_resume_without_a_checkpoint_starts_over_with_the_init(tmp_path, calls):
    mini_digits()
    trainer = trainer_for(tmp_path, "fresh")
    (tmp_path / "fresh").mkdir()
    trainer.run(resume=True)
    assert len(calls) == 1


@pytest.mark.slow
def test_the_same_state_and_bundle_with_and_without_compile(tmp_path, calls, monkeypatch):
    """--compile's warm-up comes after the init and leaves no trace: the state training starts from
    is bit-identical with and without it; the bundle after an epoch is identical where compiling is
    unavailable (the eager fallback) and equal to 1e-4 where inductor compiles (its fused kernels
    round differently from eager's: docs/performance.md's bound for --compile)."""
    mini_digits()
    states = {}
    for name, compile in (("eager", False), ("compiled", True)):
        trainer = trainer_for(tmp_path, name, epochs=1, compile=compile)
        trainer.setup()
        states[name] = {k: v.detach().clone() for k, v in trainer.model.trainable_state_dict().items()}
        compiled = trainer.speed.get("compiled", False)
    assert len(calls) == 2 and same(states["eager"], states["compiled"])
    trainer_for(tmp_path, "eager", epochs=1).run()
    trainer_for(tmp_path, "compiled", epochs=1, compile=True).run()
    eager, other = bundle(tmp_path / "eager"), bundle(tmp_path / "compiled")
    assert eager.keys() == other.keys()
    if compiled:
        assert all(torch.allclose(eager[k], other[k], rtol=0, atol=1e-4) for k in eager)
    else:
        assert same(eager, other)

    def unavailable(*args, **kwargs):
        raise RuntimeError("no C++ compiler")

    monkeypatch.setattr(torch, "compile", unavailable)
    summary = trainer_for(tmp_path, "fallback", epochs=1, compile=True).run()
    assert summary["compiled"] is False and same(bundle(tmp_path / "fallback"), eager)


def test_the_compile_warm_up_restores_the_state(tiny_backbone, monkeypatch):
    """compile_forward runs the warm-up in `preserved_state`: a strategy that changes a tensor, a
    buffer or a flag in a training forward (a lazy init, a running statistic) is put back, when the
    warm-up succeeds and when it fails (torch.compile unavailable)."""
    from lspt_cli.engine import accel
    from lspt_cli.prompted import PromptedViT, PromptStrategy

    class Lazy(PromptStrategy):
        def __init__(self, dims):
            super().__init__(dims)
            self.value = torch.nn.Parameter(torch.zeros(dims.embed_dim))
            self.register_buffer("seen", torch.zeros(()))
            self.ready = False

        def start(self, x):
            if self.training and not self.ready:
                with torch.no_grad():
                    self.value.copy_(x.mean(dim=(0, 1)))  # the all-zeros batch's tokens
                self.ready = True
            self.seen += 1
            return {}

        def before_block(self, index, x, state):
            return x + self.value if index == 0 else x

    model = PromptedViT(tiny_backbone, Lazy(tiny_backbone.dims), 3)
    before = {k: v.clone() for k, v in model.trainable_state_dict().items()}

    def warm_up(forward, fail=False):
        model.train()
        model(torch.zeros(2, 3, 32, 32)).sum().backward()
        if fail:
            raise RuntimeError("no C++ compiler")

    monkeypatch.setattr(torch, "compile", lambda m, **kw: m)  # "compiles" instantly, whatever this machine has
    for fail in (False, True):
        forward, seconds = accel.compile_forward(model, lambda f: warm_up(f, fail), lambda message: None)
        assert (seconds == 0.0) is fail
        assert same(model.trainable_state_dict(), before) and model.strategy.ready is False
        assert model.strategy.seen.item() == 0


def test_rank_0_computes_and_the_others_receive(tmp_path, calls, monkeypatch):
    """Under torchrun: a 1-process gloo group stands in for the collectives. Rank 0 runs the hook and
    broadcasts every state_dict tensor of the strategy; rank 1 never runs it and receives them."""
    import torch.distributed as dist

    from lspt_cli.engine.distributed import DistContext

    mini_digits()
    reference = trainer_for(tmp_path, "single")
    reference.setup()
    broadcast = []
    monkeypatch.setattr(dist, "broadcast", lambda t, src: broadcast.append((t.data_ptr(), src)))
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        for rank in (0, 1):
            trainer = trainer_for(tmp_path, f"rank{rank}", batch_size=32)
            trainer.dist = DistContext(world_size=2, rank=rank)
            broadcast.clear()
            trainer.setup()
            strategy = trainer.model.strategy
            assert (strategy.prompts.data_ptr(), 0) in broadcast
            if rank == 0:
                assert torch.equal(strategy.prompts, reference.model.strategy.prompts)
    finally:
        dist.destroy_process_group()
    assert len(calls) == 2  # the single-process run and rank 0; never rank 1


def test_options_are_checked():
    from lspt_cli.backbone_dims import BackboneDims
    from lspt_plugins.strategies.spt import SPTDeep, SPTShallow

    dims = BackboneDims(embed_dim=64, depth=4, num_heads=4, patch_size=8, num_prefix_tokens=1)
    for cls in (SPTShallow, SPTDeep):
        for bad in ({"init": "median"}, {"init_images": 0}, {"kmeans_iters": -1}, {"init": "max_pooling", "num_prompts": 1}):
            with pytest.raises(ConfigError):
                cls(dims, **bad)
    assert SPTShallow(dims, num_prompts=0).data_init_images == 0  # no prompts: no init to run


# -- equal to the official code ---------------------------------------------------------------------
def official_prompts(vit, images, num_prompts, deep, sample_type):
    """train_MAE.py:112-222 (`prompt_generator` after its image draw), rewritten on a timm ViT:
    the RepCatcher of utils.py:149-185 as forward hooks (rep0 = patch_embed output, rep_i = blocks[i-1]
    output without the CLS token); `torch.rand` + argsort picks; pooling windows as written there."""
    depth = len(vit.blocks)
    vit.eval()
    if not deep:
        with torch.no_grad():
            x = vit.patch_embed(images)
        x_ = torch.reshape(x, shape=(-1, x.shape[-1]))
        L, D = x_.shape
        ids_keep = torch.argsort(torch.rand(L), dim=0)[:num_prompts]
        return torch.gather(x_, dim=0, index=ids_keep.unsqueeze(-1).repeat(1, D)).unsqueeze(0)
    features = {}
    hooks = [vit.patch_embed.register_forward_hook(lambda m, i, o: features.__setitem__(0, o))]
    for i in range(1, depth):
        hooks.append(vit.blocks[i - 1].register_forward_hook(lambda m, inp, o, i=i: features.__setitem__(i, o[:, 1:, :])))
    with torch.no_grad():
        vit(images)
    for h in hooks:
        h.remove()
    x = [features[i] for i in range(depth)]
    prompt = []
    for i in range(depth):
        if sample_type == "random":
            x_ = torch.reshape(x[i], shape=(-1, x[i].shape[-1]))
        else:
            pro = []
            B, L, D = x[i].shape
            window_size = L // (num_prompts - 1)
            remain_size = L % window_size
            pool = (lambda t: t.mean(dim=1)) if sample_type == "mean_pooling" else (lambda t: torch.max(t, dim=1).values)
            for p_i in range(num_prompts - 1):
                pro.append(pool(x[i][:, p_i * window_size: (p_i + 1) * window_size, :]).numpy())
            pro.append(pool(x[i][:, -remain_size:, :]).numpy())
            x_ = torch.reshape(torch.as_tensor(np.array(pro)), shape=(-1, D))
        L, D = x_.shape
        ids_keep = torch.argsort(torch.rand(L), dim=0)[:num_prompts]
        prompt.append(torch.gather(x_, dim=0, index=ids_keep.unsqueeze(-1).repeat(1, D)).numpy())
    return torch.as_tensor(np.array(prompt))


def reference_kmeans(tokens: np.ndarray, k: int, iters: int, init_ids: np.ndarray) -> np.ndarray:
    """Lloyd's k-means in numpy (the official centres were computed outside its repository)."""
    centres = tokens[init_ids].copy()
    for _ in range(iters):
        d = ((tokens[:, None, :] - centres[None, :, :]) ** 2).sum(-1)
        assign = d.argmin(1)
        for j in range(k):
            if (assign == j).any():
                centres[j] = tokens[assign == j].mean(0)
    return centres


@pytest.mark.parametrize("deep, init, num_prompts", [
    (False, "random", 5), (True, "random", 3), (True, "mean_pooling", 4), (True, "max_pooling", 4),
    (True, "mean_pooling", 5),  # 16 patches, 4 windows of 4: no remainder, the last window pools all 16 (x[:, -0:])
])
def test_initial_prompts_equal_the_official_code(deep, init, num_prompts):
    from lspt_cli.backbone import FrozenBackbone
    from lspt_plugins.strategies.spt import SPTDeep, SPTShallow

    vit = make_tiny_vit().double()
    backbone = FrozenBackbone(vit, name="tiny-test", readout="cls")
    images = torch.randn(12, 3, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    strategy = (SPTDeep if deep else SPTShallow)(backbone.dims, num_prompts=num_prompts, init=init).double()
    torch.manual_seed(7)
    with torch.no_grad():
        strategy.init_from_data(backbone, images)
    torch.manual_seed(7)
    official = official_prompts(vit, images, num_prompts, deep, init)
    ours = strategy.prompts.detach() if deep else strategy.prompts.detach().unsqueeze(0)
    assert ours.shape == official.shape and ours.dtype == official.dtype == torch.float64
    assert torch.allclose(ours, official, rtol=0, atol=1e-10)


@pytest.mark.parametrize("deep", [False, True])
def test_kmeans_prototypes_equal_a_numpy_lloyd(deep):
    from lspt_cli.backbone import FrozenBackbone
    from lspt_plugins.strategies.spt import SPTDeep, SPTShallow

    vit = make_tiny_vit().double()
    backbone = FrozenBackbone(vit, name="tiny-test", readout="cls")
    images = torch.randn(6, 3, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    strategy = (SPTDeep if deep else SPTShallow)(backbone.dims, num_prompts=4, init="kmeans", kmeans_iters=8).double()
    torch.manual_seed(11)
    with torch.no_grad():
        strategy.init_from_data(backbone, images)
    # the same tokens (block inputs without the prefix; patch embeddings for set 0), 96 <= KMEANS_TOKENS of them
    with torch.no_grad():
        reps = [vit.patch_embed(images)]
        x = vit.norm_pre(vit._pos_embed(vit.patch_embed(images)))
        for block in list(vit.blocks)[: (4 if deep else 1) - 1]:
            x = block(x)
            reps.append(x[:, 1:])
    torch.manual_seed(11)
    expected = []
    for rep in reps:
        tokens = rep.reshape(-1, 64).numpy()
        init_ids = torch.argsort(torch.rand(tokens.shape[0]))[:4].numpy()
        expected.append(reference_kmeans(tokens, 4, 8, init_ids))
    ours = strategy.prompts.detach().numpy().reshape(len(reps), 4, 64)
    assert np.allclose(ours, np.stack(expected), rtol=0, atol=1e-10)


# -- SPT's initialisation for the gated methods: --set init=... ---------------------------------------
@pytest.mark.parametrize("name", ["gapt", "lspt"])
def test_gapt_and_lspt_can_start_from_spt_prototypes(tiny_backbone, name):
    from lspt_cli.prompted import build_strategy

    assert build_strategy(name, tiny_backbone.dims, {"num_prompts": 4}).data_init_images == 0  # "uniform": the papers'
    images = torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    for init in ("random", "mean_pooling", "max_pooling", "kmeans"):
        gated = build_strategy(name, tiny_backbone.dims, {"num_prompts": 4, "init": init, "init_images": 6})
        spt = build_strategy("spt-shallow", tiny_backbone.dims, {"num_prompts": 4, "init": init, "init_images": 6})
        assert gated.data_init_images == 6 and gated.config()["init"] == init
        for strategy in (gated, spt):
            torch.manual_seed(9)
            with torch.no_grad():
                strategy.init_from_data(tiny_backbone, images)
        assert torch.equal(gated.prompts, spt.prompts)  # SPT-shallow's prototypes, the same draws
    with pytest.raises(ConfigError, match="init"):
        build_strategy(name, tiny_backbone.dims, {"init": "median"})


def test_a_gapt_run_with_spt_init_runs_the_hook(tmp_path):
    mini_digits()
    summary = trainer_for(tmp_path, strategy="gapt", epochs=1, options={"init": "kmeans", "init_images": 12}).run()
    assert summary["data_init_images"] == 12


# -- lspt plugins check: the hook ---------------------------------------------------------------------
def _init_plugin(name: str, kind: str):
    """A strategy whose data-aware init is wrong in one way: `unseeded` draws from Python's random,
    `lazy` keeps "initialised" in a Python attribute and initialises again in its first forward."""
    import random

    from torch import nn

    from lspt_cli import hookimpl
    from lspt_cli.prompted import PromptStrategy
    from lspt_cli.specs import StrategySpec

    class Broken(PromptStrategy):
        data_init_images = 4

        def __init__(self, dims):
            super().__init__(dims)
            self.num_prompts = 2
            self.prompts = nn.Parameter(torch.zeros(2, dims.embed_dim))
            self.ready = False

        def init_from_data(self, backbone, images):
            tokens = backbone.model.patch_embed(images).reshape(-1, self.dims.embed_dim)
            scale = random.uniform(1.0, 2.0) if kind == "unseeded" else 1.0
            self.prompts.copy_(tokens[:2] * scale)
            self.ready = True

        def start(self, x):
            if kind == "lazy" and not self.ready:  # a resumed instance "initialises" from its first batch
                with torch.no_grad():
                    self.prompts.copy_(x[0, 1:3])
                self.ready = True
            return {}

        def before_block(self, index, x, state):
            return self.insert_prompts(x, self.prompts.expand(x.shape[0], -1, -1)) if index == 0 else x

    class Plugin:
        @hookimpl
        def lspt_register_strategies(self, register):
            register(StrategySpec(name=name, description=kind, factory=lambda dims, **cfg: Broken(dims), defaults={}))

    return Plugin()


@pytest.mark.parametrize("name", ["spt-shallow", "spt-deep", "gapt", "vpt-deep"])
def test_plugins_check_runs_the_hook_of_the_builtins(name):
    from lspt_cli.testing import run_check

    report = run_check(name)
    assert report.ok, "\n".join(report.lines())
    result = report.result("data-aware init")
    assert result.status == "ok"
    assert ("not rerun after a resume" in result.message) is name.startswith("spt-")


@pytest.mark.parametrize("kind", ["unseeded", "lazy"])
def test_plugins_check_fails_a_wrong_data_init(kind):
    from lspt_cli.testing import register_plugin, run_check

    with register_plugin(_init_plugin(f"init-{kind}", kind)):
        report = run_check(f"init-{kind}")
    assert "data-aware init" in report.failed, "\n".join(report.lines())
    message = report.result("data-aware init").message
    assert ("differ" in message) if kind == "unseeded" else ("initialises again" in message)
