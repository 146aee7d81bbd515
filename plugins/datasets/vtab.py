"""VTAB-1k's 19 tasks in the widely shared folder layout (NOAH's generator; no TensorFlow needed).

`prepare_<task>(root, out_dir=None, group=False)`: ROOT is the task's folder (with train800.txt ...)
or a vtab-1k folder holding it under one of its accepted names (layouts.VTAB_TASKS, e.g. `cifar`
or `cifar100`). Splits are the files as given: train800 / val200 / train800val200 / test.
Classes: the task's official count, named "0".."K-1"; a label >= K is an error.

Pixels: NOAH's files are JPEGs re-encoded at quality 75, while VPT resizes the decoded TFDS tensors
(KMnP/vpt src/data/datasets/tf_dataset.py:148-152). The same layout with lossless PNG files, as
scripts/vtab_from_tfds.py writes it from TFDS through VPT's own split definitions, gives protocol
`paper` VPT's exact pixels (tests/test_vtab_lossless.py). Nothing here depends on the extension.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lspt_cli.data.manifest import TaskNotFound

from . import layouts
from .common import check_files_exist, check_no_duplicates, finish, layout_error, parse_int, read_rows, require

SPLIT_FILES = {"train": "train800.txt", "val": "val200.txt", "trainval": "train800val200.txt", "test": "test.txt"}


def find_task_dir(task: str, root: Path, group: bool) -> Path:
    _, _, folders = layouts.VTAB_TASKS[task]
    if not group and (root / "train800.txt").exists():
        return root
    for base in (root, root / "vtab-1k", root / "vtab"):
        for name in folders:
            if (base / name).is_dir():
                return base / name
    raise TaskNotFound(
        f"vtab/{task}: no folder for it under {root} (looked for {', '.join(folders)})",
        hint=None if group else (
            f"point --root at the task folder or at the folder holding {folders[0]}/\n"
            f"expected layout:\n{layouts.VTAB}"
        ),
    )


def prepare_task(task: str, root: Path | None, group: bool = False):
    name = f"vtab/{task}"
    _, num_classes, folders = layouts.VTAB_TASKS[task]
    layout = layouts.VTAB_TASK.format(task=folders[0])
    if root is None:
        raise layout_error(name, "--root is required", layout)
    root = Path(root).expanduser()
    require(name, root, layout, kind="folder")
    tdir = find_task_dir(task, root, group)
    splits: dict[str, list[tuple[str, int]]] = {}
    for split, fname in SPLIT_FILES.items():
        path = require(name, tdir / fname, layout)
        items = []
        for rel, label in read_rows(name, path, 2, layout):
            y = parse_int(name, path, label, "label", layout)
            if not 0 <= y < num_classes:
                raise layout_error(name, f"{path}: label {y} of {rel} is out of range [0, {num_classes})", layout)
            rel = rel.replace("\\", "/")
            items.append((rel[2:] if rel.startswith("./") else rel, y))
        check_no_duplicates(name, str(path), (k for k, _ in items), layout)
        splits[split] = items
    check_files_exist(name, tdir, sorted({k for s in splits.values() for k, _ in s}), layout)
    return finish(
        name, "vtab", [str(i) for i in range(num_classes)], tdir,
        splits["train"], splits["val"], splits["test"],
        "official VTAB-1k files (train800, val200, train800val200, test)", layout,
        trainval=splits["trainval"],
    )


def _factory(task: str):
    def prepare(root: Path | None, out_dir: Path | None = None, *, group: bool = False, **_: Any):
        return prepare_task(task, root, group=group)

    prepare.__name__ = f"prepare_{task}"
    prepare.__doc__ = f"Prepare VTAB-1k {task} (see the module docstring)."
    return prepare


for _task in layouts.VTAB_TASKS:
    globals()[f"prepare_{_task}"] = _factory(_task)
del _task
