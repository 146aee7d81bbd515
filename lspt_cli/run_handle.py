"""A stable handle per run name: `runs/<task>-<strategy>-<backbone>-latest` -> the newest finished run.

Default run directories carry a time stamp (`digits-lspt-vit-tiny-20260101-120000`), so a shell glob
like `runs/digits-lspt-vit-tiny-*/` matches every earlier run too and breaks repeated commands. After
each finished run, the `-latest` symlink of its name is pointed at it, atomically: a new symlink
under a temporary name, then `os.replace` over the old one (POSIX rename semantics; readers see
the old or the new run, never a missing link). The target is relative (just the folder name), so
moving the runs folder keeps the link valid. Symlinks are POSIX-only here; where the filesystem
refuses them, the run is unaffected and no link is made. Torch-free.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

LATEST = "latest"
_STAMP = re.compile(r"-\d{8}-\d{6}(-\d+)?$")


def run_name(run_dir: Path) -> str | None:
    """`digits-lspt-vit-tiny-20260101-120000(-2)` -> `digits-lspt-vit-tiny`; None for other names."""
    match = _STAMP.search(run_dir.name)
    return run_dir.name[: match.start()] if match else None


def latest_link(run_dir: Path) -> Path | None:
    name = run_name(run_dir)
    return run_dir.parent / f"{name}-{LATEST}" if name else None


def unique_run_dir(path: Path) -> Path:
    """`path`, or `path-2`, `path-3`, ... when two runs start within the same second."""
    candidate, n = path, 1
    while candidate.exists() or candidate.is_symlink():
        n += 1
        candidate = path.with_name(f"{path.name}-{n}")
    return candidate


def point_latest(run_dir: Path) -> Path | None:
    """Point `<name>-latest` at `run_dir` (same folder); returns the link, or None if none was made."""
    run_dir = Path(run_dir)
    link = latest_link(run_dir)
    if link is None:
        return None
    tmp = link.with_name(f".{link.name}.{os.getpid()}.tmp")
    try:
        tmp.unlink(missing_ok=True)
        os.symlink(run_dir.name, tmp, target_is_directory=True)
        os.replace(tmp, link)
    except OSError:
        tmp.unlink(missing_ok=True)
        return None
    return link
