"""Hostile plugins, installed for real: each is a distribution (a `*.dist-info` with an `lspt` entry
point) on PYTHONPATH, loaded by a real `lspt` process.

Whatever a plugin does (sys.exit or raise at import, print to stdout, name a command like a
built-in, register malformed specs, name factories that do not exist, return the wrong type from
`prepare`, raise or exit in an event hook), lspt keeps working: one `Warning:` line naming the
plugin's distribution when the plugin is skipped or switched off, one `Error:` line naming it when
the command needed it, never a traceback, never a silent exit, never corrupted `--json`.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from .conftest import lspt_env

TIMEOUT = 120

HEADER = """\
import sys
from lspt_cli import hookimpl
from lspt_cli.specs import BackboneSpec, DatasetSpec, RecipeSpec, StrategySpec
"""


def install(site: Path, dist: str, source: str) -> str:
    """Write module + dist-info for distribution `dist` under `site`; returns the module name."""
    module = dist.replace("-", "_")
    (site / f"{module}.py").write_text(HEADER + textwrap.dedent(source))
    info = site / f"{module}-0.1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1.0\n")
    (info / "entry_points.txt").write_text(f"[lspt]\nplugin = {module}\n")
    return module


def run(tmp: Path, plugins: dict[str, str], *args: str, timeout: float = TIMEOUT, **env: str):
    site = tmp / "site"
    site.mkdir(exist_ok=True)
    for dist, source in plugins.items():
        install(site, dist, source)
    env = {"LSPT_LOAD_PLUGINS": ",".join(plugins), "PYTHONPATH": str(site), **env}
    environ = lspt_env(tmp / "home", **env)
    return subprocess.run([sys.executable, "-m", "lspt_cli", *args], env=environ, capture_output=True, text=True,
                          timeout=timeout)


def lines(stderr: str, prefix: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith(prefix)]


def assert_warned(result, dist: str, *needles: str) -> None:
    assert "Traceback" not in result.stderr, result.stderr
    warnings = [w for w in lines(result.stderr, "Warning:") if dist in w]
    assert len(warnings) == 1, result.stderr
    for needle in needles:
        assert needle in warnings[0], f"{needle!r} not in {warnings[0]!r}"


def assert_error(result, dist: str, *needles: str, code: int = 1) -> None:
    assert "Traceback" not in result.stderr + result.stdout, result.stderr
    assert result.returncode == code, (result.returncode, result.stderr)
    errors = lines(result.stderr, "Error:")
    assert len(errors) == 1 and dist in errors[0], result.stderr
    for needle in needles:
        assert needle in errors[0], f"{needle!r} not in {errors[0]!r}"


# -- import time ----------------------------------------------------------------------------------
IMPORT_CASES = {
    "sys.exit(3) at import": ("sys.exit(3)", "called sys.exit(3)"),
    "sys.exit(0) at import": ("sys.exit(0)", "called sys.exit(0)"),
    "SystemExit with a message": ("raise SystemExit('bye')", "called sys.exit('bye')"),
    "ValueError at import": ("raise ValueError('broken import')", "ValueError: broken import"),
    "ImportError of a missing dependency": ("import no_such_dependency_xyz", "ModuleNotFoundError"),
    "multi-line error at import": ("raise RuntimeError('line one\\nline two')", "line one line two"),
}


@pytest.mark.parametrize("what", IMPORT_CASES)
def test_import_failure_never_ends_the_cli(what, tmp_path, tally):
    body, needle = IMPORT_CASES[what]
    result = run(tmp_path, {"acme-broken": body}, "--help")
    assert result.returncode == 0 and "Usage" in result.stdout, result.stderr
    assert_warned(result, "acme-broken", needle)
    listed = run(tmp_path, {}, "list", "backbones", "--json", LSPT_LOAD_PLUGINS="acme-broken")
    assert listed.returncode == 0 and json.loads(listed.stdout)
    tally.bad_input(f"plugin: {what}")


def test_plugins_table_shows_the_failure(tmp_path, tally):
    result = run(tmp_path, {"acme-broken": "sys.exit(4)"}, "plugins", "--json")
    rows = {r["distribution"]: r for r in json.loads(result.stdout)}
    assert result.returncode == 0 and "called sys.exit(4)" in rows["acme-broken"]["error"]
    tally.bad_input("plugin: exit at import shown by `lspt plugins --json`")


def test_keyboard_interrupt_at_import_is_exit_130(tmp_path, tally):
    result = run(tmp_path, {"acme-ctrlc": "raise KeyboardInterrupt"}, "--help")
    assert result.returncode == 130 and "Traceback" not in result.stderr, result.stderr
    tally.bad_input("plugin: KeyboardInterrupt at import (Ctrl-C stops lspt, exit 130)")


PRINT_CASES = {
    "print at import": "print('hello from import')",
    "print in a register hook": """
        @hookimpl
        def lspt_register_recipes(register):
            print('hello from register')
        """,
    "print to stdout via sys.stdout.write": "sys.stdout.write('raw hello\\n')",
}


@pytest.mark.parametrize("what", PRINT_CASES)
def test_plugin_output_never_corrupts_json(what, tmp_path, tally):
    result = run(tmp_path, {"acme-chatty": PRINT_CASES[what]}, "list", "strategies", "--json")
    assert result.returncode == 0, result.stderr
    assert {row["name"] for row in json.loads(result.stdout)} >= {"vpt-deep"}  # stdout is pure JSON
    assert "hello" in result.stderr
    tally.bad_input(f"plugin: {what} with --json")


# -- commands -------------------------------------------------------------------------------------
COMMAND_CASES = {
    "command named tune": ('@app.command("tune")\n    def evil():\n        print("EVIL")', "tune", "a built-in command"),
    "command named list (function name)": ("@app.command()\n    def list():\n        print('EVIL')", "list",
                                           "a built-in command"),
    "group named plugins": ("import typer\n    sub = typer.Typer()\n    @sub.command('x')\n    def x():\n        pass\n"
                            "    app.add_typer(sub, name='plugins')", "plugins", "a built-in command"),
}


@pytest.mark.parametrize("what", COMMAND_CASES)
def test_command_name_collision_is_refused(what, tmp_path, tally):
    body, name, needle = COMMAND_CASES[what]
    source = f"""
