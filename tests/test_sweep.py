"""`lspt sweep`: grid -> selection (tie rule) -> finals with every seed; resumption; --plan; failures."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest
from plans import planned_trials

from lspt_cli.errors import UsageError
from lspt_cli.sweep import (
    parse_grid,
    select_best,
    trial_name,
    worker_envs,
)

BASE = ["--backbone", "vit-tiny", "--task", "digits", "--strategy", "vpt-deep", "--epochs", "1",
        "--warmup-epochs", "0", "--batch-size", "128", "--set", "num_prompts=2"]
GRID = ["--grid", "lr=0.01,0.02", "--grid", "wd=0,1e-4"]


def rec(lr, wd, val, status="finished", **point):
    return {"point": {"lr": lr, "weight_decay": wd, **point}, "val_top1": val, "status": status, "name": f"{lr}-{wd}"}


# -- unit -----------------------------------------------------------------------------------------
def test_parse_grid_and_names():
    grid = parse_grid(["lr=0.05,0.1,0.25", "wd=0,1e-4", "num_prompts=5,10"])
    assert grid == {"lr": [0.05, 0.1, 0.25], "weight_decay": [0, 0.0001], "num_prompts": [5, 10]}
    assert trial_name({"lr": 0.1, "weight_decay": 1e-4}, 42, False) == "lr0.1-wd0.0001-seed42"
    assert trial_name({"weight_decay": 0.0, "lr": 2.5, "num_prompts": 10}, 44, True) == "final-lr2.5-wd0-num_prompts10-seed44"
    assert trial_name({"lr": 1e-5}, 1, False) == "lr0.00001-seed1"
    for bad in (["lr"], ["lr="], ["lr=0.1", "lr=0.2"]):
        with pytest.raises(UsageError):
            parse_grid(bad)


def test_selection_best_val_then_smaller_lr_then_smaller_wd():
    records = [rec(0.1, 0.0, 80.0), rec(0.05, 1e-4, 85.0), rec(0.5, 0.0, 85.0), rec(0.05, 1e-3, 85.0)]
    assert select_best(records)["point"] == {"lr": 0.05, "weight_decay": 1e-4}  # tie at 85: lr 0.05, then wd 1e-4
    records = [rec(0.25, 0.01, 70.0), rec(0.25, 0.0, 70.0), rec(0.1, 0.0, 60.0)]
    assert select_best(records)["point"] == {"lr": 0.25, "weight_decay": 0.0}  # same lr: smaller wd
    # failed trials never win, whatever their (missing) val
    records = [rec(0.1, 0.0, None, status="failed"), rec(0.2, 0.0, 10.0)]
    assert select_best(records)["point"]["lr"] == 0.2
    assert select_best([rec(0.1, 0.0, None, status="failed")]) is None
    # other grid keys are not ranked: the trial planned first wins, never the shortest prompt by rule
    records = [rec(0.1, 0.0, 50.0, num_prompts=10), rec(0.1, 0.0, 50.0, num_prompts=5)]
    assert select_best(records)["point"]["num_prompts"] == 10
    assert select_best(records[::-1])["point"]["num_prompts"] == 5


def test_selection_ties_on_other_keys_keep_the_plan_order_and_skip_non_numbers():
    """Only lr and wd are ranked (tune_vtab.py:63-71 breaks ties by the smaller lr); under any other
    grid key the trial planned first wins, whatever its type or size; a bool or NaN val never wins."""
    tie = [rec(0.1, 0.0, 50.0, num_prompts="x"), rec(0.1, 0.0, 50.0, num_prompts=10)]
    assert select_best(tie)["point"]["num_prompts"] == "x"
    tie = [rec(0.1, 0.0, 50.0, num_prompts=200), rec(0.1, 0.0, 50.0, num_prompts=1)]
    assert select_best(tie)["point"]["num_prompts"] == 200
    tie = [rec(0.1, 0.0, 50.0, style="b"), rec(0.1, 0.0, 50.0, style="a")]
    assert select_best(tie)["point"]["style"] == "b"
    tie = [rec(0.2, 0.0, 50.0, num_prompts=1), rec(0.1, 0.0, 50.0, num_prompts=200)]
    assert select_best(tie)["point"] == {"lr": 0.1, "weight_decay": 0.0, "num_prompts": 200}  # lr still ranks first
    assert select_best([rec(0.1, 0.0, True), rec(0.2, 0.0, 0.5)])["point"]["lr"] == 0.2
    assert select_best([rec(0.1, 0.0, float("nan")), rec(0.2, 0.0, 0.5)])["point"]["lr"] == 0.2


def test_worker_envs_round_robin_gpus_and_cpu_threads(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    envs = worker_envs(3)
    assert [e["CUDA_VISIBLE_DEVICES"] for e in envs] == ["2", "3", "2"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    monkeypatch.setenv("OMP_NUM_THREADS", "8")
    envs = worker_envs(2)
    assert all(e["OMP_NUM_THREADS"] == e["MKL_NUM_THREADS"] for e in envs)
    assert all(1 <= int(e["OMP_NUM_THREADS"]) <= 8 for e in envs)


def test_task_patterns_expand_over_prepared_tasks(cli, isolated_lspt_home):
    from lspt_cli import paths
    from lspt_cli.plugins import get_host
    from lspt_cli.sweep import expand_tasks

    with pytest.raises(UsageError, match="matches no prepared task"):
        expand_tasks(["vtab/*"], get_host())
    for task in ("vtab/dtd", "vtab/dmlab", "mydata"):
        (paths.tasks_dir() / task).mkdir(parents=True)
        (paths.tasks_dir() / task / "manifest.json").write_text("{}")
    assert expand_tasks(["vtab/d*"], get_host()) == ["vtab/dmlab", "vtab/dtd"]
    assert expand_tasks(["my*", "dig*"], get_host()) == ["mydata", "digits"]  # digits needs no root
    result = cli("sweep", *BASE[:2], "--task", "nothing-*", "--plan")
    assert result.exit_code == 2 and "matches no task" in result.output


def test_plan_prints_tune_commands_and_runs_nothing(cli, tmp_path, monkeypatch):
    from lspt_cli.engine import train

    monkeypatch.setattr(train.Trainer, "run", lambda *a, **k: pytest.fail("--plan must not train"))
    out = tmp_path / "sweep"
    result = cli("sweep", *BASE, *GRID, "--seeds", "42,44", "--out", str(out), "--plan")
    assert result.exit_code == 0, result.output
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 4
    seen = set()
    for line in lines:  # each trial runs its resolved config file, written into the trial's directory
        argv = shlex.split(line)
        assert argv[:2] == ["lspt", "tune"] and argv[2] == "--config" and argv[4] == "--out" and len(argv) == 6
        config = json.loads(Path(argv[3]).read_text())
        train = config["train"]
        assert train["seed"] == 42 and config["backbone"] == "vit-tiny" and config["task"] == "digits"
        assert train["epochs"] == 1 and config["final"] is False and config["strategy_config"]["num_prompts"] == 2
        seen.add((train["lr"], train["weight_decay"]))
        trial_dir = (out / "digits" / trial_name({"lr": train["lr"], "weight_decay": train["weight_decay"]}, 42, False)).resolve()
        assert argv[5] == str(trial_dir) and argv[3] == str(trial_dir / "trial.json")
    assert seen == {(0.01, 0.0), (0.01, 1e-4), (0.02, 0.0), (0.02, 1e-4)}
    assert "re-run" in result.stderr and "final" in result.stderr
    assert not out.exists() or not any(out.rglob("config.json"))

    # Once the grid is finished on disk, --plan can select and prints the finals instead.
    vals = {"lr0.01-wd0-seed42": 50.0, "lr0.01-wd0.0001-seed42": 60.0, "lr0.02-wd0-seed42": 60.0, "lr0.02-wd0.0001-seed42": 10.0}
    for name, val in vals.items():
        (out / "digits" / name).mkdir(parents=True, exist_ok=True)
        (out / "digits" / name / "summary.json").write_text(json.dumps(
            {"task": "digits", "backbone": "vit-tiny", "strategy": "vpt-deep", "val_top1": val, "test_top1": 1.0}))
    result = cli("sweep", *BASE, *GRID, "--seeds", "42,44", "--out", str(out), "--plan")
    lines = result.stdout.strip().splitlines()
    finals = [json.loads(Path(shlex.split(line)[3]).read_text()) for line in lines]
    assert len(finals) == 2 and all(f["final"] for f in finals)
    assert [f["train"]["seed"] for f in finals] == [42, 44]
    assert all((f["train"]["lr"], f["train"]["weight_decay"]) == (0.01, 1e-4) for f in finals)  # tie at 60: smaller lr wins


def test_grid_keys_are_checked(cli, tmp_path):
    result = cli("sweep", *BASE, "--grid", "lrr=0.1,0.2", "--out", str(tmp_path / "s"), "--plan")
    assert result.exit_code == 2 and "unknown grid key 'lrr'" in result.output
    result = cli("sweep", *BASE, "--grid", "epochs=1,2", "--out", str(tmp_path / "s"), "--plan")
    assert result.exit_code == 2 and "both a grid key and a fixed flag" in result.output
    result = cli("sweep", *BASE[:-2], "--set", "bogus=1", "--out", str(tmp_path / "s"), "--plan")
    assert result.exit_code == 2 and "unknown option 'bogus'" in result.output


def test_recipe_grid_is_the_default(cli, tmp_path):
    # vit-tiny's recipe searches lr in {0.005, 0.01, 0.02, 0.05}; an explicit --lr pins it away.
    result = cli("sweep", *BASE, "--out", str(tmp_path / "s"), "--plan")
    assert sorted(t["train"]["lr"] for t in planned_trials(result.stdout)) == [0.005, 0.01, 0.02, 0.05]
    result = cli("sweep", *BASE, "--lr", "0.03", "--seeds", "7", "--out", str(tmp_path / "s"), "--plan")
    trials = planned_trials(result.stdout)  # one grid point: straight to the final run
    assert len(trials) == 1 and trials[0]["final"] and trials[0]["train"]["lr"] == 0.03 and trials[0]["train"]["seed"] == 7


# -- end to end (trains) --------------------------------------------------------------------------
def count_runs(monkeypatch):
    from lspt_cli.engine import train

    calls = []
    original = train.Trainer.run

    def run(self, resume=False):
        calls.append((self.run_dir.name, resume))
        return original(self, resume=resume)

    monkeypatch.setattr(train.Trainer, "run", run)
    return calls


@pytest.mark.slow
def test_sweep_selects_runs_finals_and_resumes(cli, tmp_path, monkeypatch):
    out = tmp_path / "sweep"
    calls = count_runs(monkeypatch)
    result = cli("sweep", *BASE, *GRID, "--seeds", "42,44", "--out", str(out), "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc == json.loads((out / "sweep.json").read_text()) | {"updated": doc["updated"]}
    names = sorted(p.name for p in (out / "digits").iterdir())
    chosen = trial_name(doc["selections"]["digits"]["point"], 42, False)
    assert names == sorted(["lr0.01-wd0-seed42", "lr0.01-wd0.0001-seed42", "lr0.02-wd0-seed42", "lr0.02-wd0.0001-seed42",
                            "final-" + chosen, "final-" + chosen.replace("seed42", "seed44")])
    assert len(calls) == 6 and doc["counts"] == {"total": 6, "ran": 6, "resumed": 0, "skipped": 0, "failed": 0, "pending": 0}
    grid = [t for t in doc["trials"] if t["phase"] == "grid"]
    assert len(grid) == 4 and all(t["seed"] == 42 and t["status"] == "finished" for t in grid)
    assert all(isinstance(t["val_top1"], float) and isinstance(t["test_top1"], float) for t in grid)
    selection = doc["selections"]["digits"]
    assert selection["point"] == select_best(grid)["point"]
    finals = [t for t in doc["trials"] if t["phase"] == "final"]
    assert [t["seed"] for t in finals] == [42, 44] and all(t["point"] == selection["point"] for t in finals)
    for t in finals:
        summary = json.loads((out / "digits" / t["name"] / "summary.json").read_text())
        assert summary["final"] is True and summary["seed"] == t["seed"] and summary["val_top1"] is None
        config = json.loads((out / "digits" / t["name"] / "config.json").read_text())
        assert config["train"]["lr"] == selection["point"]["lr"] and config["train"]["epochs"] == 1
    fin = doc["finals"]["digits"]
    assert fin["n"] == 2 and fin["seeds"] == [42, 44]
    assert fin["mean"] == pytest.approx(sum(fin["test_top1"]) / 2)
    assert (out / "sweep.md").read_text().count("| digits |") == 7  # 1 summary row + 6 trial rows
    assert len((out / "sweep.csv").read_text().splitlines()) == 7

    # Half-done: one trial killed before its summary (checkpoint left), one never started, one
    # final lost its summary. Re-running the same command runs only those three.
    victim = [t for t in grid if t["point"] != selection["point"]][0]["name"]
    (out / "digits" / victim / "summary.json").unlink()
    import shutil

    never = [t for t in grid if t["point"] != selection["point"]][1]["name"]
    shutil.rmtree(out / "digits" / never)
    (out / "digits" / finals[1]["name"] / "summary.json").unlink()
    calls.clear()
    again = cli("sweep", *BASE, *GRID, "--seeds", "42,44", "--out", str(out), "--json")
    assert again.exit_code == 0, again.output
    redo = json.loads(again.stdout)
    assert sorted(calls) == sorted([(victim, True), (never, False), (finals[1]["name"], True)])
    assert redo["counts"] == {"total": 6, "ran": 1, "resumed": 2, "skipped": 3, "failed": 0, "pending": 0}
    assert redo["selections"]["digits"]["point"] == selection["point"]
    assert redo["finals"]["digits"]["test_top1"] == fin["test_top1"]  # deterministic on CPU

    # lspt report on the sweep dir: the final runs, mean ± std
    md = cli("report", str(out))
    assert md.exit_code == 0, md.output
    assert "| vit-tiny | vpt-deep | lspt | digits | 2 final | 42,44 |" in md.stdout
    assert f"{fin['mean']:.2f} ± {fin['std']:.2f}" in md.stdout
    rows = cli("report", str(out), "--format", "csv").stdout.splitlines()
    assert rows[0].startswith("backbone,strategy,protocol,benchmark") and rows[1].startswith("vit-tiny,vpt-deep,lspt,other,,digits,2,True,")
    doc = json.loads(cli("report", str(out), "--format", "json").stdout)
    assert doc["runs"] == 6 and doc["other"][0]["mean"] == pytest.approx(fin["mean"])


@pytest.mark.slow
def test_failing_trials_are_recorded_and_the_sweep_goes_on(cli, tmp_path, monkeypatch):
    from lspt_cli.engine import train
    from lspt_cli.errors import LsptError

    original = train.Trainer.run

    def run(self, resume=False):
        if self.run_dir.name.startswith("lr0.02-"):
            raise RuntimeError("simulated crash")
        if self.run_dir.name.startswith("lr0.03-"):
            raise LsptError("simulated refusal")
        return original(self, resume=resume)

    monkeypatch.setattr(train.Trainer, "run", run)
    out = tmp_path / "sweep"
    result = cli("sweep", *BASE, "--grid", "lr=0.01,0.02,0.03", "--seeds", "42", "--out", str(out), "--json")
    assert result.exit_code == 1  # failures are reported in the exit code, after everything ran
    doc = json.loads(result.stdout)
    by_name = {t["name"]: t for t in doc["trials"]}
    assert by_name["lr0.02-seed42"]["status"] == "failed" and "simulated crash" in by_name["lr0.02-seed42"]["error"]
    assert by_name["lr0.03-seed42"]["status"] == "failed" and "simulated refusal" in by_name["lr0.03-seed42"]["error"]
    assert by_name["lr0.01-seed42"]["status"] == "finished"
    assert doc["selections"]["digits"]["point"] == {"lr": 0.01} and doc["selections"]["digits"]["failed"] == 2
    assert by_name["final-lr0.01-seed42"]["status"] == "finished"  # the finals still ran
    assert doc["counts"]["failed"] == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert errors == ["Error: 2 of 4 trial(s) failed"], result.stderr  # one line counting them


def test_a_point_whose_trials_all_failed_is_never_called_selected(cli, tmp_path, monkeypatch):
    from lspt_cli.engine import train

    monkeypatch.setattr(train.Trainer, "run", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("simulated crash")))
    result = cli("sweep", *BASE, "--lr", "0.01", "--seeds", "42", "--out", str(tmp_path / "s"))
    assert result.exit_code == 1
    assert "selected" not in result.stdout and "no trial of (defaults) succeeded" in result.stdout, result.stdout
    assert [line for line in result.stderr.splitlines() if line.startswith("Error:")] == ["Error: 1 of 1 trial(s) failed"]


@pytest.mark.parametrize("grid, expected", [
    ("lr=-1,0", "--grid lr: must be > 0"),
    ("lr=0.1,abc", "--grid lr: must be float"),
    ("optimizer=adam", "--grid optimizer: must be 'sgd' or 'adamw'"),
    ("epochs=0", "--grid epochs: must be a positive integer"),
    ("dropout=-0.5", "--grid dropout=-0.5: strategy 'vpt-deep': dropout must be"),
    ("dropout=2", "--grid dropout=2: strategy 'vpt-deep': dropout must be"),
])
def test_invalid_grid_values_are_a_usage_error_before_planning(cli, tmp_path, grid, expected):
    result = cli("sweep", *BASE, "--grid", grid, "--out", str(tmp_path / "s"), "--plan")
    assert result.exit_code == 2 and expected in result.output and "command(s)" not in result.output, result.output
    assert not (tmp_path / "s").exists()


@pytest.mark.slow
def test_workers_run_trials_in_subprocesses(cli, tmp_path, monkeypatch):
    from lspt_cli.engine import train

    monkeypatch.setattr(train.Trainer, "run", lambda *a, **k: pytest.fail("workers must train in subprocesses"))
    out = tmp_path / "sweep"
    result = cli("sweep", *BASE, "--grid", "lr=0.01,0.02", "--seeds", "42", "--no-finals", "--workers", "2",
                 "--out", str(out), "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert [t["outcome"] for t in doc["trials"]] == ["ran", "ran"] and not doc["finals"]
    assert all((out / "digits" / t["name"] / "bundle.safetensors").exists() for t in doc["trials"])
