"""The plugin kit against wrong plugins (issue 23, "The plugin kit"): `lspt plugins check` covers
loggers and executors, a logger whose methods cannot take the documented calls is refused, loggers
take options, a strategy with state outside state_dict fails a resume check, and every `lspt tune`
checks its own bundle (count_params, an option missing from config(), an unseeded init).

Every wrong plugin is a hostile case of the tally (docs/guarantees.md)."""

from __future__ import annotations

import inspect
import json
import random
import re
from pathlib import Path

import pytest

from lspt_cli import ConfigError, ExecutorSpec, LoggerSpec, StrategySpec, hookimpl
from lspt_cli.testing import fake_task, register_plugin, run_check, run_cli

ROOT = Path(__file__).resolve().parents[2]


# -- loggers -------------------------------------------------------------------------------------
class GoodLogger:
    """The documented interface; records its calls in a class-level list (the check builds its own)."""

    calls: list = []

    def __init__(self, path="log.txt"):
        self.path = path

    def start(self, run, config, state):
        GoodLogger.calls.append(("start", dict(state), self.path))
        return {"n": state.get("n", 0) + 1}

    def log_epoch(self, epoch, metrics):
        GoodLogger.calls.append(("log_epoch", epoch))

    def finish(self, summary, bundle):
        GoodLogger.calls.append(("finish", Path(bundle).name))


class OldSignature(GoodLogger):
    """Follows the old hookspec: start(run, config), so the documented call cannot bind."""

    def start(self, run, config):  # noqa: D102
        return None


class NoFinish:
    def start(self, run, config, state):
        return None

    def log_epoch(self, epoch, metrics):
        pass


class KeywordEpoch(GoodLogger):
    def log_epoch(self, *, epoch, metrics):  # keyword-only: the positional call fails
        pass


class StartReturnsList(GoodLogger):
    def start(self, run, config, state):
        return ["not", "a", "dict"]


class RaisesInEpoch(GoodLogger):
    def log_epoch(self, epoch, metrics):
        raise ConnectionError("tracking server gone")


class StateNotJson(GoodLogger):
    def start(self, run, config, state):
        return {"handle": object()}


def logger_plugin(name: str, cls, options=None):
    class Plugin:
        @hookimpl
        def lspt_register_loggers(self, register):
            register(LoggerSpec(name=name, description=cls.__name__, factory=cls, options=options or {}))

    return Plugin()


def test_plugins_check_without_names_covers_external_loggers(tally):
    """The issue's crash: `plugins check` (no name) with an external logger was KeyError: 'logger'."""
    with register_plugin(logger_plugin("goodlog", GoodLogger, {"path": "where"}), name="ext-logger"):
        result = run_cli("plugins", "check", "--json")
    assert result.exit_code == 0, result.stdout + result.stderr
    (component,) = result.json["components"]
    assert component["kind"] == "logger" and component["ok"]
    assert [c["check"] for c in component["checks"]] == ["interface", "calls in order, resume"]
    tally.bad_input("plugins check with an external logger registered")


@pytest.mark.parametrize("cls, check, words", [
    (OldSignature, "interface", ["start(run, config) cannot take start(run, config, state)"]),
    (NoFinish, "interface", ["no method finish()"]),
    (KeywordEpoch, "interface", ["cannot take log_epoch(epoch, metrics)"]),
    (StartReturnsList, "calls in order, resume", ["start() returned list"]),
    (RaisesInEpoch, "calls in order, resume", ["failed at epoch 1", "tracking server gone"]),
    (StateNotJson, "calls in order, resume", ["not JSON serializable"]),
])
def test_plugins_check_names_what_is_wrong_with_a_logger(cls, check, words, tally):
    with register_plugin(logger_plugin("badlog", cls), name="bad-logger"):
        report = run_check("badlog")
    assert report.failed == [check], "\n".join(report.lines())
    message = report.result(check).message
    assert all(w in message for w in words), message
    assert report.result(check).hint
    tally.bad_input(f"logger {cls.__name__}")


