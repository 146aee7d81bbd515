"""The served tasks: bundles loaded onto shared frozen backbones, one backbone per (name, fingerprint).

A task is a bundle loaded through `lspt.load` (`lspt_cli.api.load`: strict, fingerprint-checked,
never unpickled) onto a backbone that is loaded once and shared by every task trained on the same
weights. A bundle whose backbone fingerprint does not match the weights the server has (or can load)
for it is refused here, at load time, never at the first request.

Readers (request handlers, the batcher) get immutable `Task` objects from a dict that is replaced
whole on every change (copy on write), so adding or removing a task never blocks a request, and a
request that already holds a task finishes with it even if the task is removed meanwhile.
"""

from __future__ import annotations

import re
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..errors import BundleError, UsageError

TASK_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


@dataclass(frozen=True)
class Task:
    """One served task. `source` and `stamp` stay server-side (never sent to clients)."""

    name: str
    model: Any  # lspt_cli.api.PromptedModel
    transform: Callable
    classes: list[str]
    fingerprint: str
    source: Path
    stamp: tuple[int, int]
    watched: bool = False
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def backbone(self):
        return self.model.model.backbone

    @property
    def batch_key(self) -> tuple[int, int]:
        """Tasks with equal keys go through every frozen block in one call (same backbone object and
        the same token count: all linear probes, or one family with one prompt length)."""
        return id(self.backbone), int(self.info["tokens"])


def stamp_of(path: Path) -> tuple[int, int]:
    st = path.stat()
    return int(st.st_size), int(st.st_mtime_ns)


def check_task_name(name: str, what: str) -> str:
    if not TASK_NAME.match(name):
        raise UsageError(f"{what}: task name {name!r} must be 1-128 letters, digits, '_', '.' or '-' (starting with a letter or digit)")
    return name


