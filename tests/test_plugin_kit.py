"""The plugin author kit: fail-loudly rules, `lspt plugins check`, lspt_cli.testing, `lspt plugins new`,
and the hook reference (every hook documented with :param:, every hook exercised by a test)."""

from __future__ import annotations

import inspect
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from registered import STRATEGIES

from lspt_cli import ConfigError, StrategySpec, hookimpl
from lspt_cli.testing import fake_task, register_plugin, run_check, run_cli

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "plugins" / "examples" / "lspt-example-plugin"


# -- throwaway strategies, each wrong in one way ---------------------------------------------------
def _strategy_module():
    """Strategy classes built lazily (torch imported inside the test, like a real plugin)."""
    import random

    import torch
    from torch import nn

    from lspt_cli.prompted import PromptStrategy

    class StartReturnsTokens(PromptStrategy):
        """The issue's plugin: a bias added in start(), which returns the tokens."""

        def __init__(self, dims):
            super().__init__(dims)
            self.bias = nn.Parameter(torch.zeros(dims.embed_dim))

        def start(self, x):
            return x + self.bias

    class BiasNeverUsed(PromptStrategy):
        """Computes state from its bias, but no block hook reads the state: the bias never learns."""

        def __init__(self, dims):
            super().__init__(dims)
            self.bias = nn.Parameter(torch.zeros(dims.embed_dim))
            self.used = nn.Parameter(torch.zeros(dims.embed_dim))

        def start(self, x):
            return {"bias": self.bias * 2}

        def before_block(self, index, x, state):
            return x + self.used if index == 0 else x

    class NoDims(PromptStrategy):
        """The issue's first slip: super().__init__() without dims."""

        def __init__(self, dims):
            super().__init__()

    class ZeroGradient(PromptStrategy):
        """Its tensor reaches the tokens times 0: a gradient that is exactly zero."""

        def __init__(self, dims):
            super().__init__(dims)
            self.shift = nn.Parameter(torch.ones(dims.embed_dim))

        def before_block(self, index, x, state):
            return x + 0.0 * self.shift if index == 0 else x

    class Shift(PromptStrategy):
        """Correct: a learned shift of the patch tokens before block 0."""

        def __init__(self, dims, scale=1.0):
            if isinstance(scale, bool) or not isinstance(scale, (int, float)):
                raise ConfigError(f"scale must be a number, got {scale!r}")
            super().__init__(dims, scale=scale)
            self.scale = scale
            self.shift = nn.Parameter(torch.zeros(dims.embed_dim))

        def before_block(self, index, x, state):
            if index != 0:
                return x
            return torch.cat([x[:, : self.prefix], self.patch_tokens(x) + self.scale * self.shift], dim=1)

    class Unchecked(Shift):
        """Takes `scale` unchecked: `--set scale=abc` is a TypeError traceback."""

        def __init__(self, dims, scale=1.0):
            PromptStrategy.__init__(self, dims, scale=scale)
            self.scale = scale
            self.shift = nn.Parameter(torch.zeros(dims.embed_dim))

    class Unseeded(Shift):
        """Initialises from Python's unseeded `random`: two runs differ."""

        def __init__(self, dims, scale=1.0):
            super().__init__(dims, scale=scale)
            with torch.no_grad():
                self.shift.fill_(random.random())

    class BigShift(Shift):
        """Its config() loses the size that its tensors depend on: a bundle cannot rebuild it."""

        def __init__(self, dims, scale=1.0, width=None):
            if width is not None and not isinstance(width, int):
                raise ConfigError(f"width must be an integer, got {width!r}")
            super().__init__(dims, scale=scale)  # forgets width: config() == {"scale": ...}
            self.extra = nn.Parameter(torch.zeros(width or 3))

        def before_block(self, index, x, state):
            return super().before_block(index, x, state) + self.extra.sum() * 0.01

    return dict(StartReturnsTokens=StartReturnsTokens, BiasNeverUsed=BiasNeverUsed, ZeroGradient=ZeroGradient, NoDims=NoDims,
                Shift=Shift, Unchecked=Unchecked, Unseeded=Unseeded, BigShift=BigShift)


