"""The training options of `lspt tune` and `lspt sweep`, generated from lspt_cli/settings.py.

A command declares its own options (names, tasks, output) and is decorated with
`with_train_options`: one Typer option per `Setting` joins its signature, each with the setting's
flags, type and `--help` text, and the values reach the command as keyword arguments, None where
the option was not given. `given_values` turns those into the command line's layer of the config.
A new `Setting` is a new option of both commands, with nothing written here. Torch-free.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Optional

import typer

from ..settings import BY_NAME, SETTINGS, Setting, help_text
from .output import complete_from

# A sweep searches seeds with --seeds (the grid on the first, finals on all): no --seed.
NOT_IN = {"sweep": ("seed",)}
# What a sweep does with a pinned value differs from tune's: it drops the key from the grid.
SWEEP_HELP = {
    "lr": "Pin lr (drops it from the recipe's grid).  [default: the grid's values]",
    "weight_decay": "Pin weight decay (drops it from the recipe's grid).  [default: the grid's values]",
}


def _option(setting: Setting, command: str) -> inspect.Parameter:
    switch = setting.kind is bool or setting.bool_values is not None
    decls = (f"{setting.flag}/--no-{setting.flag[2:]}",) if switch else setting.cli_flags
    text = SWEEP_HELP.get(setting.name) if command == "sweep" else None
    extra: dict[str, Any] = {"autocompletion": complete_from("logger")} if setting.name == "loggers" else {}
    option = typer.Option(None, *decls, help=text or help_text(setting), **extra)
    kind = bool if switch else setting.kind
    return inspect.Parameter(setting.name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=option,
                             annotation=Optional[kind])


def train_option_names(command: str) -> list[str]:
    return [s.name for s in SETTINGS if s.name not in NOT_IN.get(command, ())]


def with_train_options(command: str, after: str) -> Callable:
    """Add one option per training setting to a Typer command function, after its parameter
    `after`; the function takes them as `**train`."""

    def decorate(func: Callable) -> Callable:
        signature = inspect.signature(func)
        own = [p for p in signature.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
        names = [p.name for p in own]
        clash = set(names) & set(BY_NAME)
        if clash:  # pragma: no cover - a programming error caught by every CLI test
            raise TypeError(f"{func.__name__} declares training option(s) {sorted(clash)} itself")
        at = names.index(after) + 1
        generated = [_option(BY_NAME[name], command) for name in train_option_names(command)]
        func.__signature__ = signature.replace(parameters=own[:at] + generated + own[at:])
        return func

    return decorate


def given_values(train: dict[str, Any]) -> dict[str, Any]:
    """The training values given on the command line (None: not given); a --x/--no-x switch of a
    string setting becomes its value (`--no-feature-cache` -> feature_cache = "off")."""
    values = {}
    for name, value in train.items():
        if value is None:
            continue
        setting = BY_NAME[name]
        values[name] = setting.bool_values[0 if value else 1] if setting.bool_values else value
    return values
