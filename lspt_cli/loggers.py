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

The logger interface is `LOGGER_METHODS` below, the one source of truth: `interface_problem` checks
a logger against it when a run starts it (a mismatch is one warning and the logger is refused, not
a run that logs nothing), `lspt plugins check` runs the same check, and tests/test_plugin_kit.py
checks that hookspecs.py, specs.py and docs/plugins.md show exactly these signatures.

A logger may declare options (`LoggerSpec.options`, key -> help, as executors do); the run-config
setting `log_options` (`--log-opt KEY=VALUE,KEY=VALUE`, `NAME.KEY=...` for one logger) sets them,
and the factory receives them as keyword strings: `factory(**options)`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Iterable


LOGGERS_STATE = "loggers.json"

# The logger interface: method -> (its parameters, when it is called, required). One source of truth.
LOGGER_METHODS: dict[str, tuple[tuple[str, ...], str, bool]] = {
    "start": (("run", "config", "state"), "after config.json is written (also on --resume); returns a dict of "
              "state to keep (or None), handed back as `state` on resume ({} for a new run)", True),
    "log_epoch": (("epoch", "metrics"), "after each epoch's checkpoint, never twice for one epoch", True),
    "finish": (("summary", "bundle"), "after summary.json: its document and the bundle's Path", True),
    "close": ((), "optional: the run stops early (Ctrl-C, an error); a resume calls start again", False),
}


def signature_text(method: str) -> str:
    """`start(run, config, state)`: how docs and hookspecs write a method of LOGGER_METHODS."""
    return f"{method}({', '.join(LOGGER_METHODS[method][0])})"


def interface_problem(logger: Any) -> str | None:
    """What keeps `logger` from taking the documented calls (a missing method, a signature that
    cannot bind the documented positional arguments), or None."""
    import inspect

    problems = []
    for method, (params, _, required) in LOGGER_METHODS.items():
        fn = getattr(logger, method, None)
        if fn is None:
            if required:
                problems.append(f"no method {method}()")
            continue
        if not callable(fn):
            problems.append(f"{method} is not callable")
            continue
        try:
            sig = inspect.signature(fn)
        except (TypeError, ValueError):
            continue  # a builtin without a signature: it will tell at call time
        try:
            sig.bind(*params)
        except TypeError:
            problems.append(f"{method}{sig} cannot take {signature_text(method)}")
    return "; ".join(problems) or None


def parse_options(value: str | None) -> list[tuple[str | None, str, str]]:
    """"path=a.csv,tensorboard.dir=tb" -> [(None, "path", "a.csv"), ("tensorboard", "dir", "tb")]
    (settings.parse_log_options, the setting's own form check)."""
    from .settings import parse_log_options

    return parse_log_options(value)


def logger_options(value: str | None, specs: list, host=None) -> dict[str, dict[str, str]]:
    """Per logger of the run (`specs`), the options `value` sets. `KEY=VALUE` sets KEY of every run
    logger that declares it; `NAME.KEY=VALUE` sets it for logger NAME when that logger runs (a recipe
    may configure a logger a run does not use; NAME and KEY are still checked against its spec). A key
    nobody declares is a UsageError naming the allowed keys (as `--executor-opt` does)."""
    from .errors import UsageError

    by_name = {spec.name: spec for spec in specs}
    out: dict[str, dict[str, str]] = {spec.name: {} for spec in specs}
    try:
        items = parse_options(value)
    except ValueError as exc:
        raise UsageError(f"--log-opt: {exc}") from None
    for name, key, val in items:
        if name is not None and name not in by_name:
            if host is None:
                from .plugins import get_host

                host = get_host()
            other = host.loggers.get(name)  # "unknown logger 'x'; available: ..."
            if key not in (other.options or {}):
                raise UsageError(f"unknown --log-opt '{name}.{key}'; logger '{name}' takes: "
                                 f"{', '.join(sorted(other.options or {})) or '(none)'}", hint="see lspt list loggers")
            continue  # for a run that uses it
        targets = [by_name[name]] if name is not None else [s for s in specs if key in (s.options or {})]
        if not targets or any(key not in (s.options or {}) for s in targets):
            allowed = sorted({f"{s.name}.{k}" for s in (targets or specs) for k in (s.options or {})})
            raise UsageError(f"unknown --log-opt '{key}' for logger(s) {', '.join(s.name for s in (targets or specs)) or '(none)'}; "
                             f"allowed: {', '.join(allowed) or '(none)'}", hint="see lspt list loggers")
        for spec in targets:
            out[spec.name][key] = val
    return out


