"""More of the main job: --final, a user's imagefolder end to end, and the clear errors of tune."""

from __future__ import annotations

import json

import pytest
import torch

pytestmark = pytest.mark.slow

QUICK = ["--strategy", "gapt", "--epochs", "2", "--warmup-epochs", "1", "--set", "num_prompts=2"]


def _imagefolder(root, per_class=12):
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    colours = {"red": (200, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 200)}
    for split, n in (("train", per_class), ("test", 4)):
        for name, rgb in colours.items():
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(n):
                noise = (torch.rand(40, 48, 3, generator=g) * 60).to(torch.uint8)
                pixels = torch.tensor(rgb, dtype=torch.int16).expand(40, 48, 3)
                array = (pixels - 30 + noise.to(torch.int16)).clamp(0, 255).to(torch.uint8).numpy()
                Image.fromarray(array).save(folder / f"{i}.jpg")


def test_imagefolder_end_to_end(cli, tmp_path):
    _imagefolder(tmp_path / "photos")
    prepared = cli("prepare-data", "imagefolder", "--root", str(tmp_path / "photos"), "--name", "colours", "--json")
    assert prepared.exit_code == 0, prepared.output
    result = cli("tune", "--backbone", "vit-tiny", "--task", "colours", *QUICK, "--batch-size", "8",
                 "--out", str(tmp_path / "run"), "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["task"] == "colours" and summary["test_n"] == 12
    # three trivially separable colours (chance 33%): measured 100% test top-1 after these 2 epochs
    assert summary["test_top1"] >= 75.0, summary["test_top1"]
    evaluated = json.loads(cli("eval", str(tmp_path / "run" / "bundle.safetensors"), "--json").stdout)
    assert set(evaluated["per_class"]) == {"blue", "green", "red"}
    image = next((tmp_path / "photos" / "test" / "red").iterdir())
    preds = json.loads(cli("predict", str(tmp_path / "run" / "bundle.safetensors"), str(image), "--json").stdout)
    top = preds[str(tmp_path / "run" / "bundle.safetensors")][str(image)]
    assert {p["label"] for p in top} == {"red", "green", "blue"}
    assert abs(sum(p["probability"] for p in top) - 1.0) < 1e-4


def test_final_trains_on_train_plus_val(cli, tmp_path):
    result = cli("tune", "--backbone", "vit-tiny", "--task", "digits", *QUICK, "--batch-size", "256", "--final",
                 "--out", str(tmp_path / "final"), "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["final"] and summary["selection"] == "last epoch (train+val)" and summary["val_top1"] is None
    assert summary["selected_epoch"] == 2
    record = json.loads((tmp_path / "final" / "metrics.jsonl").read_text().splitlines()[0])
    assert "val_acc" not in record
    assert not (tmp_path / "final" / "best.safetensors").exists()


def test_unprepared_task_says_how_to_prepare(cli):
    result = cli("tune", "--backbone", "vit-tiny", "--task", "cub", "--strategy", "linear")
    assert result.exit_code != 0
    assert "lspt prepare-data cub --root" in result.output and "Traceback" not in result.output


def test_missing_weights_names_the_file(cli, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv("LSPT_ALLOW_DOWNLOAD", raising=False)
    result = cli("tune", "--backbone", "mae-vitb", "--task", "digits", "--strategy", "linear", "--epochs", "1",
                 "--out", str(tmp_path / "run"))
    assert result.exit_code == 1
    assert "mae_pretrain_vit_base.pth" in result.output and "--weights" in result.output
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_progress_bar_shows_epoch_loss_and_speed(cli, tmp_path, monkeypatch):
    from lspt_cli.cli import tune as tune_cmd

    monkeypatch.setattr(tune_cmd, "progress_enabled", lambda json_=False, quiet=False: True)
    result = cli("tune", "--backbone", "vit-tiny", "--task", "digits", *QUICK, "--batch-size", "256",
                 "--out", str(tmp_path / "run"))
    assert result.exit_code == 0, result.output
    assert "epoch 2/2" in result.stderr and "img/s" in result.stderr and "loss" in result.stderr
    assert "test top-1" in result.stdout and "img/s" not in result.stdout  # results on stdout only
