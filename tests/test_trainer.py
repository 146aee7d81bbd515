"""The training loop pinned to independent expectations, not to its own output.

Each test states the behaviour it guards and computes the expected value by hand (or with plain
torch), so a broken trainer fails here: one SGD step moves every tensor by -lr * (clipped g +
wd * p on the decayed tensors only); selection = argmax of val (ties: the earlier epoch), and the
bundle and the test numbers come from that state; `--final` sees exactly train+val; the seed
drives the order; training batches are augmented and eval batches are not; prompt dropout acts in
training only; two DDP ranks see disjoint halves of the epoch and end equal; mean per-class
accuracy on a hand-made confusion; `predict` agrees with `eval` image by image.

Runs use a mini digits task (48 train / 24 val / 24 test images) and vit-tiny: each is ~1 s.
"""

from __future__ import annotations

import collections
import json
import math
import os
import socket
import subprocess
import sys

import pytest
from registered import PROMPTED, STRATEGIES
from conftest import mini_digits
import torch
import torch.nn.functional as F

from lspt_cli.engine import train as train_mod
from lspt_cli.engine.evaluate import evaluate
from lspt_cli.engine.optimizer import param_groups
from lspt_cli.engine.train import Trainer
from lspt_cli.prompted import PromptedViT, build_strategy



# -- helpers ----------------------------------------------------------------------------------------


def make_config(task: str = "mini", strategy: str = "vpt-deep", *, final: bool = False, options=None, **train):
    from lspt_cli.plugins import get_host
    from lspt_cli.recipes import resolve_config

    # protocol lspt: per-step schedule (step 0 trains at the full lr with no warm-up), custom tasks'
    # finals on train+val; every knob a test's arithmetic depends on is set here explicitly
    knobs = dict(protocol="lspt", schedule="per-step", lr_scaling="none", epochs=1, warmup_epochs=0, batch_size=16, optimizer="sgd", lr=0.1, momentum=0.9,
                 weight_decay=0.0, grad_clip=0.0, amp="off", device="cpu", threads=1, seed=0, num_workers=0)
    knobs.update(train)
    return resolve_config(backbone="vit-tiny", strategy=strategy, task=task, benchmark="custom",
                          registered_recipes=get_host().recipes, train_overrides=knobs,
                          strategy_overrides={"num_prompts": 2, **(options or {})} if strategy != "linear" else {},
                          final=final)


def clone_state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.trainable_state_dict().items()}


def same_state(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def bundle_tensors(run_dir) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(run_dir / "bundle.safetensors"))


class Spy:
    """Records what the trainer's training loaders yield: order, batches, and the model's mode."""

    def __init__(self, monkeypatch):
        self.orders: list[tuple[int, list[int]]] = []
        self.batches: list[tuple[int, torch.Tensor, torch.Tensor]] = []
        self.training: list[bool] = []
        self.initial: dict[str, torch.Tensor] = {}
        original_loader, original_setup = Trainer.loader, Trainer.setup
        spy = self

        def setup(trainer):
            original_setup(trainer)
            spy.initial = clone_state(trainer.model)

        def loader(trainer, split, train, order=None, epoch=0):
            inner = original_loader(trainer, split, train, order, epoch)
            if not train:
                return inner
            spy.orders.append((epoch, list(order)))

            def batches():
                for images, labels in inner:
                    spy.batches.append((epoch, images.clone(), labels.clone()))
                    spy.training.append(trainer.model.training and trainer.model.strategy.training)
                    yield images, labels

            return batches()

        monkeypatch.setattr(Trainer, "setup", setup)
        monkeypatch.setattr(Trainer, "loader", loader)

    def seen(self, epoch: int) -> int:
        return sum(labels.numel() for e, _, labels in self.batches if e == epoch)


def decays(name: str) -> bool:
    """The documented rule, by name: prompts and weight matrices decay; biases, gates, tau do not."""
    leaf = name.rsplit(".", 1)[-1]
    return leaf == "prompts" or leaf.startswith("weight")


