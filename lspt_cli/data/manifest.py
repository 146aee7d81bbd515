"""Split manifests: one JSON file per prepared task, under `paths.tasks_dir()/<task id>/`.

A manifest lists every split as (image key, label) pairs. The key is a path relative to
`Manifest.root` (FGVC, VTAB, imagefolder) or a row key into an array stored next to the manifest
(digits). Labels are 0-based and contiguous over `classes`.

Task ids: the prepared task id is `--name` when given, else the dataset's registered name
(`cub`, `vtab/dtd`, `digits`, `imagefolder`). `load_manifest(task_id)` finds it; the manifest lives
in `tasks_dir()/<task id>/manifest.json` (a `/` in the id is a sub-folder).
This module never imports torch.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from .. import atomic, paths
from ..errors import DataError, UsageError

SCHEMA = 1
MAX_MANIFEST_BYTES = 2**30  # ~15 M images; a bigger (or endless) manifest.json is refused, not read
MANIFEST_FILE = "manifest.json"
SPLITS = ("train", "val", "test", "trainval")
BENCHMARKS = ("fgvc", "vtab", "custom")

# Task names accepted as another spelling of a registered task.
TASK_ALIASES = {"vtab/cifar100": "vtab/cifar"}

_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*(/[A-Za-z0-9][A-Za-z0-9_.+-]*)?")
MAX_ID_PART = 128  # characters per folder name of a task id (filesystems allow 255 bytes; runs add suffixes)


class TaskNotFound(DataError):
    """A task's data is not under the given root (a group prepare, e.g. `vtab`, skips it)."""


def canonical_task(task: str) -> str:
    return TASK_ALIASES.get(task, task)


def check_task_id(task_id: str) -> str:
    """A task id is a folder name (one '/' allowed): no newline, no '..', no separators beyond that."""
    if not isinstance(task_id, str) or not _ID_RE.fullmatch(task_id) or ".." in task_id:
        raise UsageError(
            f"invalid task id {task_id!r}",
            hint="use letters, digits, '.', '_', '-' (one '/' allowed, e.g. vtab/dtd)",
        )
    if any(len(part) > MAX_ID_PART for part in task_id.split("/")):
        raise UsageError(f"task id {task_id[:40]!r}... is too long (at most {MAX_ID_PART} characters per folder name)")
    return task_id


def check_key(task: str, key: str) -> None:
    """An image key names a file under the dataset root: relative, no '..', no NUL (split files are
    untrusted text: `../../etc/passwd` or `/etc/passwd` must never be read or trained on)."""
    pure = PurePosixPath(key)
    if not key or pure.is_absolute() or ".." in pure.parts or "\0" in key or key.startswith("~"):
        raise DataError(
            f"task '{task}': image path {key[:200]!r} is not inside the dataset root (absolute, '..' or empty)",
            hint="split files must name images relative to ROOT",
        )


