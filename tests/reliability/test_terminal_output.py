"""Untrusted text on the terminal and strict JSON, through the real CLI.

Strings that come from files (bundle metadata, class names, tensor names, plugin descriptions and
errors, paths) are printed with rich markup escaped and control characters shown as escapes: an
ANSI sequence, a carriage return, a terminal-title OSC or a bidi override is never obeyed, and
"[red]x[/red]" prints literally. `--json` output is strict JSON: NaN and ±Infinity become null.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from PIL import Image

from lspt_cli import StrategySpec, bundle, hookimpl
from lspt_cli.cli.output import json_text, print_json, safe
from lspt_cli.plugins import PluginRecord, get_host

from .conftest import assert_clean_error
from .test_bad_inputs import _rewrite

HOSTILE = {
    "ANSI clear screen + colour": "\x1b[2J\x1b[31mowned",
    "rich markup": "[bold red]markup[/bold red]",
    "carriage return overwrite": "benign\rEVIL",
    "terminal title (OSC)": "\x1b]0;pwned\x07title",
    "bidi override": "\u202egnp.exe",
    "backspaces": "abc\x08\x08\x08xyz",
    "C1 control (CSI)": "\x9b31mred",
    "NUL byte": "nul\x00byte",
    "closing markup tag alone": "[/]",
    "escaped markup": "\\[not markup]",
}
CONTROL = ["\x1b", "\r", "\x07", "\u202e", "\x08", "\x9b", "\x00"]


def assert_inert(text: str) -> None:
    for char in CONTROL:
        assert char not in text, f"{char!r} reached the terminal: {text!r}"


def strict_loads(text: str):
    def refuse(constant):
        raise AssertionError(f"non-standard JSON constant {constant}")

    return json.loads(text, parse_constant=refuse)


@pytest.mark.parametrize("what", HOSTILE)
def test_safe_shows_text_and_obeys_nothing(what, tally):
    from rich.console import Console

    console = Console(record=True, width=200, color_system=None)
    console.print(f"label: {safe(HOSTILE[what])}")
    shown = console.export_text()
    assert_inert(shown)
    if not any(char in HOSTILE[what] for char in CONTROL):
        assert HOSTILE[what] in shown  # markup is printed literally, not interpreted
    tally.bad_input(f"terminal: {what}")


def _hostile_bundle(path, classes, task_name="[red]task[/red]\x1b[2J", metrics=None):
    md = bundle.make_metadata(
        backbone={"name": "vit-tiny\x1b[31m", "fingerprint": "sha256:" + "0" * 64},
        strategy={"name": "vpt-deep", "config": {"num_prompts": 2}},
        task={"name": task_name, "classes": classes, "benchmark": "custom"},
        data_config={"input_size": [3, 224, 224], "mean": [0.5] * 3, "std": [0.5] * 3},
        metrics=metrics or {},
    )
    tensors = {"head.weight": torch.zeros(len(classes), 4), "strategy.\x1b[5mprompt[/]": torch.zeros(2)}
    bundle.save(path, tensors, md)
    return path


def test_inspect_prints_bundle_metadata_inert(cli_err, tmp_path, tally):
    path = _hostile_bundle(tmp_path / "evil.safetensors", list(HOSTILE.values()))
    code, out, err = cli_err("inspect", path)
    assert code == 0, err
    assert_inert(out)
    assert "strategy.\\x1b[5mprompt[/]" in out  # the tensor name, visible and inert
    tally.bad_input("terminal: inspect of a bundle with hostile names")


def test_inspect_json_is_strict_and_keeps_the_text(cli_err, tmp_path, tally):
    metrics = {"val_top1": math.nan, "test_top1": math.inf, "loss": -math.inf, "ok": 1.5}
    path = _hostile_bundle(tmp_path / "nan.safetensors", ["a", "b"], metrics=metrics)
    code, out, err = cli_err("inspect", path, "--json")
    assert code == 0, err
    doc = strict_loads(out)
    assert doc["metadata"]["lspt.metrics"] == {"val_top1": None, "test_top1": None, "loss": None, "ok": 1.5}
    assert doc["metadata"]["lspt.task"]["name"] == "[red]task[/red]\x1b[2J"  # JSON keeps data exact (escaped)
    assert "\x1b" not in out  # JSON escapes control characters itself
    tally.bad_input("json: inspect --json of a bundle with NaN/Infinity metrics")


def test_predict_prints_labels_inert(cli_err, reference_bundle, tmp_path, tally):
    header = bundle.read_header(reference_bundle)
    labels = list(HOSTILE.values())[: len(header.task["classes"])]
    evil = _rewrite(reference_bundle, tmp_path / "labels.safetensors", meta={"lspt.task": dict(header.task, classes=labels)})
    image = tmp_path / "[b]img\x1b[31m.png"
    Image.new("RGB", (16, 16), (200, 10, 10)).save(image)
    code, out, err = cli_err("predict", evil, image, "--top-k", "10")
    assert code == 0, err
    assert_inert(out)
    assert "[bold red]markup[/bold red]" in out and "img\\x1b[31m.png" in out
    code, out, err = cli_err("predict", evil, image, "--json")
    assert code == 0 and {p["label"] for p in next(iter(strict_loads(out).values()))[str(image)]} <= set(labels)
    tally.bad_input("terminal: predict with hostile class names and image path")


class Describer:
    @hookimpl
    def lspt_register_strategies(self, register):
        register(StrategySpec(name="acme-\x1b[31mred", description="\x1b]0;title\x07[bold]desc[/bold]\rX",
                              factory="json:loads"))


def test_list_and_plugins_print_plugin_text_inert(cli_err, monkeypatch, tally):
    monkeypatch.setenv("COLUMNS", "400")  # no wrapping: the cells can be searched whole
    host = get_host()
    record = PluginRecord(name="acme\x1b[2J:desc", dist="acme-[red]dist[/red]", version="0.1\r")
    host.add_plugin(Describer(), record)
    record.error = "\x1b[31mfailed once[/]"
    try:
        code, out, err = cli_err("list", "strategies")
        assert code == 0, err
        assert_inert(out)
        assert "acme-\\x1b[31mred" in out and "[bold]desc[/bold]" in out
        code, out, err = cli_err("plugins")
        assert code == 0, err
        assert_inert(out)
        assert "failed once" in out and "[/]" in out  # the error text, literally
    finally:
        host.remove_plugin(record.name)
    tally.bad_input("terminal: list strategies with a hostile plugin description")
    tally.bad_input("terminal: plugins table with hostile names and error")


def test_error_lines_are_inert(cli_err, tmp_path, tally):
    missing = tmp_path / "\x1b[2J[red]gone[/red]\r.safetensors"
    code, out, err = cli_err("inspect", missing)
    line = assert_clean_error(code, out, err, "[red]gone[/red]")
    assert_inert(err)
    assert code in (1, 2) and "\\x1b[2J" in line
    tally.bad_input("terminal: Error line quoting a hostile path")


@pytest.mark.parametrize("value,expected", [
    (math.nan, None), (math.inf, None), (-math.inf, None), (1.5, 1.5),
    ({"a": [math.nan, {"b": math.inf}]}, {"a": [None, {"b": None}]}), ((1.0, math.nan), [1.0, None]),
])
def test_json_text_maps_non_finite_to_null(value, expected, tally):
    assert strict_loads(json_text(value)) == expected
    tally.bad_input("json: non-finite value mapped to null")


def test_print_json_is_strict(capsys):
    print_json({"x": math.nan, "path": __import__("pathlib").Path("/a b")})
    assert strict_loads(capsys.readouterr().out) == {"x": None, "path": "/a b"}