@pytest.mark.parametrize("cls", [OldSignature, NoFinish, KeywordEpoch])
def test_tune_refuses_a_logger_with_the_wrong_interface_in_one_warning(cls, tmp_path, tally):
    """Following the old hookspec used to give a run that exits 0 and logs nothing, silently."""
    with register_plugin(logger_plugin("badlog", cls), name="bad-logger"):
        task = fake_task()
        result = run_cli("tune", "--backbone", "vit-tiny", "--task", task, "--strategy", "linear", "--epochs", "2",
                         "--warmup-epochs", "0", "--batch-size", "8", "--log", "badlog", "--out", str(tmp_path / "r"),
                         "--json")
    assert result.exit_code == 0, result.stderr
    warnings = [l for l in result.stderr.splitlines() if l.startswith("Warning:")]
    assert len(warnings) == 1 and "logger 'badlog' is refused" in warnings[0], result.stderr
    assert "start(run, config, state)" in warnings[0] and "Traceback" not in result.stderr
    assert (tmp_path / "r" / "summary.json").is_file()
    tally.bad_input(f"tune --log with logger {cls.__name__}")


def test_logger_options_reach_the_factory_and_bad_ones_are_usage_errors(tmp_path, tally):
    GoodLogger.calls.clear()
    with register_plugin(logger_plugin("goodlog", GoodLogger, {"path": "the file"}), name="ext-logger"):
        task = fake_task()
        base = ["tune", "--backbone", "vit-tiny", "--task", task, "--strategy", "linear", "--epochs", "1",
                "--warmup-epochs", "0", "--batch-size", "8", "--log", "goodlog"]
        ok = run_cli(*base, "--log-opt", "path=x.csv", "--out", str(tmp_path / "a"), "--json")
        assert ok.exit_code == 0, ok.stderr
        assert GoodLogger.calls[0] == ("start", {}, "x.csv") and GoodLogger.calls[-1] == ("finish", "bundle.safetensors")
        assert json.loads((tmp_path / "a" / "config.json").read_text())["train"]["log_options"] == "path=x.csv"
        named = run_cli(*base, "--log-opt", "goodlog.path=y.csv,tensorboard.dir=tb", "--out", str(tmp_path / "b"))
        assert named.exit_code == 0 and GoodLogger.calls[-2][0] == "log_epoch", named.stderr
        assert ("start", {}, "y.csv") in GoodLogger.calls
        bad = {
            "nope=1": "unknown --log-opt 'nope' for logger(s) goodlog; allowed: goodlog.path",
            "goodlog.nope=1": "unknown --log-opt 'nope' for logger(s) goodlog; allowed: goodlog.path",
            "mlflow.path=1": "unknown --log-opt 'mlflow.path'; logger 'mlflow' takes: (none)",
            "nolog.path=1": "unknown logger 'nolog'",
            "path": "expected KEY=VALUE or LOGGER.KEY=VALUE, got 'path'",
        }
        for value, error in bad.items():
            result = run_cli(*base, "--log-opt", value, "--out", str(tmp_path / "c"))
            errors = [l for l in result.stderr.splitlines() if l.startswith("Error:")]
            assert result.exit_code == 2 and len(errors) == 1 and error in errors[0], (value, result.stderr)
            assert not (tmp_path / "c").exists()
            tally.bad_input(f"--log-opt {value}")


def test_the_logger_interface_has_one_source():
    """loggers.LOGGER_METHODS is the interface; hookspecs, specs, loggers' docs and docs/plugins.md
    show exactly its signatures (the old `start(run, config)` nowhere)."""
    from lspt_cli import hookspecs, specs
    from lspt_cli.loggers import LOGGER_METHODS, signature_text

    texts = {
        "hookspecs.lspt_register_loggers": inspect.getdoc(hookspecs.lspt_register_loggers),
        "specs.LoggerSpec": inspect.getdoc(specs.LoggerSpec),
        "docs/plugins.md": (ROOT / "docs" / "plugins.md").read_text(),
    }
    for where, text in texts.items():
        for method in LOGGER_METHODS:
            assert signature_text(method) in text, (where, method)
        # the old, wrong signature appears only as what the refusal warning quotes
        assert not re.search(r"(?<![\w])start\(run, config\)(?! cannot take)", text), where
    table = texts["docs/plugins.md"].split("## Loggers", 1)[1].split("\n## ", 1)[0]
    rows = [l for l in table.splitlines() if l.startswith("| `")]
    assert [r.split("`")[1].split(" ->")[0] for r in rows] == [signature_text(m) for m in LOGGER_METHODS]