@dataclass
class Manifest:
    task: str  # the prepared task id (--name, else the dataset name), e.g. "cub", "vtab/dtd", "mydata"
    benchmark: str  # "fgvc" | "vtab" | "custom": picks transforms and recipes
    classes: list[str]  # index -> class name
    splits: dict[str, list[tuple[str, int]]]  # train, val, test, trainval -> [(key, label)]
    root: str | None  # images live under root (None: digits, images come from an array)
    split_source: str  # how the splits were made
    dataset: str = ""  # the registered dataset name that prepared it ("imagefolder" for --name mydata)
    created_at: str = ""
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. {"array": "digits.npy"}
    directory: Path | None = field(default=None, compare=False, repr=False)  # where the manifest lives

    def __post_init__(self) -> None:
        if not self.dataset:
            self.dataset = self.task
        if not self.created_at:
            self.created_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())

    # -- derived ---------------------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def keys(self) -> list[str]:
        """Every distinct image key over all splits, in first-seen order (the cache's row order)."""
        seen: dict[str, None] = {}
        for split in ("train", "val", "test", "trainval"):
            for key, _ in self.splits.get(split, []):
                seen.setdefault(key, None)
        for split, items in self.splits.items():
            for key, _ in items:
                seen.setdefault(key, None)
        return list(seen)

    def image_path(self, key: str) -> Path:
        if self.root is None:
            raise DataError(f"task '{self.task}' has no image root (its images come from an array)")
        return Path(self.root) / key

    def fingerprint(self) -> str:
        """A hash of what the images are (root, benchmark, keys, labels): caches are tied to it."""
        h = hashlib.sha256()
        h.update(json.dumps([SCHEMA, self.root, self.benchmark, self.classes, self.extra.get("array")]).encode())
        for split in sorted(self.splits):
            h.update(split.encode())
            for key, label in self.splits[split]:
                h.update(f"\n{key}\t{label}".encode())
        return h.hexdigest()[:32]

    def counts(self) -> dict[str, dict[str, int]]:
        return {
            split: {"images": len(items), "classes": len({label for _, label in items})}
            for split, items in self.splits.items()
        }

    def validate(self) -> None:
        """Labels in range, no duplicate key within a split, the four splits present."""
        if self.benchmark not in BENCHMARKS:
            raise DataError(f"task '{self.task}': unknown benchmark {self.benchmark!r}; expected one of {BENCHMARKS}")
        if not self.classes:
            raise DataError(f"task '{self.task}' has no classes")
        missing = [s for s in SPLITS if s not in self.splits]
        if missing:
            raise DataError(f"task '{self.task}': manifest lacks split(s) {', '.join(missing)}")
        n = len(self.classes)
        for split, items in self.splits.items():
            seen: set[str] = set()
            for key, label in items:
                if key in seen:
                    raise DataError(f"task '{self.task}': duplicate image '{key}' in split '{split}'")
                seen.add(key)
                if self.root is not None:
                    check_key(self.task, key)
                if not isinstance(label, int) or isinstance(label, bool) or not 0 <= label < n:
                    raise DataError(
                        f"task '{self.task}': label {label!r} of '{key}' in split '{split}' is out of range "
                        f"[0, {n})"
                    )

    def check_contained(self, follow_symlinks: bool = False) -> None:
        """Every image resolves inside `root`: a symlink that leads out of it is refused unless
        `follow_symlinks` (prepare-data --follow-symlinks). Keys are already relative (validate)."""
        if self.root is None:
            return
        root = Path(self.root).resolve()
        for key in self.keys():
            check_key(self.task, key)
            if follow_symlinks:
                continue
            real = (root / key).resolve()
            if not real.is_relative_to(root):
                raise DataError(
                    f"task '{self.task}': {root / key} resolves to {real}, outside the dataset root {root}",
                    hint="a symlink leaves the dataset root; pass --follow-symlinks to prepare-data if that is intended",
                )

    # -- (de)serialisation -------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "task": self.task,
            "dataset": self.dataset,
            "benchmark": self.benchmark,
            "root": self.root,
            "split_source": self.split_source,
            "created_at": self.created_at,
            "fingerprint": self.fingerprint(),
            "classes": list(self.classes),
            "extra": self.extra,
            "splits": {split: [[key, int(label)] for key, label in items] for split, items in self.splits.items()},
        }

    @classmethod
    def from_json(cls, doc: dict[str, Any], directory: Path | None = None) -> "Manifest":
        try:
            if doc.get("schema") != SCHEMA:
                raise DataError(f"manifest schema {doc.get('schema')!r} is not supported (expected {SCHEMA})")
            return cls(
                task=doc["task"],
                dataset=doc.get("dataset", doc["task"]),
                benchmark=doc["benchmark"],
                classes=list(doc["classes"]),
                splits={s: [(str(k), int(v)) for k, v in items] for s, items in doc["splits"].items()},
                root=doc.get("root"),
                split_source=doc.get("split_source", ""),
                created_at=doc.get("created_at", ""),
                extra=dict(doc.get("extra") or {}),
                directory=directory,
            )
        except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as exc:  # int(Infinity)
            raise DataError(f"malformed manifest ({type(exc).__name__}: {exc})") from None

    def summary(self) -> dict[str, Any]:
        """What `lspt prepare-data --json` reports per task."""
        return {
            "task": self.task,
            "dataset": self.dataset,
            "benchmark": self.benchmark,
            "num_classes": self.num_classes,
            "root": self.root,
            "split_source": self.split_source,
            "splits": self.counts(),
        }


def task_dir(task_id: str) -> Path:
    return paths.tasks_dir() / check_task_id(task_id)


def manifest_path(task: str, name: str | None = None) -> Path:
    """Where the manifest of a prepared task lives: the id is `name` if given, else the task."""
    task_id = name if name else canonical_task(task)
    return task_dir(task_id) / MANIFEST_FILE


