"""Issue 10 item 9: which epoch's test a run reports, how a sweep selects, what its finals train on,
and `lspt report`'s protocol labels.

The expectations are VPT's code (KMnP/vpt@4410440) written out here, not lspt's output:
- tune_vtab.py:48-78 `find_best_lrwd`: a VTAB grid trial counts with the val top-1 of its LAST
  epoch; a tie goes to the smaller lr; finals train on train800val200 (tune_vtab.py:164-166).
- json_dataset.py:20-25 has no train+val split and train.py:70-71 trains non-VTAB tasks on train:
  FGVC finals train on train and report test at the best val epoch (trainer.py:242-244, the first
  best on a tie).
"""

from __future__ import annotations

import json
import math

import pytest
from plans import planned_trials
import torch

from lspt_cli.selection import BEST_VAL, LAST, rule_for


# -- the rule table ---------------------------------------------------------------------------------
def test_the_rules_are_the_official_codes():
    vtab, fgvc = rule_for("paper", "vtab"), rule_for("paper", "fgvc")
    assert (vtab.select_by, vtab.train_split(True), vtab.report(False), vtab.report(True)) == (LAST, "trainval", LAST, LAST)
    assert (fgvc.select_by, fgvc.train_split(True), fgvc.report(False), fgvc.report(True)) == (BEST_VAL, "train", BEST_VAL, BEST_VAL)
    for benchmark in ("vtab", "fgvc", "custom"):  # lspt: today's behaviour everywhere
        rule = rule_for("lspt", benchmark)
        assert (rule.select_by, rule.train_split(True), rule.report(False), rule.report(True)) == (BEST_VAL, "trainval", BEST_VAL, LAST)
    custom = rule_for("paper", "custom")  # no official rule for your own data: lspt's
    assert (custom.select_by, custom.train_split(True)) == (BEST_VAL, "trainval")
    assert all(rule_for(p, b).train_split(False) == "train" for p in ("paper", "lspt") for b in ("vtab", "fgvc"))


# -- selection on synthetic run directories -------------------------------------------------------
def write_trial(run_dir, vals, *, test=50.0, task="vtab/dtd", metrics_order=None):
    """A finished trial: summary.json and a hand-made metrics.jsonl with one val top-1 per epoch."""
    run_dir.mkdir(parents=True)
    records = [{"epoch": e + 1, "train_loss": 1.0, "val_acc": v} for e, v in enumerate(vals)]
    for i in metrics_order or []:
        records.append(records[i])  # a repeated line (e.g. after a resume): the later one wins
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    summary = {"task": task, "backbone": "vit-tiny", "strategy": "linear", "test_top1": test,
               "val_top1": max(vals), "epochs": len(vals), "final": False, "seed": 42}
    (run_dir / "summary.json").write_text(json.dumps(summary))
    return run_dir


def record(run_dir, lr, wd):
    return {"point": {"lr": lr, "weight_decay": wd}, "status": "finished", "run_dir": str(run_dir),
            "name": run_dir.name, "val_top1": None}


def test_last_epoch_val_selects_what_best_epoch_val_would_not(tmp_path):
    from lspt_cli.sweep import select_trial

    a = write_trial(tmp_path / "a", [60.0, 90.0, 70.0])  # best 90 at epoch 2, last 70
    b = write_trial(tmp_path / "b", [50.0, 60.0, 80.0])  # best = last = 80
    records = [record(a, 0.1, 0.0), record(b, 0.5, 0.0)]
    chosen = select_trial(records, LAST)
    assert chosen["point"]["lr"] == 0.5 and (chosen["select_val"], chosen["select_epoch"]) == (80.0, 3)
    chosen = select_trial(records, BEST_VAL)
    assert chosen["point"]["lr"] == 0.1 and (chosen["select_val"], chosen["select_epoch"]) == (90.0, 2)


def test_ties_go_to_the_smaller_lr_then_the_smaller_wd(tmp_path):
    from lspt_cli.sweep import select_trial

    curves = {  # every last epoch at 80 except one; best epochs all differ
        (0.5, 0.0): [95.0, 80.0], (0.1, 0.01): [10.0, 80.0], (0.1, 0.0): [20.0, 80.0],
        (0.05, 0.0): [99.0, 79.5], (1.0, 0.0): [30.0, 80.0],
    }
    records = [record(write_trial(tmp_path / f"lr{lr}-wd{wd}", vals), lr, wd) for (lr, wd), vals in curves.items()]
    assert select_trial(records, LAST)["point"] == {"lr": 0.1, "weight_decay": 0.0}
    assert select_trial(records, BEST_VAL)["point"] == {"lr": 0.05, "weight_decay": 0.0}  # 99 at its first epoch
    # same lr and same val: the smaller weight decay, whatever the order of the records
    assert select_trial(list(reversed(records)), LAST)["point"] == {"lr": 0.1, "weight_decay": 0.0}


