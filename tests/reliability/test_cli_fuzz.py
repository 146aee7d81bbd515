"""Hypothesis drives the CLI entry (the real app, in-process) with random argument lists for every
command: options of that command (from its own Click parameters) with hostile values, stray
positionals, root options, junk tokens. Whatever comes in: exit code in {0, 1, 2, 3}, no traceback,
at most one `Error:` line, and no "internal error" (an unknown exception would be a bug).

Fast by construction: `tune` always runs `--dry-run` and `sweep` always `--plan` (nothing trains);
paths point at small files in a temporary dir (never FIFOs or /dev/zero).
LSPT_FUZZ_EXAMPLES=2000 for a long hunt.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from typer.main import get_command
from typer.testing import CliRunner

from lspt_cli.cli import create_app

EXAMPLES = int(os.environ.get("LSPT_FUZZ_EXAMPLES", "150"))
ALLOWED_EXIT = {0, 1, 2, 3}
FORCED = {"tune": ["--dry-run"], "sweep": ["--plan"], "serve": ["--dry-run"]}  # never train or serve in a fuzz run


@pytest.fixture(scope="module")
def playground(tmp_path_factory) -> dict[str, str]:
    """Small hostile files and dirs the fuzzer may name as arguments."""
    base = tmp_path_factory.mktemp("cli-fuzz")
    (base / "empty.safetensors").write_bytes(b"")
    (base / "junk.safetensors").write_bytes(b"\x00\x01not a bundle" * 10)
    (base / "recipe.toml").write_text('description = "x"\n[train]\nlr = 0.1\n')
    (base / "bad.toml").write_text("[train\nlr = = 1\n")
    (base / "text.txt").write_text("hello\n")
    (base / "run").mkdir()
    (base / "run" / "config.json").write_text("[1, 2, 3]")
    (base / "dir.safetensors").mkdir()
    Image.new("RGB", (8, 8), (1, 2, 3)).save(base / "img.png")
    (base / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    names = ["empty.safetensors", "junk.safetensors", "recipe.toml", "bad.toml", "text.txt", "run",
             "dir.safetensors", "img.png", "broken.png", "absent.safetensors", "absent-dir", "out.safetensors"]
    return {name: str(base / name) for name in names} | {"__base__": str(base)}


HOSTILE_TEXT = ["", "-", "--", "nan", "inf", "-inf", "0", "-1", "1e309", str(2**70), str(2**63 - 1), "abc",
                "\x1b[31mred", "[red]x[/red]", "a\nb", "../../etc/passwd", "/dev/null", "x" * 3000, "digits",
                "vit-tiny", "vpt-deep", "lspt", "vtab/*", "*", "cpu", "bogus", "auto", "num_prompts=2",
                "num_prompts=abc", "lr=1e-3,0.1", "lr=abc", "=", "42,44", "md", "json"]


def _options(command) -> list[tuple[str, bool]]:
    """(option string, takes a value) for every option of a Click command."""
    found = []
    for param in command.params:
        if getattr(param, "param_type_name", "") != "option":
            continue
        takes_value = not getattr(param, "is_flag", False) and not getattr(param, "count", False)
        for opt in [*param.opts, *param.secondary_opts]:
            found.append((opt, takes_value))
    return found


APP = create_app()
GROUP = get_command(APP)
COMMANDS = sorted(name for name in GROUP.commands if not name.startswith("acme-"))
ROOT_OPTIONS = _options(GROUP)


@st.composite
def argument_lists(draw, playground):
    command = draw(st.sampled_from(COMMANDS))
    options = _options(GROUP.commands[command])
    values = st.one_of(st.sampled_from(HOSTILE_TEXT), st.sampled_from(sorted(v for k, v in playground.items() if k != "__base__")),
                       st.text(max_size=12))
    args: list[str] = []
    for _ in range(draw(st.integers(0, 2))):  # root options first (--data-dir X ...)
        opt, takes = draw(st.sampled_from(ROOT_OPTIONS))
        args += [opt, draw(values)] if takes else [opt]
    args.append(command)
    for _ in range(draw(st.integers(0, 6))):
        kind = draw(st.integers(0, 9))
        if kind < 6 and options:
            opt, takes = draw(st.sampled_from(options))
            if opt in ("--help", "-h"):
                continue  # help is not an error path; it is tested elsewhere
            args += [opt, draw(values)] if takes else [opt]
        elif kind < 9:
            args.append(draw(values))  # a positional
        else:
            args.append(draw(st.sampled_from(["--no-such-flag", "-Z", "--json=1", "--=", "-"])))
    return args + FORCED.get(command, [])


def _check(args: list[str], home: str) -> tuple[int, str]:
    result = CliRunner().invoke(APP, args, catch_exceptions=True, env={"LSPT_HOME": home, "LSPT_DEBUG": "0"})
    err = result.stderr
    where = f"lspt {' '.join(map(repr, args))} -> exit {result.exit_code}\nstderr: {err[-2000:]}"
    assert result.exception is None or isinstance(result.exception, SystemExit), \
        f"exception escaped the boundary: {result.exception!r}\n{where}"
    assert result.exit_code in ALLOWED_EXIT, where
    assert "Traceback" not in err and "Traceback" not in result.stdout, where
    errors = [line for line in err.splitlines() if line.startswith("Error:")]
    assert len(errors) <= 1, where
    assert not any("internal error" in line for line in errors), where
    return result.exit_code, err


def test_random_argument_lists_never_crash(playground, tally):
    home = str(Path(playground["__base__"]) / "home")
    seen_codes: set[int] = set()

    @settings(max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(argument_lists(playground))
    def run(args):
        code, _ = _check(args, home)
        seen_codes.add(code)

    run()
    assert seen_codes & {1, 2}, f"the fuzzer never reached an error path: {seen_codes}"
    tally.fuzz("CLI argument lists (every command)", EXAMPLES)


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_with_hostile_values_for_every_option(command, playground, tally):
    """Deterministic sweep: each option of each command once with a hostile value."""
    home = str(Path(playground["__base__"]) / "home")
    n = 0
    for opt, takes in _options(GROUP.commands[command]):
        if opt in ("--help", "-h"):
            continue
        for value in (["nan", "-1", "\x1b[2J[red]x", playground["junk.safetensors"]] if takes else [None]):
            _check([command, opt, *([value] if value is not None else []), *FORCED.get(command, [])], home)
            n += 1
    tally.fuzz(f"CLI hostile value per option: {command}", n)