# -- optimizer groups, one step, clipping ---------------------------------------------------------
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_param_groups_decay_prompts_and_matrices_only(tiny_backbone, strategy):
    options = {"num_prompts": 3} if strategy != "linear" else {}
    if strategy == "lspt":
        options["lstm_dim"] = 8
    model = PromptedViT(tiny_backbone, build_strategy(strategy, tiny_backbone.dims, options), 10)
    names = {id(p): n for n, p in model.named_parameters() if p.requires_grad}
    groups = param_groups(model, 0.05)
    grouped = [names[id(p)] for g in groups for p in g["params"]]
    assert sorted(grouped) == sorted(names.values())  # every trainable tensor once, never the backbone
    decayed = {names[id(p)] for g in groups if g["weight_decay"] == 0.05 for p in g["params"]}
    plain = {names[id(p)] for g in groups if g["weight_decay"] == 0.0 for p in g["params"]}
    assert decayed | plain == set(names.values())
    assert decayed == {n for n in names.values() if decays(n)}
    expected_plain = {"head.bias"} | {
        "vpt-shallow": set(), "vpt-deep": set(), "linear": set(),
        "gapt": {"strategy.gate_logits", "strategy.tau"},
        "lspt": {"strategy.gate_logits", "strategy.tau", "strategy.lstm.bias_ih", "strategy.lstm.bias_hh"},
        "spt-shallow": set(), "spt-deep": set(), "vfpt": set(), "vfpt-shallow": set(),
    }[strategy]
    assert plain == expected_plain


@pytest.mark.parametrize("clip", [0.0, 1e-3])
def test_one_sgd_step_moves_each_tensor_as_sgd_predicts(monkeypatch, tmp_path, clip):
    """16 images, batch 16: one step. Expected p1 = p0 - lr * (g * min(1, clip / |g|) + wd * p0 [decayed])."""
    mini_digits(n_train=16)
    lr, wd = 0.5, 0.05
    spy = Spy(monkeypatch)
    trainer = Trainer(make_config(strategy="gapt", lr=lr, weight_decay=wd, grad_clip=clip), tmp_path / "run")
    summary = trainer.run()
    assert summary["selected_epoch"] == 1 and len(spy.batches) == 1
    _, images, labels = spy.batches[0]
    model = trainer.model
    model.load_trainable_state_dict(spy.initial)
    model.train()
    logits = model(images)
    loss = F.cross_entropy(logits, labels)
    record = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    assert record["train_loss"] == pytest.approx(loss.item(), rel=1e-5)  # the loss of the one batch
    assert record["train_acc"] == pytest.approx(100.0 * (logits.argmax(1) == labels).float().mean().item())
    assert record["images_per_s"] == pytest.approx(16 / record["seconds"], rel=1e-6)
    assert summary["bundle"] == str(tmp_path / "run" / "bundle.safetensors")
    assert summary["bundle_bytes"] == (tmp_path / "run" / "bundle.safetensors").stat().st_size
    named = {n: p for n, p in model.named_parameters() if p.requires_grad}
    grads = dict(zip(named, torch.autograd.grad(loss, list(named.values()))))
    norm = torch.sqrt(sum(g.pow(2).sum() for g in grads.values()))
    scale = min(1.0, clip / (float(norm) + 1e-6)) if clip > 0 else 1.0
    if clip > 0:
        assert scale < 0.1  # the clip really bites
    after = bundle_tensors(tmp_path / "run")
    assert set(after) == set(named)
    for name, p0 in spy.initial.items():
        expected = p0 - lr * (grads[name] * scale + (wd * p0 if decays(name) else 0.0))
        assert torch.allclose(after[name], expected, atol=1e-6, rtol=1e-5), name
    moved = torch.sqrt(sum((after[n] - spy.initial[n]).pow(2).sum() for n in named if not decays(n)))
    assert moved > 0


def test_sgd_optimizer_follows_the_configured_lr_and_momentum(tiny_backbone):
    """make_optimizer: two plain SGD steps with momentum m on a known gradient (no decay)."""
    from types import SimpleNamespace

    from lspt_cli.engine.optimizer import make_optimizer

    model = PromptedViT(tiny_backbone, build_strategy("linear", tiny_backbone.dims), 3)
    opt = make_optimizer(model, SimpleNamespace(weight_decay=0.0, optimizer="sgd", lr=0.2, momentum=0.5))
    w0 = model.head.weight.detach().clone()
    for _ in range(2):
        opt.zero_grad()
        model.head.weight.grad = torch.ones_like(w0)
        model.head.bias.grad = torch.zeros(3)
        opt.step()
    # step 1: buf = g; step 2: buf = m * g + g  ->  w0 - lr * (1 + 1.5)
    assert torch.allclose(model.head.weight, w0 - 0.2 * 2.5)


