"""Cross-task dynamic batching: one backbone pass for requests of different tasks.

Request handlers decode and preprocess their images first (in a thread pool), then `submit` a
ready tensor; a slow, stalled or broken client therefore never reaches the batcher. One worker
thread collects requests until `max_batch` images are queued or `max_wait_ms` has passed since the
oldest one arrived, then runs them together:

- requests are grouped by backbone (tasks trained on other weights cannot share a pass);
- within a backbone, every task's images go through ONE patch embedding, and at every block the
  tokens of all tasks with the same token count are concatenated and go through the frozen block in
  one call, each sample with its own task's prompts, gates, attention temperature and head
  (`prompted.forward_mixed`). Same token count = all linear probes, and all tasks of one strategy
  family with one prompt length (VPT-deep/-shallow, GaPT and LSPT with equal num_prompts also share
  the block calls; their own hooks run per task between blocks).

`max_batch = 1` turns batching off: each request runs alone. Results equal per-task `lspt predict`
up to floating-point reassociation (tests/test_serve.py).
"""

from __future__ import annotations

import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import torch


class QueueFull(Exception):
    """More images are waiting than --max-queue allows: the client should retry later (503)."""


@dataclass
class Item:
    task: Any  # registry.Task
    images: torch.Tensor  # [n, C, H, W], preprocessed
    future: Future
    enqueued: float = field(default_factory=time.perf_counter)
    queue_s: float = 0.0
    model_s: float = 0.0
    batch_images: int = 0

    @property
    def n(self) -> int:
        return int(self.images.shape[0])


_STOP = object()


class Batcher:
    def __init__(self, max_batch: int = 32, max_wait_ms: float = 5.0, max_queue: int = 1024, device: str | torch.device = "cpu",
                 metrics=None):
        if max_batch < 1 or max_wait_ms < 0 or max_queue < 1:
            raise ValueError("max_batch >= 1, max_wait_ms >= 0 and max_queue >= 1")
        self.max_batch = int(max_batch)
        self.max_wait = float(max_wait_ms) / 1000.0
        self.max_queue = int(max_queue)
        self.device = torch.device(device)
        self.metrics = metrics
        self._queue: queue.Queue = queue.Queue()
        self._queued_images = 0
        self._count_lock = threading.Lock()
        self._carry: Item | None = None
        self._thread: threading.Thread | None = None
        self.batches = 0

    # -- the request side ---------------------------------------------------------------------------
    def submit(self, task, images: torch.Tensor) -> Future:
        """Queue one request's images for `task`; the future's result is the logits [n, C] on the CPU."""
        n = int(images.shape[0])
        with self._count_lock:
            if self._queued_images + n > self.max_queue:
                raise QueueFull(f"server busy: {self._queued_images} images queued (--max-queue {self.max_queue}); retry later")
            self._queued_images += n
        item = Item(task=task, images=images, future=Future())
        self._queue.put(item)
        if self.metrics is not None:
            self.metrics.queue_depth.set(self.queued_images)
        return item.future

    @property
    def queued_images(self) -> int:
        return self._queued_images

    # -- the worker -----------------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="lspt-batcher", daemon=True)
            self._thread.start()

    def stop(self, timeout: float | None = 60.0) -> None:
        """Finish everything queued so far, then stop the worker (SIGTERM's drain)."""
        if self._thread is not None:
            self._queue.put(_STOP)
            self._thread.join(timeout)
            self._thread = None

    def _next(self, timeout: float | None):
        if self._carry is not None:
            item, self._carry = self._carry, None
            return item
        try:
            return self._queue.get(timeout=timeout) if timeout is None or timeout > 0 else self._queue.get_nowait()
        except queue.Empty:
            return None

    def _run(self) -> None:
        stopping = False
        while not stopping:
            first = self._next(None)
            if first is _STOP:
                break
            batch, images = [first], first.n
            deadline = first.enqueued + self.max_wait
            while images < self.max_batch:
                item = self._next(deadline - time.perf_counter())
                if item is None:
                    break
                if item is _STOP:
                    stopping = True  # run what is collected, then stop
                    break
                if images + item.n > self.max_batch:
                    self._carry = item  # starts the next batch
                    break
                batch.append(item)
                images += item.n
            self._execute(batch)
        # drain whatever is still queued (submitted before the stop)
        rest = [self._carry] if self._carry is not None else []
        self._carry = None
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not _STOP:
                rest.append(item)
        for item in rest:
            self._execute([item])

    def _execute(self, batch: list[Item]) -> None:
        from ..prompted import forward_mixed

        start = time.perf_counter()
        n_images = sum(item.n for item in batch)
        with self._count_lock:
            self._queued_images -= n_images
        for item in batch:
            item.queue_s = start - item.enqueued
            item.batch_images = n_images
        by_backbone: dict[int, list[Item]] = {}
        for item in batch:
            by_backbone.setdefault(id(item.task.backbone), []).append(item)
        for items in by_backbone.values():
            try:
                by_task: dict[str, list[Item]] = {}
                for item in items:
                    by_task.setdefault(id(item.task), []).append(item)
                groups = list(by_task.values())
                models = [g[0].task.model.model for g in groups]
                inputs = [torch.cat([it.images for it in g], dim=0).to(self.device) if len(g) > 1 else g[0].images.to(self.device)
                          for g in groups]
                with torch.no_grad():
                    logits = forward_mixed(models, inputs)
                elapsed = time.perf_counter() - start
                for g, lg in zip(groups, logits):
                    for it, part in zip(g, lg.float().cpu().split([it.n for it in g], dim=0)):
                        it.model_s = elapsed
                        it.future.timing = (it.queue_s, elapsed, n_images)  # read by the HTTP handler
                        it.future.set_result(part)
            except Exception as exc:  # one failing group never stops the worker
                for item in items:
                    if not item.future.done():
                        item.future.set_exception(exc)
        self.batches += 1
        if self.metrics is not None:
            self.metrics.observe_batch(batch, n_images, time.perf_counter() - start, len({id(i.task) for i in batch}))
            self.metrics.queue_depth.set(self.queued_images)
