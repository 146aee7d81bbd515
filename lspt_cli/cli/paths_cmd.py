"""`lspt paths`: where lspt keeps cache, data and config, and which rule chose each."""

from __future__ import annotations

import typer

from .output import out, print_json, safe


def register(app: typer.Typer) -> None:
    @app.command("paths")
    def paths_(json_: bool = typer.Option(False, "--json", help="Print one JSON document.")):
        """Show the cache, data and config directories (flags > LSPT_*_DIR > LSPT_HOME > platformdirs)."""
        from .. import paths

        resolved = {kind: paths.resolve(kind) for kind in paths.KINDS}
        if json_:
            print_json({kind: {"path": str(p), "source": src} for kind, (p, src) in resolved.items()})
            return
        for kind, (p, src) in resolved.items():
            out.print(f"{kind:<7}{safe(p)}  [dim]({safe(src)})[/]")
