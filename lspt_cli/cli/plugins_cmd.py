"""`lspt plugins`: loaded plugins; `plugins check`: conformance checks; `plugins new`: a plugin package."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from ..errors import LsptError, UsageError
from .output import complete_from, err, out, print_json, safe

SLOW_IMPORT_S = 0.5  # a plugin that takes longer to load is named by `lspt plugins`


def register(app: typer.Typer) -> None:
    plugins_app = typer.Typer(
        name="plugins",
        help="List loaded plugins (built-in and external) and the components each registered; "
        "`check` and `new` help plugin authors.",
        invoke_without_command=True,
        no_args_is_help=False,
        rich_markup_mode=None,
    )

    @plugins_app.callback()
    def plugins(ctx: typer.Context, json_: bool = typer.Option(False, "--json", help="Print one JSON document.")):
        """List loaded plugins (built-in and external) and the components each registered."""
        if ctx.invoked_subcommand is not None:
            return
        from ..plugins import get_host

        records = sorted(get_host().records.values(), key=lambda r: (not r.builtin, r.name))
        for r in records:  # a slow import delays every command, --help and completion included
            if r.load_seconds is not None and r.load_seconds > SLOW_IMPORT_S:
                err.print(f"Warning: {r.described} took {r.load_seconds:.1f} s to load, and every lspt command "
                          f"(--help too) waits for it", markup=False, highlight=False)
                err.print("Hint: import heavy modules inside its factories, not at the top of its module",
                          markup=False, highlight=False)
        if json_:
            print_json([r.to_json() for r in records])
            return
        # One block per plugin rather than a table: long names and errors are never cut at any width.
        for r in records:
            origin = f"{r.dist} {r.version}".strip() or "registered in-process"
            status = f"[red]failed: {safe(r.error)}[/]" if r.error else "ok"
            took = f", loaded in {r.load_seconds:.2f} s" if r.load_seconds is not None else ""
            out.print(f"[bold]{safe(r.name)}[/]  ({safe(origin)}{', built-in' if r.builtin else ''}{took}): {status}")
            for kind, names in r.components.items():
                out.print(f"  {kind}: {safe(', '.join(names))}")
            for kind, names in r.dropped.items():
                out.print(f"  {kind} dropped: {safe(', '.join(names))}")

    @plugins_app.command("check")
    def check(
        names: Optional[List[str]] = typer.Argument(
            None, help="Strategies, backbones, datasets, recipes, loggers or executors to check (default: every "
            "component of the external plugins).", autocompletion=complete_from("strategy"), show_default=False),
        kind: Optional[str] = typer.Option(None, "--kind", help="strategy, backbone, dataset, recipe, logger or executor, "
                                           "when NAME is registered as more than one kind.  [default: every kind NAME has]",
                                           show_default=False),
        opts: Optional[List[str]] = typer.Option(None, "--opt", help="KEY=VALUE: an option of the logger or executor "
                                                 "checked (repeatable), e.g. --opt cluster=local.  [default: none]",
                                                 show_default=False),
        root: Optional[Path] = typer.Option(None, "--root", help="A dataset's unpacked files, for datasets that need them.  [default: none]",
                                            show_default=False),
        weights: Optional[Path] = typer.Option(None, "--weights", help="A backbone's weights file.  [default: its cached file, else random init]", show_default=False),
        json_: bool = typer.Option(False, "--json", help="Print one JSON document."),
    ):
        """Conformance checks of registered components on vit-tiny: for a strategy build, forward, a
        non-zero gradient for every trainable tensor, count_params, bundle round-trip, resume, a clean
        error for each bad option and the same result for the same seed; a logger's interface and its
        calls across a resume; an executor's two-trial sweep against `local`. One line per check with a
        fix hint; exit 1 when any fails."""
        from ..plugins import get_host
        from ..conformance import KINDS, check_kinds, run_check

        host = get_host()
        if kind is not None and kind not in KINDS:
            raise UsageError(f"--kind must be one of {', '.join(KINDS)}, got {kind!r}")
        options: dict[str, str] = {}
        for item in opts or []:
            key, sep, value = item.partition("=")
            if not sep or not key.strip():
                raise UsageError(f"--opt {item!r}: expected KEY=VALUE")
            options[key.strip()] = value
        targets: list[tuple[str, str | None]] = []
        if names:
            targets = [(n, kind) for n in names]
        else:
            for record in host.records.values():
                if record.builtin:
                    continue
                targets += [(n, k) for k, ns in record.components.items() for n in ns if kind in (None, k)]
            if not targets:
                raise UsageError("no external plugin registered anything to check",
                                 hint="name components: lspt plugins check vpt-deep (see `lspt plugins`)")
        reports = []
        for name, k in targets:
            kinds = [k] if k else check_kinds(name, host)
            for each in kinds or [None]:
                report = run_check(name, each, host=host, root=root, weights=weights,
                                   options=options if each in ("logger", "executor") else None)
                reports.append(report)
                if not json_:
                    for line in report.lines():
                        out.print(line, markup=False, highlight=False)
        failed = [f"{r.kind} {r.name}: {c}" for r in reports for c in r.failed]
        if json_:
            print_json({"ok": not failed, "failed": failed, "components": [r.to_json() for r in reports]})
            if failed:
                raise typer.Exit(1)
            return
        if failed:
            raise LsptError(f"{len(failed)} check(s) failed: {'; '.join(failed)}",
                            hint="each FAIL line above says how to fix it; docs/plugins.md has the contract")
        n = sum(len(r.results) for r in reports)
        err.print(f"all {n} checks of {len(reports)} component(s) passed", markup=False, highlight=False)

    @plugins_app.command("new")
    def new(
        name: str = typer.Argument(..., help="Plugin name, e.g. my-prompts: distribution lspt-my-prompts, module "
                                   "lspt_my_prompts, component my-prompts.", show_default=False),
        kind: str = typer.Option(..., "--kind", help="strategy, dataset, backbone, logger or executor.",
                                 show_default=False),
        data_init: bool = typer.Option(False, "--data-init", help="With --kind strategy: prompts initialised from "
                                       "the task's training images by init_from_data (as SPT's are)."),
        directory: Path = typer.Option(Path("."), "--dir", help="Where to create the package folder."),
        json_: bool = typer.Option(False, "--json", help="Print one JSON document."),
    ):
        """Write a ready plugin package: pyproject with the entry point, a working minimal implementation,
        tests using lspt_cli.testing, and a README. It passes `pip install -e`, pytest and `lspt plugins check`."""
        from ..scaffold import names_for, write_scaffold

        dest, files = write_scaffold(name, kind, directory, data_init=data_init)
        component = names_for(name).component
        if json_:
            print_json({"path": str(dest), "component": component, "kind": kind, "data_init": data_init,
                        "files": files})
            return
        out.print(f"wrote {dest}: {', '.join(files)}", markup=False, highlight=False)
        err.print(f"next: cd {dest} && pip install -e '.[test]' && python -m pytest && lspt plugins check {component}",
                  markup=False, highlight=False)

    app.add_typer(plugins_app)