# -- executors -----------------------------------------------------------------------------------
def _executor(kind: str):
    from lspt_cli.sweep import payload, run_trial

    class Fake:
        def __init__(self, options, *, workers, sweep_dir, host):
            self.options = options

        def run(self, trials):
            trials = list(trials)
            if kind == "drops":
                trials = trials[:1]
            for trial in trials:
                if kind == "tampers":  # runs another config than the trial's file
                    config = json.loads(trial.config_file.read_text())
                    config["train"]["lr"] *= 3
                    trial.config_file.write_text(json.dumps(config))
                outcome, summary, error = run_trial(payload(trial))
                yield trial, outcome, summary, error
                if kind == "twice":
                    yield trial, outcome, summary, error

        def close(self):
            pass

    if kind == "no-close":
        del Fake.close
    return Fake


def executor_plugin(name: str, kind: str):
    class Plugin:
        @hookimpl
        def lspt_register_executors(self, register):
            register(ExecutorSpec(name=name, description=kind, factory=_executor(kind)))

    return Plugin()


@pytest.mark.parametrize("kind, check, words", [
    ("no-close", "build", ["no close()"]),
    ("twice", "two-trial sweep equals local", ["reported twice"]),
    ("drops", "two-trial sweep equals local", ["never reported lr0.05-seed42"]),
    ("tampers", "two-trial sweep equals local", ["bundle differs from the local executor's"]),
])
def test_plugins_check_names_what_is_wrong_with_an_executor(kind, check, words, tally):
    with register_plugin(executor_plugin("badexec", kind), name="bad-executor"):
        report = run_check("badexec")
    assert report.failed == [check], "\n".join(report.lines())
    assert all(w in report.result(check).message for w in words), report.result(check).message
    tally.bad_input(f"executor that {kind}")


def test_plugins_check_without_names_covers_external_executors_and_checks_kinds(tally):
    with register_plugin(executor_plugin("badexec", "no-close"), name="ext-executor"):
        result = run_cli("plugins", "check", "--json")
        kind = run_cli("plugins", "check", "badexec", "--kind", "model")
        opt = run_cli("plugins", "check", "badexec", "--opt", "novalue")
    assert result.exit_code == 1 and result.json["failed"] == ["executor badexec: build"], result.stdout + result.stderr
    assert "no close()" in result.json["components"][0]["checks"][0]["message"]
    assert kind.exit_code == 2 and "--kind must be one of strategy, backbone, dataset, recipe, logger, executor" in kind.stderr
    assert opt.exit_code == 2 and "--opt 'novalue': expected KEY=VALUE" in opt.stderr
    tally.bad_input("plugins check with an external executor registered")


def test_plugins_check_of_the_builtin_local_executor_passes():
    report = run_check("local")
    assert report.ok and [r.status for r in report.results] == ["ok", "ok"], "\n".join(report.lines())
    assert "bundles identical to local" in report.results[-1].message