@hookimpl
def lspt_register_commands(app):
    {body}

    @app.command("acme-ok")
    def ok():
        print("acme ok")
"""
    result = run(tmp_path, {"acme-clash": source}, name, "--help")
    assert result.returncode == 0 and "EVIL" not in result.stdout, result.stdout
    assert_warned(result, "acme-clash", f"command '{name}'", needle)
    ok = run(tmp_path, {}, "acme-ok", LSPT_LOAD_PLUGINS="acme-clash")
    assert ok.returncode == 0 and ok.stdout.strip() == "acme ok"  # the plugin's other command still works
    tally.bad_input(f"plugin: {what}")


def test_two_plugins_with_one_command_name(tmp_path, tally):
    source = """
@hookimpl
def lspt_register_commands(app):
    @app.command("acme-dup")
    def dup():
        print("from " + __name__)
"""
    result = run(tmp_path, {"acme-one": source, "acme-two": source}, "acme-dup")
    assert result.returncode == 0 and result.stdout.strip() == "from acme_one", result.stderr
    assert_warned(result, "acme-two", "command 'acme-dup'", "already taken by another plugin")
    tally.bad_input("plugin: two plugins add the same command")


@pytest.mark.parametrize("annotation,needle", [('"NoSuchType"', "NoSuchType"), ("list[list[int]]", "AssertionError")],
                         ids=["unresolvable", "unsupported by Typer"])
def test_command_typer_cannot_build_never_breaks_help(annotation, needle, tmp_path, tally):
    source = f"""
@hookimpl
def lspt_register_commands(app):
    @app.command("acme-unbuildable")
    def unbuildable(x: {annotation} = None):
        pass
"""
    result = run(tmp_path, {"acme-types": source}, "--help")
    assert result.returncode == 0 and "Usage" in result.stdout and "acme-unbuildable" not in result.stdout
    assert_warned(result, "acme-types", "cannot be built", needle)
    listed = run(tmp_path, {}, "list", "backbones", LSPT_LOAD_PLUGINS="acme-types")
    assert listed.returncode == 0 and "vit-tiny" in listed.stdout
    tally.bad_input(f"plugin: a command whose parameter type is {annotation}")


def test_register_commands_raising(tmp_path, tally):
    source = """
@hookimpl
def lspt_register_commands(app):
    @app.command("acme-half")
    def half():
        pass
    raise RuntimeError("midway")
