"""Experiment trackers for a run: `lspt tune --log tensorboard,mlflow` (run-config key `loggers`).

A logger mirrors a run into a tracker; the run directory stays the source of truth. Loggers are
registered as `LoggerSpec`s through `lspt_register_loggers` (the built-ins in plugins/loggers/ too),
and `RunLoggers` drives them, on rank 0 only (docs/tracking.md):

- `check_loggers` runs before training: an unknown name or a missing extra is one `Error:`.
- A logger that raises (server gone, disk full) is reported once on stderr and switched off; the
  run goes on and writes exactly the files it writes without loggers.
- `loggers.json` in the run directory keeps, per logger, the last epoch it logged and the state its
  `start` returned (e.g. an MLflow run id): a resumed run continues the same tracker run and logs
  only the epochs of `metrics.jsonl` not logged yet, so no epoch is logged twice.

The logger interface (duck-typed; see docs/plugins.md):

    start(run, config, state) -> dict | None   # run.dir, run.name; config: the resolved config
    log_epoch(epoch, metrics) -> None          # metrics: the record appended to metrics.jsonl
    finish(summary, bundle) -> None            # summary.json's document; bundle: Path of the bundle
    close() -> None                            # optional: the run stopped early (Ctrl-C, error)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Iterable


LOGGERS_STATE = "loggers.json"


def parse_names(value: str | Iterable[str] | None) -> list[str]:
    """"tensorboard, mlflow" -> ["tensorboard", "mlflow"] (order kept, duplicates dropped)."""
    parts = value.split(",") if isinstance(value, str) else list(value or [])
    return list(dict.fromkeys(p.strip() for p in parts if p.strip()))


def check_loggers(value: str | Iterable[str] | None, host) -> list:
    """The LoggerSpecs a run asks for; an unknown name or a missing module is a UsageError naming the extra."""
    from .plugins import check_requirements

    specs = []
    for name in parse_names(value):
        spec = host.loggers.get(name)  # "unknown logger 'x'; available: ..."
        check_requirements(spec, f"--log {name}")
        specs.append(spec)
    return specs


class RunLoggers:
    """The loggers of one run; every call into a logger is guarded (one warning, then it is off)."""

    def __init__(self, run, specs: list, *, resume: bool, warn=None):
        self.run = run
        self.specs = specs
        self.resume = resume
        self.warn = warn or (lambda message: print(message, file=sys.stderr, flush=True))
        self.active: dict[str, Any] = {}
        self.state: dict[str, dict[str, Any]] = {}
        self._state_warned = False

    @classmethod
    def open(cls, value, run, config: dict, *, resume: bool, host=None) -> "RunLoggers":
        """Start the loggers `value` names (none: a no-op object); call on rank 0 only."""
        names = parse_names(value)
        if not names:
            return cls(run, [], resume=resume)
        if host is None:
            from .plugins import get_host

            host = get_host()
        loggers = cls(run, check_loggers(names, host), resume=resume)
        loggers.start(config)
        return loggers

    @property
    def path(self) -> Path:
        return Path(self.run.dir) / LOGGERS_STATE

    def start(self, config: dict) -> None:
        from .plugins import resolve_factory

        saved = self._read_state() if self.resume else {}
        for spec in self.specs:
            entry = saved.get(spec.name) if isinstance(saved.get(spec.name), dict) else {}
            last = entry.get("last_epoch", 0) if isinstance(entry.get("last_epoch"), int) else 0
            previous = entry.get("state") if isinstance(entry.get("state"), dict) else {}
            self.state[spec.name] = {"last_epoch": last, "state": previous}

            def begin(spec=spec, previous=previous):
                logger = resolve_factory(spec.factory)()
                kept = logger.start(self.run, config, dict(previous))
                self.active[spec.name] = logger
                self.state[spec.name]["state"] = dict(kept or {})

            self._guard(spec.name, "start", begin)
        self._save()
        if self.resume:  # epochs a killed or failed logger did not log yet
            for record in self._metrics():
                self.log_epoch(record)

    def log_epoch(self, record: dict[str, Any]) -> None:
        epoch = int(record["epoch"])
        for name, logger in list(self.active.items()):
            if epoch <= self.state[name]["last_epoch"]:
                continue  # logged before the run was interrupted
            if self._guard(name, f"epoch {epoch}", lambda: logger.log_epoch(epoch, dict(record))):
                self.state[name]["last_epoch"] = epoch
        if self.active:
            self._save()

    def finish(self, summary: dict[str, Any]) -> None:
        bundle = Path(summary["bundle"]) if summary.get("bundle") else None
        for name, logger in list(self.active.items()):
            if self._guard(name, "finish", lambda: logger.finish(dict(summary), bundle)):
                self.state[name]["finished"] = True
        self.active.clear()
        if self.specs:
            self._save()

    def close(self) -> None:
        """The run stops early (Ctrl-C, an error): let each logger flush; resume continues it."""
        for name, logger in list(self.active.items()):
            if hasattr(logger, "close"):
                self._guard(name, "close", logger.close)
        self.active.clear()

    # -- internals -------------------------------------------------------------------------------
    def _guard(self, name: str, what: str, call) -> bool:
        try:
            call()
            return True
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # noqa: BLE001  (a tracker never stops or corrupts training)
            self.active.pop(name, None)
            from .plugins import describe

            self.warn(f"Warning: logger '{name}' failed at {what} ({describe(exc)}); it is switched off for the "
                      f"rest of this run (the run and its files are unaffected)")
            return False

    def _metrics(self) -> list[dict[str, Any]]:
        from .rundir import METRICS_NAME
        from .schema import metrics_records

        try:
            return metrics_records(Path(self.run.dir) / METRICS_NAME)
        except Exception:  # noqa: BLE001  (the trainer itself reports a broken metrics log)
            return []

    def _read_state(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def _save(self) -> None:
        from . import atomic

        try:
            atomic.write_json(self.path, self.state)
        except OSError as exc:
            if not self._state_warned:
                self._state_warned = True
                self.warn(f"Warning: could not write {self.path} ({exc.strerror or exc}); a resume may log epochs twice")