# -- strategies: state outside state_dict, every bad option ----------------------------------------
def _strategies():
    import torch
    from torch import nn

    from lspt_cli.prompted import PromptStrategy

    class DataInit(PromptStrategy):
        """Initialises its shift from the first training batch, remembering that in a Python flag:
        a resumed run (a fresh instance) initialises again and overwrites the trained shift."""

        def __init__(self, dims):
            super().__init__(dims)
            self.shift = nn.Parameter(torch.zeros(dims.embed_dim))
            self.initialised = False

        def before_block(self, index, x, state):
            if index != 0:
                return x
            if self.training and not self.initialised:
                with torch.no_grad():
                    self.shift.copy_(x[:, self.prefix:].mean(dim=(0, 1)))
                self.initialised = True
            return torch.cat([x[:, :self.prefix], x[:, self.prefix:] + self.shift], dim=1)

    class DataInitBuffer(DataInit):
        """The same, with the flag in a buffer: state_dict carries it, the resume is exact."""

        def __init__(self, dims):
            PromptStrategy.__init__(self, dims)
            self.shift = nn.Parameter(torch.zeros(dims.embed_dim))
            self.register_buffer("done", torch.zeros((), dtype=torch.bool))

        def before_block(self, index, x, state):
            if index != 0:
                return x
            if self.training and not bool(self.done):
                with torch.no_grad():
                    self.shift.copy_(x[:, self.prefix:].mean(dim=(0, 1)))
                    self.done.fill_(True)
            return torch.cat([x[:, :self.prefix], x[:, self.prefix:] + self.shift], dim=1)

    class StepCounter(PromptStrategy):
        """Scales its shift by a step count kept in a Python int."""

        def __init__(self, dims):
            super().__init__(dims)
            self.shift = nn.Parameter(torch.zeros(dims.embed_dim))
            self.steps = 0

        def before_block(self, index, x, state):
            if index != 0:
                return x
            if self.training:
                self.steps += 1
            return torch.cat([x[:, :self.prefix], x[:, self.prefix:] + self.shift * (1 + self.steps)], dim=1)

    class TwoUnchecked(PromptStrategy):
        """Takes two numeric options unchecked: both must be reported, not only the first."""

        def __init__(self, dims, scale=1.0, width=2):
            super().__init__(dims, scale=scale, width=width)
            self.scale, self.width = scale, width
            self.shift = nn.Parameter(torch.zeros(dims.embed_dim))

        def before_block(self, index, x, state):
            if index != 0:
                return x
            return torch.cat([x[:, :self.prefix], x[:, self.prefix:] + self.scale * self.shift * self.width], dim=1)

    class Unseeded(PromptStrategy):
        def __init__(self, dims, scale=1.0):
            if isinstance(scale, bool) or not isinstance(scale, (int, float)):
                raise ConfigError(f"scale must be a number, got {scale!r}")
            super().__init__(dims, scale=scale)
            self.shift = nn.Parameter(torch.full((dims.embed_dim,), random.random()))

        def before_block(self, index, x, state):
            return torch.cat([x[:, :self.prefix], x[:, self.prefix:] + self.shift], dim=1) if index == 0 else x

    class LosesWidth(PromptStrategy):
        """config() lacks `width`, which sizes its tensor: the bundle cannot be loaded back."""

        def __init__(self, dims, width=3):
            if isinstance(width, bool) or not isinstance(width, int):
                raise ConfigError(f"width must be an integer, got {width!r}")
            super().__init__(dims)
            self.extra = nn.Parameter(torch.zeros(width))

        def before_block(self, index, x, state):
            return x + self.extra.sum() * 0.01 if index == 0 else x

    class Correct(PromptStrategy):
        def __init__(self, dims, scale=1.0):
            if isinstance(scale, bool) or not isinstance(scale, (int, float)):
                raise ConfigError(f"scale must be a number, got {scale!r}")
            super().__init__(dims, scale=scale)
            self.shift = nn.Parameter(torch.zeros(dims.embed_dim))

        def before_block(self, index, x, state):
            return torch.cat([x[:, :self.prefix], x[:, self.prefix:] + self.shift], dim=1) if index == 0 else x

    return dict(DataInit=DataInit, DataInitBuffer=DataInitBuffer, StepCounter=StepCounter, TwoUnchecked=TwoUnchecked,
                Unseeded=Unseeded, LosesWidth=LosesWidth, Correct=Correct)


def strategy_plugin(name: str, cls_name: str, defaults=None, count=None):
    class Plugin:
        @hookimpl
        def lspt_register_strategies(self, register):
            register(StrategySpec(name=name, description=cls_name,
                                  factory=lambda dims, **cfg: _strategies()[cls_name](dims, **cfg),
                                  defaults=defaults or {}, count_params=count))

    return Plugin()


@pytest.mark.parametrize("cls, failing", [("DataInit", ["resume"]), ("StepCounter", ["bundle round-trip", "resume"]),
                                          ("DataInitBuffer", [])])
