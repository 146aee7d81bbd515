"""`lspt explain BUNDLE IMAGE... -o OUT_DIR`: attention rollout and Grad-CAM maps of a prompted model,
side by side with the frozen backbone's own. Methods and references: lspt_cli/explain.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from ..errors import UsageError
from .output import out, print_json, safe


def register(app: typer.Typer) -> None:
    @app.command("explain")
    def explain(
        bundle: Path = typer.Argument(..., metavar="BUNDLE", help="A prompt bundle (.safetensors)."),
        images: List[Path] = typer.Argument(..., metavar="IMAGE...", help="Images to explain."),
        out_dir: Path = typer.Option(..., "--out", "-o", help="Folder for the PNGs (created if missing)."),
        weights: Optional[Path] = typer.Option(None, "--weights", help="Backbone weights file.  [default: the file the bundle was trained with, else the cache dir's]"),
        allow_backbone_mismatch: bool = typer.Option(False, "--allow-backbone-mismatch", help="Load even if the backbone fingerprint differs."),
        img_size: int = typer.Option(0, "--img-size", min=0, help="Rebuild the backbone at N x N px instead of the bundle's size (refused unless --allow-img-size-mismatch).  [default: the bundle's]", show_default=False),
        allow_img_size_mismatch: bool = typer.Option(False, "--allow-img-size-mismatch", help="Load at --img-size even if the bundle was trained at another size (its fingerprint is then not checked)."),
        device: str = typer.Option("auto", "--device", help="auto (cuda if available), cpu, cuda or cuda:N."),
        json_: bool = typer.Option(False, "--json", help="Print one JSON document."),
    ):
        """PNG overlays of where the prompted model looks (rollout from CLS and from the prompts,
        Grad-CAM of the predicted class), each next to the frozen backbone's own map."""
        from ..explain import explain_images

        if out_dir.exists() and not out_dir.is_dir():
            raise UsageError(f"{out_dir}: --out must be a directory for the PNGs (it is a file)")

        if not bundle.is_file():
            raise UsageError(f"{bundle}: no such bundle file")
        for image in images:
            if not image.is_file():
                raise UsageError(f"{image}: no such image file")
        results = explain_images(bundle, images, out_dir, weights=weights,
                                 allow_backbone_mismatch=allow_backbone_mismatch, device=device,
                                 img_size=img_size or None, allow_img_size_mismatch=allow_img_size_mismatch)
        if json_:
            print_json([r.to_json() for r in results])
            return
        for r in results:
            out.print(f"{safe(r.image)}: {safe(r.label)} ({100 * r.probability:.1f}%)")
            for method, path in r.files.items():
                out.print(f"  {safe(method)}: {safe(path)}")
