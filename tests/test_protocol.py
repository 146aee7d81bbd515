"""The `protocol` switch (paper | lspt) and the paper-exact training items of docs/protocol.md.

Each item is pinned to what the official code does, written out here (KMnP/vpt at 4410440,
ryongithub/GatedPromptTuning at dd7d1ea), never to lspt's own helper functions.
"""

from __future__ import annotations

import json
import math
import os
import tomllib
from pathlib import Path

import pytest
from plans import planned_trials
import torch
from conftest import free_port, interrupt_after
from safetensors import safe_open
from safetensors.torch import load_file

RECIPES = Path(__file__).resolve().parent.parent / "recipes"
IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]  # vpt src/data/transforms.py:8-10


def official_lr_lambda(step, warmup_steps, t_total, cycles=0.5):
    """KMnP/vpt src/solver/lr_scheduler.py:56-65 (WarmupCosineSchedule.lr_lambda), copied verbatim
    (GaPT's file is identical); the trainer steps it once per epoch (src/engine/trainer.py:221)."""
    if step < warmup_steps:
        return float(step) / float(max(1.0, warmup_steps))
    progress = float(step - warmup_steps) / float(max(1, t_total - warmup_steps))
    return max(0.0, 0.5 * (1. + math.cos(math.pi * float(cycles) * 2.0 * progress)))


def official_epoch_lrs(base_lr: float, warmup: int, epochs: int) -> list[float]:
    """The lr of every epoch under the official loop: a real LambdaLR, step() after each epoch."""
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=base_lr, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda e: official_lr_lambda(e, warmup, epochs))
    lrs = []
    for _ in range(epochs):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs


