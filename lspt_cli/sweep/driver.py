"""The sweep driver: grid trials -> selection -> final runs through one executor, with sweep.json
(and its .md/.csv tables) rewritten atomically after every trial while the sweep dir's lock is held."""

from __future__ import annotations

import datetime as _dt
import statistics
import threading
from typing import Any, Callable

from ..errors import UsageError
from ..selection import Rule
from .grid import (Trial, SweepSpec, build_final_trials, build_grid_trials, grid_points, select_trial,
                   task_grid, task_rule)
from .executors import open_executor
from .render import SWEEP_CSV, SWEEP_JSON, SWEEP_MD, render_csv, render_markdown
from .state import config_mismatch, fill_metrics, read_summary, record_for


class Sweep:
    """Runs a SweepSpec: grid trials, selection, final runs; keeps sweep.json up to date."""

    def __init__(self, spec: SweepSpec, host, *, workers: int = 1, on_trial: Callable | None = None,
                 on_phase: Callable | None = None, executor: str = "local", executor_options: dict | None = None):
        self.spec = spec
        self.host = host
        self.workers = max(1, workers)
        self.executor_name = executor
        self.executor_options = dict(executor_options or {})
        self.executor = None  # opened by run(), once the sweep dir is locked
        self.on_trial = on_trial or (lambda record, done, total: None)
        self.on_phase = on_phase or (lambda phase, total: None)
        self.records: dict[str, dict[str, Any]] = {}
        self.selections: dict[str, dict[str, Any]] = {}
        self.finals: dict[str, dict[str, Any]] = {}
        self.grids: dict[str, dict[str, list]] = {}
        self.rules: dict[str, Rule] = {}
        self.lock = threading.Lock()
        self.started = _dt.datetime.now().isoformat(timespec="seconds")

    # -- orchestration --------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        """The whole sweep, holding the sweep dir's lock: a second driver on it is refused (its pid named);
        a killed driver's lock is released by the kernel, so re-running the command continues."""
        from ..locks import hold

        if self.spec.sweep_dir.exists() and not self.spec.sweep_dir.is_dir():
            raise UsageError(f"{self.spec.sweep_dir}: --out must be a directory (it is a file)")
        with hold(self.spec.sweep_dir, "sweep directory"):
            self.executor = open_executor(self.executor_name, self.executor_options, workers=self.workers,
                                          sweep_dir=self.spec.sweep_dir.resolve(), host=self.host)
            try:
                return self._run()
            finally:
                self.executor.close()

    def _run(self) -> dict[str, Any]:
        grid_trials = build_grid_trials(self.spec, self.host)
        for task in self.spec.tasks:
            self.grids[task] = task_grid(self.spec, task, self.host)
            self.rules[task] = task_rule(self.spec, task, self.host)
        for trials in grid_trials.values():
            for t in trials:
                self.records[t.key()] = record_for(t)
        self.save()
        self.run_trials([t for ts in grid_trials.values() for t in ts], "grid")
        final_trials = []
        for task in self.spec.tasks:
            selection = self.select(task, grid_trials[task])
            self.selections[task] = selection
            if self.spec.finals and selection.get("point") is not None:
                trials = build_final_trials(self.spec, task, selection["point"], self.host)
                for t in trials:
                    self.records[t.key()] = record_for(t)
                final_trials += trials
        self.save()
        self.run_trials(final_trials, "final")
        self.summarise_finals()
        self.save()
        return self.document()

    def select(self, task: str, trials: list[Trial]) -> dict[str, Any]:
        if not trials:
            points = grid_points(self.grids[task])
            return {"point": points[0], "trial": None, "val_top1": None, "candidates": 1, "failed": 0,
                    "reason": "one grid point: nothing to select"}
        records = [self.records[t.key()] for t in trials]
        rule = self.rules[task]
        best = select_trial(records, rule.select_by)
        failed = sum(r["status"] == "failed" for r in records)
        if best is None:
            return {"point": None, "trial": None, "val_top1": None, "candidates": len(records), "failed": failed,
                    "reason": "no grid trial finished"}
        return {"point": best["point"], "trial": best["name"], "val_top1": best["select_val"],
                "val_epoch": best["select_epoch"], "select_by": rule.select_by,
                "candidates": len(records), "failed": failed,
                "reason": f"highest val top-1 of the {rule.select_by} (ties: smaller lr, then smaller wd)"}

    def run_trials(self, trials: list[Trial], phase: str) -> None:
        """Skip finished trials, fail unrunnable ones here, hand the rest to the executor."""
        self.on_phase(phase, len(trials))
        todo, done = [], 0
        for trial in trials:
            record = self.records[trial.key()]
            if trial.error is None and trial.state() == "finished" and config_mismatch(trial) is None:
                fill_metrics(record, read_summary(trial.run_dir) or {})
                record["outcome"] = "skipped"
                self.on_trial(record, None, len(trials))
                done += 1
            elif (problem := self.unrunnable(trial)) is not None:
                self.finish(trial, "failed", None, problem)
                done += 1
                self.on_trial(self.records[trial.key()], done, len(trials))
            else:
                todo.append(trial)
        if not todo:
            return
        results = self.executor.run(todo)
        try:
            for trial, outcome, summary, error in results:
                self.finish(trial, outcome, summary, error)
                done += 1
                self.on_trial(self.records[trial.key()], done, len(trials))
        except KeyboardInterrupt:
            self.save()
            raise
        finally:
            close = getattr(results, "close", None)
            if close is not None:
                close()

    def unrunnable(self, trial: Trial) -> str | None:
        """Why a trial cannot run (its config did not resolve, or its dir holds another run), or None."""
        if trial.error is not None:
            return trial.error
        if trial.state() in ("finished", "partial"):
            mismatch = config_mismatch(trial)
            if mismatch:
                return (f"{trial.run_dir} holds a run with another config ({mismatch}); "
                        "use another --out, or delete that directory")
        return None

    def finish(self, trial: Trial, outcome: str, summary: dict | None, error: str | None) -> None:
        with self.lock:
            record = self.records[trial.key()]
            if summary is not None:
                fill_metrics(record, summary)
                record["outcome"] = outcome
                record["error"] = None
            else:
                record.update(status="failed", outcome="failed", error=error)
            self.save()

    def summarise_finals(self) -> None:
        for task in self.spec.tasks:
            rows = [r for r in self.records.values() if r["task"] == task and r["final"]]
            if not rows:
                continue
            tops = [r["test_top1"] for r in rows if r["status"] == "finished"]
            self.finals[task] = {
                "point": self.selections[task]["point"],
                "seeds": [r["seed"] for r in rows if r["status"] == "finished"],
                "test_top1": tops,
                "mean": statistics.fmean(tops) if tops else None,
                "std": statistics.stdev(tops) if len(tops) > 1 else (0.0 if tops else None),
                "n": len(tops),
                "failed": sum(r["status"] == "failed" for r in rows),
            }

    # -- output ---------------------------------------------------------------------------------
    def counts(self) -> dict[str, int]:
        counts = {"total": len(self.records), "ran": 0, "resumed": 0, "skipped": 0, "failed": 0, "pending": 0}
        for record in self.records.values():
            counts[record["outcome"] or "pending"] += 1
        return counts

    def document(self) -> dict[str, Any]:
        spec = self.spec
        return {
            "sweep_dir": str(spec.sweep_dir.resolve()),
            "backbone": spec.backbone,
            "strategy": spec.strategy,
            "tasks": spec.tasks,
            "grid": {t: g for t, g in self.grids.items()},
            "seeds": spec.seeds,
            "protocols": {t: r.protocol for t, r in self.rules.items()},
            "rules": {t: "grid on train/val with the first seed; " + r.describe() + "; final runs with every seed; "
                      "report test top-1" for t, r in self.rules.items()},
            "started": self.started,
            "updated": _dt.datetime.now().isoformat(timespec="seconds"),
            "counts": self.counts(),
            "trials": list(self.records.values()),
            "selections": self.selections,
            "finals": self.finals,
        }

    def save(self) -> None:
        from .. import atomic

        doc = self.document()
        atomic.write_json(self.spec.sweep_dir / SWEEP_JSON, doc)
        atomic.write_text(self.spec.sweep_dir / SWEEP_MD, render_markdown(doc))
        atomic.write_text(self.spec.sweep_dir / SWEEP_CSV, render_csv(doc))