def test_resume_check_catches_state_outside_state_dict(cls, failing, tally):
    with register_plugin(strategy_plugin("stateful", cls), name="stateful"):
        report = run_check("stateful")
    assert report.failed == failing, "\n".join(report.lines())
    if failing:
        assert "state outside state_dict()" in report.result("resume").message
        assert "Python attributes" in report.result("resume").hint
        tally.bad_input(f"strategy {cls} (state outside state_dict)")
    else:
        assert report.result("resume").status == "ok"


def test_bad_option_check_reports_every_bad_option(tally):
    with register_plugin(strategy_plugin("loose", "TwoUnchecked", {"scale": 1.0, "width": 2}), name="loose"):
        report = run_check("loose")
    assert report.failed == ["bad option"], "\n".join(report.lines())
    message = report.result("bad option").message
    assert message.startswith("2 problem(s)") and "--set scale=abc" in message and "--set width=abc" in message
    tally.bad_input("strategy with two unchecked options")


# -- what tune checks at the end of every run --------------------------------------------------------
@pytest.mark.parametrize("cls, defaults, count, args, words", [
    ("Correct", {"scale": 1.0}, lambda dims, o: 1, [], ["count_params says 1 trainable parameters, the strategy has 64"]),
    ("LosesWidth", {"width": 3}, None, ["--set", "width=5"],
     ["its bundle cannot be loaded back", "config() lacks or changes option(s) width"]),
    ("Unseeded", {"scale": 1.0}, None, ["--seed", "42"], ["two builds with seed 42 differ in shift: an unseeded initialisation"]),
])
def test_tune_checks_its_bundle_and_names_the_strategy_and_the_cause(cls, defaults, count, args, words, tmp_path, tally):
    with register_plugin(strategy_plugin("suspect", cls, defaults, count), name="suspect-plugin"):
        task = fake_task()
        result = run_cli("tune", "--backbone", "vit-tiny", "--task", task, "--strategy", "suspect", "--epochs", "1",
                         "--warmup-epochs", "0", "--batch-size", "8", *args, "--out", str(tmp_path / "r"))
    errors = [l for l in result.stderr.splitlines() if l.startswith("Error:")]
    assert result.exit_code == 1 and len(errors) == 1, result.stderr
    assert errors[0].startswith("Error: strategy 'suspect' (plugin 'suspect-plugin'): "), errors[0]
    assert all(w in errors[0] for w in words), errors[0]
    assert "lspt plugins check suspect" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "r" / "summary.json").exists()  # the run is not reported as finished
    tally.bad_input(f"tune with strategy {cls}")


def test_bundle_check_finds_state_outside_state_dict(tiny_backbone, tmp_path, tally):
    """A Python attribute that changes the outputs: the reloaded bundle answers differently."""
    import torch

    from lspt_cli import bundle
    from lspt_cli.engine.bundle_check import check_run_bundle
    from lspt_cli.errors import PluginError
    from lspt_cli.plugins import get_host
    from lspt_cli.prompted import PromptedViT

    with register_plugin(strategy_plugin("stateful", "StepCounter"), name="stateful"):
        host = get_host()
        torch.manual_seed(0)
        model = PromptedViT(tiny_backbone, _strategies()["StepCounter"](tiny_backbone.dims), 3)
        with torch.no_grad():
            model.strategy.shift.copy_(torch.randn(tiny_backbone.dims.embed_dim))  # a constant would vanish in LayerNorm
        model.train()
        model(torch.zeros(1, 3, 32, 32))  # steps = 1: the trained model now differs from a fresh one
        meta = bundle.make_metadata(
            backbone={"name": tiny_backbone.name, "fingerprint": tiny_backbone.fingerprint, "source": "", "weights": None},
            strategy={"name": "stateful", "config": {}}, task={"name": "t", "classes": ["a", "b", "c"], "benchmark": "custom"},
            data_config=dict(tiny_backbone.data_config))
        bundle.save(tmp_path / "b.safetensors", model.trainable_state_dict(), meta)
        with pytest.raises(PluginError, match=r"strategy 'stateful' \(plugin 'stateful'\): the bundle reloaded .* "
                                              r"state kept outside state_dict\(\)"):
            check_run_bundle(model, tmp_path / "b.safetensors", strategy="stateful", config={}, seed=0, host=host)
    tally.bad_input("bundle check: state outside state_dict")


