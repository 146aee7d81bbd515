"""`lspt eval BUNDLE`: accuracy of a bundle on a prepared task split (exit 3 below --fail-under)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..errors import BelowThreshold, BundleError, UsageError
from .output import complete_from, out, print_json, safe


def parse_percent(value: str | None, flag: str) -> float | None:
    """"75" or "75%" -> 75.0. A value in (0, 1) without "%" is refused: 0.99 reads as 99% to many
    users but means 0.99% here, so it would pass almost any bundle."""
    if value is None:
        return None
    text = value.strip()
    number = text[:-1].strip() if text.endswith("%") else text
    try:
        percent = float(number)
    except ValueError:
        raise UsageError(f"{flag} takes a percentage such as 75 or 75%, got {value!r}") from None
    if not percent >= 0.0 or percent == float("inf"):  # NaN fails this too; above 100 never passes (exit 3)
        raise UsageError(f"{flag} must be a percentage >= 0, got {value!r}")
    if 0.0 < percent < 1.0 and not text.endswith("%"):
        raise UsageError(
            f"{flag} {value} is ambiguous: the unit is percent, so it means {percent}% (almost any bundle passes)",
            hint=f"write {flag} {percent * 100:g} for {percent * 100:g}%, or {flag} {value}% if you really mean {percent}%",
        )
    return percent


def register(app: typer.Typer) -> None:
    @app.command("eval")
    def eval_(
        bundle_path: Path = typer.Argument(..., metavar="BUNDLE", help="A .safetensors prompt bundle."),
        task: Optional[str] = typer.Option(None, "--task", "-t", help="Task (default: the bundle's).", autocompletion=complete_from("dataset")),
        split: str = typer.Option("test", "--split", help="train, val, test or trainval."),
        weights: Optional[Path] = typer.Option(None, "--weights", help="Backbone weights file.  [default: the file the bundle was trained with, else the cache dir's]"),
        allow_backbone_mismatch: bool = typer.Option(False, "--allow-backbone-mismatch", help="Load even if the backbone fingerprint differs."),
        img_size: int = typer.Option(0, "--img-size", min=0, help="Rebuild the backbone at N x N px instead of the bundle's size (refused unless --allow-img-size-mismatch).  [default: the bundle's]", show_default=False),
        allow_img_size_mismatch: bool = typer.Option(False, "--allow-img-size-mismatch", help="Load at --img-size even if the bundle was trained at another size (its fingerprint is then not checked)."),
        batch_size: int = typer.Option(64, "--batch-size", min=1, help="Images per evaluation batch."),
        device: str = typer.Option("auto", "--device", help="auto (cuda if available), cpu, cuda or cuda:N."),
        fail_under: Optional[str] = typer.Option(None, "--fail-under", help="Exit with code 3 when top-1 is below this many percent: 75 or 75%; a fraction such as 0.75 is refused as ambiguous.  [default: no threshold]", show_default=False),
        json_: bool = typer.Option(False, "--json", help="Print one JSON document."),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress or notes on stderr."),
    ):
        """Top-1, per-class and mean per-class accuracy of BUNDLE on a task split."""
        fail_under = parse_percent(fail_under, "--fail-under")  # before loading anything
        from ..data.loader import build_loader
        from ..data.manifest import load_manifest
        from ..engine.evaluate import evaluate
        from ..engine.restore import model_from_bundle
        from ..engine.train import resolve_device, use_bf16

        model, header = model_from_bundle(bundle_path, weights=weights, allow_backbone_mismatch=allow_backbone_mismatch,
                                          img_size=img_size or None, allow_img_size_mismatch=allow_img_size_mismatch)
        task = task or header.task.get("name")
        manifest = load_manifest(task)
        if len(manifest.classes) != header.num_classes:
            raise BundleError(
                f"{bundle_path}: bundle has {header.num_classes} classes, task '{task}' has {len(manifest.classes)}"
            )
        if not manifest.splits.get(split):
            raise UsageError(f"task '{task}' has no '{split}' split; it has: {', '.join(sorted(manifest.splits))}")
        dev = resolve_device(device)
        model.to(dev)
        data_cfg = model.backbone.data_config
        loader = build_loader(
            manifest, split, input_size=int(data_cfg["input_size"][-1]), mean=data_cfg["mean"], std=data_cfg["std"],
            train=False, batch_size=batch_size, style=header.task.get("style"),  # the training run's transform
        )
        # the precision the bundle was trained and selected in: fp32 for protocol paper, else bf16 where supported
        amp = use_bf16("off" if header.meta("lspt.protocol") == "paper" else "auto", dev)
        result = evaluate(model, loader, dev, len(manifest.classes), amp=amp)
        doc = {
            "bundle": str(bundle_path), "task": task, "split": split, "top1": result["top1"],
            "mean_per_class": result["mean_per_class"], "loss": result["loss"], "n": result["n"],
            "per_class": dict(zip(manifest.classes, result["per_class"])),
            "fail_under": fail_under, "passed": fail_under is None or result["top1"] >= fail_under,
        }
        if json_:
            print_json(doc)
        else:
            out.print(f"{safe(task)} \\[{safe(split)}]: top-1 {result['top1']:.2f}%  mean per class {result['mean_per_class']:.2f}%  (n={result['n']})")
        if fail_under is not None and result["top1"] < fail_under:
            raise BelowThreshold(f"top-1 {result['top1']:.2f}% is below --fail-under {fail_under}")
