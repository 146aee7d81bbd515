"""The CLI's single error boundary (lspt_cli/cli/__init__.py), in-process through the real app.

Usage errors of every command are one `Error:` line + a `--help` hint, exit 2, never a rich box;
any exception escaping a command is one `Error: internal error: <type>: <message>` line with a hint
to re-run with LSPT_DEBUG=1, exit 1 (named after the plugin when plugin code raised it); OS errors
naming a file, a full device, memory exhaustion and a closed pipe each have their own clean ending;
warnings are one line each; messages stay one printable line, long lists shortened.
"""

from __future__ import annotations

import errno
import warnings

import pytest
from registered import COMMANDS
from typer.testing import CliRunner

from lspt_cli import hookimpl, paths
from lspt_cli.cli import create_app
from lspt_cli.errors import DataError
from lspt_cli.messages import MAX_MESSAGE_CHARS, one_line, printable, shorten_list
from lspt_cli.plugins import PluginRecord, get_host

BOX = set("╭╮╰╯│─")


def invoke(*args, env=None):
    result = CliRunner().invoke(create_app(), [str(a) for a in args], catch_exceptions=False, env=env)
    return result.exit_code, result.stdout, result.stderr


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("Error:")]


def assert_one_error(code, out, err, exit_code, *needles) -> str:
    assert code == exit_code, f"exit {code}, expected {exit_code}; stderr: {err}"
    assert "Traceback" not in err + out
    assert not BOX & set(err), f"a rich box on stderr: {err}"
    errors = error_lines(err)
    assert len(errors) == 1, err
    for needle in needles:
        assert needle in errors[0], f"{needle!r} not in {errors[0]!r}"
    # every stderr line is ours: Error:, Hint:, Warning: (nothing multi-line around them)
    assert all(line.startswith(("Error:", "Hint:", "Warning:")) for line in err.splitlines() if line.strip()), err
    return errors[0]


# -- usage errors: every command ----------------------------------------------------------------

USAGE_CASES = [
    *[(f"{cmd}: unknown option", [cmd, "--no-such-option"], "No such option", cmd) for cmd in COMMANDS],
    ("root: unknown option", ["--bogus"], "No such option", None),
    ("root: unknown command", ["tunee"], "No such command", None),
    ("list: bad choice", ["list", "bogus"], "'bogus' is not one of", "list"),
    ("list: extra arguments", ["list", "backbones", "x", "y"], "unexpected extra argument", "list"),
    ("inspect: missing argument", ["inspect"], "Missing argument", "inspect"),
    ("eval: missing argument", ["eval"], "Missing argument", "eval"),
    ("predict: missing argument", ["predict"], "Missing argument", "predict"),
    ("explain: missing argument", ["explain"], "Missing argument", "explain"),
    ("export: missing option", ["export", "runs/x"], "Missing option", "export"),
    ("report: bad format choice", ["report", ".", "--format", "xml"], "xml", "report"),
    ("tune: integer option given text", ["tune", "--epochs", "abc"], "--epochs", "tune"),
    ("tune: float option given text", ["tune", "--lr", "fast"], "--lr", "tune"),
    ("tune: option without its value", ["tune", "--backbone"], "--backbone", None),  # click reports it on the root
    ("eval: batch size below its minimum", ["eval", "b.safetensors", "--batch-size", "0"], "--batch-size", "eval"),
    ("predict: top-k below its minimum", ["predict", "b.safetensors", "x.png", "--top-k", "0"], "--top-k", "predict"),
    ("paths: positional argument", ["paths", "extra"], "unexpected extra argument", "paths"),
    ("plugins: unknown subcommand", ["plugins", "nope"], "No such command", "plugins"),
]


@pytest.mark.parametrize("what,args,needle,command", USAGE_CASES, ids=[c[0] for c in USAGE_CASES])
def test_usage_error_is_one_line_exit_2(what, args, needle, command, tally):
    code, out, err = invoke(*args)
    assert_one_error(code, out, err, 2, needle)
    hint = f"lspt {command} --help" if command else "lspt --help"
    assert f"Hint: see '{hint}'" in err
    assert out == ""
    tally.bad_input(f"usage error: {what}")


# -- any other exception: internal error -----------------------------------------------------------
TORCH_LIKE = ("Error(s) in loading state_dict for VisionTransformer:\n\tMissing key(s) in state_dict: "
              "\"blocks.0.attn.qkv.weight\".\n\tUnexpected key(s) in state_dict: \"head.bias\".")