def parse_names(value: str | Iterable[str] | None) -> list[str]:
    """"tensorboard, mlflow" -> ["tensorboard", "mlflow"] (order kept, duplicates dropped)."""
    parts = value.split(",") if isinstance(value, str) else list(value or [])
    return list(dict.fromkeys(p.strip() for p in parts if p.strip()))


def check_loggers(value: str | Iterable[str] | None, host, options: str | None = None) -> list:
    """The LoggerSpecs a run asks for; an unknown name, a missing module or an unknown `--log-opt`
    key is a UsageError (naming the extra, or the allowed keys)."""
    from .plugins import check_requirements

    specs = []
    for name in parse_names(value):
        spec = host.loggers.get(name)  # "unknown logger 'x'; available: ..."
        check_requirements(spec, f"--log {name}")
        specs.append(spec)
    chosen = logger_options(options, specs, host)
    for spec in specs:
        if spec.reachable is not None:
            _check_reachable(spec, chosen.get(spec.name) or {})
    return specs


def _check_reachable(spec, options: dict[str, str]) -> None:
    """A logger's pre-flight (LoggerSpec.reachable): its LsptError stops the run before anything is
    written; anything else it raises is its plugin's error."""
    from .errors import LsptError, PluginError
    from .plugins import describe, plugin_code, resolve_factory

    try:
        with plugin_code():
            resolve_factory(spec.reachable)(**options)
    except LsptError:
        raise
    except Exception as exc:  # noqa: BLE001  (plugin code)
        raise PluginError(f"logger '{spec.name}': its reachability check {describe(exc)}") from None


class LoggerInterfaceError(Exception):
    """A logger that does not implement LOGGER_METHODS: refused with one warning."""


class RunLoggers:
    """The loggers of one run; every call into a logger is guarded (one warning, then it is off)."""

    def __init__(self, run, specs: list, *, resume: bool, warn=None, options: dict[str, dict[str, str]] | None = None):
        self.run = run
        self.specs = specs
        self.options = options or {}
        self.resume = resume
        self.warn = warn or (lambda message: print(message, file=sys.stderr, flush=True))
        self.active: dict[str, Any] = {}
        self.state: dict[str, dict[str, Any]] = {}
        self._state_warned = False

    @classmethod
    def open(cls, value, run, config: dict, *, resume: bool, host=None, options: str | None = None) -> "RunLoggers":
        """Start the loggers `value` names (none: a no-op object); call on rank 0 only. `options` is
        the run's `log_options` (read from `config` when not given)."""
        names = parse_names(value)
        if not names:
            return cls(run, [], resume=resume)
        if host is None:
            from .plugins import get_host

            host = get_host()
        if options is None:
            options = ((config or {}).get("train") or {}).get("log_options", "")
        specs = check_loggers(names, host, options)
        loggers = cls(run, specs, resume=resume, options=logger_options(options, specs, host))
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
                options = self.options.get(spec.name) or {}
                logger = resolve_factory(spec.factory)(**options)
                problem = interface_problem(logger)
                if problem:
                    raise LoggerInterfaceError(problem)
                kept = logger.start(self.run, config, dict(previous))
                if kept is not None and not isinstance(kept, dict):
                    raise LoggerInterfaceError(f"start() returned {type(kept).__name__}, not a dict or None")
                json.dumps(kept or {})  # kept in loggers.json: JSON or nothing
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

            if isinstance(exc, LoggerInterfaceError):
                self.warn(f"Warning: logger '{name}' is refused: {exc} (the interface: "
                          f"{', '.join(signature_text(m) for m in LOGGER_METHODS)}; docs/plugins.md, Loggers); "
                          "this run logs nothing to it")
                return False
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