# -- selection -----------------------------------------------------------------------------------
@pytest.mark.parametrize("vals,selected", [((50.0, 70.0, 70.0), 2), ((70.0, 50.0, 60.0), 1)])
def test_selection_is_argmax_val_earliest_tie_and_test_uses_that_state(monkeypatch, tmp_path, vals, selected):
    """Val top-1 is scripted per epoch; the states at each val and at the test evaluation are kept."""
    mini_digits(n_train=32)
    states: dict = {}
    scripted = iter(vals)
    original = Trainer._evaluate

    def scripted_evaluate(trainer, split):
        result = original(trainer, split)
        if split == "val":
            states[len(states) + 1] = clone_state(trainer.model)
            return dict(result, top1=next(scripted))
        states[split] = clone_state(trainer.model)
        states[split + "_result"] = result
        return result

    monkeypatch.setattr(Trainer, "_evaluate", scripted_evaluate)
    summary = Trainer(make_config(epochs=3), tmp_path / "run").run()
    assert not same_state(states[1], states[2]) and not same_state(states[2], states[3])  # it trains
    assert summary["selected_epoch"] == selected and summary["val_top1"] == max(vals)
    assert same_state(bundle_tensors(tmp_path / "run"), states[selected])
    assert same_state(states["test"], states[selected])  # test ran on the selected state
    assert summary["test_top1"] == states["test_result"]["top1"]
    records = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["best_val_acc"] for r in records] == [max(vals[: i + 1]) for i in range(3)]


# -- evaluation ----------------------------------------------------------------------------------
def test_mean_per_class_accuracy_on_a_hand_made_confusion():
    """4 classes: class 0 3/6 right, class 1 1/1, class 2 0/3, class 3 absent.
    top-1 4/10 = 40%; mean per class (50 + 100 + 0) / 3 = 50% (absent classes do not count)."""
    truth = [0, 0, 0, 0, 0, 0, 1, 2, 2, 2]
    guess = [0, 0, 0, 1, 2, 3, 1, 0, 1, 3]
    logits = 2.0 * F.one_hot(torch.tensor(guess), 4).float()
    labels = torch.tensor(truth)
    loader = [(logits[:4], labels[:4]), (logits[4:], labels[4:])]  # two batches: sums across them
    result = evaluate(torch.nn.Identity(), loader, torch.device("cpu"), 4)
    assert result["n"] == 10
    assert result["top1"] == pytest.approx(40.0)
    assert result["mean_per_class"] == pytest.approx(50.0)
    assert result["per_class"] == [50.0, 100.0, 0.0, None]
    right, wrong = -math.log(math.e**2 / (math.e**2 + 3)), -math.log(1 / (math.e**2 + 3))
    assert result["loss"] == pytest.approx((4 * right + 6 * wrong) / 10, rel=1e-6)
    # the progress callback sees every sample once; fp32 by default (bf16 would round these logits)
    seen = []
    linear = torch.nn.Linear(4, 4, bias=False)
    with torch.no_grad():
        linear.weight.copy_(torch.eye(4) * 1.0013)
    again = evaluate(linear, loader, torch.device("cpu"), 4, progress=seen.append)
    assert seen == [4, 6] and again["top1"] == pytest.approx(40.0)
    right, wrong = -math.log(math.exp(2.0026) / (math.exp(2.0026) + 3)), -math.log(1 / (math.exp(2.0026) + 3))
    assert again["loss"] == pytest.approx((4 * right + 6 * wrong) / 10, rel=1e-6)
    empty = evaluate(linear, [], torch.device("cpu"), 4)  # nothing to count: zeros, not NaN
    assert (empty["n"], empty["top1"], empty["mean_per_class"], empty["loss"]) == (0, 0.0, 0.0, 0.0)
    assert empty["per_class"] == [None] * 4
    third = evaluate(torch.nn.Identity(), [(logits[[0, 3, 4]], torch.tensor([0, 0, 0]))], torch.device("cpu"), 4)
    assert third["per_class"] == [33.3333, None, None, None]  # 1 of 3, as reported: 4 decimals