def _plugin(name: str, cls_name: str, defaults=None, count=None):
    class Plugin:
        @hookimpl
        def lspt_register_strategies(self, register):
            register(StrategySpec(name=name, description=cls_name, factory=lambda dims, **cfg: _strategy_module()[cls_name](dims, **cfg),
                                  defaults=defaults or {}, count_params=count))

    return Plugin()


# -- fail loudly ---------------------------------------------------------------------------------
def test_start_returning_tokens_is_an_error_naming_the_strategy(tiny_backbone):
    import torch

    from lspt_cli.errors import PluginError
    from lspt_cli.prompted import PromptedViT

    model = PromptedViT(tiny_backbone, _strategy_module()["StartReturnsTokens"](tiny_backbone.dims), 3)
    with pytest.raises(PluginError, match=r"StartReturnsTokens: start\(\) returned Tensor, not a dict") as info:
        model(torch.zeros(1, 3, 32, 32))
    assert "before_block" in info.value.hint


def test_super_init_without_dims_is_one_error_naming_the_strategy(tiny_backbone):
    from lspt_cli.errors import PluginError

    with pytest.raises(PluginError, match=r"NoDims: PromptStrategy.__init__ needs the backbone's BackboneDims") as info:
        _strategy_module()["NoDims"](tiny_backbone.dims)
    assert "super().__init__(dims, **options)" in info.value.hint
    with register_plugin(_plugin("nodims", "NoDims")):
        task = fake_task()
        result = run_cli("tune", "--backbone", "vit-tiny", "--task", task, "--strategy", "nodims", "--epochs", "1")
        report = run_check("nodims")
    assert result.exit_code == 1 and "Traceback" not in result.stderr and "needs the backbone's BackboneDims" in result.stderr
    assert report.result("build").status == "fail" and "super().__init__(dims" in report.result("build").hint
    assert [r.status for r in report.results[1:]] == ["skip"] * (len(report.results) - 1)


def test_start_returning_tokens_fails_tune_with_one_error_line():
    with register_plugin(_plugin("tokens", "StartReturnsTokens")):
        task = fake_task()
        result = run_cli("tune", "--backbone", "vit-tiny", "--task", task, "--strategy", "tokens", "--epochs", "1")
    assert result.exit_code == 1 and "Traceback" not in result.stderr
    errors = [l for l in result.stderr.splitlines() if l.startswith("Error:")]
    assert len(errors) == 1 and errors[0].endswith("StartReturnsTokens: start() returned Tensor, not a dict of per-forward state")


def test_grad_watch_names_missing_and_exactly_zero_gradients(tiny_backbone):
    import torch

    from lspt_cli.engine.grad_watch import GradWatch
    from lspt_cli.prompted import PromptedViT

    classes = _strategy_module()
    for cls, dead in (("BiasNeverUsed", ["strategy.bias"]), ("ZeroGradient", ["strategy.shift"]), ("Shift", [])):
        torch.manual_seed(0)
        model = PromptedViT(tiny_backbone, classes[cls](tiny_backbone.dims), 3)
        watch = GradWatch(model)
        for _ in range(3):
            model.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(model(torch.randn(4, 3, 32, 32)), torch.tensor([0, 1, 2, 0])).backward()
            watch.observe()
        assert watch.dead() == dead, cls
        assert "head.weight" not in watch.dead()


