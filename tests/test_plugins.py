"""The plugin host: entry-point loading, registries, broken plugins, selection, strict mode."""

from __future__ import annotations

import json
import sys
import types

import pytest

from lspt_cli import DatasetSpec, StrategySpec, hookimpl
from lspt_cli.errors import PluginError, UsageError
from lspt_cli.plugins import PluginHost, get_host


class ToyPlugin:
    @hookimpl
    def lspt_register_strategies(self, register):
        register(StrategySpec(name="toy", description="a toy", factory="nowhere:nothing"))

    @hookimpl
    def lspt_register_datasets(self, register):
        register(DatasetSpec(name="toy-data", description="toy data", prepare="nowhere:nothing", needs_root=False))


def test_builtins_load_through_entry_points():
    host = get_host()
    for name in ("backbones", "strategies", "datasets", "recipes"):
        record = host.records[name]
        assert record.builtin and record.dist == "lspt" and record.error is None


def test_throwaway_plugin_registers_and_unregisters():
    host = get_host()
    host.add_plugin(ToyPlugin(), "toy-plugin")
    assert "toy" in host.strategies and host.strategies.provider("toy") == "toy-plugin"
    assert host.records["toy-plugin"].components == {"strategy": ["toy"], "dataset": ["toy-data"]}
    host.remove_plugin("toy-plugin")
    assert "toy" not in host.strategies and "toy-plugin" not in host.records


def test_duplicate_name_names_both_plugins(capsys):
    host = PluginHost()
    host.add_plugin(ToyPlugin(), "first")
    record = host.add_plugin(ToyPlugin(), "second")
    assert "registered twice" in record.error and "'first'" in record.error and "'second'" in record.error
    assert "second" in capsys.readouterr().err
    assert host.strategies.provider("toy") == "first"  # the failed plugin leaves nothing behind


def test_duplicate_is_fatal_in_strict_mode(monkeypatch):
    monkeypatch.setenv("LSPT_STRICT_PLUGINS", "1")
    host = PluginHost()
    host.add_plugin(ToyPlugin(), "first")
    with pytest.raises(PluginError, match="registered twice"):
        host.add_plugin(ToyPlugin(), "second")


def test_wrong_spec_type_is_reported():
    class Wrong:
        @hookimpl
        def lspt_register_backbones(self, register):
            register(StrategySpec(name="x", description="", factory="a:b"))

    class NotASpec:
        @hookimpl
        def lspt_register_recipes(self, register):
            register({"name": "x"})

    host = PluginHost()
    assert "expected lspt_cli.specs.BackboneSpec" in host.add_plugin(Wrong(), "wrong").error
    assert "expected a lspt_cli.specs" in host.add_plugin(NotASpec(), "notaspec").error
    assert len(host.backbones) == 0 and len(host.recipes) == 0


def test_unknown_name_lists_available_and_suggests():
    host = PluginHost()
    host.add_plugin(ToyPlugin(), "toy-plugin")
    with pytest.raises(UsageError) as info:
        host.strategies.get("tyo")
    assert "unknown strategy 'tyo'; available: toy" in info.value.message
    assert "did you mean 'toy'" in info.value.hint


def test_wildcards():
    host = PluginHost()
    host.add_plugin(ToyPlugin(), "toy-plugin")
    assert host.datasets.names("toy-*") == ["toy-data"]
    assert host.datasets.names("nope*") == []


class FakeDist:
    def __init__(self, name, version="9.9"):
        self.name, self.version = name, version


class FakeEntryPoint:
    def __init__(self, name, dist, loader):
        self.name, self.dist, self._loader = name, FakeDist(dist), loader

    def load(self):
        return self._loader()


def _boom():
    raise RuntimeError("kaboom at import")


