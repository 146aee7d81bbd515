"""The newcomer frictions of issue 12, section 3: one test (or more) per friction."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from lspt_cli.testing import fake_task, register_plugin, run_cli

ROOT = Path(__file__).resolve().parents[1]
TUNE = ("--backbone", "vit-tiny", "--strategy", "vpt-shallow", "--set", "num_prompts=2", "--epochs", "1",
        "--warmup-epochs", "0", "--batch-size", "8")


@pytest.fixture
def trained(tmp_path):
    """One finished run (fake 3-class task) and its bundle."""
    task = fake_task()
    result = run_cli("tune", "--task", task, *TUNE, "--out", str(tmp_path / "run"), "--json")
    assert result.exit_code == 0, result.stderr
    return task, tmp_path / "run" / "bundle.safetensors"


# -- a stable run handle ---------------------------------------------------------------------------
def test_latest_link_follows_the_newest_run_and_readme_commands_repeat():
    from lspt_cli import paths

    task = fake_task()
    runs = []
    for _ in range(2):  # the same command twice, as a user repeats a README line
        result = run_cli("tune", "--task", task, *TUNE, "--json")
        assert result.exit_code == 0, result.stderr
        runs.append(Path(result.json["run_dir"]))
    assert runs[0] != runs[1] and all(r.is_dir() for r in runs)  # same second: the second one gets "-2"
    link = paths.runs_dir() / "fake-vpt-shallow-vit-tiny-latest"
    assert link.is_symlink() and os.readlink(link) == runs[1].name  # relative: the runs folder can move
    assert link.resolve() == runs[1].resolve()
    for _ in range(2):
        ev = run_cli("eval", str(link / "bundle.safetensors"), "--json")
        assert ev.exit_code == 0 and ev.json["bundle"].endswith("latest/bundle.safetensors"), ev.stderr
    out = link.parent / "exported.safetensors"
    assert run_cli("export", str(link), "-o", str(out)).exit_code == 0 and out.stat().st_size > 0
    for doc in [ROOT / "README.md", *(ROOT / "docs").glob("*.md")]:
        assert not re.search(r"runs/[\w./-]*-\*/", doc.read_text()), f"{doc.name} globs a run directory: breaks with two runs"
    assert "cub-lspt-mae-vitb-latest/bundle.safetensors" in (ROOT / "README.md").read_text()  # the quickstart


def test_point_latest_replaces_atomically_and_unique_run_dirs(tmp_path):
    from lspt_cli.run_handle import latest_link, point_latest, run_name, unique_run_dir

    a, b = tmp_path / "t-s-b-20260101-120000", tmp_path / "t-s-b-20260101-120000-2"
    a.mkdir()
    assert unique_run_dir(a) == b and unique_run_dir(tmp_path / "new") == tmp_path / "new"
    b.mkdir()
    assert run_name(b) == "t-s-b" and latest_link(tmp_path / "custom-name") is None
    assert point_latest(a) == tmp_path / "t-s-b-latest" and os.readlink(tmp_path / "t-s-b-latest") == a.name
    (tmp_path / f".t-s-b-latest.{os.getpid()}.tmp").write_text("left by a killed run")
    assert point_latest(b) == tmp_path / "t-s-b-latest" and os.readlink(tmp_path / "t-s-b-latest") == b.name
    assert sorted(p.name for p in tmp_path.iterdir()) == [a.name, b.name, "t-s-b-latest"]


# -- --help ----------------------------------------------------------------------------------------
def _all_commands():
    import typer

    from lspt_cli.cli import create_app

    def walk(cmd, path):
        yield path, cmd
        for name, sub in getattr(cmd, "commands", {}).items():
            yield from walk(sub, path + [name])

    return list(walk(typer.main.get_command(create_app()), []))


def test_help_has_no_placeholders_no_cut_names_and_every_option_documented(monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")  # a normal terminal
    commands = _all_commands()
    assert len(commands) >= 15
    for path, cmd in commands:
        result = run_cli(*path, "--help")
        text = result.stdout
        assert result.exit_code == 0 and text.startswith("Usage: "), (path, result.stderr)
        assert max(len(line) for line in text.splitlines()) <= 80, path
        assert "<bool>" not in text and "…" not in text and "╭" not in text, (path, text)
        for param in cmd.params:
            if param.param_type_name != "option" or param.name == "help":
                continue
            for opt in param.opts:
                assert re.search(rf"(^|[\s,]){re.escape(opt)}([\s,]|$)", text, re.M), (path, opt)
            assert (param.help or "").strip(), f"lspt {' '.join(path)} {param.opts[0]} has no description"
            if not param.is_flag and not param.required:
                help_line = param.get_help_record(__import__("typer")._click.Context(cmd))[1]
                assert "default" in help_line.lower() or "required" in help_line.lower(), (path, param.opts[0], help_line)


def test_tune_help_shows_training_defaults_from_the_tables():
    from lspt_cli.settings import TrainConfig

    text = run_cli("tune", "--help").stdout
    squashed = " ".join(text.split())
    assert f"--epochs <int> Training epochs. [default: the recipe's, else {TrainConfig.epochs}]" in squashed
    assert f"[default: the recipe's, else {TrainConfig.seed}]" in squashed
    assert "--lr <float> Base learning rate." in squashed


# -- --fail-under ----------------------------------------------------------------------------------
def test_fail_under_refuses_an_ambiguous_fraction_and_accepts_percent(trained):
    _, bundle = trained
    top1 = run_cli("eval", str(bundle), "--json").json["top1"]
    ambiguous = run_cli("eval", str(bundle), "--fail-under", "0.99")
    assert ambiguous.exit_code == 2
    assert ambiguous.stderr.splitlines()[0] == ("Error: --fail-under 0.99 is ambiguous: the unit is percent, so it means "
                                               "0.99% (almost any bundle passes)")
    assert "--fail-under 99 for 99%" in ambiguous.stderr
    above = f"{min(100.0, top1 + 1):.2f}%"
    assert run_cli("eval", str(bundle), "--fail-under", above).exit_code == 3
    assert run_cli("eval", str(bundle), "--fail-under", f"{max(0.0, top1 - 1):.2f}").exit_code == 0
    assert run_cli("eval", str(bundle), "--fail-under", "0.5%").exit_code == (0 if top1 >= 0.5 else 3)
    for bad in ("abc", "-1", "nan", "inf", "0.5x"):
        assert run_cli("eval", str(bundle), "--fail-under", bad).exit_code == 2, bad
    assert run_cli("eval", str(bundle), "--fail-under", "100.1").exit_code == 3  # never met: a CI gate that fails
    assert "`--fail-under` is in percent" in (ROOT / "docs" / "usage.md").read_text()


# -- list, eval, inspect, plugins ------------------------------------------------------------------
def test_list_strategies_shows_the_defaults():
    text = run_cli("list", "strategies").stdout
    rows = [line.split("│")[1:-1] for line in text.splitlines() if line.count("│") == 5]
    squashed = "".join(cells[3].strip() for cells in rows)  # the defaults column, wrapped cells rejoined
    for cell in ("num_prompts=100,dropout=0.0", "num_prompts=10,dropout=0.1", "spatial=mean", "temperature=true"):
        assert cell in squashed, cell


def test_eval_prints_the_split(trained):
    task, bundle = trained
    assert run_cli("eval", str(bundle)).stdout.startswith(f"{task} [test]: top-1 ")
    assert run_cli("eval", str(bundle), "--split", "val").stdout.startswith(f"{task} [val]: top-1 ")


def test_inspect_shows_the_whole_fingerprint_on_an_80_column_terminal(trained, tmp_path):
    _, bundle = trained
    from lspt_cli.bundle import read_header

    fingerprint = read_header(bundle).backbone["fingerprint"]
    env = dict(os.environ, COLUMNS="80")
    text = subprocess.run([sys.executable, "-m", "lspt_cli", "inspect", str(bundle)], env=env, capture_output=True,
                          text=True).stdout
    assert "…" not in text and max(len(line) for line in text.splitlines() if "│" in line) <= 80
    assert fingerprint in re.sub(r"[│\s]", "", text)


def test_plugins_table_keeps_long_plugin_names_whole():
    from lspt_cli import StrategySpec, hookimpl

    class Plugin:
        @hookimpl
        def lspt_register_strategies(self, register):
            register(StrategySpec(name="a-strategy-with-a-long-name", description="x", factory="x:y"))

    name = "lspt-a-rather-long-distribution-name:entry"
    with register_plugin(Plugin(), name=name):
        text = run_cli("plugins").stdout
    assert name in text and "…" not in text


# -- tune ------------------------------------------------------------------------------------------
def test_tune_summary_names_the_selection_and_the_baseline(tmp_path):
    task = fake_task()
    result = run_cli("tune", "--task", task, *TUNE, "--out", str(tmp_path / "r"))
    assert result.exit_code == 0, result.stderr
    assert re.search(r", epoch 1/1 selected on val \(best val top-1\), ", result.stdout), result.stdout
    assert ("Note: chance is 33.3% (3 classes); the backbone is not pretrained (random init (seed 0)), so the "
            "number only shows that the pipeline learns.") in result.stderr
    quiet = run_cli("tune", "--task", task, *TUNE, "--out", str(tmp_path / "q"), "-q")
    assert quiet.exit_code == 0 and "selected on val" in quiet.stdout and quiet.stderr == ""


def test_progress_bar_labels_train_accuracy_and_shows_val_accuracy_per_epoch(monkeypatch):
    from rich.console import Console

    from lspt_cli.cli import tune
    from lspt_cli.engine.train import RunInfo
    from lspt_cli.plugins import get_host

    console = Console(file=io.StringIO(), force_terminal=True, width=160, color_system=None)
    monkeypatch.setattr(tune, "err", console)
    host = get_host()
    with tune.EpochProgress() as bar, bar.watching(host):
        assert "lspt-progress" in host.records
        update = bar.factory(0, 2, 8)
        update(8, loss=1.25, acc=62.5, ips=100.0)
        update(0, done=True)
        host.emit("lspt_on_epoch_end", run=RunInfo(dir=Path("."), name="r"), metrics={"epoch": 1, "val_acc": 41.5})
    assert "lspt-progress" not in host.records
    text = console.file.getvalue()
    assert "train loss 1.2500  train acc  62.5%" in text and "val acc  41.5%" in text


def test_tune_on_a_missing_task_prints_no_run_directory(tmp_path):
    from lspt_cli import paths

    result = run_cli("tune", "--backbone", "vit-tiny", "--task", "cub")
    assert result.exit_code == 1
    assert "Run directory:" not in result.stderr
    assert result.stderr.startswith("Error: task 'cub' is not prepared")
    assert not paths.runs_dir().exists() or not any(paths.runs_dir().iterdir())


# -- predict, export -------------------------------------------------------------------------------
def test_predict_names_a_missing_bundle(tmp_path):
    missing = tmp_path / "missing.safetensors"
    result = run_cli("predict", str(missing))
    assert result.exit_code == 1  # a bad file is a runtime error, as in eval
    assert result.stderr.splitlines()[0] == f"Error: {missing}: no such bundle file"
    result = run_cli("predict", str(missing), str(tmp_path / "bird.jpg"))
    assert result.stderr.splitlines()[0] == f"Error: {missing}: no such bundle file"


def test_docs_document_export_pt2():
    usage = (ROOT / "docs" / "usage.md").read_text()
    assert "--format pt2" in usage and "torch.export.load" in usage
