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
    env = dict(os.environ, LSPT_HOME=str(tmp_path / "home"), OMP_NUM_THREADS="1", LSPT_LOAD_PLUGINS="")
    run = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}", "-m", "lspt_cli", "tune", "--backbone", "vit-tiny",
         "--task", "digits", "--strategy", "vpt-deep", "--epochs", "1", "--warmup-epochs", "0", "--batch-size", "64",
         "--set", "num_prompts=2", "--out", str(run), "--json"],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads(result.stdout)  # exactly one JSON document: rank 1 printed nothing
    assert summary["test_n"] == 359 and summary["bundle_bytes"] > 0
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 1  # one line per epoch, not one per rank
    config = json.loads((run / "config.json").read_text())
    assert config["task"] == "digits"
