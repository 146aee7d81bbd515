"""The `lspt` command line: a Typer app assembled from one module per command plus plugins'.

`LsptGroup.main` is the single error boundary (docs/guarantees.md): whatever escapes a command
becomes one `Error:` line (+ `Hint:`) on stderr and an exit code, never a traceback:
known errors (lspt_cli.errors.LsptError) -> their message and code; usage errors (unknown option,
bad value, missing argument) -> exit 2 with "see 'lspt CMD --help'"; a closed stdout pipe -> a quiet
exit 141 (as if killed by SIGPIPE, like `cat`); a full stdout device or another OS error naming a
file -> exit 1; anything else -> "internal error: <type>: <message>" naming the plugin whose code
raised it, exit 1. `LSPT_DEBUG=1` shows the traceback instead. Nothing here imports torch.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sys
import warnings
from pathlib import Path
from typing import Optional

import typer
from typer.core import TyperGroup

try:  # typer >= 0.2x vendors its own click
    from typer._click.exceptions import ClickException, NoArgsIsHelpError, UsageError
except ImportError:  # pragma: no cover - older typer runs on click itself
    from click.exceptions import ClickException, NoArgsIsHelpError, UsageError

from .. import __version__, paths
from ..errors import LsptError
from .output import EXIT_BROKEN_PIPE, error_line, silence_stdout, warning_line

_OUTPUT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO}


def debug() -> bool:
    return os.environ.get("LSPT_DEBUG", "") not in ("", "0")


class LsptGroup(TyperGroup):
    """The root command; its `main` is the error boundary described in the module docstring."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (ClickException, typer.Exit, typer.Abort):
            raise  # main() formats usage errors; Exit carries a command's own code
        except Exception as exc:
            if debug():
                raise
            raise typer.Exit(handle_exception(exc)) from None

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:  # a caller that wants click's raw behaviour
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        _sanitize_terminal_env()
        with _one_line_warnings(), _quiet_broken_pipe():
            code = self._main_guarded(args, prog_name, complete_var, **extra)
        sys.exit(code)

    def _main_guarded(self, args, prog_name, complete_var, **extra) -> int:
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
            code = rv if isinstance(rv, int) and not isinstance(rv, bool) else 0
            if sys.stdout is not None:
                sys.stdout.flush()  # a full device or closed pipe shows here, not at interpreter exit
            return code
        except NoArgsIsHelpError as exc:  # bare `lspt`: the help was shown
            return exc.exit_code
        except UsageError as exc:
            return report_usage_error(exc)
        except ClickException as exc:
            error_line(exc.format_message())
            return exc.exit_code
        except typer.Abort:  # EOF on a prompt
            error_line("aborted")
            return 1
        except SystemExit as exc:
            if type(sys.stdout).__name__ == "PacifyFlushWrapper":  # Typer's own EPIPE exit (--version | head -0)
                silence_stdout()
                return EXIT_BROKEN_PIPE
            raise
        except Exception as exc:
            if debug():
                raise
            return handle_exception(exc)


def report_error(exc: LsptError) -> None:
    error_line(exc.message, exc.hint)


def report_usage_error(exc: UsageError) -> int:
    """One `Error:` line for Click's usage errors (no rich box), a pointer to --help, exit 2."""
    path = exc.ctx.command_path if exc.ctx is not None else "lspt"
    error_line(exc.format_message().replace("Value error, ", ""), f"see '{path} --help'")
    return 2


def handle_exception(exc: BaseException) -> int:
    """Report any exception as one `Error:` line (+ hint) and return the exit code."""
    if isinstance(exc, LsptError):
        report_error(exc)
        return exc.exit_code
    if isinstance(exc, OSError) and exc.errno == errno.EPIPE:
        silence_stdout()  # the reader went away: nothing to say, and nobody to say it to
        return EXIT_BROKEN_PIPE
    if isinstance(exc, OSError) and exc.filename is not None:
        where = exc.filename if exc.filename2 is None else f"{exc.filename} -> {exc.filename2}"
        error_line(f"{where}: {exc.strerror or exc}", _lspt_dir_hint(str(exc.filename)))
        return 1
    if isinstance(exc, OSError) and exc.errno in _OUTPUT_ERRNOS:
        error_line(f"cannot write output: {exc.strerror or exc}", "check free space on the device stdout goes to")
        silence_stdout()
        return 1
    if isinstance(exc, MemoryError):
        error_line("out of memory", "use a smaller --batch-size or model, or a machine with more memory")
        return 1
    from ..plugins import plugin_of_traceback

    try:
        text = str(exc)
    except Exception:  # an exception whose __str__ fails is still reported
        text = ""
    kind = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    plugin = plugin_of_traceback(exc.__traceback__)
    if plugin is not None:
        error_line(f"plugin {plugin} failed: {kind}",
                   f"this is a bug in plugin {plugin}: re-run with LSPT_DEBUG=1 for the traceback and report it to its "
                   "authors (or disable it with LSPT_LOAD_PLUGINS)")
    else:
        error_line(f"internal error: {kind}",
                   "this is a bug in lspt: re-run with LSPT_DEBUG=1 for the traceback and report it")
    return 1


