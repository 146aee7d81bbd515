"""A real plugin distribution, installed with pip, is found through its entry-point metadata."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

# `pytest -n`: with the tests that pip-install plugins or load every installed one (never concurrently)
pytestmark = pytest.mark.xdist_group("installed-plugins")

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "plugins" / "examples" / "lspt-example-plugin"


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    import shutil

    target, source = tmp_path_factory.mktemp("site"), tmp_path_factory.mktemp("example") / "src"
    # built from a copy: pip builds a local directory in place (build/, *.egg-info), which another
    # build of the same tree, or leftovers of an older one, must not meet
    shutil.copytree(EXAMPLE, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    result = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--target", str(target), str(source)],
        capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stderr[-3000:] or result.stdout[-3000:]
    assert list(target.glob("lspt_example_plugin-*.dist-info/entry_points.txt"))
    return target


def _lspt(installed, *args, home):
    env = dict(os.environ, PYTHONPATH=str(installed), LSPT_HOME=str(home), NO_COLOR="1")
    env.pop("LSPT_LOAD_PLUGINS", None)
    return subprocess.run([sys.executable, "-m", "lspt_cli", *args], env=env, capture_output=True, text=True)


def test_discovered_through_entry_point(installed, tmp_path):
    result = _lspt(installed, "plugins", "--json", home=tmp_path)
    assert result.returncode == 0, result.stderr
    rows = {r["name"]: r for r in json.loads(result.stdout)}
    row = rows["lspt-example-plugin:example"]
    assert row["distribution"] == "lspt-example-plugin" and row["version"] == "0.1.0" and not row["builtin"]
    assert row["error"] is None
    assert row["components"] == {"strategy": ["example-bias"], "dataset": ["example-stripes"]}
    strategies = json.loads(_lspt(installed, "list", "strategies", "--json", home=tmp_path).stdout)
    toy = [s for s in strategies if s["name"] == "example-bias"][0]
    assert toy["params_vitb16"] == 768 and toy["plugin"] == "lspt-example-plugin:example"
    assert _lspt(installed, "example-hello", "--name", "ci", home=tmp_path).stdout.strip() == "hello, ci, from lspt-example-plugin"


def test_load_plugins_can_exclude_it(installed, tmp_path):
    env_home = tmp_path
    env = dict(os.environ, PYTHONPATH=str(installed), LSPT_HOME=str(env_home), LSPT_LOAD_PLUGINS="")
    result = subprocess.run([sys.executable, "-m", "lspt_cli", "plugins", "--json"], env=env, capture_output=True, text=True)
    names = {r["name"] for r in json.loads(result.stdout)}
    assert "lspt-example-plugin:example" not in names and "strategies" in names


def test_example_dataset_and_strategy_train(installed, tmp_path):
    result = _lspt(installed, "prepare-data", "example-stripes", "--json", home=tmp_path)
    assert result.returncode == 0, result.stderr
    result = _lspt(installed, "tune", "--backbone", "vit-tiny", "--task", "example-stripes", "--strategy", "example-bias",
                   "--epochs", "1", "--warmup-epochs", "0", "--out", str(tmp_path / "run"), "--json", home=tmp_path)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["strategy"] == "example-bias" and summary["params"]["strategy"] == 64
