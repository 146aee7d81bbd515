"""Test helpers for plugin authors, and the conformance checks `lspt plugins check` runs.

A plugin's own test file can be a few lines (docs/plugins.md, "Testing a plugin"):

    from lspt_cli.testing import register_plugin, run_check
    import my_plugin

    def test_conformance(lspt_home):
        with register_plugin(my_plugin):
            run_check("my-strategy").assert_ok()

With `pytest_plugins = ["lspt_cli.testing"]` in a conftest.py, the fixtures below are available:
`lspt_home` (an isolated LSPT_HOME and a fresh plugin host), `tiny_backbone`, `fake_task` and
`lspt_cli` (a runner returning exit code, stdout, stderr and the parsed `--json` document).

Like datasette's test helpers, this module imports torch only when a check or fixture runs, so
`import lspt_cli.testing` is cheap. The checks are the same function for the CLI and for pytest:
`run_check(name)` returns a `CheckReport` with one `CheckResult` per check (ok, fail or skip, a
message, and a hint saying how to fix a failure).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from .errors import PluginError

from .conformance import CheckReport, CheckResult, check_kinds, run_check

__all__ = [
    "CheckResult", "CheckReport", "run_check", "check_kinds", "register_plugin", "tiny_backbone",
    "fake_task", "CliResult", "run_cli", "lspt_home", "lspt_cli",
]

# -- registering throwaway plugins ---------------------------------------------------------------
@contextlib.contextmanager
def register_plugin(plugin: object, name: str | None = None, host=None) -> Iterator[Any]:
    """Register a plugin object or module for the block, then remove it and all it registered.

    A plugin that fails to register raises PluginError (instead of the CLI's warning), so a test
    sees the reason. Yields the plugin's record (`record.components` lists what it registered).
    """
    from .plugins import get_host

    host = host or get_host()
    name = name or getattr(plugin, "__name__", None) or type(plugin).__name__
    record = host.add_plugin(plugin, name)
    if record.error:
        host.remove_plugin(name)
        raise PluginError(f"plugin '{name}' failed to register: {record.error}")
    try:
        yield record
    finally:
        host.remove_plugin(name)


def tiny_backbone(name: str = "vit-tiny"):
    """The registered 32-px, 4-block random-init ViT (a FrozenBackbone); no download."""
    from .prompted import load_backbone

    return load_backbone(name)


def fake_task(task_id: str = "fake", classes: int = 3, per_split: tuple[int, int, int] = (12, 6, 6), size: int = 32,
              seed: int = 0) -> str:
    """Write a small learnable image task (class k = colour k plus noise) to the data dir; returns its id.

    `lspt tune --task <id>` then trains on it; a prepared manifest, exactly like `prepare-data` writes.
    """
    import random

    from PIL import Image

    from .data.manifest import Manifest, save_manifest, task_dir

    out = task_dir(task_id) / "images"
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    palette = [(rng.randrange(256), rng.randrange(256), rng.randrange(256)) for _ in range(classes)]
    splits: dict[str, list[tuple[str, int]]] = {}
    for split, n in zip(("train", "val", "test"), per_split):
        items = []
        for i in range(n):
            label = i % classes
            key = f"{split}-{i:03d}.png"
            img = Image.new("RGB", (size, size), palette[label])
            for _ in range(size * 2):
                img.putpixel((rng.randrange(size), rng.randrange(size)), (rng.randrange(256),) * 3)
            img.save(out / key)
            items.append((key, label))
        splits[split] = items
    splits["trainval"] = splits["train"] + splits["val"]
    save_manifest(Manifest(task=task_id, benchmark="custom", classes=[f"class{k}" for k in range(classes)],
                           splits=splits, root=str(out), split_source=f"lspt_cli.testing.fake_task(seed={seed})"))
    return task_id


# -- running the CLI -----------------------------------------------------------------------------
@dataclass
class CliResult:
    """What one `lspt` invocation did: exit code, stdout, stderr, both as a terminal shows them
    (`output`: interleaved in-process, stdout then stderr from a subprocess), and stdout parsed as
    JSON (or None). In-process, `exception` is what ended the command (SystemExit for every exit)."""

    exit_code: int
    stdout: str
    stderr: str
    output: str = ""
    exception: BaseException | None = None

    @property
    def json(self) -> Any:
        try:
            return json.loads(self.stdout)
        except ValueError:
            return None


def run_cli(*args: str, subprocess_mode: bool = False, home: str | Path | None = None,
            env: dict[str, str] | None = None, input: str | None = None) -> CliResult:
    """Run `lspt ARGS...` in this process (fast) or in a subprocess (full isolation, entry points re-read).

    `home`: the run's own LSPT_HOME (in-process: set for the call, with fresh paths and plugin host,
    and restored after; the `lspt_home` fixture isolates a whole test). `input` is its stdin.
    Exceptions other than exits propagate in-process, as bugs should.
    """
    args = [str(a) for a in args]
    if subprocess_mode:
        full_env = dict(os.environ, NO_COLOR="1", LSPT_NO_PROGRESS="1", **(env or {}))
        if home is not None:
            full_env["LSPT_HOME"] = str(home)
        proc = subprocess.run([sys.executable, "-m", "lspt_cli", *args], env=full_env, capture_output=True, text=True,
                              input=input)
        return CliResult(proc.returncode, proc.stdout, proc.stderr, proc.stdout + proc.stderr)
    from typer.testing import CliRunner

    from . import paths, plugins
    from .cli import create_app

    with contextlib.ExitStack() as stack:
        if home is not None:
            env = {**(env or {}), "LSPT_HOME": str(home)}
        if env:
            stack.enter_context(_patched_env(env))
        if home is not None:  # a host and paths of that home, for this call only
            paths.clear_overrides()
            plugins.reset_host()
            stack.callback(plugins.reset_host)
            stack.callback(paths.clear_overrides)
        result = CliRunner().invoke(create_app(), args, input=input, catch_exceptions=False)
    return CliResult(result.exit_code, result.stdout, result.stderr, result.output, result.exception)


@contextlib.contextmanager
def _patched_env(env: dict[str, str]):
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


# -- pytest fixtures (`pytest_plugins = ["lspt_cli.testing"]`) -----------------------------------
try:
    import pytest
except ImportError:  # the checks and helpers work without pytest (`lspt plugins check`)
    pytest = None

if pytest is not None:

    @pytest.fixture
    def lspt_home(tmp_path_factory, monkeypatch):
        """An empty LSPT_HOME for the test and a fresh plugin host (your installed plugin included)."""
        from . import paths, plugins

        home = tmp_path_factory.mktemp("lspt_home")
        monkeypatch.setenv("LSPT_HOME", str(home))
        for var in ("LSPT_CACHE_DIR", "LSPT_DATA_DIR", "LSPT_CONFIG_DIR", "LSPT_STRICT_PLUGINS", "LSPT_DEBUG"):
            monkeypatch.delenv(var, raising=False)
        monkeypatch.setenv("LSPT_NO_PROGRESS", "1")
        paths.clear_overrides()
        plugins.reset_host()
        yield home
        paths.clear_overrides()
        plugins.reset_host()

    @pytest.fixture(name="tiny_backbone")
    def _tiny_backbone_fixture(lspt_home):
        """vit-tiny as a FrozenBackbone: `PromptedViT(tiny_backbone, MyStrategy(tiny_backbone.dims), 3)`."""
        return tiny_backbone()

    @pytest.fixture(name="fake_task")
    def _fake_task_fixture(lspt_home):
        """A prepared 3-class task named "fake" in the isolated data dir: `lspt tune --task fake`."""
        return fake_task()

    @pytest.fixture
    def lspt_cli(lspt_home):
        """`lspt_cli("tune", ..., "--json")` -> CliResult(exit_code, stdout, stderr, json), in-process."""

        def invoke(*args: str, **kwargs: Any) -> CliResult:
            return run_cli(*args, **kwargs)

        return invoke
