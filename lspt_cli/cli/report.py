"""`lspt report RUNS_OR_SWEEP_DIR`: the papers' tables (FGVC, VTAB-1k, other tasks) from finished runs.

See lspt_cli/report.py for grouping, the two VTAB mean conventions and the reference numbers.
"""

from __future__ import annotations

import sys
from enum import Enum
from pathlib import Path
from typing import Optional

import typer

from ..messages import printable
from .output import err


class Format(str, Enum):
    md = "md"
    csv = "csv"
    json = "json"


def register(app: typer.Typer) -> None:
    @app.command("report")
    def report(
        path: Path = typer.Argument(..., metavar="RUNS_OR_SWEEP_DIR", help="A run dir, a sweep dir or any folder of runs (searched recursively)."),
        fmt: Format = typer.Option(Format.md, "--format", "-f", help="md (tables), csv (long format) or json."),
        plots: bool = typer.Option(False, "--plots", help="Also write curves.png (loss, val accuracy, lr) in every run dir (needs lspt[plots])."),
        output: Optional[Path] = typer.Option(None, "--output", "-o", help="Write the report to FILE.  [default: stdout]"),
        mix_protocols: bool = typer.Option(False, "--mix-protocols", help="Allow one mean over runs of different protocols (paper, lspt); refused by default."),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="No notes on stderr."),
    ):
        """Tables of test top-1 (mean ± std over seeds) next to the papers' numbers."""
        from .. import atomic
        from ..report import build_report, plot_all, render

        doc = build_report(path, mix_protocols=mix_protocols)
        if plots:
            written = plot_all(path)
            doc["plots"] = [str(p) for p in written]
            if not quiet:
                err.print(f"{len(written)} training-curve plot(s) written (curves.png in each run dir)", markup=False, highlight=False)
        text = printable(render(doc, fmt.value), newlines=True)  # task names etc. come from run files
        if output is not None:
            atomic.write_text(output, text)
            if not quiet:
                err.print(f"report written to {output}", markup=False, highlight=False)
            return
        sys.stdout.write(text)
        sys.stdout.flush()
