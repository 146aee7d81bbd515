"""`lspt list KIND [PATTERN]`: registered backbones, strategies, datasets, recipes, loggers or executors."""

from __future__ import annotations

import json
from enum import Enum
from typing import Optional

import typer

from .output import out, print_json, safe


class Kind(str, Enum):
    backbones = "backbones"
    strategies = "strategies"
    datasets = "datasets"
    recipes = "recipes"
    loggers = "loggers"
    executors = "executors"


_SINGULAR = {"backbones": "backbone", "strategies": "strategy", "datasets": "dataset", "recipes": "recipe",
             "loggers": "logger", "executors": "executor"}


def rows_for(kind: str, pattern: str | None = None) -> list[dict]:
    """One dict per registered component; strategies carry their ViT-B/16 parameter count."""
    from ..backbone_dims import VIT_B16
    from ..plugins import get_host

    host = get_host()
    registry = host.registry(_SINGULAR[kind])
    rows = []
    for name in registry.names(pattern):
        spec = registry.get(name)
        row = {"name": name, "description": spec.description, "plugin": registry.provider(name)}
        if kind == "strategies":
            row["params_vitb16"] = spec.count_params(VIT_B16, dict(spec.defaults)) if spec.count_params else None
            row["defaults"] = dict(spec.defaults)
        elif kind == "backbones":  # None: taken from timm's config of the model when it is built
            row.update(readout=spec.readout, input_size=spec.input_size, interpolation=spec.interpolation,
                       mean=list(spec.mean) if spec.mean else None, std=list(spec.std) if spec.std else None)
        elif kind == "datasets":
            row["benchmark"] = spec.benchmark
        elif kind == "recipes":
            row.update(strategy=spec.strategy, backbone=spec.backbone, benchmark=spec.benchmark, task=spec.task, source=spec.source)
        elif kind in ("loggers", "executors"):  # whether its extra is installed, without importing it
            from ..plugins import requirements_installed

            row.update(extra=spec.extra, installed=requirements_installed(spec))
            if kind == "executors":  # each option's help, type, bounds or choices, default
                row["options"] = {key: _option_row(spec.option(key)) for key in spec.options}
            else:  # a logger's options: key -> help (--log-opt KEY=VALUE, values are strings)
                row["options"] = {key: str(help_) for key, help_ in (spec.options or {}).items()}
        rows.append(row)
    return rows


def register(app: typer.Typer) -> None:
    @app.command("list")
    def list_(
        kind: Kind = typer.Argument(..., help="What to list."),
        pattern: Optional[str] = typer.Argument(None, help="Wildcard filter, e.g. 'vtab/*' or 'vpt-*'."),
        json_: bool = typer.Option(False, "--json", help="Print one JSON document."),
    ):
        """List registered components, filtered by an fnmatch PATTERN."""
        from rich.table import Table

        rows = rows_for(kind.value, pattern)
        if json_:
            print_json(rows)
            return
        table = Table("name", "description")
        table.columns[0].no_wrap = True  # names are what users type: never cut or wrapped
        if kind == Kind.strategies:
            table.add_column("params (ViT-B/16, no head)", justify="right")
            table.add_column("defaults (--set KEY=VALUE)")
        if kind == Kind.backbones:
            table.add_column("readout")
            table.add_column("input (size, mean / std)")
        if kind in (Kind.loggers, Kind.executors):
            table.add_column("needs")
        if kind == Kind.executors:
            table.add_column("options (--executor-opt KEY=VALUE)")
        if kind == Kind.loggers:
            table.add_column("options (--log-opt NAME.KEY=VALUE)")
        for row in rows:
            cells = [safe(row["name"]), safe(row["description"])]
            if kind == Kind.backbones:
                cells += [safe(row["readout"]), _input_text(row)]
            if kind in (Kind.loggers, Kind.executors):
                needs = f"lspt[{row['extra']}]" if row["extra"] else "-"
                cells.append(safe(needs + ("" if row["installed"] else " (not installed)")))
            if kind == Kind.executors:
                cells.append("\n".join(safe(_option_text(k, o)) for k, o in row["options"].items()) or "-")
            if kind == Kind.loggers:
                cells.append("\n".join(safe(f"{k}: {h}") for k, h in row["options"].items()) or "-")
            if kind == Kind.strategies:
                cells.append(f"{row['params_vitb16']:,}" if row["params_vitb16"] is not None else "?")
                cells.append(safe(", ".join(f"{k}={v if isinstance(v, str) else json.dumps(v)}" for k, v in row["defaults"].items()) or "-"))
            table.add_row(*cells)
        out.print(table)


def _option_row(option) -> dict:
    """An executor option as --json shows it: help, type, bounds or choices, default, and the rule in words."""
    return {"help": option.help, "type": option.kind, "minimum": option.minimum, "maximum": option.maximum,
            "exclusive_minimum": option.above, "choices": list(option.choices) or None,
            "default": option.default or None, "rule": option.rule()}


def _option_text(key: str, option: dict) -> str:
    """"num_cpus: a number > 0 and <= 4096 (default 1): CPUs per trial; ..." """
    default = f" (default {option['default']})" if option["default"] else ""
    return f"{key}: {option['rule']}{default}: {option['help']}"


def _input_text(row: dict) -> str:
    """"224 px, 0.485/0.456/0.406 / 0.229/0.224/0.225"; "timm's" where the model's config decides."""
    size = f"{row['input_size']} px" if row.get("input_size") else "the model's size"
    if not row.get("mean") or not row.get("std"):
        return f"{size}, timm's mean/std"
    return f"{size}, " + "/".join(f"{v:g}" for v in row["mean"]) + " / " + "/".join(f"{v:g}" for v in row["std"])
