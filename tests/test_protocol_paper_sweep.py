"""Issue 19 section 2: what `lspt sweep` searches by default and how a diverged trial competes.

The expectations are the official code (KMnP/vpt@4410440), written out here:
- tune_vtab.py:245-251 (`prompt`): lr in {5, 2.5, 1, 50, 25, 10, 0.5, 0.25, 0.1, 0.05} x wd in
  {0.01, 0.001, 0.0001, 0} = 40 trials per VTAB task; tune_fgvc.py:151-157 (`prompt_main`): the same
  without 0.05 = 36 per FGVC task. Neither searches the prompt length (README.md:39-40).
- src/engine/trainer.py:104-113,187-189: a NaN/inf loss returns from training at once, the epochs
  evaluated so far stay in eval_results.pth, and tune_vtab.py:54-61 compares the trial by the last
  of them like any other.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
import torch
from plans import planned_trials

VTAB_LRS = [5.0, 2.5, 1.0, 50.0, 25.0, 10.0, 0.5, 0.25, 0.1, 0.05]  # tune_vtab.py:246-250
FGVC_LRS = [5.0, 2.5, 1.0, 50.0, 25.0, 10.0, 0.5, 0.25, 0.1]  # tune_fgvc.py:152-156
WDS = [0.01, 0.001, 0.0001, 0.0]  # tune_vtab.py:251, tune_fgvc.py:157
RECIPES = Path(__file__).resolve().parents[1] / "recipes"


def planned_points(tmp_path, strategy, backbone, task, grid=None):
    from lspt_cli.plugins import get_host
    from lspt_cli.sweep import SweepSpec, build_grid_trials

    spec = SweepSpec(backbone=backbone, strategy=strategy, tasks=[task], seeds=[42, 44, 82, 100, 800],
                     sweep_dir=tmp_path / "sweep", grid=grid or {})
    trials = build_grid_trials(spec, get_host())[task]
    assert all(t.error is None for t in trials), [t.error for t in trials if t.error]
    return [t.point for t in trials]


@pytest.mark.parametrize("strategy, backbone", list(itertools.product(["vpt-deep", "vpt-shallow"], ["mae-vitb", "mocov3-vitb"])))
def test_default_sweep_plans_the_official_lr_x_wd_grid(tmp_path, strategy, backbone):
    for task, lrs in (("vtab/cifar", VTAB_LRS), ("cub", FGVC_LRS)):
        points = planned_points(tmp_path, strategy, backbone, task)
        assert len(points) == {"vtab/cifar": 40, "cub": 36}[task]
        assert sorted((p["lr"], p["weight_decay"]) for p in points) == sorted(itertools.product(lrs, WDS))
        assert all(set(p) == {"lr", "weight_decay"} for p in points)  # no prompt length


def test_plan_prints_40_commands_for_a_default_vtab_task(cli, tmp_path):
    result = cli("sweep", "--backbone", "mae-vitb", "--strategy", "vpt-deep", "--task", "vtab/cifar",
                 "--out", str(tmp_path / "s"), "--plan")
    assert result.exit_code == 0, result.output
    trials = planned_trials(result.stdout)  # each trial's resolved config file
    assert len(trials) == 40 and len({t["strategy_config"]["num_prompts"] for t in trials}) == 1


def test_prompt_length_is_searched_only_when_asked(tmp_path):
    lengths = [1, 5, 10, 50, 100, 200]
    points = planned_points(tmp_path, "vpt-deep", "mae-vitb", "vtab/cifar",
                            grid={"lr": VTAB_LRS, "weight_decay": WDS, "num_prompts": lengths})
    assert len(points) == 240 and {p["num_prompts"] for p in points} == set(lengths)


def test_no_paper_recipe_searches_prompt_length_by_default():
    from lspt_cli.recipes import load_recipe_file

    from test_recipes import PAPER_BACKBONES, PAPER_BENCHMARKS, PAPER_RECIPE_STRATEGIES

    paper = [p for p in sorted(RECIPES.glob("*.toml")) if load_recipe_file(p)["train"].get("protocol") == "paper"]
    assert len(paper) == len(PAPER_RECIPE_STRATEGIES) * len(PAPER_BACKBONES) * len(PAPER_BENCHMARKS)  # 36
    for path in paper:
        grid = load_recipe_file(path)["grid"]
        assert "num_prompts" not in grid, path.name
        if path.name.startswith(("vpt-", "linear-")):  # VPT's tune scripts: lr x wd
            assert set(grid) == {"lr", "weight_decay"}, path.name
        text = path.read_text()
        assert "DESIGN.md" not in text, path.name  # every citation names a file a reader can open


# -- a diverged trial ---------------------------------------------------------------------------------
def mini_vtab(name="vtab-nan"):
    from lspt_cli.data.manifest import save_manifest, task_dir
    from lspt_plugins.datasets.digits import prepare_digits

    m = prepare_digits(out_dir=task_dir(name), task_id=name)
    train, val, test = m.splits["train"][:32], m.splits["val"][:16], m.splits["test"][:16]
    m.splits = {"train": train, "val": val, "test": test, "trainval": train + val}
    m.benchmark = "vtab"
    save_manifest(m)


def diverging_run(tmp_path, monkeypatch, protocol, nan_epoch, vals, name):
    """A 3-epoch linear run on a VTAB-like task whose training loss is NaN from epoch `nan_epoch`
    (from 0) on; val top-1 of each finished epoch is scripted."""
    from lspt_cli.engine.train import Trainer
    from lspt_cli.plugins import get_host
    from lspt_cli.recipes import resolve_config

    config = resolve_config(
        backbone="vit-tiny", strategy="linear", task="vtab-nan", benchmark="vtab", registered_recipes=get_host().recipes,
        train_overrides=dict(protocol=protocol, epochs=3, warmup_epochs=0, batch_size=16, lr=0.5, weight_decay=0.0,
                             device="cpu", threads=1, seed=0, num_workers=0))
    scripted = list(vals)
    original_eval, original_epoch = Trainer._evaluate, Trainer._train_epoch

    def evaluate(trainer, split):
        result = original_eval(trainer, split)
        return dict(result, top1=scripted.pop(0)) if split == "val" else result

    def train_epoch(trainer, epoch, position, running):
        if epoch == nan_epoch:
            trainer.model.head.register_forward_hook(lambda m, i, out: out * float("nan") if m.training else out)
        return original_epoch(trainer, epoch, position, running)

    monkeypatch.setattr(Trainer, "_evaluate", evaluate)
    monkeypatch.setattr(Trainer, "_train_epoch", train_epoch)
    run_dir = tmp_path / name
    return Trainer(config, run_dir).run(), run_dir


def test_paper_keeps_the_epochs_done_before_a_nan_and_the_trial_competes(tmp_path, monkeypatch):
    from lspt_cli import bundle
    from lspt_cli.selection import LAST
    from lspt_cli.sweep import select_trial
    from lspt_cli.sweep.state import fill_metrics

    mini_vtab()
    summary, run_dir = diverging_run(tmp_path, monkeypatch, "paper", 2, [50.0, 90.0], "lr5")
    assert summary["diverged"] == {"epoch": 3, "step": 1, "loss": "nan", "epochs_done": 2}
    assert summary["selected_epoch"] == 2 and summary["val_top1"] == 90.0  # VTAB: the last epoch done
    assert [json.loads(line)["epoch"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    reported = bundle.load(run_dir / "bundle.safetensors").tensors
    state = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    assert state["epoch"] == 2 and reported.keys() == state["trainable"].keys()
    assert all(torch.equal(reported[k], state["trainable"][k]) for k in reported)  # end of epoch 2, finite
    assert all(torch.isfinite(v).all() for v in reported.values())
    # it competes: its last val (90) beats a trial that finished all epochs at 80
    other = tmp_path / "lr0.1"
    other.mkdir()
    (other / "metrics.jsonl").write_text("".join(json.dumps({"epoch": e, "val_acc": v}) + "\n"
                                                 for e, v in ((1, 60.0), (2, 70.0), (3, 80.0))))
    records = [fill_metrics({"point": {"lr": 0.1, "weight_decay": 0.0}, "name": "lr0.1", "run_dir": str(other)},
                            {"val_top1": 80.0}),
               fill_metrics({"point": {"lr": 5.0, "weight_decay": 0.0}, "name": "lr5", "run_dir": str(run_dir)}, summary)]
    best = select_trial(records, LAST)
    assert best["name"] == "lr5" and (best["select_val"], best["select_epoch"]) == (90.0, 2)


def test_lspt_fails_a_nan_run_and_paper_fails_one_with_no_epoch_done(tmp_path, monkeypatch):
    from lspt_cli.errors import TrainingError

    mini_vtab()
    with pytest.raises(TrainingError, match=r"loss became nan in epoch 3"):
        diverging_run(tmp_path, monkeypatch, "lspt", 2, [50.0, 90.0], "lspt")
    assert not (tmp_path / "lspt" / "summary.json").exists()  # failed: a sweep leaves it out of the selection
    with pytest.raises(TrainingError, match=r"loss became nan in epoch 1"):
        diverging_run(tmp_path, monkeypatch, "paper", 0, [], "first")  # officially: no epoch to compare
    assert not (tmp_path / "first" / "summary.json").exists()