def test_evaluate_runs_the_model_in_eval_mode(tiny_backbone):
    """A model handed over in training mode (dropout 0.9 on its prompts) is evaluated without dropout."""
    torch.manual_seed(0)
    model = PromptedViT(tiny_backbone, build_strategy("vpt-shallow", tiny_backbone.dims, {"num_prompts": 4, "dropout": 0.9}), 3)
    with torch.no_grad():
        model.head.weight.normal_()
    images, labels = torch.randn(5, 3, 32, 32), torch.tensor([0, 1, 2, 0, 1])
    model.eval()
    with torch.no_grad():
        expected = F.cross_entropy(model(images), labels).item()
    for _ in range(2):
        model.train()
        result = evaluate(model, [(images, labels)], torch.device("cpu"), 3)
        assert result["loss"] == pytest.approx(expected, rel=1e-6)


# -- data seen by training -------------------------------------------------------------------------
def test_final_sees_exactly_train_plus_val_and_a_normal_run_train_only(monkeypatch, tmp_path):
    m = mini_digits(n_train=32, n_val=16)
    labels_of = {split: collections.Counter(y for _, y in m.splits[split]) for split in ("train", "trainval")}
    for final, split in ((True, "trainval"), (False, "train")):
        spy = Spy(monkeypatch)
        Trainer(make_config(final=final, epochs=2), tmp_path / f"run-{final}").run()
        for epoch in (0, 1):
            assert spy.seen(epoch) == len(m.splits[split])
            seen = collections.Counter(int(y) for e, _, ys in spy.batches if e == epoch for y in ys)
            assert seen == labels_of[split]
    assert len(m.splits["trainval"]) == 48


def test_seed_drives_the_data_order(monkeypatch, tmp_path):
    mini_digits(n_train=32, n_val=16)
    orders = {}
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        spy = Spy(monkeypatch)
        Trainer(make_config(final=True, epochs=2, seed=seed), tmp_path / name).run()
        orders[name] = [order for _, order in spy.orders]
    n = 48  # train + val: a final run
    assert all(sorted(order) == list(range(n)) for order in orders["a"] + orders["c"])
    assert orders["a"] == orders["b"]  # same seed, same order
    assert orders["a"][0] != orders["c"][0] and orders["a"][1] != orders["c"][1]  # the seed changes it
    assert orders["a"][0] != orders["a"][1]  # and so does the epoch


def test_training_batches_are_augmented_in_train_mode(monkeypatch, tmp_path):
    """The trainer's batches differ from the eval transform of the same images (random crop/flip),
    and from one epoch to the next; the model is in training mode for every batch."""
    from lspt_cli.data.loader import build_dataset
    from lspt_cli.data.manifest import load_manifest

    mini_digits(n_train=16)
    spy = Spy(monkeypatch)
    trainer = Trainer(make_config(final=False, epochs=2), tmp_path / "run")
    trainer.run()
    assert spy.training == [True, True]  # epoch 2 follows a val evaluation (eval mode)
    plain = build_dataset(load_manifest("mini"), "train", input_size=32, mean=trainer.mean, std=trainer.std, train=False)
    eval_images = {}
    for (epoch, order), (_, images, _) in zip(spy.orders, spy.batches):
        for i, x in zip(order, images):
            eval_images.setdefault(i, []).append(x)
    changed_by_aug = sum(not torch.equal(xs[0], plain[i][0]) for i, xs in eval_images.items())
    changed_by_epoch = sum(not torch.equal(xs[0], xs[1]) for xs in eval_images.values())
    assert changed_by_aug >= 8 and changed_by_epoch >= 8  # of 16 (a crop can repeat by chance)
    for i, xs in eval_images.items():  # the same pixels up to crop/flip: normalised like eval
        assert xs[0].shape == plain[i][0].shape == (3, 32, 32)