def test_lspt_memory_is_dead_at_init_and_alive_after_a_few_steps(tiny_backbone):
    """LSPT's W_out starts at zero, so its LSTM gets exactly-zero gradients at step 1: the tracker must
    watch a window (the whole first epoch), not one step."""
    import torch

    from lspt_cli.engine.grad_watch import GradWatch
    from lspt_cli.prompted import PromptedViT, build_strategy

    torch.manual_seed(0)
    model = PromptedViT(tiny_backbone, build_strategy("lspt", tiny_backbone.dims, {"num_prompts": 2, "lstm_dim": 8}), 3)
    optimizer = torch.optim.SGD(model.trainable_parameters(), lr=0.1)
    watch = GradWatch(model)
    images, labels = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 0])
    for step in range(3):
        optimizer.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(images), labels).backward()
        watch.observe()
        optimizer.step()
        if step == 0:
            assert {"strategy.lstm.weight_ih", "strategy.memory_in.weight"} <= set(watch.dead())
    assert watch.dead() == []


def test_tune_reports_a_dead_tensor_at_the_end_of_epoch_1(tmp_path):
    with register_plugin(_plugin("deadbias", "BiasNeverUsed")):
        task = fake_task()
        result = run_cli("tune", "--backbone", "vit-tiny", "--task", task, "--strategy", "deadbias", "--epochs", "2",
                         "--warmup-epochs", "0", "--batch-size", "8", "--out", str(tmp_path / "run"), "--json")
    assert result.exit_code == 0, result.stderr
    warnings = [l for l in result.stderr.splitlines() if l.startswith("Warning:")]
    assert len(warnings) == 1 and "strategy.bias" in warnings[0] and "in 2 step(s) of epoch 1" in warnings[0]
    assert "strategy.used" not in warnings[0]
    records = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert records[0]["dead_tensors"] == ["strategy.bias"] and "dead_tensors" not in records[1]
    assert result.json["dead_tensors"] == ["strategy.bias"]
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["dead_tensors"] == ["strategy.bias"]


def test_tune_of_a_healthy_strategy_reports_nothing(tmp_path):
    with register_plugin(_plugin("shift", "Shift", {"scale": 1.0})):
        task = fake_task()
        result = run_cli("tune", "--backbone", "vit-tiny", "--task", task, "--strategy", "shift", "--epochs", "1",
                         "--warmup-epochs", "0", "--batch-size", "8", "--out", str(tmp_path / "run"), "--json")
    assert result.exit_code == 0 and "Warning" not in result.stderr, result.stderr
    assert "dead_tensors" not in result.json
    assert json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])["dead_tensors"] == []


def test_the_dead_tensor_check_judges_steps_that_moved_parameters(tmp_path):
    """The README's LSPT run under `paper` trains epoch 1 at lr 0 (the official per-epoch warm-up): its
    LSTM, dead at init behind W_out = 0, is judged in epoch 2, where it comes alive: no false alarm.
    A tensor that is really dead is still named, at the end of that epoch."""
    common = ("--backbone", "vit-tiny", "--protocol", "paper", "--epochs", "3", "--warmup-epochs", "1",
              "--batch-size", "8", "--json")
    task = fake_task()
    result = run_cli("tune", "--task", task, "--strategy", "lspt", *common, "--out", str(tmp_path / "lspt"))
    assert result.exit_code == 0, result.stderr
    # no dead-tensor warning (paper's kaiming head on this untuned tiny ViT may well get the loss one)
    assert not [l for l in result.stderr.splitlines() if l.startswith("Warning:") and "gradient" in l], result.stderr
    assert "dead_tensors" not in result.json, result.stderr
    records = [json.loads(l) for l in (tmp_path / "lspt" / "metrics.jsonl").read_text().splitlines()]
    assert records[0]["lr"] == 0 and "dead_tensors" not in records[0] and records[1]["dead_tensors"] == []
    with register_plugin(_plugin("deadbias", "BiasNeverUsed")):
        result = run_cli("tune", "--task", task, "--strategy", "deadbias", *common, "--out", str(tmp_path / "dead"))
    assert result.exit_code == 0, result.stderr
    warnings = [l for l in result.stderr.splitlines() if l.startswith("Warning:") and "gradient" in l]
    assert len(warnings) == 1 and "strategy.bias" in warnings[0] and "of epoch 2" in warnings[0]
    assert result.json["dead_tensors"] == ["strategy.bias"]