def test_bundle_check_passes_on_every_builtin_strategy(tiny_backbone, tmp_path):
    import torch

    from lspt_cli import bundle
    from lspt_cli.engine.bundle_check import check_run_bundle
    from lspt_cli.plugins import get_host
    from lspt_cli.prompted import PromptedViT, build_strategy

    host = get_host()
    for name in host.strategies.names():
        torch.manual_seed(0)
        model = PromptedViT(tiny_backbone, build_strategy(name, tiny_backbone.dims, {}, host=host), 3)
        meta = bundle.make_metadata(
            backbone={"name": tiny_backbone.name, "fingerprint": tiny_backbone.fingerprint, "source": "", "weights": None},
            strategy={"name": name, "config": model.strategy.config()},
            task={"name": "t", "classes": ["a", "b", "c"], "benchmark": "custom"}, data_config=dict(tiny_backbone.data_config))
        bundle.save(tmp_path / f"{name}.safetensors", model.trainable_state_dict(), meta)
        line = check_run_bundle(model, tmp_path / f"{name}.safetensors", strategy=name, config={}, seed=0, host=host)
        assert "identical outputs" in line, name


# -- loading diagnostics (real distributions on PYTHONPATH, real processes) ----------------------------
from .test_plugins_isolation import lines, run  # noqa: E402

SLOW = """
import time
time.sleep(0.8)
@hookimpl
def lspt_register_strategies(register):
    register(StrategySpec(name="slow-ok", description="slow", factory="x:y"))
"""
CLASH = """
@hookimpl
def lspt_register_strategies(register):
    register(StrategySpec(name="vpt-deep", description="clashes", factory="x:y"))
    register(StrategySpec(name="clash-ok", description="kept", factory="lspt_plugins.strategies.vpt:VPTShallow",
                          defaults={}))
"""
BROKEN = """
raise RuntimeError("cannot import my deps")
"""


def test_lspt_plugins_shows_load_times_and_warns_about_a_slow_plugin(tmp_path, tally):
    result = run(tmp_path, {"acme-slow": SLOW}, "plugins", "--json")
    assert result.returncode == 0, result.stderr
    rows = {r["distribution"]: r for r in json.loads(result.stdout)}
    assert rows["acme-slow"]["load_seconds"] >= 0.8 and rows["lspt"]["load_seconds"] < 0.5
    warnings = lines(result.stderr, "Warning:")
    assert len(warnings) == 1 and "plugin 'acme-slow:plugin' (acme-slow 0.1.0) took" in warnings[0], result.stderr
    assert "every lspt command (--help too) waits for it" in warnings[0]
    text = run(tmp_path, {}, "plugins", LSPT_LOAD_PLUGINS="acme-slow")
    assert "loaded in 0.8" in text.stdout or "loaded in 0.9" in text.stdout or "loaded in 1." in text.stdout, text.stdout
    tally.bad_input("a plugin that takes 0.8 s to import")


@pytest.mark.parametrize("value, needle", [
    ("typo", "names 'typo', which matches no installed plugin (installed: acme-slow, plugin)"),
    ("acme-slwo", "names 'acme-slwo', which matches no installed plugin (did you mean 'acme-slow'?)"),
])
def test_lspt_load_plugins_warns_on_names_that_match_nothing(tmp_path, value, needle, tally):
    result = run(tmp_path, {"acme-slow": SLOW}, "list", "backbones", LSPT_LOAD_PLUGINS=value)
    assert result.returncode == 0 and "vit-tiny" in result.stdout, result.stderr
    warnings = lines(result.stderr, "Warning:")
    assert len(warnings) == 1 and needle in warnings[0], result.stderr
    tally.bad_input(f"LSPT_LOAD_PLUGINS={value}")