def save_manifest(manifest: Manifest) -> tuple[Path, bool]:
    """Write atomically; returns (path, changed). An identical manifest is left untouched (keeps its date)."""
    manifest.validate()
    path = manifest_path(manifest.task)
    manifest.directory = path.parent
    if path.exists():
        try:
            old = json.loads(atomic.read_regular_text(path, "manifest", DataError, MAX_MANIFEST_BYTES))
        except (DataError, ValueError, RecursionError):
            old = None
        if isinstance(old, dict):
            new = manifest.to_json()
            old_created = old.get("created_at")
            old["created_at"] = new["created_at"]
            if old == new:
                manifest.created_at = old_created or manifest.created_at
                return path, False
    atomic.write_json(path, manifest.to_json())
    return path, True


def _not_prepared(task_id: str, path: Path) -> DataError:
    """How to prepare the task, from its registration: `--root DIR` where the dataset needs one,
    and for a name no plugin registers, the imagefolder command for the user's own data."""
    from ..plugins import get_host

    host = get_host()
    spec = host.datasets.get(task_id) if task_id in host.datasets else None
    cmd = f"lspt prepare-data {task_id}" + ("" if spec is not None and not spec.needs_root else " --root DIR")
    hint = f"run `{cmd}`"
    if spec is None and "/" not in task_id:
        hint += f" (for your own data: `lspt prepare-data imagefolder --root DIR --name {task_id}`)"
    return DataError(f"task '{task_id}' is not prepared (no manifest at {path})", hint=hint)


def load_manifest(task: str, name: str | None = None) -> Manifest:
    """The manifest of a prepared task; DataError (with the prepare-data command) when there is none.

    A dataset that needs no download (digits) is prepared on first use.
    """
    task_id = name if name else canonical_task(task)
    path = manifest_path(task_id)
    if not path.exists():
        _auto_prepare(task_id)
    if not path.exists():
        raise _not_prepared(task_id, path)
    try:
        doc = json.loads(atomic.read_regular_text(path, "manifest", DataError, MAX_MANIFEST_BYTES))
    except (OSError, ValueError, RecursionError) as exc:
        raise DataError(
            f"manifest of task '{task_id}' is unreadable: {path} ({exc})",
            hint=f"prepare it again: `lspt prepare-data {task_id} ...`",
        ) from None
    if not isinstance(doc, dict):
        raise DataError(f"manifest of task '{task_id}' is malformed: {path}")
    manifest = Manifest.from_json(doc, directory=path.parent)
    manifest.validate()
    return manifest


def task_benchmark(task: str, host=None) -> str:
    """The benchmark family of a task: from its registration, else from its prepared manifest."""
    from ..plugins import get_host

    host = host or get_host()
    if task in host.datasets:
        return host.datasets.get(task).benchmark
    try:
        return load_manifest(task).benchmark
    except Exception:  # noqa: BLE001
        host.datasets.get(task)  # raises "unknown dataset 'x'; available: ..."
        raise


def call_prepare(spec, *args: Any, many: bool = False, **kwargs: Any):
    """Run a dataset's `prepare` (plugin code: stdout to stderr) and check that it returned a
    Manifest (or, with `many`, a list of them); anything else is an error of its plugin."""
    from ..errors import PluginError
    from ..plugins import dataset_owner_label, describe, plugin_code, resolve_factory

    prepare = resolve_factory(spec.prepare)
    try:
        with plugin_code():
            result = prepare(*args, **kwargs)
    except SystemExit as exc:
        raise PluginError(f"dataset '{spec.name}' of plugin {dataset_owner_label(spec.name)}: prepare() {describe(exc)}") from None
    items = result if many and isinstance(result, list) else [result]
    if not items or not all(isinstance(m, Manifest) for m in items):
        raise PluginError(f"dataset '{spec.name}' of plugin {dataset_owner_label(spec.name)}: prepare() returned "
                          f"{type(result).__name__}, expected a lspt_cli.data.manifest.Manifest")
    return result


def _auto_prepare(task_id: str) -> None:
    """Prepare a registered dataset that needs no root (e.g. digits) the first time it is used."""
    from ..plugins import get_host

    host = get_host()
    if task_id not in host.datasets:
        return
    spec = host.datasets.get(task_id)
    if spec.needs_root:
        return
    from ..locks import hold

    out_dir = task_dir(task_id)
    with hold(out_dir, "task data directory", wait=AUTO_PREPARE_WAIT):  # two first uses at once: one prepares
        if manifest_path(task_id).exists():
            return
        result = call_prepare(spec, None, out_dir, many=True)
        for manifest in result if isinstance(result, list) else [result]:
            save_manifest(manifest)


AUTO_PREPARE_WAIT = 120.0  # seconds a first use waits for another process preparing the same task