# -- lspt plugins check --------------------------------------------------------------------------
@pytest.mark.parametrize("name", [*STRATEGIES, "vit-tiny", "digits", "vit-tiny-lspt"])
def test_every_check_passes_on_the_builtins(name):
    report = run_check(name)
    assert report.ok, "\n".join(report.lines())
    assert all(r.status == "ok" for r in report.results if r.check != "strategy options")
    kind = {"vit-tiny": "backbone", "digits": "dataset", "vit-tiny-lspt": "recipe"}.get(name, "strategy")
    assert report.kind == kind and len(report.results) >= 3


@pytest.mark.parametrize(
    "cls, defaults, count, failing",
    [
        ("BiasNeverUsed", {}, None, ["gradients"]),
        ("ZeroGradient", {}, None, ["gradients"]),
        ("Shift", {"scale": 1.0}, lambda dims, cfg: 1, ["count_params"]),
        ("Unchecked", {"scale": 1.0}, None, ["bad option"]),
        ("Unseeded", {"scale": 1.0}, None, ["same seed, same result"]),
        ("BigShift", {"scale": 1.0, "width": 5}, None, ["bundle round-trip"]),
    ],
)
def test_check_names_exactly_the_failing_check(cls, defaults, count, failing):
    with register_plugin(_plugin("broken", cls, defaults, count)):
        report = run_check("broken")
    assert report.failed == failing, "\n".join(report.lines())
    assert all(report.result(c).hint for c in failing)


def test_check_of_start_returning_tokens_fails_forward_and_skips_what_needs_it():
    with register_plugin(_plugin("tokens", "StartReturnsTokens")):
        report = run_check("tokens")
    assert report.result("forward").status == "fail" and "not a dict" in report.result("forward").message
    assert {r.status for r in report.results[2:]} == {"skip"}


def test_plugins_check_cli_names_the_tensor_and_exits_1():
    with register_plugin(_plugin("deadbias", "BiasNeverUsed")):
        text = run_cli("plugins", "check", "deadbias", "vpt-deep")
        doc = run_cli("plugins", "check", "deadbias", "--json")
    assert text.exit_code == 1
    fail_lines = [l for l in text.stdout.splitlines() if l.startswith("FAIL")]
    assert len(fail_lines) == 1 and "gradients" in fail_lines[0] and "strategy.bias" in fail_lines[0] and "(fix:" in fail_lines[0]
    assert sum(l.startswith("OK") for l in text.stdout.splitlines()) == 8 + 10  # the rest of deadbias, all of vpt-deep
    assert sum(l.startswith("SKIP") for l in text.stdout.splitlines()) == 1  # its count_params is not set
    assert text.stderr.strip().splitlines()[0] == "Error: 1 check(s) failed: strategy deadbias: gradients"
    assert doc.exit_code == 1 and doc.json["ok"] is False and doc.json["failed"] == ["strategy deadbias: gradients"]
    gradients = [c for c in doc.json["components"][0]["checks"] if c["check"] == "gradients"][0]
    assert gradients["status"] == "fail" and "strategy.bias" in gradients["message"]


def test_plugins_check_cli_passes_and_refuses_unknown_names():
    ok = run_cli("plugins", "check", "vpt-deep", "--json")
    assert ok.exit_code == 0 and ok.json["ok"] is True and ok.json["failed"] == []
    unknown = run_cli("plugins", "check", "vpt-dep")
    assert unknown.exit_code == 2 and "Error: nothing named 'vpt-dep' is registered" in unknown.stderr
    assert "did you mean" in unknown.stderr and "'vpt-deep'" in unknown.stderr
    nothing = run_cli("plugins", "check")  # LSPT_LOAD_PLUGINS="" in tests: no external plugin
    assert nothing.exit_code == 2 and "no external plugin registered anything" in nothing.stderr


# -- lspt_cli.testing ----------------------------------------------------------------------------
def test_testing_module_does_not_import_torch():
    code = "import sys, lspt_cli.testing; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


