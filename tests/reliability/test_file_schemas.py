"""Every file lspt reads back from a run directory is checked against its schema (lspt_cli/schema.py):
a hand-edited, truncated or foreign config.json, checkpoint.pt or metrics.jsonl is one `Error:` line
naming the file and what was expected, through the real CLI (`tune --resume`, `export`), never a
KeyError/TypeError, never a silent fallback to defaults; and the run directory is left byte-for-byte
as it was.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch

from lspt_cli import schema
from lspt_cli.errors import RunFileError

from .conftest import assert_clean_error

RUN_FILES = ("config.json", "checkpoint.pt", "metrics.jsonl")


@pytest.fixture
def run_copy(reference_bundle, tmp_path) -> Path:
    """A copy of the reference run (3 epochs, finished) without its bundle and summary: an unfinished run."""
    run = tmp_path / "run"
    shutil.copytree(reference_bundle.parent, run)
    (run / "bundle.safetensors").unlink()
    (run / "summary.json").unlink()
    return run


def _snapshot(run: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}


def _edit_config(run: Path, change) -> None:
    doc = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps(change(doc)))


def _edit_checkpoint(run: Path, change) -> None:
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    torch.save(change(state), run / "checkpoint.pt")


def _train(**changes):
    return lambda c: {**c, "train": {**c["train"], **changes}}


def _without(*keys, section=None):
    def change(doc):
        target = dict(doc[section]) if section else dict(doc)
        for key in keys:
            target.pop(key)
        return {**doc, section: target} if section else target
    return change


def _other_optimizer(c):
    return _train(optimizer="sgd" if c["train"]["optimizer"] == "adamw" else "adamw")(c)


CONFIG_CASES = {
    "a list": (lambda c: [c], ("config.json", "expected a JSON object, got a list")),
    "a string": (lambda c: "run", ("config.json", "expected a JSON object, got a string")),
    "null": (lambda c: None, ("config.json", "expected a JSON object, got null")),
    "no train": (_without("train"), ("config.json", "missing 'train'")),
    "train a list": (lambda c: {**c, "train": []}, ("'train' must be an object, got a list",)),
    "train without optimizer": (_without("optimizer", section="train"), ("lacks optimizer",)),
    "train without lr and seed": (_without("lr", "seed", section="train"), ("lacks lr, seed",)),
    "train empty": (lambda c: {**c, "train": {}}, ("lacks epochs",)),
    "lr a string": (_train(lr="fast"), ("config.json", "'lr'")),
    "epochs zero": (_train(epochs=0), ("config.json", "epochs")),
    "optimizer unknown": (_train(optimizer="lion"), ("config.json", "optimizer")),
    "unknown train key": (_train(warp_speed=9), ("config.json", "warp_speed")),
    "backbone a number": (lambda c: {**c, "backbone": 3}, ("'backbone' must be a string, got an integer",)),
    "no task": (_without("task"), ("missing 'task'",)),
    "strategy_config a list": (lambda c: {**c, "strategy_config": [1]}, ("'strategy_config' must be an object",)),
    "final a string": (lambda c: {**c, "final": "yes"}, ("'final' must be a boolean",)),
    "weights a number": (lambda c: {**c, "weights": 7}, ("'weights' must be a string or null",)),
    "recipes an object": (lambda c: {**c, "recipes": {}}, ("'recipes' must be a list",)),
    # the config names another optimizer / strategy / fewer epochs than the checkpoint it sits next to
    "optimizer other than the checkpoint's": (_other_optimizer, ("checkpoint.pt", "optimizer state", "config.json says")),
    "strategy other than the checkpoint's": (lambda c: {**c, "strategy": "vpt-shallow"}, ("checkpoint.pt", "strategy 'vpt-deep'", "vpt-shallow")),
    "epochs fewer than done": (_train(epochs=2), ("checkpoint.pt", "past the run's 2 epochs")),
}


@pytest.mark.parametrize("case", list(CONFIG_CASES))
def test_bad_config_json_on_resume(cli_err, run_copy, tally, case):
    change, needles = CONFIG_CASES[case]
    _edit_config(run_copy, change)
    before = _snapshot(run_copy)
    code, out, err = cli_err("tune", "--resume", run_copy, "-q")
    assert_clean_error(code, out, err, *needles, exit_code=1)
    assert _snapshot(run_copy) == before, "a failed resume changed the run directory"
    tally.bad_input(f"config.json: {case}")


RAW_CONFIGS = {
    "truncated": (b'{"backbone": "vit-tiny", "train": {', ("config.json", "corrupt run config")),
    "deeply nested": (b"[" * 100_000 + b"]" * 100_000, ("config.json", "corrupt run config")),
    "not UTF-8": (b"\xff\xfe{\x00}", ("config.json", "not UTF-8")),
    "empty": (b"", ("config.json", "corrupt run config")),
    "NaN lr": (None, ("config.json", "lr")),
}


@pytest.mark.parametrize("case", list(RAW_CONFIGS))
def test_unparseable_config_json_on_resume(cli_err, run_copy, tally, case):
    data, needles = RAW_CONFIGS[case]
    if data is None:  # json.dumps writes NaN, which Python's json reads back
        _edit_config(run_copy, _train(lr=math.nan))
    else:
        (run_copy / "config.json").write_bytes(data)
    before = _snapshot(run_copy)
    code, out, err = cli_err("tune", "--resume", run_copy, "-q")
    assert_clean_error(code, out, err, *needles)
    assert _snapshot(run_copy) == before
    tally.bad_input(f"config.json: {case}")


def test_config_json_that_is_a_directory_or_missing(cli_err, run_copy, tmp_path, tally):
    (run_copy / "config.json").unlink()
    code, out, err = cli_err("tune", "--resume", run_copy, "-q")
    assert_clean_error(code, out, err, "not an lspt run directory", exit_code=2)
    (run_copy / "config.json").mkdir()
    code, out, err = cli_err("tune", "--resume", run_copy, "-q")
    assert_clean_error(code, out, err, "config.json", "is a directory")
    code, out, err = cli_err("tune", "--resume", tmp_path / "nowhere", "-q")
    assert_clean_error(code, out, err, "nowhere", "no such run directory", exit_code=2)
    tally.bad_input("config.json: missing")
    tally.bad_input("config.json: a directory")
    tally.bad_input("--resume of a directory that does not exist")


def _meta(change):
    def edit(state):
        meta = json.loads(state["meta"])
        return {**state, "meta": json.dumps(change(meta))}
    return edit


def _set(key, value):
    return lambda state: {**state, key: value}


# name -> (checkpoint change, needles, also through `lspt export`)
CHECKPOINT_CASES = {
    "meta missing": (_without("meta"), ("checkpoint.pt", "'meta' must be a JSON string, got nothing"), True),
    "meta a number": (_set("meta", 5), ("'meta' must be a JSON string, got an integer",), True),
    "meta not JSON": (_set("meta", "{oops"), ("'meta' is not valid JSON",), True),
    "meta a list": (_set("meta", "[]"), ("meta: expected a JSON object, got a list",), True),
    "meta without backbone": (_meta(_without("backbone")), ("meta lacks 'backbone'",), True),
    "meta backbone a string": (_meta(lambda m: {**m, "backbone": "vit-tiny"}), ("meta.backbone",), True),
    "meta backbone name a number": (_meta(lambda m: {**m, "backbone": {**m["backbone"], "name": 1}}), ("meta.backbone", "'name'"), True),
    "meta without fingerprint": (_meta(lambda m: {**m, "backbone": {"name": m["backbone"]["name"]}}), ("'fingerprint'",), True),
    "meta classes empty": (_meta(lambda m: {**m, "task": {**m["task"], "classes": []}}), ("classes",), True),
    "meta classes not names": (_meta(lambda m: {**m, "task": {**m["task"], "classes": [1, 2]}}), ("classes",), True),
    "meta strategy config a list": (_meta(lambda m: {**m, "strategy": {**m["strategy"], "config": []}}), ("meta.strategy", "'config'"), True),
    "meta unknown field": (_meta(lambda m: {**m, "evil": 1}), ("unknown field", "evil"), True),
    "epoch a string": (_set("epoch", "3"), ("'epoch' must be an integer, got a string",), True),
    "epoch negative": (_set("epoch", -1), ("negative epoch",), True),
    "position a float": (_set("position", 0.5), ("'position' must be an integer",), True),
    "no trainable": (_without("trainable"), ("missing 'trainable'",), True),
    "trainable empty": (_set("trainable", {}), ("'trainable'",), True),
    "trainable not tensors": (_set("trainable", {"head.weight": [1.0]}), ("'trainable'",), True),
    "optimizer missing": (_without("optimizer"), ("missing 'optimizer'",), True),
    "optimizer groups not a list": (lambda s: {**s, "optimizer": {"state": {}, "param_groups": {}}}, ("param_groups",), True),
    "best a list": (_set("best", []), ("'best' must be an object",), True),
    "best top1 a string": (_set("best", {"top1": "high", "epoch": 1}), ("'top1' must be a number",), True),
    "running a number": (_set("running", 0), ("'running' must be an object",), True),
    "mid-epoch without its RNG state": (lambda s: {**{k: v for k, v in s.items() if k != "rng_cpu"}, "position": 2}, ("rng_cpu",), True),
    "a list, not a dict": (lambda s: [s["trainable"]], ("not an lspt checkpoint",), True),
    "another version": (_set("version", 2), ("version 1",), True),
    # only a resume knows the model: these export fine (as the tensors they are) but cannot be resumed
    "an extra tensor": (lambda s: {**s, "trainable": {**s["trainable"], "strategy.extra": torch.zeros(3)}}, ("unexpected tensors", "strategy.extra"), False),
    "a tensor of another shape": (lambda s: {**s, "trainable": {**s["trainable"], "head.bias": torch.zeros(3)}}, ("head.bias", "shape"), False),
}


@pytest.mark.parametrize("case,command", [(case, command) for case, (_, _, via_export) in CHECKPOINT_CASES.items()
                                          for command in (("resume", "export") if via_export else ("resume",))])
def test_bad_checkpoint(cli_err, run_copy, tally, case, command):
    change, needles, _ = CHECKPOINT_CASES[case]
    _edit_checkpoint(run_copy, change)
    before = _snapshot(run_copy)
    if command == "resume":
        code, out, err = cli_err("tune", "--resume", run_copy, "-q")
    else:
        code, out, err = cli_err("export", run_copy, "-o", run_copy.parent / "out.safetensors")
        assert not (run_copy.parent / "out.safetensors").exists()
    assert_clean_error(code, out, err, *needles, exit_code=1)
    assert _snapshot(run_copy) == before
    tally.bad_input(f"checkpoint.pt: {case} (via {command})")


METRICS_CASES = {
    "missing": (None, ("metrics.jsonl", "0 epoch record(s)", "3 epoch(s) done")),
    "empty": (b"", ("metrics.jsonl", "0 epoch record(s)")),
    "a line that is a list": (b"[1, 2]\n", ("metrics.jsonl, line 1", "expected a JSON object, got a list")),
    "a line without epoch": (b'{"train_loss": 1.0}\n', ("line 1", "missing 'epoch'")),
    "epoch a string": (b'{"epoch": "1"}\n', ("line 1", "'epoch' must be an integer")),
    "a gap in the epochs": (b'{"epoch": 1}\n{"epoch": 3}\n', ("line 2", "epoch 3, expected 2")),
    "lr a string": (b'{"epoch": 1, "lr": "x"}\n', ("line 1", "'lr' must be a number")),
    "fewer epochs than the checkpoint": (b'{"epoch": 1}\n{"epoch": 2}\n', ("2 epoch record(s)", "3 epoch(s) done")),
    "not JSON": (b"{nope\n", ("line 1", "not valid JSON")),
}


@pytest.mark.parametrize("case", list(METRICS_CASES))
def test_bad_metrics_jsonl_on_resume(cli_err, run_copy, tally, case):
    data, needles = METRICS_CASES[case]
    if data is None:
        (run_copy / "metrics.jsonl").unlink()
    else:
        (run_copy / "metrics.jsonl").write_bytes(data)
    before = _snapshot(run_copy)
    code, out, err = cli_err("tune", "--resume", run_copy, "-q")
    assert_clean_error(code, out, err, *needles, exit_code=1)
    assert _snapshot(run_copy) == before
    tally.bad_input(f"metrics.jsonl: {case}")


@pytest.mark.parametrize("option", [("--epochs", "5"), ("--lr", "0.5"), ("--optimizer", "sgd"), ("--seed", "1"),
                                    ("--batch-size", "8"), ("--overwrite",), ("--task", "digits"), ("--set", "num_prompts=4")])
def test_resume_refuses_options_it_would_ignore(cli_err, run_copy, tally, option):
    before = _snapshot(run_copy)
    code, out, err = cli_err("tune", "--resume", run_copy, *option, "-q")
    assert_clean_error(code, out, err, "--resume", option[0], "cannot be changed", exit_code=2)
    assert _snapshot(run_copy) == before
    tally.bad_input(f"tune --resume with {option[0]}, which it cannot apply")


SUMMARIES = {
    "a list": ([], "expected a JSON object"),
    "no test_top1": ({"task": "digits", "backbone": "vit-tiny", "strategy": "vpt-deep"}, "missing 'test_top1'"),
    "test_top1 a string": ({"task": "d", "backbone": "b", "strategy": "s", "test_top1": "99"}, "'test_top1' must be a number"),
    "test_top1 NaN": ({"task": "d", "backbone": "b", "strategy": "s", "test_top1": math.nan}, "not a finite number"),
    "task a number": ({"task": 1, "backbone": "b", "strategy": "s", "test_top1": 1.0}, "'task' must be a string"),
    "seconds a list": ({"task": "d", "backbone": "b", "strategy": "s", "test_top1": 1.0, "seconds": []}, "'seconds' must be a number"),
}


@pytest.mark.parametrize("case", list(SUMMARIES))
def test_bad_summary_json(tmp_path, tally, case):
    """A sweep treats a malformed summary.json as an unfinished trial (it re-runs it), never crashes."""
    from lspt_cli.sweep import read_summary

    doc, needle = SUMMARIES[case]
    (tmp_path / "summary.json").write_text(json.dumps(doc))
    with pytest.raises(RunFileError) as exc:
        schema.summary(tmp_path / "summary.json")
    assert needle in exc.value.message and "summary.json" in exc.value.message
    assert read_summary(tmp_path) is None
    tally.bad_input(f"summary.json: {case}")


def test_a_good_run_passes_every_schema(reference_bundle):
    """The schemas accept what lspt itself writes (else every check above would be vacuous)."""
    run = reference_bundle.parent
    config = schema.run_config(run / "config.json")
    assert config.backbone == "vit-tiny" and config.train.epochs == 3
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    schema.checkpoint_state(state, "checkpoint.pt")
    schema.checkpoint_fits_config(state, config, "checkpoint.pt")
    assert [r["epoch"] for r in schema.metrics_records(run / "metrics.jsonl")] == [1, 2, 3]
    assert schema.summary(run / "summary.json")["task"] == "digits"


BUNDLE_METADATA = {
    "class names that are numbers": ({"lspt.task": {"name": "digits", "classes": list(range(10)), "benchmark": "custom"}}, ("classes",)),
    "class names that are lists": ({"lspt.task": {"name": "digits", "classes": [["a"]] * 10, "benchmark": "custom"}}, ("classes",)),
    "backbone name a number": ({"lspt.backbone": {"name": 7, "fingerprint": "x"}}, ("lspt.backbone", "name")),
    "fingerprint a list": ({"lspt.backbone": {"name": "vit-tiny", "fingerprint": []}}, ("fingerprint",)),
    "strategy config a list": ({"lspt.strategy": {"name": "vpt-deep", "config": []}}, ("lspt.strategy", "config")),
    "benchmark a list": ({"lspt.task": {"name": "digits", "classes": ["a"], "benchmark": []}}, ("benchmark",)),
    "schema not a number": ({"lspt.schema": "abc"}, ("lspt.schema",)),
    "schema 0": ({"lspt.schema": "0"}, ("lspt.schema",)),
}


@pytest.mark.parametrize("command", ["inspect", "predict", "export"])
@pytest.mark.parametrize("case", list(BUNDLE_METADATA))
def test_bad_bundle_metadata(cli_err, reference_bundle, tmp_path, tally, case, command):
    from PIL import Image

    from .test_bad_inputs import _rewrite

    meta, needles = BUNDLE_METADATA[case]
    bad = _rewrite(reference_bundle, tmp_path / "bad.safetensors", meta=meta)
    image = tmp_path / "d.png"
    Image.new("L", (8, 8)).save(image)
    args = {"inspect": ("inspect", bad), "predict": ("predict", bad, image),
            "export": ("export", bad, "-o", tmp_path / "out.safetensors")}[command]
    code, out, err = cli_err(*args)
    assert_clean_error(code, out, err, str(bad), *needles, exit_code=1)
    assert not (tmp_path / "out.safetensors").exists()
    tally.bad_input(f"bundle metadata: {case} ({command})")