def test_eval_transform_is_deterministic_and_train_transform_random():
    from PIL import Image

    from lspt_cli.data.transforms import build_transform

    img = Image.fromarray((torch.rand(40, 48, 3) * 255).to(torch.uint8).numpy())
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    ev = build_transform("custom", 32, mean, std, train=False)
    a, b = ev(img), ev(img)
    assert torch.equal(a, b)
    # by hand: resize the short side to round(32 / 0.875) = 37, centre crop 32, scale, normalise
    from torchvision.transforms.v2 import functional as TF

    resized = TF.pil_to_tensor(TF.resize(img, 37, antialias=True))
    top, left = int(round((resized.shape[1] - 32) / 2.0)), int(round((resized.shape[2] - 32) / 2.0))
    crop = resized[:, top : top + 32, left : left + 32].float() / 255.0
    expected = (crop - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)
    assert torch.allclose(a, expected, atol=1e-6)
    tr = build_transform("custom", 32, mean, std, train=True)
    torch.manual_seed(0)
    outs = [tr(img) for _ in range(6)]
    assert any(not torch.equal(o, a) for o in outs) and any(not torch.equal(o, outs[0]) for o in outs[1:])


@pytest.mark.parametrize("strategy", PROMPTED)
def test_prompt_dropout_acts_in_training_only(tiny_backbone, strategy):
    torch.manual_seed(0)
    dropped = build_strategy(strategy, tiny_backbone.dims, {"num_prompts": 4, "dropout": 0.5})
    plain = build_strategy(strategy, tiny_backbone.dims, {"num_prompts": 4, "dropout": 0.0})
    plain.load_state_dict(dropped.state_dict())
    a, b = PromptedViT(tiny_backbone, dropped, 5), PromptedViT(tiny_backbone, plain, 5)
    b.head.load_state_dict(a.head.state_dict())
    with torch.no_grad():
        a.head.weight.normal_()
        b.head.weight.copy_(a.head.weight)
    images = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        b.train()
        reference = b(images)  # dropout 0: training mode changes nothing (the backbone stays in eval)
        a.eval()
        assert torch.allclose(a(images), reference, atol=1e-6) and torch.allclose(a(images), a(images))
        a.train()
        first, second = a(images), a(images)
    assert not torch.allclose(first, reference, atol=1e-4) and not torch.allclose(first, second, atol=1e-4)


@pytest.mark.parametrize("name", STRATEGIES)
def test_strategy_class_defaults_equal_the_registered_defaults(tiny_backbone, name):
    """A strategy built directly from its class is the one `lspt list strategies` documents."""
    from lspt_cli.plugins import resolve_factory
    from lspt_plugins.strategies import SPECS

    spec = next(s for s in SPECS if s.name == name)
    direct = resolve_factory(spec.factory)(tiny_backbone.dims)
    assert direct.config() == spec.defaults
    assert sum(p.numel() for p in direct.parameters()) == spec.count_params(tiny_backbone.dims)


def test_vpt_prompt_init_range_and_option_types(tiny_backbone):
    """VPT's init U(-v, v), v = sqrt(6 / (3 * 8 * 8 + 64)); a non-number option is a ConfigError."""
    from lspt_cli.errors import ConfigError
    from lspt_plugins.strategies.vpt import VPTDeep

    v = math.sqrt(6.0 / (3 * 8 * 8 + 64))
    prompts = VPTDeep(tiny_backbone.dims, num_prompts=50).prompts
    assert prompts.abs().max() <= v and prompts.min() < -0.9 * v and prompts.max() > 0.9 * v
    for bad in ("x", None, True):
        with pytest.raises(ConfigError, match="dropout must be a number"):
            VPTDeep(tiny_backbone.dims, dropout=bad)


@pytest.mark.parametrize("name", ["gapt", "lspt"])
def test_gated_strategies_refuse_a_backbone_without_blocks(tiny_backbone, name):
    import dataclasses

    from lspt_cli.errors import ConfigError

    with pytest.raises(ConfigError, match="depth must be an integer >= 1, got 0"):
        build_strategy(name, dataclasses.replace(tiny_backbone.dims, depth=0), {"num_prompts": 2})


