"""`lspt inspect BUNDLE`: metadata and tensor shapes, read from the header without loading tensors."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from .output import out, print_json, safe


def register(app: typer.Typer) -> None:
    @app.command("inspect")
    def inspect_(
        bundle: Path = typer.Argument(..., help="A .safetensors prompt bundle."),
        json_: bool = typer.Option(False, "--json", help="Print one JSON document."),
    ):
        """Show a bundle's metadata and tensors (header only; nothing is unpickled or loaded)."""
        from rich.table import Table

        from ..bundle import read_header

        header = read_header(bundle)
        doc = header.to_json()
        # Parameters are the floating-point tensors; a bool mask or an integer counter (a buffer) is not one.
        doc["num_parameters"] = sum(_numel(info["shape"]) for info in doc["tensors"].values() if _is_float(info["dtype"]))
        doc["num_buffer_values"] = sum(_numel(info["shape"]) for info in doc["tensors"].values() if not _is_float(info["dtype"]))
        if json_:
            print_json(doc)
            return
        buffers = f", {doc['num_buffer_values']:,} buffer values" if doc["num_buffer_values"] else ""
        out.print(f"[bold]{safe(header.path)}[/]  ({header.file_size:,} bytes, {doc['num_parameters']:,} parameters{buffers})")
        meta = Table("key", "value", show_header=False)
        meta.columns[0].no_wrap = True
        meta.columns[1].overflow = "fold"  # a fingerprint is one long word: fold it, never cut it
        for key, value in doc["metadata"].items():
            meta.add_row(safe(key), safe(value if isinstance(value, str) else json.dumps(value)))
        out.print(meta)
        tensors = Table("tensor", "dtype", "shape")
        tensors.columns[0].overflow = "fold"
        for name, info in doc["tensors"].items():
            tensors.add_row(safe(name), safe(info["dtype"]), safe("x".join(map(str, info["shape"])) or "scalar"))
        out.print(tensors)


def _is_float(dtype: object) -> bool:
    """safetensors' F16, BF16, F32, F64, F8_E4M3, ...: the dtypes of learned parameters."""
    return isinstance(dtype, str) and (dtype.startswith("F") or dtype == "BF16")


def _numel(shape) -> int:
    n = 1
    for dim in shape or []:
        n *= int(dim)
    return n