INTERNAL_CASES = [
    ("ValueError", ValueError("boom"), "internal error: ValueError: boom"),
    ("KeyError", KeyError("train"), "internal error: KeyError: 'train'"),
    ("TypeError", TypeError("'NoneType' object is not subscriptable"), "internal error: TypeError"),
    ("AssertionError without text", AssertionError(), "internal error: AssertionError"),
    ("ZeroDivisionError", ZeroDivisionError("division by zero"), "internal error: ZeroDivisionError"),
    ("RecursionError", RecursionError("maximum recursion depth exceeded"), "internal error: RecursionError"),
    ("multi-line torch RuntimeError", RuntimeError(TORCH_LIKE), "Missing key(s) in state_dict"),
    ("2 MB message", RuntimeError("unexpected tensor " * 120_000), "more characters"),
    ("ANSI escapes and markup in the message", ValueError("\x1b[2J\x1b[31m[red]evil[/red]\r"), "[red]evil[/red]"),
    ("UnicodeDecodeError", UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte"), "internal error: UnicodeDecodeError"),
    ("StopIteration", StopIteration(), "internal error: StopIteration"),
    ("NotImplementedError", NotImplementedError("later"), "internal error: NotImplementedError: later"),
    ("an exception whose str() raises", type("Unprintable", (Exception,), {"__str__": lambda self: 1 / 0})(),
     "internal error: Unprintable"),
]


def _raiser(exc):
    def resolve(kind):
        raise exc

    return resolve


@pytest.mark.parametrize("what,exc,needle", INTERNAL_CASES, ids=[c[0] for c in INTERNAL_CASES])
def test_unknown_exception_is_an_internal_error(what, exc, needle, monkeypatch, tally):
    monkeypatch.setattr(paths, "resolve", _raiser(exc))
    code, out, err = invoke("paths")
    line = assert_one_error(code, out, err, 1, needle)
    assert "Hint:" in err and "LSPT_DEBUG=1" in err and "report it" in err
    assert len(line) <= MAX_MESSAGE_CHARS + 100
    assert "\x1b" not in err and "\r" not in err
    tally.bad_input(f"internal error: {what}")


def test_lspt_debug_shows_the_exception_instead(monkeypatch):
    monkeypatch.setattr(paths, "resolve", _raiser(ValueError("boom")))
    with pytest.raises(ValueError, match="boom"):
        invoke("paths", env={"LSPT_DEBUG": "1"})


OS_CASES = [
    ("PermissionError naming a file", PermissionError(errno.EACCES, "Permission denied", "/srv/x.json"), 1,
     "/srv/x.json: Permission denied"),
    ("IsADirectoryError naming a file", IsADirectoryError(errno.EISDIR, "Is a directory", "/tmp"), 1, "/tmp: Is a directory"),
    ("ENOSPC without a file (stdout)", OSError(errno.ENOSPC, "No space left on device"), 1, "cannot write output"),
    ("EIO without a file", OSError(errno.EIO, "Input/output error"), 1, "cannot write output"),
    ("rename failure naming two files", OSError(errno.EXDEV, "Invalid cross-device link", "/a", None, "/b"), 1, "/a -> /b"),
    ("MemoryError", MemoryError(), 1, "out of memory"),
    ("a known error still is its message", DataError("task 'x' is not prepared", hint="lspt prepare-data x"), 1,
     "task 'x' is not prepared"),
]


@pytest.mark.parametrize("what,exc,exit_code,needle", OS_CASES, ids=[c[0] for c in OS_CASES])
def test_environment_errors_have_their_own_line(what, exc, exit_code, needle, monkeypatch, tally):
    monkeypatch.setattr(paths, "resolve", _raiser(exc))
    code, out, err = invoke("paths")
    line = assert_one_error(code, out, err, exit_code, needle)
    assert "internal error" not in line
    tally.bad_input(f"environment error: {what}")


def test_broken_pipe_is_a_quiet_exit_141(monkeypatch, tally):
    monkeypatch.setattr(paths, "resolve", _raiser(BrokenPipeError(errno.EPIPE, "Broken pipe")))
    monkeypatch.setattr("lspt_cli.cli.silence_stdout", lambda: None)  # CliRunner's stdout has no fd
    code, out, err = invoke("paths")
    assert code == 141 and err == "" and out == ""
    tally.bad_input("environment error: EPIPE raised inside a command")


def test_os_error_inside_an_lspt_dir_names_the_rule(monkeypatch, tmp_path, capsys, tally):
    from lspt_cli.cli import handle_exception

    home = tmp_path / "home-is-a-file"
    home.write_text("x")
    monkeypatch.setenv("LSPT_HOME", str(home))
    code = handle_exception(NotADirectoryError(errno.ENOTDIR, "Not a directory", str(home / "data" / "tasks")))
    err = capsys.readouterr().err
    assert code == 1 and len(error_lines(err)) == 1 and "Not a directory" in err
    assert "the data dir" in err and "comes from LSPT_HOME" in err
    tally.bad_input("environment error: LSPT_HOME is a file (hint names the rule)")


# -- exceptions from plugin code name the plugin ---------------------------------------------------
class Thrower:
    """A plugin whose command and dataset raise; defined here, so its code lives in this module."""

    def __init__(self, exc):
        self.exc = exc

    @hookimpl
    def lspt_register_commands(self, app):
        exc = self.exc

        @app.command("acme-boom")
        def boom():
            raise exc


@pytest.mark.parametrize("exc", [ValueError("bad value"), KeyError("k"), RuntimeError("multi\nline")],
                         ids=["ValueError", "KeyError", "RuntimeError"])
def test_exception_in_plugin_code_names_the_distribution(exc, tally):
    host = get_host()
    record = PluginRecord(name="acme-lspt:boom", dist="acme-lspt", version="1.2.3")
    host.add_plugin(Thrower(exc), record)
    try:
        code, out, err = invoke("acme-boom")
    finally:
        host.remove_plugin(record.name)
    line = assert_one_error(code, out, err, 1, "plugin 'acme-lspt:boom' (acme-lspt 1.2.3) failed", type(exc).__name__)
    assert "internal error" not in line and "bug in plugin" in err
    tally.bad_input(f"plugin command raises {type(exc).__name__}")


# -- warnings and messages -------------------------------------------------------------------------
WARNING_CASES = [
    ("multi-line UserWarning", UserWarning("first line\n  second line\n  third"), "first line second line third"),
    ("PIL DecompressionBombWarning", None, "DecompressionBombWarning"),
    ("torch.load pickle FutureWarning", FutureWarning(
        "You are using `torch.load` with `weights_only=False`\n(the current default value), which uses the default "
        "pickle module implicitly.\nIt is possible to construct malicious pickle data"), "torch.load"),
]


@pytest.mark.parametrize("what,warning,needle", WARNING_CASES, ids=[c[0] for c in WARNING_CASES])
def test_warnings_are_one_line_and_do_not_surround_the_error(what, warning, needle, monkeypatch, tally):
    if warning is None:
        from PIL import Image

        warning = Image.DecompressionBombWarning("Image size (100000000 pixels) exceeds limit of 89478485 pixels,\n"
                                                 "could be decompression bomb DOS attack.")

    def resolve(kind):
        warnings.warn(warning, stacklevel=1)
        raise DataError("the real error")

    monkeypatch.setattr(paths, "resolve", resolve)
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        code, out, err = invoke("paths")
    assert_one_error(code, out, err, 1, "the real error")
    warning_lines = [line for line in err.splitlines() if line.startswith("Warning:")]
    assert len(warning_lines) == 1 and needle in warning_lines[0], err
    tally.bad_input(f"warning folded to one line: {what}")


def test_shorten_list_counts_what_it_leaves_out():
    names = [f"blocks.{i}.weight" for i in range(200_000)]
    text = shorten_list(names)
    assert text.startswith("blocks.0.weight, blocks.1.weight") and text.endswith("... and 199,990 more")
    assert shorten_list(["a", "b"]) == "a, b" and shorten_list([]) == ""
    assert shorten_list(["x"] * 3, limit=2, quote=True) == "'x', 'x' ... and 1 more"


def test_one_line_and_printable():
    assert one_line("a\n\n  b\r\n\tc") == "a b c"
    assert printable("\x1b[31mred\x07") == "\\x1b[31mred\\x07"
    assert printable("\u202eevil") == "\\u202eevil"  # a bidi override cannot reorder the line
    assert printable("a\nb", newlines=True) == "a\nb" and printable("a\nb") == "a\\x0ab"
    assert one_line("x" * 5000, limit=100).endswith("... (4,900 more characters)")


def test_bundle_mismatch_lists_are_shortened(tmp_path, tally):
    from lspt_cli import bundle
    from lspt_cli.errors import BundleError

    expected = {f"strategy.p{i}": None for i in range(3)}
    tensors = {f"strategy.junk{i}": None for i in range(200_000)}
    with pytest.raises(BundleError) as info:
        bundle.check_tensors(tmp_path / "b.safetensors", tensors, expected)
    message = info.value.message
    assert "... and 199,990 more" in message and len(message) < 2000
    tally.bad_input("bundle with 200k unexpected tensors: message shortened")