def test_a_name_clash_drops_only_the_clashing_component_and_says_so(tmp_path, tally):
    listed = run(tmp_path, {"acme-clash": CLASH}, "list", "strategies", "--json")
    assert listed.returncode == 0, listed.stderr
    names = [s["name"] for s in json.loads(listed.stdout)]
    assert "clash-ok" in names and names.count("vpt-deep") == 1
    warnings = lines(listed.stderr, "Warning:")
    assert len(warnings) == 1, listed.stderr
    assert ("strategy 'vpt-deep' is registered twice: by built-in 'strategies' and by plugin "
            "'acme-clash:plugin' (acme-clash 0.1.0); the second was dropped") in warnings[0]
    assert "plugin 'strategies'" not in listed.stderr
    doc = run(tmp_path, {}, "plugins", "--json", LSPT_LOAD_PLUGINS="acme-clash")
    row = [r for r in json.loads(doc.stdout) if r["distribution"] == "acme-clash"][0]
    assert row["components"] == {"strategy": ["clash-ok"]} and list(row["dropped"]["strategy"]) == ["vpt-deep"]
    tally.bad_input("a plugin whose strategy clashes with a built-in")


def test_unknown_names_mention_a_plugin_that_failed_to_load(tmp_path, tally):
    result = run(tmp_path, {"acme-broken": BROKEN}, "tune", "--backbone", "vit-tiny", "--task", "digits",
                 "--strategy", "my-prompts", "--dry-run")
    assert result.returncode == 2, result.stderr
    errors, hints = lines(result.stderr, "Error:"), lines(result.stderr, "Hint:")
    assert errors == ["Error: unknown strategy 'my-prompts'; available: gapt, linear, lspt, vpt-deep, vpt-shallow"] or \
        errors[0].startswith("Error: unknown strategy 'my-prompts'"), result.stderr
    assert "plugin 'acme-broken:plugin' (acme-broken 0.1.0) failed: import failed: RuntimeError: cannot import my deps" \
        in hints[0], result.stderr
    tally.bad_input("an unknown strategy while a plugin failed to load")


# -- every built-in logger and executor passes --------------------------------------------------------
def _builtin(kind: str) -> list[str]:
    from lspt_cli import plugins

    try:
        return plugins.get_host().registry(kind).names()
    finally:
        plugins.reset_host()


# what a check needs on a machine without a cluster; ray starts a local one (slow, so marked)
BUILTIN_OPTIONS = {"slurm": {"cluster": "local"}}


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n == "ray" else n
                                  for n in _builtin("logger") + _builtin("executor")])
def test_every_builtin_logger_and_executor_passes_the_checks(name):
    report = run_check(name, options=BUILTIN_OPTIONS.get(name))
    assert report.ok, "\n".join(report.lines())
    installed = all(r.status == "ok" for r in report.results)
    assert installed or [r.status for r in report.results] == ["skip"] * len(report.results), "\n".join(report.lines())


def test_inspect_counts_a_bool_buffer_apart_from_the_parameters(tmp_path, tally):
    import torch

    from lspt_cli import bundle

    meta = bundle.make_metadata(backbone={"name": "vit-tiny", "fingerprint": "x"}, strategy={"name": "linear", "config": {}},
                                task={"name": "t", "classes": ["a", "b"], "benchmark": "custom"}, data_config={})
    bundle.save(tmp_path / "b.safetensors", {"strategy.mask": torch.ones(5, dtype=torch.bool),
                                             "strategy.count": torch.zeros((), dtype=torch.int64),
                                             "head.weight": torch.zeros(2, 3), "head.bias": torch.zeros(2)}, meta)
    doc = run_cli("inspect", str(tmp_path / "b.safetensors"), "--json").json
    assert doc["num_parameters"] == 8 and doc["num_buffer_values"] == 6
    text = run_cli("inspect", str(tmp_path / "b.safetensors")).stdout
    assert "8 parameters, 6 buffer values" in text.replace("\n", " ")
    tally.bad_input("inspect of a bundle with a bool buffer")


def test_strategy_descriptions_count_blocks_from_0():
    """docs/plugins.md: block indices are 0-based; `lspt list strategies` must not say "block 1"."""
    rows = run_cli("list", "strategies", "--json").json
    assert not [r["name"] for r in rows if re.search(r"\bblock [1-9]", r["description"])]
