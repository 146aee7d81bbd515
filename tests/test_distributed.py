"""Under torchrun (2 CPU processes, gloo), tune shards the data, rank 0 alone writes and reports."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import free_port

pytestmark = pytest.mark.slow


def test_torchrun_two_ranks(tmp_path):
    """One torchrun run, two CPU ranks (gloo): one summary, one metrics line per epoch, and rank 0
    alone logs (one TensorBoard event file, each epoch's scalars once: tests/test_loggers.py's
    tracking contract under torchrun; without the tensorboard extra only the sharding is checked)."""
    import importlib.util

    tensorboard = importlib.util.find_spec("tensorboard") is not None
    env = dict(os.environ, LSPT_HOME=str(tmp_path / "home"), OMP_NUM_THREADS="1", LSPT_LOAD_PLUGINS="")
    run = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}", "-m", "lspt_cli", "tune", "--backbone", "vit-tiny",
         "--task", "digits", "--strategy", "vpt-shallow", "--set", "num_prompts=2", "--epochs", "2", "--warmup-epochs", "1",
         "--batch-size", "64", "--seed", "3", "-q",
         *(["--loggers", "tensorboard"] if tensorboard else []),  # torchrun's parser takes --log as its --log-dir
         "--out", str(run), "--json"],
        env=env, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads(result.stdout)  # exactly one JSON document: rank 1 printed nothing
    assert summary["test_n"] == 359 and summary["bundle_bytes"] > 0
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 2  # one line per epoch, not one per rank
    config = json.loads((run / "config.json").read_text())
    assert config["task"] == "digits"
    if not tensorboard:
        return
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    assert len(list((run / "tensorboard").glob("events.out.tfevents.*"))) == 1
    acc = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    assert [e.step for e in acc.Scalars("train/loss")] == [1, 2]
    assert [e.value for e in acc.Scalars("train/loss")] == pytest.approx([r["train_loss"] for r in records], rel=1e-6)
