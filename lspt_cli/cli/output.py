"""Shared CLI plumbing: stdout for results only, stderr for everything else (docs/architecture.md, "Conventions").

Every command prints through these helpers: `safe()` for any string that came from a file
(markup escaped, control characters shown as escapes), `print_json()` for strict JSON (NaN and
±Infinity become null), `error_line()`/`warning_line()` for the one-line messages on stderr.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from rich.console import Console, ConsoleDimensions
from rich.markup import escape
from rich.text import Text

from ..messages import json_text, one_line, printable

MIN_WIDTH, MAX_WIDTH = 40, 4096  # COLUMNS=0 (or 10**9) must not make output vanish (or explode)
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE: what a shell reports for `cat big | head -1`


def silence_stdout() -> None:
    """Point fd 1 at /dev/null so the interpreter's final flush cannot fail a second time."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass


class _Console(Console):
    """A rich Console whose width stays sane whatever COLUMNS or the terminal says."""

    @property
    def size(self) -> ConsoleDimensions:
        width, height = Console.size.fget(self)
        return ConsoleDimensions(min(max(width, MIN_WIDTH), MAX_WIDTH), max(height, 1))

    @size.setter
    def size(self, new_size) -> None:
        Console.size.fset(self, new_size)


def exit_on_broken_pipe(console: Console) -> None:
    """rich's `Console.on_broken_pipe` for lspt (set by the CLI's `main` for every console, Typer's
    help included): the reader of stdout went away (`lspt list | head -0`), so exit quietly with 141;
    a closed stderr is ignored (nobody reads our messages; carry on)."""
    if console.stderr:
        return
    silence_stdout()
    raise SystemExit(EXIT_BROKEN_PIPE)


# Results go to stdout; progress, logs and hints to stderr.
out = _Console(highlight=False, soft_wrap=True)
err = _Console(stderr=True, highlight=False, soft_wrap=True)  # an error stays one line


def safe(text: object) -> str:
    """A string from a file (class name, bundle metadata, label), ready for rich markup:
    "[red]" stays literal text and ANSI escapes / carriage returns are shown, never obeyed."""
    return escape(printable(text))


def print_json(obj: Any) -> None:
    """One strict JSON document on stdout (never through rich, so it is always valid JSON)."""
    sys.stdout.write(json_text(obj) + "\n")
    sys.stdout.flush()


def error_line(message: object, hint: object | None = None) -> None:
    """`Error: <message>` as one printable line on stderr, then `Hint: <hint>` if given."""
    _to_stderr(Text.assemble(("Error:", "bold red"), " ", one_line(message)))
    if hint:
        _to_stderr(Text(f"Hint: {one_line(hint)}"))


def warning_line(message: object) -> None:
    """`Warning: <message>` as one printable line on stderr."""
    _to_stderr(Text.assemble(("Warning:", "yellow"), " ", one_line(message)))


def _to_stderr(text: Text) -> None:
    try:
        err.print(text, soft_wrap=True)
    except (OSError, ValueError):  # stderr full or closed: there is nobody to tell
        pass


def progress_enabled(json_mode: bool = False, quiet: bool = False) -> bool:
    """Progress bars only for humans: off with --json, -q, or when stderr is not a terminal."""
    if json_mode or quiet or os.environ.get("LSPT_NO_PROGRESS"):
        return False
    return err.is_terminal


def info(message: str, quiet: bool = False) -> None:
    """A log line on stderr; it may quote file contents, so it is never markup or control codes."""
    if not quiet:
        err.print(printable(message, newlines=True), markup=False, highlight=False)


def complete_from(kind: str):
    """Shell-completion callback for registered names of one kind (backbone, strategy, ...)."""

    def complete(incomplete: str):
        from ..plugins import get_host

        try:
            names = get_host().registry(kind).names()
        except Exception:
            return []
        return [n for n in names if n.startswith(incomplete)]

    return complete