class Registry:
    """Tasks by name, and the backbones they share. Thread-safe; `tasks` is a read-only snapshot."""

    def __init__(self, weights: dict[str | None, Path] | None = None, device: str = "cpu", log: Callable[[str], None] | None = None):
        self.weights = dict(weights or {})  # backbone name (None: any) -> weights file
        self.device = device
        self.log = log or (lambda line: print(line, file=sys.stderr, flush=True))
        self._lock = threading.Lock()
        self._backbones: dict[tuple[str, str], Any] = {}  # (backbone name, fingerprint) -> FrozenBackbone
        self.tasks: dict[str, Task] = {}
        self.failed: dict[Path, tuple[tuple[int, int], str]] = {}  # watched files that did not load, by stamp
        self.on_change: Callable[[], None] = lambda: None

    # -- loading ------------------------------------------------------------------------------------
    def load(self, name: str, path: Path, watched: bool = False) -> Task:
        """Load (or reload) a bundle as task `name`; BundleError/WeightsError/UsageError if it cannot serve."""
        from .. import api, bundle

        path = Path(path)
        check_task_name(name, str(path.name))
        with self._lock:
            existing = self.tasks.get(name)
            if existing is not None and existing.source != path:
                raise UsageError(f"{path.name}: task name {name!r} is already served from another bundle")
            header = bundle.read_header(path)  # cheap: which backbone does it need?
            stamp = stamp_of(path)
            info = header.backbone
            key = (info.get("name") or "", info.get("fingerprint") or "")
            shared = self._backbones.get(key)
            if shared is None and not key[1]:  # a bundle without a recorded fingerprint: any backbone of its name and size
                size = bundle.recorded_img_size(header)
                shared = next((b for (n, _), b in self._backbones.items()
                               if n == key[0] and (size is None or b.img_size == size)), None)
            weights = self.weights.get(key[0], self.weights.get(None))
            model = api.load(path, weights, device=self.device, backbone=shared)
            backbone = model.model.backbone
            self._backbones.setdefault((backbone.name, backbone.fingerprint), backbone)
            task = Task(name=name, model=model, transform=model.transform, classes=list(model.classes),
                        fingerprint=backbone.fingerprint, source=path, stamp=stamp, watched=watched,
                        info=_task_info(model, header))
            self.tasks = {**self.tasks, name: task}
            self.failed.pop(path, None)
        self.on_change()
        return task

    def remove(self, name: str) -> bool:
        with self._lock:
            if name not in self.tasks:
                return False
            tasks = dict(self.tasks)
            del tasks[name]
            self.tasks = tasks
            used = {(t.backbone.name, t.backbone.fingerprint) for t in tasks.values()}
            for key in [k for k in self._backbones if k not in used]:
                del self._backbones[key]  # the last task of a backbone is gone: free it
        self.on_change()
        return True

    @property
    def num_backbones(self) -> int:
        return len(self._backbones)

    # -- the watched directory ----------------------------------------------------------------------
    def scan(self, directory: Path) -> dict[str, list[str]]:
        """Bring the watched tasks in line with `directory`'s *.safetensors files (one level; a symlink
        the server's operator put there is followed): new files load, changed ones reload, removed
        ones stop being served.
        A file that does not load is reported once per version and retried when it changes."""
        report: dict[str, list[str]] = {"added": [], "reloaded": [], "removed": [], "failed": []}
        try:
            files = {p.stem: p for p in sorted(directory.iterdir())
                     if p.suffix == ".safetensors" and not p.name.startswith(".") and p.is_file()}
        except OSError as exc:
            self.log(f"Warning: cannot list the watched directory {directory}: {exc.strerror or exc}")
            return report
        for name, task in list(self.tasks.items()):
            if task.watched and (name not in files or files[name] != task.source):
                self.remove(name)
                report["removed"].append(name)
                self.log(f"lspt serve: task '{name}' removed ({task.source.name} is gone)")
        for name, path in files.items():
            try:
                stamp = stamp_of(path)
            except OSError:
                continue
            task = self.tasks.get(name)
            if self.failed.get(path, (None,))[0] == stamp:
                continue  # this version already failed; retried when the file changes
            if task is not None and not task.watched:
                message = f"task '{name}' is already served from a bundle named on the command line"
                self.failed[path] = (stamp, message)
                report["failed"].append(name)
                self.log(f"Warning: not serving {path.name}: {message}")
                continue
            if task is not None and task.stamp == stamp:
                continue
            try:
                check_task_name(name, path.name)
                self.load(name, path, watched=True)
            except (BundleError, UsageError, Exception) as exc:  # noqa: B014 - any failure is one warning line
                message = getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}"
                self.failed[path] = (stamp, message)
                report["failed"].append(name)
                self.log(f"Warning: not serving {path.name}: {message}")
                continue
            report["reloaded" if task is not None else "added"].append(name)
            self.log(f"lspt serve: task '{name}' {'reloaded' if task is not None else 'added'} from {path.name}")
        return report


def _task_info(model, header) -> dict[str, Any]:
    """What GET /v1/tasks shows: from the bundle's metadata, never a server-side path."""
    backbone = model.model.backbone
    strategy = model.model.strategy
    tokens = backbone.dims.num_prefix_tokens + backbone.dims.num_patches + int(getattr(strategy, "num_prompts", 0) or 0)
    return {
        "classes": list(model.classes),
        "num_classes": len(model.classes),
        "strategy": {"name": header.strategy.get("name"), "config": header.strategy.get("config") or {}},
        "backbone": {"name": backbone.name, "fingerprint": backbone.fingerprint, "readout": model.model.readout},
        "metrics": header.meta("lspt.metrics", {}) or {},
        "benchmark": header.task.get("benchmark", "custom"),
        "trainable_parameters": int(sum(t.numel() for t in model.trainable_state_dict().values())),
        "tokens": tokens,
        "created_at": header.metadata.get("lspt.created_at"),
    }
