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
            row.update(_backbone_row(spec, generic=registry.is_family(name) if hasattr(registry, "is_family") else False))
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
        if kind == Kind.backbones:  # the short facts first: the description takes what width is left
            table = Table("name", "dim x depth", "patch", "tokens", "readout", "input", "cached", "description")
            cells = [_backbone_cells(r) for r in rows]
            for i, column in enumerate(table.columns[:7]):  # never cut: the description wraps instead
                column.no_wrap = True
                column.min_width = max([len(str(column.header))] + [len(c[i]) for c in cells])
        else:
            table = Table("name", "description")
        table.columns[0].no_wrap = True  # names are what users type: never cut or wrapped
        if kind == Kind.strategies:
            table.add_column("params (ViT-B/16, no head)", justify="right")
            table.add_column("defaults (--set KEY=VALUE)")
        if kind in (Kind.loggers, Kind.executors):
            table.add_column("needs")
        if kind == Kind.executors:
            table.add_column("options (--executor-opt KEY=VALUE)")
        if kind == Kind.loggers:
            table.add_column("options (--log-opt NAME.KEY=VALUE)")
        for row in rows:
            cells = [safe(row["name"]), safe(row["description"])]
            if kind == Kind.backbones:
                cells = [safe(c) for c in _backbone_cells(row)]
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


def _backbone_row(spec, generic: bool) -> dict:
    """A backbone's architecture, tokens per image, official weights and whether they are on disk.

    `cached`: the file the backbone would load without --weights (its `find_weights`, which looks
    only at local caches), None where the spec names no file to look for (a family, a random init)."""
    from ..plugins import resolve_factory

    cached = None
    if spec.find_weights is not None and not generic:
        cached = resolve_factory(spec.find_weights)(spec.name)
    return {"generic": generic, "embed_dim": None if generic else spec.embed_dim,
            "depth": None if generic else spec.depth, "num_prefix_tokens": None if generic else spec.num_prefix_tokens,
            "patch_size": spec.patch_size, "tokens": spec.tokens(), "weights_files": list(spec.weights_files),
            "weights_url": spec.weights_url or None, "layout": spec.layout or None, "citation": spec.citation or None,
            "readout_note": spec.readout_note or None,
            "cached": None if spec.find_weights is None or generic else cached is not None,
            "cached_file": str(cached) if cached else None}


def _backbone_cells(row: dict) -> list[str]:
    """name, dim x depth, patch, tokens, readout, input, cached, description (plain text)."""
    return [row["name"], _size_text(row), str(row["patch_size"] or "any"), str(row["tokens"] or "-"),
            row["readout"], _input_text(row), _cached_text(row), row["description"]]


def _size_text(row: dict) -> str:
    return "any" if row["generic"] else f"{row['embed_dim']}x{row['depth']}"


def _cached_text(row: dict) -> str:
    """"yes" / "no" (the weights are / are not in a local cache); "-" when there is no file to have."""
    return "-" if row["cached"] is None else ("yes" if row["cached"] else "no")


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
    """"224 px, ImageNet" (ImageNet's mean/std), "224 px, 0.5/0.5/0.5 / 0.5/0.5/0.5", "its own, timm's"
    where timm's config of the model decides (--json has the numbers)."""
    from ..backbone_dims import IMAGENET_MEAN, IMAGENET_STD

    size = f"{row['input_size']} px" if row.get("input_size") else "its own"
    if not row.get("mean") or not row.get("std"):
        return f"{size}, timm's"
    if tuple(row["mean"]) == IMAGENET_MEAN and tuple(row["std"]) == IMAGENET_STD:
        return f"{size}, ImageNet"
    mean, std = ("/".join(f"{v:g}" for v in sorted(set(row[k]), key=row[k].index)) for k in ("mean", "std"))
    return f"{size}, {mean} / {std}"  # one number where the channels agree: "0.5 / 0.5"
