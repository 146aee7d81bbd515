"""`lspt predict BUNDLE... IMAGE...`: top-k labels with probabilities.

Several bundles that share a backbone are loaded on one backbone and run together: one patch
embedding and one pass through each frozen block per batch (`prompted.forward_shared`).
"""

from __future__ import annotations

from pathlib import Path
from typing import List

import typer

from ..errors import BundleError, DataError, UsageError
from .output import out, print_json, safe


def split_arguments(paths: list[Path]) -> tuple[list[Path], list[Path]]:
    bundles = [p for p in paths if p.suffix == ".safetensors"]
    images = [p for p in paths if p.suffix != ".safetensors"]
    if not bundles:
        raise UsageError("predict needs at least one .safetensors bundle", hint="lspt predict task.safetensors image.jpg")
    for bundle in bundles:  # a missing bundle is named first, whatever else is wrong
        if not bundle.is_file():
            # A bad file is a runtime error (exit 1), exactly as `eval` and `inspect` report it.
            raise BundleError(f"{bundle}: " + ("is a directory, not a bundle file" if bundle.is_dir() else "no such bundle file"),
                              hint="lspt predict task.safetensors image.jpg")
    if not images:
        raise UsageError("predict needs at least one image")
    return bundles, images


def predict_images(bundle_paths, image_paths, *, top_k=5, weights=None, allow_backbone_mismatch=False, batch_size=32, device="auto",
                   img_size=None, allow_img_size_mismatch=False):
    """{bundle: {image: [(label, probability), ...]}} for every bundle and image."""
    import torch

    from ..data.images import load_image
    from ..engine.restore import eval_transform, model_from_bundle, top_predictions, transform_key
    from ..engine.train import resolve_device
    from ..prompted import forward_shared

    dev = resolve_device(device)
    models, headers = [], []
    backbone = None
    for path in bundle_paths:
        model, header = model_from_bundle(path, weights=weights, allow_backbone_mismatch=allow_backbone_mismatch, backbone=backbone,
                                          img_size=img_size, allow_img_size_mismatch=allow_img_size_mismatch)
        backbone = backbone or model.backbone
        models.append(model.to(dev))
        headers.append(header)
    # Eval transforms differ by benchmark family and the recorded style (VTAB: TF1 resize under protocol
    # paper, PIL's under lspt; none recorded: the benchmark's `lspt` one); group bundles by both.
    families = {transform_key(h.task) for h in headers}
    results: dict[str, dict[str, list]] = {str(p): {} for p in bundle_paths}
    for family in sorted(families):
        members = [i for i, h in enumerate(headers) if transform_key(h.task) == family]
        transform = eval_transform(headers[members[0]].task, backbone)
        for start in range(0, len(image_paths), batch_size):
            chunk = image_paths[start : start + batch_size]
            images = torch.stack([transform(load_image(p)) for p in chunk]).to(dev)
            with torch.no_grad():
                logits = forward_shared([models[i] for i in members], images)
            for i, lg in zip(members, logits):
                for p, preds in zip(chunk, top_predictions(lg, headers[i].task["classes"], top_k)):
                    results[str(bundle_paths[i])][str(p)] = preds
    return results


def register(app: typer.Typer) -> None:
    @app.command("predict")
    def predict(
        paths: List[Path] = typer.Argument(..., metavar="BUNDLE... IMAGE...", help="Bundles (.safetensors) then images."),
        top_k: int = typer.Option(5, "--top-k", "-k", min=1, help="How many labels to print per image."),
        weights: Path = typer.Option(None, "--weights", help="Backbone weights file.  [default: the file the bundle was trained with, else the cache dir's]"),
        allow_backbone_mismatch: bool = typer.Option(False, "--allow-backbone-mismatch", help="Load even if the backbone fingerprint differs."),
        img_size: int = typer.Option(0, "--img-size", min=0, help="Rebuild the backbone at N x N px instead of the bundle's size (refused unless --allow-img-size-mismatch).  [default: the bundle's]", show_default=False),
        allow_img_size_mismatch: bool = typer.Option(False, "--allow-img-size-mismatch", help="Load at --img-size even if the bundle was trained at another size (its fingerprint is then not checked)."),
        batch_size: int = typer.Option(32, "--batch-size", min=1, help="Images per batch."),
        device: str = typer.Option("auto", "--device", help="auto (cuda if available), cpu, cuda or cuda:N."),
        json_: bool = typer.Option(False, "--json", help="Print one JSON document."),
    ):
        """Classify images with one or more bundles (bundles sharing a backbone run in one pass)."""
        bundles, images = split_arguments(paths)
        for image in images:
            if not image.is_file():
                raise DataError(f"{image}: " + ("is a directory, not an image file" if image.is_dir() else "no such image file"))
        results = predict_images(
            bundles, images, top_k=top_k, weights=weights, allow_backbone_mismatch=allow_backbone_mismatch,
            batch_size=batch_size, device=device, img_size=img_size or None, allow_img_size_mismatch=allow_img_size_mismatch,
        )
        if json_:
            print_json(results)
            return
        for bundle_path, per_image in results.items():
            out.print(f"[bold]{safe(bundle_path)}[/]")
            for image, preds in per_image.items():
                top = ", ".join(f"{safe(p['label'])} {100 * p['probability']:.1f}%" for p in preds)
                out.print(f"  {safe(image)}: {top}")