def test_register_plugin_removes_everything_and_reports_a_broken_plugin():
    from lspt_cli.errors import PluginError
    from lspt_cli.plugins import get_host

    with register_plugin(_plugin("shift", "Shift", {"scale": 1.0}), name="kit-test") as record:
        assert record.components == {"strategy": ["shift"]} and "shift" in get_host().strategies
    assert "shift" not in get_host().strategies and "kit-test" not in get_host().records

    class Broken:
        @hookimpl
        def lspt_register_strategies(self, register):
            raise RuntimeError("boom")

    with pytest.raises(PluginError, match="boom"):
        with register_plugin(Broken(), name="broken"):
            pass
    assert "broken" not in get_host().records


def test_fake_task_trains_and_run_cli_in_both_modes(tmp_path):
    task = fake_task("kit-fake", classes=2, per_split=(4, 2, 2))
    from lspt_cli.data.manifest import load_manifest

    manifest = load_manifest(task)
    assert manifest.classes == ["class0", "class1"] and len(manifest.splits["trainval"]) == 6
    inproc = run_cli("list", "datasets", "--json")
    sub = run_cli("list", "datasets", "--json", subprocess_mode=True, home=tmp_path)
    assert inproc.exit_code == sub.exit_code == 0
    assert [d["name"] for d in inproc.json] == [d["name"] for d in sub.json]
    bad = run_cli("tune", "--backbone", "nope", "--task", task, subprocess_mode=True, home=tmp_path)
    assert bad.exit_code == 2 and bad.json is None and bad.stderr.startswith("Error: unknown backbone 'nope'")


# -- the hook reference --------------------------------------------------------------------------
def _hookspecs():
    from lspt_cli import hookspecs

    return [(n, f) for n, f in inspect.getmembers(hookspecs, inspect.isfunction) if n.startswith("lspt_")]


def test_every_hookspec_documents_each_argument():
    for name, fn in _hookspecs():
        doc = inspect.getdoc(fn) or ""
        for arg in inspect.signature(fn).parameters:
            assert f":param {arg}:" in doc, f"{name} lacks ':param {arg}:'"
        assert "Return" in doc or "return" in doc, f"{name} does not say what to return"


def test_plugin_hooks_have_tests():
    """datasette's rule: every hook is implemented by at least one test plugin (an `def <hook>(` in tests/)."""
    sources = "\n".join(p.read_text() for p in (ROOT / "tests").rglob("*.py"))
    missing = [name for name, _ in _hookspecs() if not re.search(rf"def {name}\(", sources)]
    assert missing == [], f"hooks no test implements: {missing}"


def test_docs_plugins_md_documents_every_hook_and_the_contract():
    doc = (ROOT / "docs" / "plugins.md").read_text()
    for name, fn in _hookspecs():
        assert f"{name}{inspect.signature(fn)}" in doc, name
    for term in ("BackboneDims", "0-based", "insert_prompts", "replace_prompts", "prompt_tokens", "patch_tokens",
                 "prefix", "--set", "UsageError", "ConfigError", "lspt plugins check", "lspt plugins new",
                 "lspt_cli.testing", "dead_tensors"):
        assert term in doc, term
    assert "docs/plugins.md" in (ROOT / "README.md").read_text()


def test_event_hooks_run_in_order_with_their_documented_arguments(tmp_path):
    calls = []

    class Tracker:
        @hookimpl
        def lspt_on_run_start(self, run, config):
            calls.append(("start", run.name, config["strategy"]))

        @hookimpl
        def lspt_on_epoch_end(self, run, metrics):
            calls.append(("epoch", metrics["epoch"], "val_acc" in metrics))

        @hookimpl
        def lspt_on_run_end(self, run, summary):
            calls.append(("end", summary["epochs"], Path(summary["bundle"]).exists()))

    with register_plugin(Tracker(), name="tracker"):
        task = fake_task()
        result = run_cli("tune", "--backbone", "vit-tiny", "--task", task, "--strategy", "linear", "--epochs", "2",
                         "--warmup-epochs", "0", "--batch-size", "8", "--out", str(tmp_path / "r"), "--json")
    assert result.exit_code == 0, result.stderr
    assert calls == [("start", "r", "linear"), ("epoch", 1, True), ("epoch", 2, True), ("end", 2, True)]