# -- distributed ---------------------------------------------------------------------------------
DDP_CHILD = r"""
import json, os, sys
import torch
from lspt_cli.engine import train as engine
from lspt_cli.recipes import ResolvedConfig

out, run_dir = sys.argv[1], sys.argv[2]
config = ResolvedConfig.from_json(json.loads(open(os.path.join(out, "config.json")).read()))
orders, original = [], engine.Trainer.loader

def loader(self, split, train, order=None, epoch=0):
    if train:
        orders.append([epoch, list(order)])
    return original(self, split, train, order, epoch)

engine.Trainer.loader = loader
trainer = engine.Trainer(config, run_dir)
trainer.run()
state = {k: v.detach().clone() for k, v in trainer.model.trainable_state_dict().items()}
torch.save({"orders": orders, "state": state}, os.path.join(out, "rank%s.pt" % os.environ["RANK"]))
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_ddp_ranks_see_disjoint_halves_and_end_equal(tmp_path):
    from lspt_cli.engine.rng import epoch_order

    mini_digits(n_train=32, n_val=16)
    config = make_config(final=True, epochs=2, batch_size=8, lr=0.2)
    (tmp_path / "config.json").write_text(json.dumps(config.to_json()))
    (tmp_path / "child.py").write_text(DDP_CHILD)
    env = dict(os.environ, OMP_NUM_THREADS="1", LSPT_LOAD_PLUGINS="")
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}",
         str(tmp_path / "child.py"), str(tmp_path), str(tmp_path / "run")],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    n = 48
    for epoch in (0, 1):
        shards = [dict(rank["orders"])[epoch] for rank in ranks]
        assert len(shards[0]) == len(shards[1]) == n // 2
        assert not set(shards[0]) & set(shards[1])  # disjoint
        assert sorted(shards[0] + shards[1]) == list(range(n))  # together: the whole epoch
        assert set(shards[0]) | set(shards[1]) == set(epoch_order(n, config.train.seed, epoch))
    a, b = ranks[0]["state"], ranks[1]["state"]
    assert same_state(a, b)  # gradients were averaged across the ranks
    assert same_state(a, bundle_tensors(tmp_path / "run"))


# -- predict agrees with eval --------------------------------------------------------------------
@pytest.mark.slow
def test_predict_agrees_with_eval_image_by_image(cli, tmp_path):
    """Every test image: predict's top-1 label and probability equal the eval loader's softmax
    (eval transform: resize + centre crop + the backbone's normalisation), and accuracy matches."""

    from lspt_cli.cli.predict import predict_images
    from lspt_cli.data.loader import build_loader
    from lspt_cli.data.manifest import load_manifest
    from lspt_cli.engine.restore import model_from_bundle

    from conftest import colour_image_folder

    root = colour_image_folder(tmp_path / "photos", ("red", "green", "blue"), {"train": 8, "test": 4}, size=(30, 44), seed=1)
    assert cli("prepare-data", "imagefolder", "--root", str(root), "--name", "rgb").exit_code == 0
    result = cli("tune", "--backbone", "vit-tiny", "--task", "rgb", "--strategy", "vpt-deep", "--epochs", "2",
                 "--warmup-epochs", "0", "--batch-size", "8", "--set", "num_prompts=2", "--out", str(tmp_path / "run"), "--json")
    assert result.exit_code == 0, result.output
    bundle_path = tmp_path / "run" / "bundle.safetensors"
    manifest = load_manifest("rgb")
    keys = [k for k, _ in manifest.splits["test"]]
    images = [os.path.join(manifest.root, k) for k in keys]
    preds = predict_images([bundle_path], images, top_k=3, device="cpu")[str(bundle_path)]
    model, _ = model_from_bundle(bundle_path)
    cfg = model.backbone.data_config
    assert tuple(cfg["mean"]) != (0.0, 0.0, 0.0) or tuple(cfg["std"]) != (1.0, 1.0, 1.0)  # normalising matters
    loader = build_loader(manifest, "test", input_size=32, mean=cfg["mean"], std=cfg["std"], train=False, batch_size=64)
    batch, labels = next(iter(loader))
    with torch.no_grad():
        probs = model(batch).softmax(dim=1)
    for path, p in zip(images, probs):
        top = preds[path]
        assert [t["index"] for t in top] == p.argsort(descending=True)[:3].tolist()
        assert [t["probability"] for t in top] == pytest.approx(p.sort(descending=True).values[:3].tolist(), abs=2e-6)
    evaluated = json.loads(cli("eval", str(bundle_path), "--json").stdout)
    hits = sum(preds[path][0]["index"] == int(y) for path, y in zip(images, labels))
    assert evaluated["n"] == len(images) == 12 and evaluated["top1"] == pytest.approx(100.0 * hits / 12)
