"""Helpers shared by the dataset plugins: layout checks, split files, carving val, VPT's json splits.

Every problem is one DataError naming the file and the expected layout. Imports no torch.
"""

from __future__ import annotations

import json
import random
from collections import defaultdict
from pathlib import Path
from typing import Iterable

from lspt_cli.atomic import read_regular_bytes
from lspt_cli.data.manifest import Manifest
from lspt_cli.errors import DataError

VAL_FRACTION = 0.1
VAL_SEED = 42
MAX_LISTED = 5


def layout_error(task: str, message: str, layout: str, hint: str | None = None) -> DataError:
    """One DataError: the problem on the `Error:` line, the expected layout in the hint."""
    if layout:
        hint = (hint + "\n" if hint else "") + f"expected layout:\n{layout.rstrip()}"
    return DataError(f"{task}: {message}", hint=hint)


def require(task: str, path: Path, layout: str, kind: str = "file") -> Path:
    ok = path.is_dir() if kind == "folder" else path.is_file()
    if not ok:
        odd = " (it exists but is not a " + kind + ")" if path.exists() else ""
        raise layout_error(task, f"missing {kind} {path}{odd}", layout)
    return path


def read_rows(task: str, path: Path, ncols: int, layout: str, rest_joined: bool = False) -> list[list[str]]:
    """Whitespace-separated rows with at least `ncols` fields (the last field takes the rest of the
    line when `rest_joined`, e.g. class names with spaces). Blank lines are skipped."""
    rows = []
    try:
        text = read_split_file(task, path, layout).decode("utf-8-sig")
    except UnicodeDecodeError:
        raise layout_error(task, f"{path} is not a UTF-8 text file", layout) from None
    for lineno, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        parts = line.split(None, ncols - 1) if rest_joined else line.split()
        if len(parts) != ncols:
            raise layout_error(
                task, f"{path}, line {lineno}: expected {ncols} fields, got {len(parts)}: {line[:80]!r}", layout
            )
        rows.append(parts)
    if not rows:
        raise layout_error(task, f"{path} is empty", layout)
    return rows


MAX_SPLIT_FILE_BYTES = 256 * 2**20  # a split list of millions of images is still far below this


def read_split_file(task: str, path: Path, layout: str) -> bytes:
    """A split/annotation file's bytes: a regular file only (a FIFO never hangs), size-capped."""
    try:
        return read_regular_bytes(path, "split file", DataError, MAX_SPLIT_FILE_BYTES)
    except DataError as exc:
        raise layout_error(task, exc.message, layout) from None


def parse_int(task: str, path: Path, value: str, what: str, layout: str) -> int:
    try:
        return int(value)
    except ValueError:
        try:
            f = float(value)
        except ValueError:
            f = None
        if f is not None and f.is_integer():
            return int(f)
        raise layout_error(task, f"{path}: {what} {value!r} is not an integer", layout) from None


def id_map(task: str, path: Path, rows: list[list[str]], layout: str) -> dict[str, str]:
    """First column -> second, refusing duplicate ids."""
    out: dict[str, str] = {}
    for row in rows:
        if row[0] in out:
            raise layout_error(task, f"{path}: duplicate id {row[0]!r}", layout)
        out[row[0]] = row[1]
    return out


def check_no_duplicates(task: str, source: str, keys: Iterable[str], layout: str = "") -> None:
    seen: set[str] = set()
    for key in keys:
        if key in seen:
            raise layout_error(task, f"{source}: duplicate image path {key!r}", layout)
        seen.add(key)


def check_files_exist(task: str, root: Path, keys: Iterable[str], layout: str) -> None:
    missing = [k for k in keys if not (root / k).is_file()]
    if missing:
        shown = ", ".join(str(root / k) for k in missing[:MAX_LISTED])
        more = f" (and {len(missing) - MAX_LISTED} more)" if len(missing) > MAX_LISTED else ""
        raise layout_error(task, f"{len(missing)} listed image(s) missing: {shown}{more}", layout)


def carve_val(
    train: list[tuple[str, int]], fraction: float = VAL_FRACTION, seed: int = VAL_SEED
) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    """Move `fraction` of each class's train images (at least 1 when a class has 2+) to val.

    Deterministic: classes in label order, each class's keys sorted, shuffled with random.Random(seed
    + label). The remaining train keeps its original order.
    """
    by_class: dict[int, list[str]] = defaultdict(list)
    for key, label in train:
        by_class[label].append(key)
    val_keys: set[str] = set()
    for label in sorted(by_class):
        keys = sorted(by_class[label])
        n_val = int(round(len(keys) * fraction))
        if len(keys) >= 2:
            n_val = max(1, min(n_val, len(keys) - 1))
        else:
            n_val = 0
        rng = random.Random(seed * 100003 + label)
        rng.shuffle(keys)
        val_keys.update(keys[:n_val])
    new_train = [(k, y) for k, y in train if k not in val_keys]
    val = sorted(((k, y) for k, y in train if k in val_keys), key=lambda item: (item[1], item[0]))
    return new_train, val