# -- the example plugin and `lspt plugins new` ---------------------------------------------------
def _pytest_env(**extra):
    env = dict(os.environ, NO_COLOR="1", **extra)
    env.pop("LSPT_LOAD_PLUGINS", None)  # the plugin under test must load
    env.pop("LSPT_HOME", None)  # its fixtures isolate it
    return env


@pytest.mark.slow
@pytest.mark.xdist_group("installed-plugins")  # its pytest loads every installed plugin
def test_example_plugin_tests_pass_with_lspt_cli_testing(tmp_path):
    import shutil

    site, source = tmp_path / "site", tmp_path / "src"
    shutil.copytree(EXAMPLE, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--target", str(site), str(source)], check=True, capture_output=True)  # a copy: no build/ here
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"], cwd=source,
                            env=_pytest_env(PYTHONPATH=str(site)), capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:]
    assert re.search(r"\b5 passed\b", result.stdout)
    assert "lspt_cli.testing" in (EXAMPLE / "tests" / "conftest.py").read_text()


@pytest.mark.parametrize("kind, component", [("dataset", "toy-stripes"), ("backbone", "tiny-vit"), ("logger", "csv-log"),
                                             ("executor", "one-by-one")])
def test_scaffold_kinds_pass_the_checks(tmp_path, kind, component):
    import importlib

    result = run_cli("plugins", "new", f"lspt-{component}", "--kind", kind, "--dir", str(tmp_path), "--json")
    assert result.exit_code == 0, result.stderr
    pkg = Path(result.json["path"])
    assert pkg == tmp_path / f"lspt-{component}" and result.json["component"] == component
    module = f"lspt_{component.replace('-', '_')}"
    assert set(result.json["files"]) == {"pyproject.toml", "README.md", f"{module}/__init__.py", f"{module}/{kind}.py",
                                         "tests/conftest.py", f"tests/test_{module}.py"}
    assert f'{component} = "{module}"' in (pkg / "pyproject.toml").read_text()
    sys.path.insert(0, str(pkg))
    try:
        with register_plugin(importlib.import_module(module)):
            report = run_check(component)
    finally:
        sys.path.remove(str(pkg))
        sys.modules.pop(module, None)
    assert report.kind == kind and report.ok and not any(r.status == "skip" for r in report.results), "\n".join(report.lines())


def test_scaffold_data_init_strategy_passes_the_checks(tmp_path, tiny_backbone):
    """`--data-init`: the generated strategy implements init_from_data, and `lspt plugins check` runs its
    data-aware init check (not "none") and passes every check."""
    import importlib

    result = run_cli("plugins", "new", "mean-tokens", "--kind", "strategy", "--data-init", "--dir", str(tmp_path),
                     "--json")
    assert result.exit_code == 0, result.stderr
    assert result.json["data_init"] is True and result.json["kind"] == "strategy"
    pkg = Path(result.json["path"])
    assert "--kind strategy --data-init" in (pkg / "README.md").read_text()
    assert "def init_from_data(self, backbone, images):" in (pkg / "lspt_mean_tokens" / "strategy.py").read_text()
    sys.path.insert(0, str(pkg))
    try:
        module = importlib.import_module("lspt_mean_tokens")
        with register_plugin(module):
            report = run_check("mean-tokens")
        strategy = importlib.import_module("lspt_mean_tokens.strategy").MeanTokens
        built = strategy(tiny_backbone.dims, num_prompts=2, init_images=5)
        assert built.data_init_images == 5 and built.config() == {"num_prompts": 2, "init_images": 5}
        with pytest.raises(ConfigError, match="init_images must be an integer >= 1, got 0"):
            strategy(tiny_backbone.dims, init_images=0)
    finally:
        sys.path.remove(str(pkg))
        for name in [m for m in sys.modules if m.startswith("lspt_mean_tokens")]:
            sys.modules.pop(name)
    assert report.ok and not any(r.status == "skip" for r in report.results), "\n".join(report.lines())
    (init,) = [r for r in report.results if r.check == "data-aware init"]
    assert init.status == "ok" and "ran once per run" in init.message, init.message


