"""sweep.json's tables (sweep.md, sweep.csv) and `--plan` (the commands still to run)."""

from __future__ import annotations

import csv
import io
import shlex
from typing import Any

from .grid import (SHORT_NAMES, SweepSpec, build_final_trials, build_grid_trials, grid_points, ordered_point,
                   select_trial, task_grid, task_rule)
from .state import fill_metrics, read_summary, record_for

SWEEP_JSON = "sweep.json"
SWEEP_MD = "sweep.md"
SWEEP_CSV = "sweep.csv"


# -- tables ---------------------------------------------------------------------------------------
def _num(value: Any, digits: int = 2) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def point_text(point: dict[str, Any] | None) -> str:
    if point is None:
        return "—"
    return " ".join(f"{SHORT_NAMES.get(k, k)}={v}" for k, v in ordered_point(point)) or "(defaults)"


def render_markdown(doc: dict[str, Any]) -> str:
    lines = [f"# Sweep: {doc['strategy']} on {doc['backbone']}", ""]
    lines += ["| task | selected | val top-1 | final test top-1 (mean ± std) | seeds |", "|---|---|---:|---:|---|"]
    for task in doc["tasks"]:
        sel = doc["selections"].get(task, {})
        fin = doc["finals"].get(task)
        test = f"{fin['mean']:.2f} ± {fin['std']:.2f}" if fin and fin["mean"] is not None else "—"
        seeds = ",".join(map(str, fin["seeds"])) if fin else ""
        lines.append(f"| {task} | {point_text(sel.get('point'))} | {_num(sel.get('val_top1')) or '—'} | {test} | {seeds} |")
    lines += ["", "| task | phase | trial | status | val top-1 | test top-1 | seconds |", "|---|---|---|---|---:|---:|---:|"]
    for r in doc["trials"]:
        status = r["status"] + (f" ({r['outcome']})" if r.get("outcome") in ("skipped", "resumed") else "")
        lines.append(f"| {r['task']} | {r['phase']} | {r['name']} | {status} | {_num(r.get('val_top1'))} | "
                     f"{_num(r.get('test_top1'))} | {_num(r.get('seconds'), 1)} |")
    return "\n".join(lines) + "\n"


def render_csv(doc: dict[str, Any]) -> str:
    keys = sorted({k for r in doc["trials"] for k in r["point"]}, key=lambda k: (k != "lr", k != "weight_decay", k))
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["task", "phase", "name", *keys, "seed", "status", "outcome", "val_top1", "test_top1",
                     "test_mean_per_class", "selected_epoch", "seconds", "run_dir", "error"])
    for r in doc["trials"]:
        writer.writerow([r["task"], r["phase"], r["name"], *[r["point"].get(k, "") for k in keys], r["seed"],
                         r["status"], r.get("outcome") or "", r.get("val_top1", ""), r.get("test_top1", ""),
                         r.get("test_mean_per_class", ""), r.get("selected_epoch", ""), r.get("seconds", ""),
                         r["run_dir"], (r.get("error") or "").splitlines()[0] if r.get("error") else ""])
    return buf.getvalue()


# -- planning -------------------------------------------------------------------------------------
def plan(spec: SweepSpec, host, prefix: list[str] | None = None) -> tuple[list[str], list[str]]:
    """(commands, notes): the grid trials not yet finished, plus the finals of every task whose grid
    is complete on disk (selection possible); notes say which tasks still need a sweep re-run."""
    commands, notes = [], []
    grid_trials = build_grid_trials(spec, host)
    for task in spec.tasks:
        trials = grid_trials[task]
        for t in trials:
            if t.error:
                notes.append(f"{t.key()}: {t.error}")
            elif t.state() != "finished":
                commands.append(shlex.join(t.command(prefix)))
        if not spec.finals:
            continue
        if trials and not all(t.state() == "finished" for t in trials):
            notes.append(f"{task}: the final runs ({len(spec.seeds)} seeds) depend on the selection; "
                         "re-run this sweep (or `--plan`) once the grid trials have finished")
            continue
        if trials:
            rule = task_rule(spec, task, host)
            best = select_trial([fill_metrics(record_for(t), read_summary(t.run_dir) or {}) for t in trials], rule.select_by)
            if best is None:
                notes.append(f"{task}: no finished grid trial to select from")
                continue
            point = best["point"]
        else:
            point = grid_points(task_grid(spec, task, host))[0]
        for t in build_final_trials(spec, task, point, host):
            if t.state() != "finished":
                commands.append(shlex.join(t.command(prefix)))
    return commands, notes
