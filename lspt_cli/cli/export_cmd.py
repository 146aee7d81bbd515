"""`lspt export RUN_DIR|CHECKPOINT|BUNDLE -o task.safetensors`: the small, self-describing bundle
(or, with `--format pt2`, a standalone torch.export program of backbone + prompts + head)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import typer

from ..errors import LsptError, UsageError
from .output import out, print_json, safe


def export_bundle(source: Path, output: Path) -> dict:
    """Write the bundle of a run dir (its final bundle, or its last checkpoint if unfinished)."""
    from .. import bundle
    from ..engine.checkpoint import CHECKPOINT_NAME, load_checkpoint
    from ..engine.train import BUNDLE_NAME

    source = Path(source)
    if source.suffix == ".safetensors" or (source.is_dir() and (source / BUNDLE_NAME).exists()):
        loaded = bundle.load(source if source.suffix == ".safetensors" else source / BUNDLE_NAME)
        size = bundle.save(output, loaded.tensors, loaded.header.metadata)
        origin = "final bundle"
    else:
        ckpt = source / CHECKPOINT_NAME if source.is_dir() else source
        if not ckpt.exists():
            raise UsageError(f"{source}: neither a run directory with a bundle or checkpoint nor a checkpoint file")
        state = load_checkpoint(ckpt)
        meta = json.loads(state["meta"])
        metrics = {"note": "exported from an unfinished run's checkpoint", "epochs_done": state["epoch"], "batches_into_epoch": state["position"]}
        size = bundle.save(output, state["trainable"], bundle.make_metadata(metrics=metrics, **meta))
        origin = f"checkpoint (epoch {state['epoch']})"
    return {"output": str(output), "bytes": size, "from": origin}


def export_program(bundle_path: Path, output: Path, weights: Path | None = None) -> dict:
    """Backbone + prompts + head as one standalone `torch.export` program (.pt2), batch dynamic."""
    import torch

    from .. import atomic
    from ..engine.restore import model_from_bundle

    model, header = model_from_bundle(bundle_path, weights=weights)
    size = model.backbone.data_config["input_size"]
    example = torch.zeros(2, *size)
    batch = torch.export.Dim("batch", min=1, max=65536)
    program = torch.export.export(model, (example,), dynamic_shapes={"images": {0: batch}})
    buffer = io.BytesIO()  # serialise in memory: torch's file writer fails obscurely on a full disk
    torch.export.save(program, buffer)
    atomic.write_bytes(output, buffer.getvalue())
    return {"output": str(output), "bytes": Path(output).stat().st_size, "format": "pt2",
            "input_size": list(size), "classes": header.task.get("classes")}


def register(app: typer.Typer) -> None:
    @app.command("export")
    def export(
        source: Path = typer.Argument(..., metavar="RUN_DIR|CHECKPOINT|BUNDLE"),
        output: Path = typer.Option(..., "--output", "-o", help="Where to write the .safetensors bundle."),
        format_: str = typer.Option("bundle", "--format", help="bundle (small safetensors) or pt2 (standalone torch.export program incl. the backbone)."),
        weights: Path = typer.Option(None, "--weights", help="Backbone weights (for --format pt2).  [default: the run's file, else the cache dir's]"),
        json_: bool = typer.Option(False, "--json", help="Print one JSON document."),
    ):
        """Export a run's trained prompts + head as a small safetensors bundle (never the backbone).

        `--format pt2` instead writes backbone + prompts + head as one torch.export program
        (load with `torch.export.load(path).module()`), for deployment without lspt.
        """
        if format_ not in ("bundle", "pt2"):
            raise UsageError(f"--format must be 'bundle' or 'pt2', got {format_!r}")
        try:
            doc = _export(source, output, format_, weights)
        except OSError as exc:
            raise LsptError(f"{output}: cannot write ({exc.strerror or exc})") from None
        if json_:
            print_json(doc)
        elif format_ == "pt2":
            out.print(f"wrote {safe(doc['output'])} ({doc['bytes']:,} bytes, torch.export program, input {doc['input_size']})")
        else:
            out.print(f"wrote {safe(doc['output'])} ({doc['bytes']:,} bytes, from the {doc['from']})")


def _export(source: Path, output: Path, format_: str, weights) -> dict:
    if format_ == "bundle":
        return export_bundle(source, output)
    if source.suffix == ".safetensors":
        return export_program(source, output, weights)
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:  # a run dir or checkpoint: its bundle first
        bundle_path = Path(tmp) / "bundle.safetensors"
        export_bundle(source, bundle_path)
        return export_program(bundle_path, output, weights)