def test_scaffold_refuses_bad_names_and_existing_folders(tmp_path):
    bad = run_cli("plugins", "new", "My_Plugin", "--kind", "strategy", "--dir", str(tmp_path))
    assert bad.exit_code == 2 and bad.stderr.startswith("Error: plugin name 'My_Plugin' must be lowercase")
    kind = run_cli("plugins", "new", "x", "--kind", "model", "--dir", str(tmp_path))
    assert kind.exit_code == 2 and "Error: unknown kind 'model'" in kind.stderr
    assert run_cli("plugins", "new", "x", "--kind", "strategy", "--dir", str(tmp_path)).exit_code == 0
    again = run_cli("plugins", "new", "x", "--kind", "strategy", "--dir", str(tmp_path))
    assert again.exit_code == 2 and "already exists" in again.stderr
    wrong = run_cli("plugins", "new", "y", "--kind", "dataset", "--data-init", "--dir", str(tmp_path))
    assert wrong.exit_code == 2 and "Error: --data-init generates a data-initialised strategy; --kind dataset" in wrong.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lspt-x"]  # no temporary folder left behind


@pytest.mark.slow
@pytest.mark.xdist_group("installed-plugins")  # pip-installs into this environment (`pytest -n`: alone)
@pytest.mark.parametrize("component, flags, passed, data_init", [("kit-prompts", [], 4, "none (data_init_images = 0)"),
                                                                 ("kit-mean-tokens", ["--data-init"], 5, "32 images")])
def test_generated_strategy_plugin_installs_passes_its_tests_and_the_check(tmp_path, component, flags, passed, data_init):
    """`lspt plugins new` output, unchanged: pip install -e, its own pytest, `lspt plugins check` (with
    --data-init: its init_from_data runs in the data-aware init check)."""
    assert run_cli("plugins", "new", component, "--kind", "strategy", *flags, "--dir", str(tmp_path)).exit_code == 0
    pkg = tmp_path / f"lspt-{component}"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    subprocess.run([*pip, "install", "--quiet", "--no-deps", "--no-build-isolation", "-e", str(pkg)], check=True,
                   capture_output=True)
    try:
        tests = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"], cwd=pkg,
                               env=_pytest_env(), capture_output=True, text=True)
        assert tests.returncode == 0 and re.search(rf"\b{passed} passed\b", tests.stdout), tests.stdout[-3000:]
        check = run_cli("plugins", "check", "--json", subprocess_mode=True, home=tmp_path / "home",
                        env={"LSPT_LOAD_PLUGINS": f"lspt-{component}"})
        assert check.exit_code == 0, check.stdout + check.stderr
        assert [c["name"] for c in check.json["components"]] == [component]
        checks = check.json["components"][0]["checks"]
        assert len(checks) == 10 and check.json["ok"]
        assert [c for c in checks if c["check"] == "data-aware init"][0]["message"].startswith(data_init), checks
    finally:
        subprocess.run([*pip, "uninstall", "--yes", "--quiet", f"lspt-{component}"], check=True, capture_output=True)


