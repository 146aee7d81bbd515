"""`GET /metrics` in the Prometheus text exposition format (version 0.0.4), without a client library.

Counters, gauges and histograms with fixed buckets, thread-safe (the batcher thread and the event
loop both record). Metric names: lspt_requests_total{task,code}, lspt_images_total{task},
lspt_request_latency_seconds, lspt_queue_wait_seconds, lspt_model_latency_seconds (one observation
per batch), lspt_batch_images (images per batch), lspt_batch_tasks (distinct tasks per batch),
lspt_queue_images, lspt_tasks, lspt_backbones.
"""

from __future__ import annotations

import math
import threading

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


def _escape(value: str) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(labels: dict[str, str]) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(labels.items())) + "}"


def _number(value: float) -> str:
    if value == math.inf:
        return "+Inf"
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


class Gauge:
    def __init__(self, name: str, help_: str):
        self.name, self.help, self.value = name, help_, 0.0

    def set(self, value: float) -> None:
        self.value = float(value)

    def render(self) -> list[str]:
        return [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} gauge", f"{self.name} {_number(self.value)}"]


class Counter:
    def __init__(self, name: str, help_: str):
        self.name, self.help = name, help_
        self.values: dict[tuple, float] = {}
        self._lock = threading.Lock()

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        with self._lock:
            self.values[key] = self.values.get(key, 0.0) + amount

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} counter"]
        with self._lock:
            for key, value in sorted(self.values.items()):
                lines.append(f"{self.name}{_labels(dict(key))} {_number(value)}")
        return lines


class Histogram:
    def __init__(self, name: str, help_: str, buckets):
        self.name, self.help, self.buckets = name, help_, tuple(buckets)
        self.counts = [0] * (len(self.buckets) + 1)
        self.sum = 0.0
        self.count = 0
        self._lock = threading.Lock()

    def observe(self, value: float) -> None:
        with self._lock:
            self.sum += value
            self.count += 1
            for i, bound in enumerate(self.buckets):
                if value <= bound:
                    self.counts[i] += 1
                    return
            self.counts[-1] += 1

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} histogram"]
        with self._lock:
            cumulative = 0
            for bound, n in zip(self.buckets + (math.inf,), self.counts):
                cumulative += n
                lines.append(f'{self.name}_bucket{{le="{_number(bound)}"}} {cumulative}')
            lines.append(f"{self.name}_sum {_number(self.sum)}")
            lines.append(f"{self.name}_count {self.count}")
        return lines


class Metrics:
    def __init__(self):
        self.requests = Counter("lspt_requests_total", "Prediction requests by task and HTTP status code.")
        self.images = Counter("lspt_images_total", "Images classified, by task.")
        self.request_latency = Histogram("lspt_request_latency_seconds", "Time from request received to response ready.", LATENCY_BUCKETS)
        self.queue_wait = Histogram("lspt_queue_wait_seconds", "Time a request waited in the batcher's queue.", LATENCY_BUCKETS)
        self.model_latency = Histogram("lspt_model_latency_seconds", "Time of one batch through the model.", LATENCY_BUCKETS)
        self.batch_images = Histogram("lspt_batch_images", "Images per batch through the backbone.", SIZE_BUCKETS)
        self.batch_tasks = Histogram("lspt_batch_tasks", "Distinct tasks per batch.", SIZE_BUCKETS)
        self.queue_depth = Gauge("lspt_queue_images", "Images waiting in the batcher's queue.")
        self.tasks = Gauge("lspt_tasks", "Tasks being served.")
        self.backbones = Gauge("lspt_backbones", "Frozen backbones loaded.")
        self.max_batch_seen = 0

    def observe_batch(self, items, n_images: int, seconds: float, n_tasks: int) -> None:
        self.batch_images.observe(n_images)
        self.batch_tasks.observe(n_tasks)
        self.model_latency.observe(seconds)
        self.max_batch_seen = max(self.max_batch_seen, n_images)
        for item in items:
            self.queue_wait.observe(item.queue_s)

    def render(self) -> str:
        parts = [self.requests, self.images, self.request_latency, self.queue_wait, self.model_latency, self.batch_images,
                 self.batch_tasks, self.queue_depth, self.tasks, self.backbones]
        return "\n".join(line for metric in parts for line in metric.render()) + "\n"