"""
    result = run(tmp_path, {"acme-half": source}, "--help")
    assert result.returncode == 0 and "acme-half" not in result.stdout
    assert_warned(result, "acme-half", "RuntimeError: midway")
    tally.bad_input("plugin: lspt_register_commands raises after adding a command")


def test_plugin_command_raising_names_the_plugin(tmp_path, tally):
    source = """
@hookimpl
def lspt_register_commands(app):
    @app.command("acme-crash")
    def crash():
        {}["missing"]
"""
    result = run(tmp_path, {"acme-crashy": source}, "acme-crash")
    assert_error(result, "acme-crashy", "KeyError")
    assert "bug in plugin" in result.stderr and "LSPT_DEBUG=1" in result.stderr
    tally.bad_input("plugin: its command raises KeyError")


# -- specs and factories ----------------------------------------------------------------------------
def _dataset(prepare: str, extra: str = "") -> str:
    return f"""
{extra}
@hookimpl
def lspt_register_datasets(register):
    register(DatasetSpec(name="acme-data", description="a hostile dataset", prepare={prepare}, needs_root=False))
"""


PREPARE_CASES = {
    "factory naming a missing module": (_dataset("'no_such_module_xyz:prepare'"), ("no_such_module_xyz", "cannot be loaded")),
    "factory naming a missing attribute": (_dataset("'json:no_such_attribute'"), ("no_such_attribute", "cannot be loaded")),
    "factory naming a non-callable": (_dataset("'json:__name__'"), ("not a callable",)),
    "prepare raises": (_dataset("prep", "def prep(root, out_dir, **kw):\n    raise ValueError('no data for you')"),
                       ("ValueError: no data for you",)),
    "prepare returns None": (_dataset("prep", "def prep(root, out_dir, **kw):\n    return None"), ("returned NoneType",)),
    "prepare returns a dict": (_dataset("prep", "def prep(root, out_dir, **kw):\n    return {'classes': []}"),
                               ("returned dict",)),
    "prepare calls sys.exit(0)": (_dataset("prep", "def prep(root, out_dir, **kw):\n    sys.exit(0)"),
                                  ("called sys.exit(0)",)),
}


@pytest.mark.parametrize("what", PREPARE_CASES)
def test_dataset_plugin_failures_name_the_plugin(what, tmp_path, tally):
    source, needles = PREPARE_CASES[what]
    result = run(tmp_path, {"acme-data-plugin": source}, "prepare-data", "acme-data", "--json")
    assert_error(result, "acme-data-plugin", *needles)
    assert result.stdout == ""
    tally.bad_input(f"plugin: {what}")


SPEC_CASES = {
    "strategy defaults that are a list": "StrategySpec(name='acme-s', description='', factory='json:loads', defaults=[1, 2])",
    "strategy defaults with non-string keys": "StrategySpec(name='acme-s', description='', factory='json:loads', defaults={1: 2})",
    "strategy factory that is a number": "StrategySpec(name='acme-s', description='', factory=42)",
    "strategy count_params not callable": "StrategySpec(name='acme-s', description='', factory='json:loads', count_params='x')",
    "backbone embed_dim as text": "BackboneSpec(name='acme-b', description='', factory='json:loads', embed_dim='big')",
    "backbone depth of zero": "BackboneSpec(name='acme-b', description='', factory='json:loads', depth=0)",
    "description that is not text": "StrategySpec(name='acme-s', description=42, factory='json:loads')",
    "recipe values that are a list": "RecipeSpec(name='acme-r', description='', values=[1])",
    "dataset needs_root as text": "DatasetSpec(name='acme-d', description='', prepare='json:loads', needs_root='yes')",
}


@pytest.mark.parametrize("what", SPEC_CASES)
def test_malformed_spec_skips_the_plugin(what, tmp_path, tally):
    kind = {"S": "strategies", "B": "backbones", "R": "recipes", "D": "datasets"}[SPEC_CASES[what][0]]
    source = f"""
@hookimpl
def lspt_register_{kind}(register):
    register({SPEC_CASES[what]})
"""
    result = run(tmp_path, {"acme-specs": source}, "list", kind, "--json")
    assert result.returncode == 0, result.stderr
    assert not any(row["name"].startswith("acme-") for row in json.loads(result.stdout))
    assert_warned(result, "acme-specs", "registered")
    tally.bad_input(f"plugin: {what}")


FACTORY_CASES = {
    "strategy factory raises": ("""
def make(dims, **config):
    raise ValueError("cannot build prompts")