def test_broken_plugin_is_a_warning_and_a_row(capsys, monkeypatch):
    monkeypatch.delenv("LSPT_LOAD_PLUGINS")
    host = PluginHost()
    host.load_entry_points([FakeEntryPoint("broken", "lspt-broken", _boom), FakeEntryPoint("toy", "lspt-toy", ToyPlugin)])
    broken = host.records["lspt-broken:broken"]
    assert "kaboom at import" in broken.error and broken.dist == "lspt-broken" and broken.version == "9.9"
    assert "toy" in host.strategies  # everything else keeps working
    assert "Warning: plugin 'lspt-broken:broken'" in capsys.readouterr().err


def test_strict_mode_makes_a_broken_plugin_fatal(monkeypatch):
    monkeypatch.delenv("LSPT_LOAD_PLUGINS")
    monkeypatch.setenv("LSPT_STRICT_PLUGINS", "1")
    with pytest.raises(PluginError, match="kaboom"):
        PluginHost().load_entry_points([FakeEntryPoint("broken", "lspt-broken", _boom)])


def test_load_plugins_selects_external_ones(monkeypatch):
    eps = [FakeEntryPoint("toy", "lspt-toy", ToyPlugin), FakeEntryPoint("broken", "lspt-broken", _boom)]
    monkeypatch.setenv("LSPT_LOAD_PLUGINS", "lspt-toy")
    host = PluginHost()
    host.load_entry_points(eps)
    assert "lspt-toy:toy" in host.records and "lspt-broken:broken" not in host.records
    monkeypatch.setenv("LSPT_LOAD_PLUGINS", "")
    host = PluginHost()
    host.load_entry_points(eps)
    assert host.records == {}


def test_register_hook_raising_is_reported():
    class Raises:
        @hookimpl
        def lspt_register_strategies(self, register):
            register(StrategySpec(name="half", description="", factory="a:b"))
            raise ValueError("oops")

    host = PluginHost()
    record = host.add_plugin(Raises(), "raises")
    assert "lspt_register_strategies failed: ValueError: oops" in record.error
    assert "half" not in host.strategies  # partial registrations are rolled back


def test_event_hook_failure_only_warns(capsys):
    seen = []

    class Tracker:
        @hookimpl
        def lspt_on_epoch_end(self, run, metrics):
            seen.append(metrics)

    class BadTracker:
        @hookimpl
        def lspt_on_epoch_end(self, run, metrics):
            raise RuntimeError("tracker down")

    host = PluginHost()
    host.add_plugin(Tracker(), "tracker")
    host.add_plugin(BadTracker(), "bad")
    host.emit("lspt_on_epoch_end", run=None, metrics={"epoch": 1})
    assert seen == [{"epoch": 1}]
    assert "tracker down" in capsys.readouterr().err


def test_plugin_command_appears_in_cli(cli):
    import typer

    module = types.ModuleType("lspt_test_cmd_plugin")

    @hookimpl
    def lspt_register_commands(app: typer.Typer):
        @app.command("hello")
        def hello():
            """Say hello."""
            typer.echo("hello from a plugin")

    module.lspt_register_commands = lspt_register_commands
    get_host().add_plugin(module, "cmd-plugin")
    assert "hello" in cli("--help").output
    assert cli("hello").output.strip() == "hello from a plugin"


@pytest.mark.xdist_group("installed-plugins")  # loads every installed plugin
def test_help_survives_broken_plugin(cli, monkeypatch):
    monkeypatch.delenv("LSPT_LOAD_PLUGINS")
    host = get_host()
    host.load_entry_points([FakeEntryPoint("broken", "lspt-broken", _boom)])
    result = cli("--help")
    assert result.exit_code == 0 and "tune" in result.output
    rows = json.loads(cli("plugins", "--json").output)
    broken = [r for r in rows if r["name"] == "lspt-broken:broken"][0]
    assert "kaboom" in broken["error"]


def test_cli_import_does_not_import_torch():
    import subprocess

    code = "import lspt_cli.cli, lspt_cli.plugins as p, sys; p.get_host(); assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
