"""The built-in strategies, backbones and commands, read from the registries and the CLI app, never
listed by hand: a test that covers them all covers a new one too, and adding one breaks none.

Read once at import (tests parametrize over them); external plugins are off (conftest sets
LSPT_LOAD_PLUGINS=""), so these are exactly what the lspt distribution registers."""

from __future__ import annotations


def _read() -> tuple[list[str], list[str], list[str], list[str]]:
    import typer

    from lspt_cli import plugins
    from lspt_cli.cli import create_app

    try:
        host = plugins.get_host()
        strategies = host.strategies.names()
        prompted = [n for n in strategies if "num_prompts" in (host.strategies.get(n).defaults or {})]
        backbones = host.backbones.names()
    finally:
        plugins.reset_host()  # each test starts from a fresh host (conftest)
    group = typer.main.get_command(create_app())
    commands = sorted(group.list_commands(None))
    return list(strategies), prompted, list(backbones), commands


STRATEGIES, PROMPTED, BACKBONES, COMMANDS = _read()