def test_the_worked_strategy_in_docs_passes_every_check():
    """The example in docs/plugins.md, executed as written, with the spec the page gives."""
    doc = (ROOT / "docs" / "plugins.md").read_text()
    section = doc.split("### A worked strategy that modifies tokens", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    namespace: dict = {}
    exec(compile(code, "docs/plugins.md", "exec"), namespace)
    defaults = eval(re.search(r"`defaults=(\{.*?\})`", section).group(1))
    count = eval(re.search(r"`count_params=(lambda .*?)`", section).group(1))

    class Plugin:
        @hookimpl
        def lspt_register_strategies(self, register):
            register(StrategySpec(name="my-prompts", description="docs", factory=namespace["MyPrompts"],
                                  defaults=defaults, count_params=count))

    with register_plugin(Plugin(), name="docs-example"):
        report = run_check("my-prompts")
    assert report.ok and all(r.status == "ok" for r in report.results), "\n".join(report.lines())


def test_a_bundle_whose_header_is_640_bytes_loads(tmp_path):
    """Found by `lspt plugins check linear`: a safetensors header of 640 (0x280) bytes begins with
    b"\\x80\\x02", the magic of a protocol-2 pickle; it is a valid bundle and must load."""
    import struct

    import torch

    from lspt_cli import bundle

    path = tmp_path / "b.safetensors"
    for pad in range(400):
        meta = bundle.make_metadata(backbone={"name": "vit-tiny", "fingerprint": "x"}, strategy={"name": "linear", "config": {}},
                                    task={"name": "t" * pad, "classes": ["a"], "benchmark": "custom"}, data_config={},
                                    created_at="2026-01-01T00:00:00+00:00")
        bundle.save(path, {"head.weight": torch.ones(1, 2)}, meta)
        if struct.unpack("<Q", path.read_bytes()[:8])[0] == 640:
            break
    else:
        pytest.fail("no padding gave a 640-byte header")
    assert path.read_bytes()[:2] == b"\x80\x02"
    assert bundle.load(path).header.task["name"] == "t" * pad


def test_scaffold_strategy_casts_its_prompts_to_the_tokens_dtype(tmp_path, tiny_backbone):
    """Under --amp the tokens are bf16 and the parameters fp32: the built-ins cast (prompts.to(x.dtype)),
    and so does the scaffold, or torch.cat would fail (or promote the tokens) at block 0."""
    import importlib

    import torch

    assert run_cli("plugins", "new", "cast-check", "--kind", "strategy", "--dir", str(tmp_path)).exit_code == 0
    sys.path.insert(0, str(tmp_path / "lspt-cast-check"))
    try:
        module = importlib.import_module("lspt_cast_check.strategy")
        strategy = module.CastCheck(tiny_backbone.dims, num_prompts=2)
        x = tiny_backbone.embed(torch.zeros(2, 3, 32, 32)).to(torch.bfloat16)
        out = strategy.before_block(0, x, strategy.start(x))
    finally:
        sys.path.remove(str(tmp_path / "lspt-cast-check"))
        for name in [m for m in sys.modules if m.startswith("lspt_cast_check")]:
            sys.modules.pop(name)
    assert out.dtype == torch.bfloat16 and out.shape[1] == x.shape[1] + 2


@pytest.mark.slow
@pytest.mark.xdist_group("installed-plugins")  # pip-installs into a target dir; its pytest loads it
@pytest.mark.parametrize("kind, component, passed", [("logger", "kit-csv", 3), ("executor", "kit-serial", 4)])
def test_generated_logger_and_executor_plugins_pass_their_own_tests(tmp_path, kind, component, passed):
    """`lspt plugins new --kind logger|executor`, unchanged: installed, its own pytest passes (which runs
    the conformance checks: a logger across a resume, an executor's sweep against local)."""
    assert run_cli("plugins", "new", component, "--kind", kind, "--dir", str(tmp_path)).exit_code == 0
    pkg, site = tmp_path / f"lspt-{component}", tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--target", str(site), str(pkg)], check=True, capture_output=True)
    tests = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"], cwd=pkg,
                           env=_pytest_env(PYTHONPATH=str(site)), capture_output=True, text=True)
    assert tests.returncode == 0 and re.search(rf"\b{passed} passed\b", tests.stdout), tests.stdout[-3000:]