@hookimpl
def lspt_register_strategies(register):
    register(StrategySpec(name="acme-s", description="", factory=make, defaults={}))
""", ["--strategy", "acme-s"], ("ValueError: cannot build prompts",)),
    "strategy factory names a missing module": ("""
@hookimpl
def lspt_register_strategies(register):
    register(StrategySpec(name="acme-s", description="", factory="acme_gone_module:make", defaults={}))
""", ["--strategy", "acme-s"], ("acme_gone_module", "cannot be loaded")),
    "backbone factory raises": ("""
def make(weights):
    raise RuntimeError("no weights here")

@hookimpl
def lspt_register_backbones(register):
    register(BackboneSpec(name="acme-b", description="", factory=make))
""", ["--strategy", "vpt-deep", "--backbone", "acme-b"], ("RuntimeError: no weights here",)),
}


@pytest.mark.parametrize("what", FACTORY_CASES)
def test_factory_failures_during_tune_name_the_plugin(what, tmp_path, tally):
    source, args, needles = FACTORY_CASES[what]
    base = ["tune", "--backbone", "vit-tiny", "--task", "digits", "--epochs", "1", "--out", str(tmp_path / "run"), "-q"]
    result = run(tmp_path, {"acme-factory": source}, *base, *args, timeout=300)
    assert_error(result, "acme-factory", *needles)
    assert not (tmp_path / "run" / "bundle.safetensors").exists()
    tally.bad_input(f"plugin: {what} (tune)")


def test_count_params_raising_names_the_plugin(tmp_path, tally):
    source = """
def count(dims, config):
    raise ZeroDivisionError("oops")

@hookimpl
def lspt_register_strategies(register):
    register(StrategySpec(name="acme-s", description="", factory="json:loads", count_params=count))
"""
    result = run(tmp_path, {"acme-counter": source}, "list", "strategies")
    assert_error(result, "acme-counter", "ZeroDivisionError")
    tally.bad_input("plugin: count_params raises during `lspt list`")


# -- event hooks during a real run --------------------------------------------------------------------
RUN_ARGS = ["tune", "--backbone", "vit-tiny", "--task", "digits", "--strategy", "vpt-deep", "--epochs", "2",
            "--warmup-epochs", "0", "--batch-size", "128", "--set", "num_prompts=2", "--json"]
HOOKS = {
    "acme-raiser": """
        @hookimpl
        def lspt_on_epoch_end(run, metrics):
            raise RuntimeError("tracker down\\nsecond line")
        """,
    "acme-exiter": """
        @hookimpl
        def lspt_on_run_start(run, config):
            sys.exit(0)
        """,
    "acme-printer": """
        @hookimpl
        def lspt_on_epoch_end(run, metrics):
            print("epoch", metrics["epoch"])
        """,
}


def test_failing_event_hooks_are_switched_off_and_the_run_completes(tmp_path, tally):
    result = run(tmp_path, HOOKS, *RUN_ARGS, "--out", str(tmp_path / "run"), timeout=600)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)  # the printing hook did not corrupt --json
    assert summary["epochs"] == 2 and (tmp_path / "run" / "bundle.safetensors").is_file()
    assert len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) == 2
    assert_warned(result, "acme-raiser", "lspt_on_epoch_end failed: RuntimeError: tracker down second line", "switched off")
    assert_warned(result, "acme-exiter", "lspt_on_run_start failed: called sys.exit(0)")
    assert "epoch 1" in result.stderr and "epoch 2" in result.stderr
    tally.bad_input("plugin: event hook raises (warned once, run completes)")
    tally.bad_input("plugin: event hook calls sys.exit(0) (run completes, exit 0 with a bundle)")
    tally.bad_input("plugin: event hook prints during --json")


def test_strict_mode_stops_the_run_with_one_error(tmp_path, tally):
    result = run(tmp_path, {"acme-raiser": HOOKS["acme-raiser"]}, *RUN_ARGS, "--out", str(tmp_path / "run"),
                 timeout=600, LSPT_STRICT_PLUGINS="1")
    assert_error(result, "acme-raiser", "lspt_on_epoch_end failed")
    assert (tmp_path / "run" / "checkpoint.pt").is_file() and not (tmp_path / "run" / "bundle.safetensors").exists()
    tally.bad_input("plugin: event hook raises under LSPT_STRICT_PLUGINS=1 (one Error line, checkpoint kept)")
