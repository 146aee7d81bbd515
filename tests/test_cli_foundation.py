"""The CLI skeleton: --help, paths, list, completion, error formatting, README hook docs."""

from __future__ import annotations

import inspect
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from registered import BACKBONES, COMMANDS, STRATEGIES

ROOT = Path(__file__).resolve().parents[1]


def test_help_lists_commands(cli):
    result = cli("--help")
    assert result.exit_code == 0
    assert len(COMMANDS) >= 12
    for command in COMMANDS:
        assert command in result.output


def test_version(cli):
    from lspt_cli import __version__

    assert cli("--version").output.strip() == f"lspt {__version__}"


def test_paths_resolution_order(cli, tmp_path, monkeypatch, isolated_lspt_home):
    doc = json.loads(cli("paths", "--json").output)
    assert doc["cache"] == {"path": str(isolated_lspt_home / "cache"), "source": "LSPT_HOME"}
    monkeypatch.setenv("LSPT_CACHE_DIR", str(tmp_path / "envcache"))
    doc = json.loads(cli("paths", "--json").output)
    assert doc["cache"] == {"path": str(tmp_path / "envcache"), "source": "LSPT_CACHE_DIR"}
    assert doc["data"]["source"] == "LSPT_HOME"
    doc = json.loads(cli("--cache-dir", str(tmp_path / "flag"), "paths", "--json").output)
    assert doc["cache"] == {"path": str(tmp_path / "flag"), "source": "--cache-dir"}
    monkeypatch.delenv("LSPT_HOME")
    monkeypatch.delenv("LSPT_CACHE_DIR")
    doc = json.loads(cli("paths", "--json").output)
    assert all(v["source"] == "platformdirs" for v in doc.values())
    assert doc["config"]["path"].endswith("lspt")


def test_list_kinds_patterns_and_json(cli):
    rows = json.loads(cli("list", "backbones", "--json").output)
    assert {"mae-vitb", "mocov3-vitb", "sup-vitb", "vit-tiny"} <= {r["name"] for r in rows}
    rows = json.loads(cli("list", "backbones", "*-vitb", "--json").output)
    assert {r["name"] for r in rows} == {b for b in BACKBONES if b.endswith("-vitb")} >= {"mae-vitb", "mocov3-vitb"}
    assert all(r["description"] for r in rows)
    strategies = json.loads(cli("list", "strategies", "--json").output)
    assert {r["name"] for r in strategies} == set(STRATEGIES) >= {"linear", "vpt-shallow", "vpt-deep", "gapt", "lspt"}
    assert all(isinstance(r["params_vitb16"], int) for r in strategies)
    assert "params (ViT-B/16" in cli("list", "strategies").output
    datasets = json.loads(cli("list", "datasets", "vtab/*", "--json").output)
    assert len(datasets) == 19
    assert cli("list", "nonsense").exit_code == 2


def test_unknown_name_is_a_usage_error(cli):
    result = cli("tune", "--backbone", "vit-tinny", "--task", "digits")
    assert result.exit_code == 2
    assert "Error: unknown backbone 'vit-tinny'; available:" in result.output
    assert "did you mean 'vit-tiny'" in result.output


def test_debug_shows_traceback(cli, monkeypatch):
    from lspt_cli.errors import UsageError

    monkeypatch.setenv("LSPT_DEBUG", "1")
    with pytest.raises(UsageError):
        cli("tune", "--backbone", "nope", "--task", "digits")


def test_shell_completion_of_names():
    env = dict(os.environ, _LSPT_COMPLETE="complete_bash", COMP_WORDS="lspt tune --strategy vpt", COMP_CWORD="3")
    result = subprocess.run([sys.executable, "-m", "lspt_cli", "tune", "--strategy", "vpt"], env=env, capture_output=True, text=True)
    assert set(result.stdout.split()) == {"vpt-shallow", "vpt-deep"}, result.stderr
    env.update(COMP_WORDS="lspt prepare-data vtab/d", COMP_CWORD="2")
    result = subprocess.run([sys.executable, "-m", "lspt_cli"], env=env, capture_output=True, text=True)
    assert {"vtab/dtd", "vtab/dmlab", "vtab/dsprites_loc", "vtab/dsprites_ori", "vtab/diabetic_retinopathy"} <= set(result.stdout.split())


def test_docs_document_every_hook_with_its_signature():
    """docs/plugins.md's quick reference (the README's former "Writing a plugin") has every hook, as a table
    row that starts with its exact signature; the README links the page."""
    from lspt_cli import hookspecs

    doc = (ROOT / "docs" / "plugins.md").read_text()
    quick = doc.split("## Quick reference", 1)[1].split("\n## ", 1)[0]
    for name, fn in inspect.getmembers(hookspecs, inspect.isfunction):
        if not name.startswith("lspt_"):
            continue
        signature = f"{name}{inspect.signature(fn)}"
        assert f"| `{signature}` |" in quick, f"docs/plugins.md's quick reference lacks `{signature}`"
    assert "](docs/plugins.md)" in (ROOT / "README.md").read_text()


def test_readme_setup_commands_match_ci():
    """Issue 19: the first command installs only what the main job needs and runs it; the second adds the
    dev extra and runs the tests; CI runs exactly that second line, then builds the docs strictly."""
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"## Set up\n\n```bash\n(.*?)```", readme, re.S).group(1).strip().splitlines()
    assert block == ["pip install -e . && lspt tune --backbone vit-tiny --task digits",
                     'pip install -e ".[dev]" && python -m pytest -n 2']
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert block[1] in ci_lines  # verbatim, as a command of its own
    assert any("mkdocs build --strict" in line and not line.startswith("#") for line in ci_lines)
