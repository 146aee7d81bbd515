"""`lspt prepare-data TASK [--root DIR] [--name ID] [--verify] [--cache] [--json] [-q]`.

Checks a dataset's official layout, writes its split manifest atomically under the lspt data dir
(`tasks/<task id>/manifest.json`) and prints class and image counts per split. The task id is
`--name` when given, else the dataset's name. `vtab --root DIR` prepares every VTAB-1k task found
under DIR. Any layout problem is one DataError naming the file; nothing is written then.
Every image must resolve inside ROOT (no absolute or '..' paths in split files; symlinks leading
out of ROOT only with --follow-symlinks), and train, val and test must each hold images.
The task dirs are locked while they are written (lspt_cli/locks.py); another process preparing the
same task is waited for (bounded: LSPT_PREPARE_WAIT, 120 s; its pid named). Ctrl-C exits 130 and never
leaves a manifest or cache that looks complete. No torch at import time.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from pathlib import Path
from typing import Any, Optional

import typer

from .output import complete_from, err, out, print_json, progress_enabled, safe


def register(app) -> None:
    @app.command("prepare-data")
    def prepare_data(
        task: str = typer.Argument(
            ..., metavar="TASK", help="A dataset (cub, vtab/dtd, imagefolder, digits, ...) or 'vtab' for all 19 VTAB-1k tasks.",
            autocompletion=complete_from("dataset"),
        ),
        root: Optional[Path] = typer.Option(None, "--root", help="Where you extracted the dataset (its official layout); required unless the dataset is generated (digits)."),
        name: Optional[str] = typer.Option(None, "--name", help="Task id to prepare it as (default: the dataset name); `lspt tune --task ID`."),
        verify: bool = typer.Option(False, "--verify", help="Open every image; report the corrupt ones by path."),
        cache: bool = typer.Option(False, "--cache", help="Decode every image once into a memory-mapped uint8 cache for --input-size."),
        input_size: int = typer.Option(224, "--input-size", min=8, help="Model input size the cache is made for (stores round(size/0.875) px)."),
        workers: int = typer.Option(2, "--workers", "-j", min=0, help="Processes/threads for --verify and --cache."),
        follow_symlinks: bool = typer.Option(False, "--follow-symlinks", help="Accept images that are symlinks leading outside --root."),
        json_: bool = typer.Option(False, "--json", help="Print one JSON document."),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress or notes on stderr."),
    ):
        """Check a dataset's layout and write its split manifest (+ an optional decoded-image cache)."""
        try:
            doc = run_prepare(
                task, root=root, name=name, verify=verify, cache=cache, input_size=input_size,
                workers=workers, quiet=quiet or json_, show_progress=progress_enabled(json_, quiet),
                follow_symlinks=follow_symlinks,
            )
        except KeyboardInterrupt:
            err.print("Interrupted: no manifest or cache was completed by this run", markup=False, highlight=False)
            raise typer.Exit(130) from None
        if json_:
            print_json(doc)
        else:
            _print_tables(doc)


def _resolve_specs(host, task: str):
    """[(spec, grouped)] for TASK: one registered dataset, or every `TASK/*` member of a group."""
    from ..data.manifest import canonical_task

    canonical = canonical_task(task)
    if canonical in host.datasets:
        return [host.datasets.get(canonical)], False
    members = host.datasets.names(f"{task}/*")
    if members:
        return [host.datasets.get(n) for n in members], True
    host.datasets.get(canonical)  # raises UsageError: unknown dataset, with suggestions
    raise AssertionError  # pragma: no cover


def run_prepare(task: str, *, name: str | None = None, **options) -> dict[str, Any]:
    """Prepare TASK holding the lock of every task dir it may write; Ctrl-C -> KeyboardInterrupt
    before anything else is written (even one that a worker or a finaliser would swallow)."""
    from ..data.manifest import check_task_id, task_dir
    from ..locks import hold
    from ..plugins import get_host

    specs, _ = _resolve_specs(get_host(), task)
    if name:
        check_task_id(name)
    dirs = sorted({task_dir(name or spec.name) for spec in specs})
    made = [d for d in dirs if not d.exists()]
    made += [d.parent for d in made if not d.parent.exists()]  # `vtab/` of vtab/dtd
    wait = prepare_wait()
    quiet = bool(options.get("quiet"))

    def waiting(directory):
        def say(pid: int | None) -> None:
            if not quiet:
                who = f"pid {pid}" if pid else "another lspt process"
                err.print(f"Waiting for {who}, which is preparing {safe(directory.name)} (the result is the same; "
                          f"up to {wait:g} s, {PREPARE_WAIT_ENV})", markup=False, highlight=False)
        return say

    try:
        with contextlib.ExitStack() as stack, _interruptible():
            for directory in dirs:  # another process preparing the same task: wait for it, then reuse its work
                stack.enter_context(hold(directory, "task data directory", wait=wait, on_wait=waiting(directory),
                                         cancelled=_interrupted))
            return _run_prepare(task, name=name, **options)
    finally:
        for directory in made:  # tasks a group did not find leave no empty folder behind
            with contextlib.suppress(OSError):
                directory.rmdir()