def carve_note(fraction: float = VAL_FRACTION, seed: int = VAL_SEED) -> str:
    return f"carved {fraction:.0%} of train per class, seed {seed}"


def _strict_pairs(path: Path, task: str, layout: str):
    def hook(pairs):
        out = {}
        for k, v in pairs:
            if k in out:
                raise layout_error(task, f"{path}: duplicate image path {k!r}", layout)
            out[k] = v
        return out

    return hook


VPT_FILES = ("train.json", "val.json", "test.json")


def vpt_json_present(root: Path) -> bool:
    return any((root / name).exists() for name in VPT_FILES)


def read_vpt_json(
    task: str, root: Path, bases: Iterable[str], num_classes: int | None, layout: str
) -> tuple[dict[str, list[tuple[str, int]]], str]:
    """VPT's train.json / val.json / test.json (image path -> class index) in `root`.

    Keys are resolved relative to the first of `bases` (folders under root, "" = root itself) where
    the first key exists; returned keys are relative to root. Returns (splits, base).
    """
    docs = {}
    for name in VPT_FILES:
        path = root / name
        if not path.is_file():
            present = [n for n in VPT_FILES if (root / n).is_file()]
            raise layout_error(
                task,
                f"VPT split files are incomplete: missing {path} (found {', '.join(present)})",
                layout,
                hint="provide all of train.json, val.json, test.json, or remove them to carve val from train",
            )
        try:
            doc = json.loads(read_split_file(task, path, layout).decode("utf-8"), object_pairs_hook=_strict_pairs(path, task, layout))
        except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError, deep nesting
            if isinstance(exc, (json.JSONDecodeError, UnicodeDecodeError, RecursionError)):
                raise layout_error(task, f"{path} is not valid JSON ({type(exc).__name__}: {exc})", layout) from None
            raise
        if not isinstance(doc, dict) or not doc:
            raise layout_error(task, f"{path}: expected a non-empty JSON object {{image path: class index}}", layout)
        docs[name.split(".")[0]] = doc
    first = next(iter(docs["train"]))
    base = next((b for b in bases if (root / b / first).is_file()), None)
    if base is None:
        tried = ", ".join(str(root / b / first) for b in bases)
        raise layout_error(task, f"the first image of {root / 'train.json'} was not found (tried {tried})", layout)
    splits: dict[str, list[tuple[str, int]]] = {}
    for split, doc in docs.items():
        items = []
        for key, label in doc.items():
            if isinstance(label, bool) or not isinstance(label, int):
                if isinstance(label, float) and label.is_integer():
                    label = int(label)
                else:
                    raise layout_error(task, f"{root / (split + '.json')}: label {label!r} of {key!r} is not an integer", layout)
            if label < 0 or (num_classes is not None and label >= num_classes):
                bound = f"[0, {num_classes})" if num_classes is not None else ">= 0"
                raise layout_error(
                    task, f"{root / (split + '.json')}: label {label} of {key!r} is out of range {bound}", layout
                )
            rel = f"{base}/{key}" if base else key
            items.append((str(Path(rel).as_posix()), label))
        splits[split] = items
    return splits, base


def finish(
    task: str,
    benchmark: str,
    classes: list[str],
    root: Path | None,
    train: list[tuple[str, int]],
    val: list[tuple[str, int]],
    test: list[tuple[str, int]],
    split_source: str,
    layout: str = "",
    trainval: list[tuple[str, int]] | None = None,
    extra: dict | None = None,
) -> Manifest:
    """Assemble and validate a manifest; refuse an image shared by train/val/test."""
    named = {"train": train, "val": val, "test": test}
    for split, items in named.items():
        check_no_duplicates(task, f"split '{split}'", (k for k, _ in items), layout)
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        both = {k for k, _ in named[a]} & {k for k, _ in named[b]}
        if both:
            shown = ", ".join(sorted(both)[:MAX_LISTED])
            raise layout_error(task, f"{len(both)} image(s) are in both '{a}' and '{b}': {shown}", layout)
    manifest = Manifest(
        task=task,
        benchmark=benchmark,
        classes=list(classes),
        splits={
            "train": list(train),
            "val": list(val),
            "test": list(test),
            "trainval": list(trainval) if trainval is not None else list(train) + list(val),
        },
        root=str(root.resolve()) if root is not None else None,
        split_source=split_source,
        extra=dict(extra or {}),
    )
    manifest.validate()
    return manifest