def _lspt_dir_hint(filename: str) -> str | None:
    """A hint when a failing path lies in one of lspt's own dirs: say which rule chose that dir."""
    for kind in paths.KINDS:
        try:
            directory, source = paths.resolve(kind)
        except Exception:  # reporting an error must never raise another
            return None
        if filename == str(directory) or filename.startswith(str(directory) + os.sep):
            return f"the {kind} dir {directory} comes from {source}; it must be a writable directory"
    return None


def _sanitize_terminal_env() -> None:
    """COLUMNS/LINES of 0, negative, huge or not a number would make rich and click print nothing
    (or lines of a billion spaces); clamp them into a range every renderer handles."""
    for name, low, high in (("COLUMNS", 40, 4096), ("LINES", 5, 10000)):
        value = os.environ.get(name)
        if value is None:
            continue
        try:
            os.environ[name] = str(min(max(int(value), low), high))
        except ValueError:
            del os.environ[name]
    for stream in ("stdout", "stderr"):
        if getattr(sys, stream) is None:  # started with the stream closed (`lspt ... >&-`)
            setattr(sys, stream, open(os.devnull, "w"))


@contextlib.contextmanager
def _quiet_broken_pipe():
    """Every rich console (ours and Typer's help) ends quietly with 141 on a closed stdout pipe."""
    from rich.console import Console

    from .output import exit_on_broken_pipe

    saved = Console.on_broken_pipe
    Console.on_broken_pipe = exit_on_broken_pipe
    try:
        yield
    finally:
        Console.on_broken_pipe = saved


@contextlib.contextmanager
def _one_line_warnings():
    """Python warnings (torch's pickle notice, PIL's bomb warning) as one `Warning:` line each."""

    def show(message, category, filename, lineno, file=None, line=None):
        warning_line(f"{category.__name__}: {message}")

    saved = warnings.showwarning
    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = saved


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"lspt {__version__}")
        raise typer.Exit()


def create_app(load_plugins: bool = True) -> typer.Typer:
    """Build the app: built-in commands, then commands that plugins add through the hook."""
    app = typer.Typer(
        cls=LsptGroup,
        name="lspt",
        help="Visual prompt tuning (VPT, GaPT, LSPT) for frozen self-supervised ViTs.",
        no_args_is_help=True,
        pretty_exceptions_enable=False,
        # Click's plain help: no boxes, no `<bool>` placeholders, option names never cut off, and
        # `[default: ...]` after every described option (tests/test_frictions.py)
        rich_markup_mode=None,
        context_settings={"help_option_names": ["-h", "--help"]},
    )

    @app.callback()
    def root(
        cache_dir: Optional[Path] = typer.Option(None, "--cache-dir", help="Cache dir (weights, fingerprints).  [default: $LSPT_CACHE_DIR, else $LSPT_HOME/cache, else the platform's; see lspt paths]", envvar=None),
        data_dir: Optional[Path] = typer.Option(None, "--data-dir", help="Data dir (manifests, runs).  [default: $LSPT_DATA_DIR, else $LSPT_HOME/data, else the platform's; see lspt paths]"),
        config_dir: Optional[Path] = typer.Option(None, "--config-dir", help="Config dir.  [default: $LSPT_CONFIG_DIR, else $LSPT_HOME/config, else the platform's; see lspt paths]"),
        version: bool = typer.Option(False, "--version", callback=_version_callback, is_eager=True, help="Show the version."),
    ):
        paths.clear_overrides()
        paths.set_override("cache", cache_dir)
        paths.set_override("data", data_dir)
        paths.set_override("config", config_dir)

    from . import commands

    commands.add_builtin_commands(app)
    if load_plugins:
        from ..plugins import _command_name, _group_name, get_host

        builtin = {_command_name(info) for info in app.registered_commands}
        builtin |= {_group_name(info) for info in app.registered_groups}
        get_host().register_commands(app, reserved=builtin)
    return app


def main(argv: list[str] | None = None) -> None:
    try:
        command = typer.main.get_command(create_app())  # an LsptGroup: its main() is the boundary
    except KeyboardInterrupt:  # Ctrl-C while plugins load
        sys.exit(130)
    except Exception as exc:  # e.g. LSPT_STRICT_PLUGINS=1 with a broken plugin
        if debug():
            raise
        _sanitize_terminal_env()
        sys.exit(handle_exception(exc))
    command.main(args=argv, prog_name="lspt")
