"""End to end on the embedded default (vit-tiny + digits): tune -> eval -> export -> inspect -> predict,
resume after an interruption, reproducibility, NaN handling, dry-run resolution."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from conftest import cli_in_own_home, interrupt_after
from lspt_cli import hookimpl
from lspt_cli.plugins import get_host

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("tune-e2e")]  # `pytest -n`: `trained` once

FAST = ["--backbone", "vit-tiny", "--task", "digits", "--strategy", "vpt-deep", "--epochs", "2",
        "--warmup-epochs", "1", "--batch-size", "128", "--set", "num_prompts=2"]


def tune(cli, out, *extra):
    result = cli("tune", *FAST, "--out", str(out), "--json", *extra)
    return result


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One FAST run for the module's tests, which only read it (trained once, under its own LSPT_HOME)."""
    base = tmp_path_factory.mktemp("trained")
    result = cli_in_own_home(base / "home", "tune", *FAST, "--out", base / "run", "--json")
    assert result.exit_code == 0, result.output
    return base / "run", json.loads(result.stdout)


def test_tune_writes_a_complete_run(trained):
    run, summary = trained
    assert {"config.json", "metrics.jsonl", "checkpoint.pt", "best.safetensors", "bundle.safetensors", "summary.json"} <= {
        p.name for p in run.iterdir()
    }
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]
    for key in ("train_loss", "train_acc", "val_acc", "lr", "images_per_s", "seconds"):
        assert key in records[0]
    best = max(r["val_acc"] for r in records)  # selection: argmax val, the earlier epoch on a tie
    assert summary["selected_epoch"] == next(r["epoch"] for r in records if r["val_acc"] == best)
    assert summary["val_top1"] == best and summary["selection"] == "best val top-1"
    assert summary["params"]["trainable"] == summary["params"]["strategy"] + summary["params"]["head"]
    tensors = load_file(str(run / "bundle.safetensors"))
    assert all(k.startswith(("strategy.", "head.")) for k in tensors)  # never the backbone
    assert not [f for f in run.iterdir() if f.name.endswith(".tmp")]