def test_the_last_epoch_is_the_highest_epoch_logged(tmp_path):
    from lspt_cli.selection import selection_value

    run = write_trial(tmp_path / "r", [40.0, 70.0, 60.0], metrics_order=[1])  # epoch 2's line again at the end
    assert selection_value(run, LAST) == (60.0, 3)
    assert selection_value(run, BEST_VAL) == (70.0, 2)
    assert selection_value(tmp_path / "missing", LAST) == (None, None)


def test_sweep_plan_selects_by_the_protocols_rule(tmp_path):
    """The whole sweep path: trial directories a sweep would write, its selection, its final commands."""
    from lspt_cli.plugins import get_host
    from lspt_cli.sweep import SweepSpec, plan, task_dir_name, trial_name

    host = get_host()
    for protocol, expected_lr in (("paper", 0.5), ("lspt", 0.1)):
        sweep_dir = tmp_path / protocol
        spec = SweepSpec(backbone="vit-tiny", strategy="linear", tasks=["vtab/dtd"], seeds=[42, 44], sweep_dir=sweep_dir,
                         grid={"lr": [0.1, 0.5]}, train_overrides={"protocol": protocol})
        for lr, vals in ((0.1, [60.0, 90.0, 70.0]), (0.5, [50.0, 60.0, 80.0])):
            write_trial(sweep_dir / task_dir_name("vtab/dtd") / trial_name({"lr": lr}, 42, False), vals)
        commands, notes = plan(spec, host)
        assert len(commands) == 2 and not notes, (commands, notes)  # the two finals, one per seed
        for trial, seed in zip(planned_trials("\n".join(commands)), (42, 44)):
            assert trial["train"]["lr"] == expected_lr and trial["final"] and trial["train"]["seed"] == seed
            assert trial["protocol"] == protocol


# -- what a run trains on and which epoch's test it reports -----------------------------------------
def mini_task(name: str, benchmark: str, n_train=32, n_val=16, n_test=16):
    """digits' first images as a task of the given benchmark (the rule depends on the benchmark)."""
    from lspt_cli.data.manifest import save_manifest, task_dir
    from lspt_plugins.datasets.digits import prepare_digits

    m = prepare_digits(out_dir=task_dir(name), task_id=name)
    train, val, test = m.splits["train"][:n_train], m.splits["val"][:n_val], m.splits["test"][:n_test]
    m.splits = {"train": train, "val": val, "test": test, "trainval": train + val}
    m.benchmark = benchmark
    save_manifest(m)
    return m


class Watch:
    """Scripted val top-1 per epoch (real test numbers), and the splits the trainer loads."""

    def __init__(self, monkeypatch, vals):
        from lspt_cli.engine.train import Trainer

        self.splits: list[tuple[str, bool]] = []
        self.vals = list(vals)
        original_eval, original_loader = Trainer._evaluate, Trainer.loader
        watch = self

        def evaluate(trainer, split):
            result = original_eval(trainer, split)
            return dict(result, top1=watch.vals.pop(0)) if split == "val" else result

        def loader(trainer, split, train, order=None, epoch=0):
            watch.splits.append((split, train))
            return original_loader(trainer, split, train, order, epoch)

        monkeypatch.setattr(Trainer, "_evaluate", evaluate)
        monkeypatch.setattr(Trainer, "loader", loader)


def run(tmp_path, monkeypatch, task, protocol, final, vals=(50.0, 90.0, 70.0)):
    from lspt_cli import bundle
    from lspt_cli.engine.train import Trainer
    from lspt_cli.plugins import get_host
    from lspt_cli.recipes import resolve_config

    config = resolve_config(
        backbone="vit-tiny", strategy="linear", task=task, benchmark=task.split("-")[0],  # "vtab-mini" -> vtab
        registered_recipes=get_host().recipes, final=final,
        train_overrides=dict(protocol=protocol, epochs=3, warmup_epochs=0, batch_size=16, lr=0.5, weight_decay=0.0,
                             device="cpu", threads=1, seed=0, num_workers=0))
    watch = Watch(monkeypatch, vals)
    run_dir = tmp_path / f"{task}-{protocol}-{final}"
    trainer = Trainer(config, run_dir)
    summary = trainer.run()
    reported = bundle.load(run_dir / "bundle.safetensors").tensors
    best = bundle.load(run_dir / "best.safetensors").tensors if (run_dir / "best.safetensors").exists() else None
    return summary, watch, reported, best, trainer


