"""The built-in commands, one module each; every module exposes `register(app)`."""

from __future__ import annotations

import importlib

BUILTIN_COMMAND_MODULES = (
    "prepare_data",
    "tune",
    "eval_cmd",
    "export_cmd",
    "predict",
    "serve",
    "inspect_cmd",
    "list_cmd",
    "plugins_cmd",
    "paths_cmd",
    "sweep",
    "report",
    "explain",
)


def add_builtin_commands(app) -> None:
    for name in BUILTIN_COMMAND_MODULES:
        importlib.import_module(f"{__package__}.{name}").register(app)
