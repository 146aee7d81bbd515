"""`lspt paths`: where lspt keeps cache, data and config, and which rule chose each.

`weights` is `<cache>/weights/`: a backbone's official weights file put there under its own name
(`lspt list backbones --json` lists each backbone's `weights_files`) is found without `--weights`.
"""

from __future__ import annotations

import typer

from .output import out, print_json, safe


def register(app: typer.Typer) -> None:
    @app.command("paths")
    def paths_(json_: bool = typer.Option(False, "--json", help="Print one JSON document.")):
        """Show the cache, data and config directories (flags > LSPT_*_DIR > LSPT_HOME > platformdirs)
        and the weights folder inside the cache."""
        from .. import paths

        resolved = {kind: paths.resolve(kind) for kind in paths.KINDS}
        cache, source = resolved["cache"]
        resolved["weights"] = (cache / "weights", source)  # the cache's rule decides it too
        if json_:
            print_json({kind: {"path": str(p), "source": src} for kind, (p, src) in resolved.items()})
            return
        for kind, (p, src) in resolved.items():
            note = "; put official backbone weights files here" if kind == "weights" else ""
            out.print(f"{kind:<8}{safe(p)}  [dim]({safe(src)}{note})[/]")