def same(a, b) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_paper_vtab_reports_the_last_epoch(tmp_path, monkeypatch):
    mini_task("vtab-mini", "vtab")
    summary, watch, reported, best, trainer = run(tmp_path, monkeypatch, "vtab-mini", "paper", final=False)
    assert summary["reported_epoch_rule"] == LAST and summary["selected_epoch"] == 3
    assert (summary["val_top1"], summary["val_top1_best"], summary["val_top1_last"]) == (70.0, 90.0, 70.0)
    assert best is not None and not same(reported, best)  # the last state, not the best-val one (epoch 2)
    assert same(reported, trainer.model.trainable_state_dict())
    assert ("train", True) in watch.splits and ("trainval", True) not in watch.splits
    # its final runs: train800val200 (here train+val), no val to look at, the last epoch
    summary, watch, *_ = run(tmp_path, monkeypatch, "vtab-mini", "paper", final=True, vals=())
    assert summary["train_split"] == "trainval" and summary["val_top1"] is None and summary["selected_epoch"] == 3
    assert {s for s, t in watch.splits if t} == {"trainval"} and ("val", False) not in watch.splits


def test_paper_fgvc_finals_train_on_train_and_report_the_best_val_epoch(tmp_path, monkeypatch):
    mini_task("fgvc-mini", "fgvc")
    summary, watch, reported, best, _ = run(tmp_path, monkeypatch, "fgvc-mini", "paper", final=True)
    assert summary["final"] is True and summary["train_split"] == "train"
    assert {s for s, t in watch.splits if t} == {"train"} and ("val", False) in watch.splits
    assert summary["reported_epoch_rule"] == BEST_VAL and summary["selected_epoch"] == 2 and summary["val_top1"] == 90.0
    assert same(reported, best)
    # protocol lspt: today's finals on train+val
    summary, watch, *_ = run(tmp_path, monkeypatch, "fgvc-mini", "lspt", final=True, vals=())
    assert summary["train_split"] == "trainval" and {s for s, t in watch.splits if t} == {"trainval"}
    assert summary["reported_epoch_rule"] == LAST and summary["val_top1"] is None


def test_lspt_vtab_grid_run_reports_the_best_val_epoch(tmp_path, monkeypatch):
    mini_task("vtab-mini2", "vtab")
    summary, _, reported, best, _ = run(tmp_path, monkeypatch, "vtab-mini2", "lspt", final=False)
    assert summary["reported_epoch_rule"] == BEST_VAL and summary["selected_epoch"] == 2 and summary["val_top1"] == 90.0
    assert same(reported, best)


# -- report: protocol labels, no silent mixing -----------------------------------------------------
def write_run(root, name, task, top1, protocol, *, seed=42, backbone="mae-vitb", strategy="gapt"):
    run_dir = root / name
    run_dir.mkdir(parents=True)
    summary = {"task": task, "backbone": backbone, "strategy": strategy, "final": True, "seed": seed,
               "test_top1": top1, "val_top1": None, "run_dir": str(run_dir)}
    if protocol is not None:
        summary["protocol"] = protocol
    (run_dir / "summary.json").write_text(json.dumps(summary))


def test_report_labels_the_protocol_and_refuses_to_mix(cli, tmp_path):
    write_run(tmp_path / "a", "cub-42", "cub", 80.0, "paper")
    write_run(tmp_path / "a", "cub-44", "cub", 82.0, "paper", seed=44)
    write_run(tmp_path / "a", "cars-42", "cars", 70.0, "paper")
    result = cli("report", str(tmp_path / "a"))
    assert result.exit_code == 0, result.output
    assert "| mae-vitb | gapt | paper | 81.00 ± 1.41 |" in result.stdout
    doc = json.loads(cli("report", str(tmp_path / "a"), "--format", "json").stdout)
    assert doc["fgvc"][0]["protocol"] == "paper" and {g["protocol"] for g in doc["groups"]} == {"paper"}

    # one more cub run under lspt: the cub mean would mix protocols
    write_run(tmp_path / "a", "cub-lspt", "cub", 99.0, "lspt", seed=82)
    result = cli("report", str(tmp_path / "a"))
    assert result.exit_code == 2 and "different protocols" in result.stderr and "--mix-protocols" in result.stderr
    assert "cub" in result.stderr and result.stdout == ""
    mixed = json.loads(cli("report", str(tmp_path / "a"), "--format", "json", "--mix-protocols").stdout)
    cub = next(g for g in mixed["groups"] if g["task"] == "cub")
    assert cub["protocol"] == "lspt+paper" and cub["mean"] == pytest.approx((80 + 82 + 99) / 3)

    # different tasks under different protocols: the FGVC mean over them would mix protocols
    write_run(tmp_path / "b", "cub", "cub", 80.0, "paper")
    write_run(tmp_path / "b", "cars", "cars", 70.0, None)  # before protocols existed: lspt's training
    result = cli("report", str(tmp_path / "b"))
    assert result.exit_code == 2 and "FGVC mean" in result.stderr and "lspt: Cars" not in result.stderr
    assert "lspt: cars" in result.stderr and "paper: cub" in result.stderr
    doc = json.loads(cli("report", str(tmp_path / "b"), "--format", "json", "--mix-protocols").stdout)
    assert doc["fgvc"][0]["protocol"] == "lspt+paper" and math.isclose(doc["fgvc"][0]["fgvc_mean"]["value"], 75.0)