def test_eval_export_inspect_predict(cli, trained, tmp_path):
    from PIL import Image

    run, summary = trained
    result = cli("eval", str(run / "bundle.safetensors"), "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["task"] == "digits" and abs(doc["top1"] - summary["test_top1"]) < 1e-6
    assert len(doc["per_class"]) == 10
    assert cli("eval", str(run / "bundle.safetensors"), "--fail-under", "100.1").exit_code == 3
    bad_split = cli("eval", str(run / "bundle.safetensors"), "--split", "holdout")
    assert bad_split.exit_code == 2 and "has no 'holdout' split; it has:" in bad_split.output

    exported = tmp_path / "digits.safetensors"
    result = cli("export", str(run), "-o", str(exported), "--json")
    assert result.exit_code == 0 and json.loads(result.stdout)["bytes"] == exported.stat().st_size
    header = json.loads(cli("inspect", str(exported), "--json").stdout)
    assert header["metadata"]["lspt.task"]["name"] == "digits"
    assert header["metadata"]["lspt.backbone"]["name"] == "vit-tiny"

    image = tmp_path / "digit.png"
    Image.new("L", (8, 8), 70).save(image)
    result = cli("predict", str(exported), str(run / "bundle.safetensors"), str(image), "--top-k", "3", "--json")
    assert result.exit_code == 0, result.output
    preds = json.loads(result.stdout)
    first, second = preds[str(exported)][str(image)], preds[str(run / "bundle.safetensors")][str(image)]
    assert len(first) == 3 and first == second  # same tensors, same answer, one shared pass
    # independently: a uniform grey image is uniform after any resize/crop, so the model's input is
    # (70 / 255 - mean) / std per channel; predict must give that input's softmax
    from lspt_cli.engine.restore import model_from_bundle

    model, _ = model_from_bundle(run / "bundle.safetensors")
    cfg = model.backbone.data_config
    mean, std = torch.tensor(cfg["mean"]).view(1, 3, 1, 1), torch.tensor(cfg["std"]).view(1, 3, 1, 1)
    x = (torch.full((1, 3, 32, 32), 70 / 255) - mean) / std
    with torch.no_grad():
        probs = model(x).softmax(dim=1)[0]
    assert [p["index"] for p in first] == probs.argsort(descending=True)[:3].tolist()
    assert [p["probability"] for p in first] == pytest.approx(probs.sort(descending=True).values[:3].tolist(), abs=2e-6)


# The quickstart (`lspt tune --backbone vit-tiny --task digits`, the shipped vit-tiny-lspt recipe:
# LSPT, AdamW lr 0.02, 25 epochs) measured 58.5% test top-1 at 0c7830a and 53.5% at e8c75c2 (after
# the protocol work of issue 10) on the 2-core development machine (deterministic on CPU; 68 s wall
# when the machine is not shared). Chance is 10%; a run whose optimizer never steps fails this bar.
QUICKSTART_BAR = 40.0


def test_quickstart_learns_digits_far_above_chance(cli, tmp_path):
    result = cli("tune", "--backbone", "vit-tiny", "--task", "digits", "--out", str(tmp_path / "qs"), "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["strategy"] == "lspt" and summary["epochs"] == 25  # the recipe as shipped
    assert summary["test_top1"] >= QUICKSTART_BAR, summary["test_top1"]


def test_export_standalone_program(cli, trained, tmp_path):
    run, _ = trained
    program = tmp_path / "digits.pt2"
    result = cli("export", str(run), "-o", str(program), "--format", "pt2", "--json")
    assert result.exit_code == 0, result.output
    from lspt_cli.engine.restore import model_from_bundle

    model, _ = model_from_bundle(run / "bundle.safetensors")
    images = torch.randn(3, 3, 32, 32)  # another batch size than the export example
    loaded = torch.export.load(str(program)).module()
    assert torch.allclose(loaded(images), model(images), atol=1e-5)


def test_same_seed_same_bundle(cli, trained, tmp_path):
    run, _ = trained
    again = tune(cli, tmp_path / "again")
    assert again.exit_code == 0
    a, b = load_file(str(run / "bundle.safetensors")), load_file(str(tmp_path / "again" / "bundle.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)




@pytest.mark.parametrize("workers", ["0", "2"])
def test_interrupt_then_resume_equals_uninterrupted(cli, trained, tmp_path, workers):
    """Ctrl-C after 4 batches of epoch 2 -> mid-epoch checkpoint -> --resume -> the same bundle."""
    run, _ = trained  # trained with --num-workers 0: data loading is identical for any worker count
    with pytest.MonkeyPatch.context() as mp:
        interrupt_after(mp, stop_epoch=1, batches=4)
        result = tune(cli, tmp_path / "stopped", "--num-workers", workers)
    assert result.exit_code == 130
    assert "Resume with: lspt tune --resume" in result.stderr
    state = torch.load(tmp_path / "stopped" / "checkpoint.pt", weights_only=True)
    assert state["epoch"] == 1 and state["position"] == 4  # 4 of epoch 2's 11 batches done
    resumed = cli("tune", "--resume", str(tmp_path / "stopped"), "--json")
    assert resumed.exit_code == 0, resumed.output
    a, b = load_file(str(run / "bundle.safetensors")), load_file(str(tmp_path / "stopped" / "bundle.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    lines = (tmp_path / "stopped" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [1, 2]


class PoisonHead:
    @hookimpl
    def lspt_on_epoch_end(self, run, metrics):
        PoisonHead.model.head.weight.data.fill_(float("nan"))


def test_nan_loss_stops_with_epoch_named(cli, tmp_path, monkeypatch):
    from lspt_cli.engine import train

    original = train.Trainer.setup

    def setup(self):
        original(self)
        PoisonHead.model = self.model

    monkeypatch.setattr(train.Trainer, "setup", setup)
    host = get_host()
    host.add_plugin(PoisonHead(), "poison")
    result = tune(cli, tmp_path / "nan")
    host.remove_plugin("poison")
    assert result.exit_code == 1
    assert "loss became nan in epoch 2" in result.stderr
    state = torch.load(tmp_path / "nan" / "checkpoint.pt", weights_only=True)
    assert state["epoch"] == 1 and all(torch.isfinite(v).all() for v in state["trainable"].values())


def test_dry_run_resolution_order(cli, tmp_path):
    recipe = tmp_path / "r.toml"
    recipe.write_text('[train]\nlr = 0.123\nepochs = 7\n[strategy]\nnum_prompts = 3\n')
    result = cli("tune", "--backbone", "vit-tiny", "--task", "digits", "--strategy", "vpt-deep",
                 "--recipe", str(recipe), "--epochs", "5", "--dry-run")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["train"]["epochs"] == 5 and doc["train"]["lr"] == 0.123  # flag > recipe file
    assert doc["strategy_config"]["num_prompts"] == 3 and doc["strategy"] == "vpt-deep"
    default = json.loads(cli("tune", "--backbone", "vit-tiny", "--task", "digits", "--dry-run").stdout)
    assert default["strategy"] == "lspt"


def test_run_dir_guard_and_bad_options(cli, trained):
    run, _ = trained
    result = cli("tune", *FAST, "--out", str(run))
    assert result.exit_code == 2 and "already holds a run" in result.output
    bad = cli("tune", *FAST[:-2], "--set", "nonsense=1", "--dry-run")
    assert bad.exit_code == 2 and "unknown option 'nonsense'" in bad.output
    assert cli("tune", *FAST, "--epochs", "0", "--dry-run").exit_code == 2


def test_export_to_a_full_disk_is_one_error_line(cli, trained, tmp_path, monkeypatch):
    import errno

    from lspt_cli import atomic

    run, _ = trained

    def full(path, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(atomic, "write_bytes", full)
    for extra in ([], ["--format", "pt2"]):
        result = cli("export", str(run), "-o", str(tmp_path / "out.bin"), *extra)
        assert result.exit_code == 1 and result.output.startswith("Error: ") and "No space left" in result.output
        assert "Traceback" not in result.output and not (tmp_path / "out.bin").exists()
