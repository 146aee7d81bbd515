"""The suite's `xdist_group`s keep their tests on one worker under `pytest -n` (tests/conftest.py's
collection hook: pytest-xdist 3.8 marks the group where pytest 9 no longer reads it). A scratch
suite with the project's hook runs a six-test group and six free tests in two workers."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent


@pytest.mark.slow
def test_a_group_runs_in_one_worker(tmp_path):
    pytest.importorskip("xdist")
    (tmp_path / "conftest.py").write_text(textwrap.dedent(f"""
        import importlib.util
        spec = importlib.util.spec_from_file_location("lspt_suite_conftest", {str(TESTS / "conftest.py")!r})
        suite = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(suite)
        pytest_collection_modifyitems = suite.pytest_collection_modifyitems  # the project's hook
    """))
    (tmp_path / "test_scratch.py").write_text(textwrap.dedent(f"""
        import os, pytest

        def record(kind):
            with open({str(tmp_path / "workers.txt")!r}, "a") as f:
                f.write(kind + " " + os.environ["PYTEST_XDIST_WORKER"] + "\\n")

        @pytest.mark.xdist_group("together")
        @pytest.mark.parametrize("i", range(6))
        def test_grouped(i):
            record("grouped")

        @pytest.mark.parametrize("i", range(6))
        def test_free(i):
            record("free")
    """))
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-n", "2", "--dist", "loadgroup", "-p", "no:cacheprovider",
                          "--rootdir", str(tmp_path), str(tmp_path)], capture_output=True, text=True, timeout=300,
                         cwd=tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr
    lines = (tmp_path / "workers.txt").read_text().split()
    grouped = {worker for kind, worker in zip(lines[::2], lines[1::2]) if kind == "grouped"}
    assert len(lines) == 24 and len(grouped) == 1, lines