def dry_run(cli, *args) -> dict:
    result = cli("tune", *args, "--dry-run", "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


# -- the switch ------------------------------------------------------------------------------------
def test_done_when_gapt_mae_cub_is_the_paper_protocol(cli):
    doc = dry_run(cli, "--strategy", "gapt", "--backbone", "mae-vitb", "--task", "cub")
    train = doc["train"]
    assert doc["protocol"] == "paper" and train["protocol"] == "paper"
    assert train["grad_clip"] == 0.0  # no clipping (neither official trainer clips: trainer.py:116-119)
    assert train["weight_decay"] == 0.0 and doc["strategy_config"]["dropout"] == 0.1  # GaPT run.sh:146,148
    assert train["amp"] == "off" and train["schedule"] == "per-epoch" and train["head_init"] == "kaiming"
    assert train["ddp_batch"] == "split" and train["lr_scaling"] == "none"
    assert doc["strategy_config"]["gate_init"] == 5.0 and train["lr"] == 0.1  # run.sh example / GaPT's CUB
    assert doc["lr_trained"] == 0.1


def test_protocol_sets_defaults_and_explicit_values_win(cli, tmp_path):
    base = ["--strategy", "gapt", "--backbone", "mae-vitb", "--task", "cub"]
    lspt = dry_run(cli, *base, "--protocol", "lspt")["train"]
    assert (lspt["protocol"], lspt["grad_clip"], lspt["amp"], lspt["schedule"], lspt["head_init"], lspt["ddp_batch"]) == (
        "lspt", 1.0, "auto", "per-step", "normal", "per-rank")
    assert lspt["weight_decay"] == 0.0  # the recipe's own values are not the protocol's
    mixed = dry_run(cli, *base, "--protocol", "lspt", "--grad-clip", "0", "--schedule", "per-epoch", "--amp", "off")["train"]
    assert (mixed["grad_clip"], mixed["schedule"], mixed["amp"], mixed["head_init"]) == (0.0, "per-epoch", "off", "normal")
    paper = dry_run(cli, *base, "--grad-clip", "2.5", "--head-init", "normal", "--ddp-batch", "per-rank")["train"]
    assert (paper["protocol"], paper["grad_clip"], paper["head_init"], paper["ddp_batch"], paper["schedule"]) == (
        "paper", 2.5, "normal", "per-rank", "per-epoch")
    # a recipe file may choose the protocol; its explicit values beat either protocol's defaults
    recipe = tmp_path / "r.toml"
    recipe.write_text('[train]\nprotocol = "lspt"\ngrad_clip = 0.5\n')
    from_file = dry_run(cli, *base, "--recipe", str(recipe))
    assert from_file["protocol"] == "lspt" and from_file["train"]["grad_clip"] == 0.5 and from_file["train"]["amp"] == "auto"
    flag = dry_run(cli, *base, "--recipe", str(recipe), "--protocol", "paper")["train"]
    assert (flag["protocol"], flag["grad_clip"], flag["amp"], flag["schedule"]) == ("paper", 0.5, "off", "per-epoch")


def test_bad_protocol_values_are_one_error_line(cli, tmp_path):
    result = cli("tune", "--backbone", "vit-tiny", "--task", "digits", "--protocol", "vpt", "--dry-run")
    assert result.exit_code == 2 and "Error: --protocol: must be 'auto', 'paper' or 'lspt', got 'vpt'" in result.output
    result = cli("tune", "--backbone", "vit-tiny", "--task", "digits", "--schedule", "per-batch", "--dry-run")
    assert result.exit_code == 2 and "--schedule: must be 'per-epoch' or 'per-step'" in result.output
    recipe = tmp_path / "r.toml"
    recipe.write_text('[train]\nprotocol = "exact"\n')
    result = cli("tune", "--backbone", "vit-tiny", "--task", "digits", "--recipe", str(recipe), "--dry-run")
    assert result.exit_code == 2 and str(recipe) in result.output and "'protocol'" in result.output


def test_sweep_passes_the_protocol_to_every_trial(cli, tmp_path):
    result = cli("sweep", "--backbone", "vit-tiny", "--task", "digits", "--strategy", "linear", "--protocol", "paper",
                 "--schedule", "per-step", "--grid", "lr=0.01,0.02", "--seeds", "1", "--out", str(tmp_path / "s"), "--plan")
    assert result.exit_code == 0, result.output
    trials = planned_trials(result.stdout)
    assert len(trials) == 2
    assert all(t["protocol"] == "paper" and t["train"]["schedule"] == "per-step" for t in trials)


def test_old_run_configs_resume_under_the_lspt_protocol():
    """A config.json from before `protocol` existed trained with clipping, per-step warm-up, bf16 on
    GPU and the N(0, 0.01^2) head: resuming it must not switch it to the paper protocol mid-run."""
    from lspt_cli.recipes import ResolvedConfig

    old = {"backbone": "vit-tiny", "strategy": "linear", "task": "digits", "benchmark": "custom",
           "train": {"epochs": 3, "lr": 0.02, "grad_clip": 1.0, "amp": "auto"}}
    config = ResolvedConfig.from_json(old)
    assert (config.protocol, config.train.schedule, config.train.head_init, config.train.ddp_batch) == (
        "lspt", "per-step", "normal", "per-rank")


# -- recipes ----------------------------------------------------------------------------------------
def recipe_files():
    return sorted(RECIPES.glob("*.toml"))


@pytest.mark.parametrize("path", recipe_files(), ids=lambda p: p.stem)
def test_every_recipe_names_its_protocol_and_lr_convention(path):
    data = tomllib.loads(path.read_text())
    train = data["train"]
    if path.stem.startswith("vit-tiny"):
        assert train["protocol"] == "lspt"  # lspt's own demo, not a paper's
        return
    assert train["protocol"] == "paper"
    strategy = data["match"]["strategy"]
    if strategy in ("gapt", "lspt"):
        # GaPT's run.sh:146 and :148: WEIGHT_DECAY 0.0, PROMPT.DROPOUT 0.1; its lr is passed as given
        assert train["weight_decay"] == 0.0 and data["strategy"]["dropout"] == 0.1
        assert train.get("lr_scaling", "none") == "none"
        assert "weight_decay" not in data.get("grid", {})  # run.sh fixes it
    elif strategy.startswith("spt-"):
        # SPT's train_MAE.py:312-313 / train_MoCo.py:297-299: AdamW at the lr as given, set every step (utils.py:64-76)
        assert (train["lr_scaling"], train["optimizer"], train["schedule"]) == ("none", "adamw", "per-step")
    else:
        # VPT's tune_fgvc.py:31 / tune_vtab.py:100 scale the configured lr by batch/256
        assert train["lr_scaling"] == "batch/256"


@pytest.mark.parametrize("path", [p for p in recipe_files() if not p.stem.startswith("vit-tiny")], ids=lambda p: p.stem)
def test_every_paper_value_cites_its_source(path):
    """Every key set in [train] or [strategy] carries a `# Source:` comment, in the line or just above."""
    lines = path.read_text().splitlines()
    table = None
    for i, line in enumerate(lines):
        stripped = line.strip()
        if stripped.startswith("["):
            table = stripped
            continue
        if stripped.startswith("protocol ="):
            continue  # the switch itself, not a paper value
        if table in ("[train]", "[strategy]") and "=" in stripped and not stripped.startswith("#"):
            cited = "# Source:" in line or lines[i - 1].strip().startswith("# Source:") or "lspt's choice" in line
            assert cited, f"{path.name}: {stripped!r} in {table} cites no source"


def test_gapt_recipes_use_gapts_per_task_gate_init():
    """GaPT's run.sh takes GATE_INIT per run (run.sh:7,161); the recipes use the paper's per-task
    values (MAE 5/15/5/15/5, MoCo 5/10/5/10/5), not the config default 10 or the README's 5 for all."""
    for backbone, gates in (("mae-vitb", [5, 15, 5, 15, 5]), ("mocov3-vitb", [5, 10, 5, 10, 5])):
        for strategy in ("gapt", "lspt"):
            data = tomllib.loads((RECIPES / f"{strategy}-{backbone}-fgvc.toml").read_text())
            got = [data["tasks"][t]["strategy"]["gate_init"] for t in ("cub", "flowers", "cars", "dogs", "nabirds")]
            assert got == gates, (strategy, backbone)


# -- 1. input normalisation -------------------------------------------------------------------------
def test_list_backbones_shows_each_backbones_input(cli, tmp_path):
    result = cli("list", "backbones", "--json")
    assert result.exit_code == 0
    rows = {r["name"]: r for r in json.loads(result.stdout)}
    for name in ("mae-vitb", "mocov3-vitb"):
        assert rows[name]["mean"] == IMAGENET_MEAN and rows[name]["std"] == IMAGENET_STD
        assert rows[name]["input_size"] == 224 and rows[name]["interpolation"] == "bilinear"
    assert rows["mae-vitb"]["readout"] == "mean" or rows["mae-vitb"]["readout"].startswith("mean")
    assert rows["mocov3-vitb"]["readout"] == "cls"
    assert rows["vit-tiny"]["input_size"] == 32
    # the built backbone normalises with what the list shows (timm's own config for MoCo's
    # vit_base_patch16_224 is Google's 0.5/0.5)
    from lspt_cli.plugins import get_host
    from lspt_cli.plugins import resolve_factory

    from conftest import TINY, make_tiny_vit

    path = tmp_path / "weights.pth"
    torch.save({"model": make_tiny_vit(seed=1).state_dict()}, path)
    for name in ("mae-vitb", "mocov3-vitb", "sup-vitb"):
        built = resolve_factory(get_host().backbones.get(name).factory)(path, model_kwargs=dict(TINY))
        assert built.data_config["mean"] == rows[name]["mean"] and built.data_config["std"] == rows[name]["std"]
        assert built.data_config["input_size"] == [3, 32, 32]  # the model's own size, never the listed default
    assert rows["sup-vitb"]["mean"] == [0.5, 0.5, 0.5]  # what its augreg weights were trained with


# -- 5. temperature bounds --------------------------------------------------------------------------
def test_tau_is_projected_in_place_and_keeps_its_gradient(tiny_backbone):
    """GaPT clamps tau's *data* before each forward (vit_mae.py:106-108,133-135): a tau at or beyond
    a bound still gets gradient and can come back inside (a clamp in the graph would stop it)."""
    from lspt_cli.prompted import PromptedViT, build_strategy

    torch.manual_seed(0)
    model = PromptedViT(tiny_backbone, build_strategy("gapt", tiny_backbone.dims, {"num_prompts": 4}), num_classes=3)
    tau = model.strategy.tau
    images = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        tau.copy_(torch.tensor([10.0, 50.0, 0.001, 1.0]))  # at the upper bound, beyond both bounds, inside
    clamped = PromptedViT(tiny_backbone, build_strategy("gapt", tiny_backbone.dims, {"num_prompts": 4}), num_classes=3)
    clamped.load_trainable_state_dict(model.trainable_state_dict())
    with torch.no_grad():
        clamped.strategy.tau.copy_(torch.tensor([10.0, 10.0, 0.01, 1.0]))
        expected = clamped(images)
    logits = model(images)
    assert torch.equal(tau.detach(), torch.tensor([10.0, 10.0, 0.01, 1.0]))  # projected, as GaPT's reinit_temp
    torch.testing.assert_close(logits, expected)  # the forward is the clamped temperature's
    logits.logsumexp(dim=1).sum().backward()
    assert (tau.grad != 0).all(), tau.grad  # at 10, and at the projected 50 and 0.001: gradient, not zero
    # descent on a loss whose gradient points inward brings the tau that was 50 back inside (10, ...)
    sign = torch.sign(tau.grad[1])
    tau.grad = None
    (sign * model(images).logsumexp(dim=1).sum()).backward()
    with torch.no_grad():
        tau -= 0.5 * tau.grad / tau.grad[1].abs() * torch.tensor([0.0, 1.0, 0.0, 0.0])
    assert tau[1].item() == pytest.approx(9.5)
    model(images)  # the next projection leaves a tau inside the bounds alone
    assert tau[1].item() == pytest.approx(9.5)


# -- 6. schedule ------------------------------------------------------------------------------------
def test_per_epoch_factor_is_the_official_lambdalr():
    from lspt_cli.engine.schedule import epoch_lr_factor

    expected = official_epoch_lrs(1.0, warmup=10, epochs=100)
    got = [epoch_lr_factor(e, 10, 100) for e in range(100)]
    assert got == pytest.approx(expected, abs=1e-15)
    # chosen epochs, by hand: epoch 1 (index 0) at lr 0, linear e/10, 1 at e = 10, half-way cosine 0.5
    assert got[0] == 0.0 and got[1] == pytest.approx(0.1) and got[9] == pytest.approx(0.9)
    assert got[10] == 1.0 and got[55] == pytest.approx(0.5) and got[99] == pytest.approx(0.5 * (1 + math.cos(math.pi * 89 / 90)))
    # no warm-up, and warm-up longer than the run
    assert [epoch_lr_factor(e, 0, 4) for e in range(4)] == pytest.approx(official_epoch_lrs(1.0, 0, 4))
    assert [epoch_lr_factor(e, 10, 4) for e in range(4)] == pytest.approx([0.0, 0.1, 0.2, 0.3])


PAPER_RUN = ["--backbone", "vit-tiny", "--task", "digits", "--strategy", "linear", "--protocol", "paper",
             "--optimizer", "sgd", "--epochs", "4", "--warmup-epochs", "2", "--batch-size", "128",
             "--lr", "0.4", "--lr-scaling", "batch/256"]


def record_steps(monkeypatch) -> list[float]:
    """The lr of every SGD step and whether it ran under autocast and with clipping."""
    from lspt_cli.engine import train

    seen = {"lr": [], "autocast": [], "clip": []}
    step = torch.optim.SGD.step

    def recording_step(self, *args, **kwargs):
        seen["lr"].append(self.param_groups[0]["lr"])
        return step(self, *args, **kwargs)

    original_autocast = train.autocast

    def recording_autocast(device, amp):
        seen["autocast"].append(amp)
        return original_autocast(device, amp)

    original_clip = torch.nn.utils.clip_grad_norm_

    def recording_clip(params, max_norm, *args, **kwargs):
        seen["clip"].append(max_norm)
        return original_clip(params, max_norm, *args, **kwargs)

    monkeypatch.setattr(torch.optim.SGD, "step", recording_step)
    monkeypatch.setattr(train, "autocast", recording_autocast)
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", recording_clip)
    return seen




@pytest.mark.slow
def test_paper_run_schedule_scaling_fp32_no_clip_and_records(cli, tmp_path, monkeypatch):
    """A paper-protocol run, end to end: every step's lr is the official per-epoch LambdaLR of
    lr * batch / 256 (VPT's tune_fgvc.py:31), no step is clipped or autocast, the protocol is
    recorded, and a Ctrl-C + --resume in the middle of a cosine epoch keeps all of it exact."""
    steps = 11  # ceil(1295 digits train images / 128)
    epoch_lrs = official_epoch_lrs(0.4 * 128 / 256, warmup=2, epochs=4)  # before recording: it steps an SGD too
    expected = [lr for lr in epoch_lrs for _ in range(steps)]
    seen = record_steps(monkeypatch)
    result = cli("tune", *PAPER_RUN, "--out", str(tmp_path / "run"), "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert len(seen["lr"]) == 4 * steps
    assert seen["lr"] == pytest.approx(expected, abs=1e-12)
    assert seen["lr"][:steps] == [0.0] * steps  # epoch 1 trains at lr 0
    assert seen["clip"] == [] and not any(seen["autocast"])
    records = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["lr"] for r in records] == pytest.approx(epoch_lrs) and [r["steps"] for r in records] == [steps] * 4
    assert summary["protocol"] == "paper"
    assert json.loads((tmp_path / "run" / "config.json").read_text())["train"]["protocol"] == "paper"
    with safe_open(str(tmp_path / "run" / "bundle.safetensors"), "pt") as f:
        assert f.metadata()["lspt.protocol"] == "paper"
    asked = []  # `lspt eval` of a paper bundle asks for fp32 (`off`), on any device
    from lspt_cli.engine import train

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(train, "use_bf16", lambda amp, device: asked.append(amp) or False)
        assert cli("eval", str(tmp_path / "run" / "bundle.safetensors"), "--json").exit_code == 0
    assert asked == ["off"]

    # interrupted after 4 batches of epoch 4 (the cosine part), resumed: the same steps, the same bundle
    seen["lr"].clear()
    interrupt_after(monkeypatch, stop_epoch=3, batches=4)
    stopped = cli("tune", *PAPER_RUN, "--out", str(tmp_path / "stopped"), "--json")
    assert stopped.exit_code == 130
    monkeypatch.undo()
    seen = record_steps(monkeypatch)
    resumed = cli("tune", "--resume", str(tmp_path / "stopped"), "--json")
    assert resumed.exit_code == 0, resumed.output
    assert seen["lr"] == pytest.approx(expected[3 * steps + 4 :], abs=1e-12)
    a = load_file(str(tmp_path / "run" / "bundle.safetensors"))
    b = load_file(str(tmp_path / "stopped" / "bundle.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_lspt_run_clips_and_steps_per_iteration(cli, tmp_path, monkeypatch):
    seen = record_steps(monkeypatch)
    args = [a if a != "paper" else "lspt" for a in PAPER_RUN]
    result = cli("tune", *args, "--epochs", "2", "--out", str(tmp_path / "run"), "--json")
    assert result.exit_code == 0, result.output
    assert seen["clip"] and set(seen["clip"]) == {1.0}
    # per-step warm-up: 2 warm-up epochs x 11 steps, from 1/22 of the lr, never 0
    base = 0.4 * 128 / 256
    assert seen["lr"][:22] == pytest.approx([base * (i + 1) / 22 for i in range(22)])
    assert json.loads(result.stdout)["protocol"] == "lspt"


# -- 7. learning-rate scaling -----------------------------------------------------------------------
def test_lr_scaling_is_batch_over_256_or_none():
    from lspt_cli.settings import TrainConfig

    assert TrainConfig(lr=0.1, batch_size=64, lr_scaling="batch/256").scaled_lr == pytest.approx(0.025)
    assert TrainConfig(lr=5.0, batch_size=128, lr_scaling="batch/256").scaled_lr == pytest.approx(2.5)
    assert TrainConfig(lr=0.1, batch_size=64).scaled_lr == 0.1  # GaPT passes the lr as given


def test_vpt_recipe_trains_the_scaled_lr(cli):
    doc = dry_run(cli, "--strategy", "vpt-deep", "--backbone", "mocov3-vitb", "--task", "cub")
    train = doc["train"]
    # VPT's FGVC batch is 128 (KMnP/vpt configs/base-prompt.yaml:25): the lr trained is half the recipe's
    assert train["batch_size"] == 128
    assert train["lr_scaling"] == "batch/256" and doc["lr_trained"] == pytest.approx(train["lr"] * 128 / 256)


# -- 8. head init -----------------------------------------------------------------------------------
def test_head_init_kaiming_fan_out_and_normal(tiny_backbone):
    """VPT/GaPT: nn.init.kaiming_normal_(w, a=0, mode='fan_out') -> std sqrt(2 / out_features), and
    special_bias=True -> bias -log((1 - 0.01) / 0.01) (vpt src/models/mlp.py:52-57, vit_models.py:164)."""
    from lspt_cli.prompted import PromptedViT, build_strategy

    torch.manual_seed(0)
    classes = 2000  # 64 x 2000 weights: the std is estimated to well under 2 %
    paper = PromptedViT(tiny_backbone, build_strategy("linear", tiny_backbone.dims, {}), classes, head_init="kaiming")
    w = paper.head.weight.detach()
    assert abs(w.std().item() / math.sqrt(2.0 / classes) - 1) < 0.02 and abs(w.mean().item()) < 0.002
    assert torch.allclose(paper.head.bias, torch.full((classes,), -4.59511985013459))
    lspt = PromptedViT(tiny_backbone, build_strategy("linear", tiny_backbone.dims, {}), classes, head_init="normal")
    assert abs(lspt.head.weight.std().item() / 0.01 - 1) < 0.02 and torch.equal(lspt.head.bias, torch.zeros(classes))


def test_trainer_builds_the_protocols_head(tmp_path):
    for protocol, bias in (("paper", -math.log(99.0)), ("lspt", 0.0)):
        trainer = _trainer(tmp_path, protocol=protocol)
        trainer.setup()
        assert torch.allclose(trainer.model.head.bias, torch.full_like(trainer.model.head.bias, bias))


def _trainer(tmp_path, **train):
    from lspt_cli.engine.train import Trainer
    from lspt_cli.plugins import get_host
    from lspt_cli.recipes import resolve_config

    config = resolve_config(backbone="vit-tiny", strategy="linear", task="digits", benchmark="custom",
                            registered_recipes=[], train_overrides=train)
    return Trainer(config, tmp_path / "run", host=get_host())


# -- 11. multi-GPU batch ----------------------------------------------------------------------------
def test_rank_batch_splits_like_vpt():
    """VPT: batch_size=int(cfg.DATA.BATCH_SIZE / cfg.NUM_GPUS) per GPU (src/data/loader.py:62)."""
    from lspt_cli.engine.train import rank_batch
    from lspt_cli.errors import UsageError
    from lspt_cli.settings import TrainConfig

    for batch, world in ((64, 2), (128, 4), (64, 3), (64, 1)):
        assert rank_batch(TrainConfig(batch_size=batch), world) == int(batch / world)
        assert rank_batch(TrainConfig(batch_size=batch, ddp_batch="per-rank"), world) == batch
    with pytest.raises(UsageError):
        rank_batch(TrainConfig(batch_size=1), 2)


def test_trainer_splits_the_batch_over_ranks(tmp_path):
    """The trainer's per-rank batch and steps with 2 ranks (a 1-process gloo group stands in for the
    second rank's collectives): paper 32 images per rank and VPT's drop_last, lspt 64 per rank."""
    import torch.distributed as dist

    from lspt_cli.engine.distributed import DistContext

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        for protocol, batch, steps in (("paper", 32, 647 // 32), ("lspt", 64, math.ceil(647 / 64))):
            trainer = _trainer(tmp_path, protocol=protocol, batch_size=64)
            trainer.dist = DistContext(world_size=2, rank=0)
            trainer.setup()
            assert trainer.order_length == 1295 // 2
            assert (trainer.batch_size, trainer.steps_per_epoch) == (batch, steps)
    finally:
        dist.destroy_process_group()


# -- 12. precision ----------------------------------------------------------------------------------
@pytest.mark.parametrize("native", [False, True])
def test_paper_is_fp32_on_every_device(monkeypatch, native):
    """On a CPU with native bf16 (AVX512-BF16/AMX) and on one without: the CPU is faked both ways,
    so the answer never depends on the machine that runs the suite."""
    from lspt_cli.engine.train import use_bf16
    from lspt_cli.settings import PROTOCOL_DEFAULTS

    monkeypatch.setenv("LSPT_CPU_BF16", "1" if native else "0")
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert PROTOCOL_DEFAULTS["paper"]["amp"] == "off" and PROTOCOL_DEFAULTS["lspt"]["amp"] == "auto"
    assert not use_bf16("off", cuda) and not use_bf16("off", cpu)
    assert use_bf16("auto", cpu) is native and use_bf16("bf16", cpu)
    with pytest.MonkeyPatch.context() as mp:  # `auto` is bf16 exactly where CUDA supports it
        mp.setattr(torch.cuda, "is_available", lambda: True)
        for supported in (True, False):
            mp.setattr(torch.cuda, "is_bf16_supported", lambda *a, s=supported: s)
            assert use_bf16("auto", cuda) is supported and not use_bf16("off", cuda)


@pytest.mark.parametrize("native, amp, used", [("1", "auto", "bf16"), ("0", "auto", "fp32"), ("1", "off", "fp32"),
                                                ("0", "bf16", "bf16")])
def test_the_precision_a_run_used_is_recorded(cli, tmp_path, monkeypatch, native, amp, used):
    """`amp = auto` records what it resolved to on this CPU (faked both ways): config.json's meta,
    summary.json and the bundle say "bf16" or "fp32", never "auto"."""
    from lspt_cli.bundle import read_header

    monkeypatch.setenv("LSPT_CPU_BF16", native)
    run = tmp_path / "run"
    result = cli("tune", "--backbone", "vit-tiny", "--task", "digits", "--strategy", "linear", "--protocol", "lspt",
                 "--amp", amp, "--epochs", "1", "--warmup-epochs", "0", "--out", str(run), "--json", "-q")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["precision"] == used
    assert json.loads((run / "config.json").read_text())["meta"]["precision"] == used
    assert json.loads((run / "config.json").read_text())["train"]["amp"] == amp  # what was asked stays recorded too
    assert read_header(run / "bundle.safetensors").meta("lspt.precision") == used


@pytest.mark.slow
def test_torchrun_two_ranks_split_the_batch(tmp_path):
    """Under torchrun (2 CPU ranks, gloo) the paper protocol trains 32 + 32 images per step for
    --batch-size 64, and drops the last partial batch, as VPT's loader does."""
    import subprocess
    import sys

    env = dict(os.environ, LSPT_HOME=str(tmp_path / "home"), OMP_NUM_THREADS="1", LSPT_LOAD_PLUGINS="")
    run = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}", "-m", "lspt_cli",
         "tune", "--backbone", "vit-tiny", "--task", "digits", "--strategy", "linear", "--protocol", "paper",
         "--epochs", "1", "--warmup-epochs", "0", "--batch-size", "64", "--out", str(run), "--json"],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    record = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    assert record["batch_per_rank"] == 32 and record["steps"] == (1295 // 2) // 32