PREPARE_WAIT_S = 120.0  # how long prepare-data waits for another process preparing the same task
PREPARE_WAIT_ENV = "LSPT_PREPARE_WAIT"


def prepare_wait() -> float:
    """Seconds to wait for another process preparing the same task: LSPT_PREPARE_WAIT, else 120."""
    import math
    import os

    from ..errors import UsageError

    text = os.environ.get(PREPARE_WAIT_ENV, "").strip()
    if not text:
        return PREPARE_WAIT_S
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise UsageError(f"{PREPARE_WAIT_ENV}={text} must be a number of seconds >= 0 (0: never wait)")
    return value


_INTERRUPTED = threading.Event()


@contextlib.contextmanager
def _interruptible():
    """Ctrl-C only sets a flag, which the work loops check (after every image verified or cached,
    while waiting for another process's lock, before every write) and which then raise
    KeyboardInterrupt from ordinary code. The handler itself never raises: an exception raised from
    a signal handler lands wherever the main thread happens to be (inside logging's fork lock, a
    DataLoader starting its workers: "Exception ignored in: <function _releaseLock>"). A second
    Ctrl-C, for a step that checks no flag (a plugin's slow `prepare`), interrupts the usual way."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _INTERRUPTED.clear()
    previous = signal.getsignal(signal.SIGINT)

    def on_sigint(signum, frame):
        if _INTERRUPTED.is_set():  # the second Ctrl-C: back to Python's own handler, for the next one
            signal.signal(signal.SIGINT, signal.default_int_handler)
        _INTERRUPTED.set()

    signal.signal(signal.SIGINT, on_sigint)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _check_interrupted() -> None:
    if _INTERRUPTED.is_set():
        raise KeyboardInterrupt


def _interrupted() -> bool:
    return _INTERRUPTED.is_set()


def _run_prepare(
    task: str,
    *,
    root: Path | None = None,
    name: str | None = None,
    verify: bool = False,
    cache: bool = False,
    input_size: int = 224,
    workers: int = 2,
    quiet: bool = False,
    show_progress: bool = False,
    follow_symlinks: bool = False,
) -> dict[str, Any]:
    from ..data.manifest import TaskNotFound, check_task_id, save_manifest, task_dir
    from ..errors import DataError, UsageError
    from ..data.manifest import call_prepare
    from ..plugins import get_host

    host = get_host()
    specs, grouped = _resolve_specs(host, task)
    if grouped and name:
        raise UsageError(f"--name cannot be used with the group '{task}' (it prepares {len(specs)} tasks)")
    if name:
        check_task_id(name)
    if root is not None:
        root = root.expanduser()
        if not root.exists():
            raise DataError(f"--root {root} does not exist")
    needs_root = [s for s in specs if s.needs_root]
    if needs_root and root is None:
        layout = specs[0].layout if not grouped else ""
        raise UsageError(
            f"{task} needs --root DIR (where you extracted the dataset)" + (f"; expected layout:\n{layout}" if layout else ""),
            hint=f"lspt prepare-data {task} --root DIR",
        )

    # 1. Build every manifest in memory (nothing written yet except digits' own array).
    manifests, skipped = [], []
    for spec in specs:
        task_id = name or spec.name
        out_dir = task_dir(task_id)
        try:
            options = {"group": True} if grouped else {}
            result = call_prepare(spec, root if spec.needs_root else None, out_dir, **options)
        except TaskNotFound as exc:
            if grouped:
                skipped.append({"task": spec.name, "reason": exc.message.splitlines()[0]})
                continue
            raise
        manifest = result
        manifest.dataset = spec.name
        manifest.task = task_id
        manifest.directory = out_dir
        if manifest.benchmark != spec.benchmark:
            manifest.benchmark = spec.benchmark
        manifest.validate()
        manifest.check_contained(follow_symlinks)
        _check_splits_not_empty(manifest)
        manifests.append(manifest)
    if not manifests:
        raise DataError(
            f"no {task} task found under {root}",
            hint=f"expected one folder per task, e.g. {root}/dtd/train800.txt; see `lspt list datasets '{task}/*'`",
        )

    # 2. --verify: open every image; any corrupt one stops everything before writing.
    reports: dict[str, dict[str, Any]] = {}
    if verify:
        for manifest in manifests:
            reports[manifest.task] = _verify(manifest, workers, show_progress)
        bad = [(t, p, why) for t, r in reports.items() for p, why in r["corrupt"]]
        if bad:
            shown = "\n".join(f"  {why}" for _, _, why in bad[:20])
            more = f"\n  ... and {len(bad) - 20} more" if len(bad) > 20 else ""
            raise DataError(
                f"{len(bad)} corrupt image(s); nothing was written:\n{shown}{more}",
                hint="re-download or delete them (and their lines in the split files), then run prepare-data again",
            )

    # 3. --cache (atomic), then 4. the manifests (atomic, last).
    docs = []
    for manifest in manifests:
        _check_interrupted()
        cache_doc = None
        if cache:
            if manifest.root is None:
                cache_doc = {"note": "images already kept as an array; no cache needed"}
            else:
                from ..data.cache import build_cache

                cache_doc = build_cache(
                    manifest, input_size=input_size, num_workers=workers,
                    progress=_checked(_progress_callback(f"caching {manifest.task}", show_progress)),
                )
        _check_interrupted()
        path, changed = save_manifest(manifest)
        doc = manifest.summary()
        doc.update(manifest=str(path), changed=changed, created_at=manifest.created_at)
        if verify:
            doc["verify"] = {"checked": reports[manifest.task]["checked"], "corrupt": []}
        if cache_doc is not None:
            doc["cache"] = cache_doc
        docs.append(doc)
    if skipped and not quiet:
        err.print(f"Note: {len(skipped)} task(s) not found under {safe(root)}: " + safe(", ".join(s["task"] for s in skipped)))
    return {"tasks": docs, "skipped": skipped}


def _check_splits_not_empty(manifest) -> None:
    """An empty train, val or test split is reported here, not at the first `lspt tune`."""
    from ..errors import DataError

    for split in ("train", "val", "test"):
        if not manifest.splits.get(split):
            why = " (val is carved from train: every class needs 2+ train images)" if split == "val" else ""
            raise DataError(
                f"task '{manifest.task}': split '{split}' has no images{why}; nothing was written",
                hint="add images (or a val/ or test/ folder) and run prepare-data again",
            )


def _checked(progress):
    """A cache progress callback that also stops at a remembered Ctrl-C (before the index is written)."""

    def update(done: int, total: int) -> None:
        _check_interrupted()
        if progress is not None:
            progress(done, total)

    return update


def _progress_callback(label: str, enabled: bool):
    if not enabled:
        return None
    state = {"last": -1}

    def update(done: int, total: int) -> None:
        pct = int(100 * done / max(total, 1))
        if pct != state["last"] or done == total:
            state["last"] = pct
            err.print(f"\r{label}: {done}/{total} ({pct}%)", end="\n" if done == total else "")

    return update


def _verify(manifest, workers: int, show_progress: bool) -> dict[str, Any]:
    """Decode every image of the manifest; {"checked": n, "corrupt": [(path, reason), ...]}."""
    from concurrent.futures import ThreadPoolExecutor

    from ..data.images import check_image

    if manifest.root is None:
        return {"checked": 0, "corrupt": []}
    keys = manifest.keys()
    paths = [manifest.image_path(k) for k in keys]
    progress = _progress_callback(f"verifying {manifest.task}", show_progress)
    corrupt = []
    pool = ThreadPoolExecutor(max_workers=max(1, workers))
    try:
        for done, (path, reason) in enumerate(zip(paths, pool.map(check_image, paths)), 1):
            _check_interrupted()  # Ctrl-C: stop here, not after every image queued
            if reason is not None:
                corrupt.append((str(path), reason))
            if progress:
                progress(done, len(paths))
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return {"checked": len(paths), "corrupt": corrupt}


def _print_tables(doc: dict[str, Any]) -> None:
    from rich.table import Table

    for t in doc["tasks"]:
        state = "written" if t["changed"] else "unchanged"
        table = Table(title=f"{safe(t['task'])} ({safe(t['benchmark'])}, {t['num_classes']} classes): {state} {safe(t['manifest'])}", title_justify="left")
        table.add_column("split")
        table.add_column("images", justify="right")
        table.add_column("classes", justify="right")
        for split in ("train", "val", "test", "trainval"):
            counts = t["splits"].get(split)
            if counts is not None:
                table.add_row(split, str(counts["images"]), str(counts["classes"]))
        table.caption = f"splits: {safe(t['split_source'])}"
        table.caption_justify = "left"
        out.print(table)
        if "verify" in t:
            out.print(f"verified: {t['verify']['checked']} images, none corrupt")
        if "cache" in t:
            c = t["cache"]
            if "path" in c:
                out.print(
                    f"cache: {safe(c['path'])} ({c['images']} images at {c['stored'][0]}x{c['stored'][1]}, "
                    f"{c['bytes'] / 2**20:.1f} MiB{', reused' if c['reused'] else ''})"
                )
            else:
                out.print(f"cache: {safe(c['note'])}")
    for s in doc.get("skipped", []):
        out.print(f"skipped {safe(s['task'])}: {safe(s['reason'])}")
