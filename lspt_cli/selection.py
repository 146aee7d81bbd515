"""Which epoch's test a run reports, how a sweep compares grid trials, and what its finals train on.

One rule per (protocol, benchmark); `lspt tune` and `lspt sweep` both follow it (docs/protocol.md).
Protocol `paper` is the official code (KMnP/vpt at 4410440; GaPT runs VPT's train.py unchanged):

- VTAB-1k. Grid trials train on train800 and are compared by the val200 top-1 of their *last*
  epoch (tune_vtab.py:48-57, find_best_lrwd reads results_dict[f"epoch_{len - 1}"]); a tie goes
  to the smaller lr (tune_vtab.py:63-71; for the same lr the official order is glob's, unspecified:
  lspt takes the smaller weight decay, then the trial planned first, i.e. the value listed first for
  any other grid key, never the smallest prompt by rule). Finals train on
  train800val200 (tune_vtab.py:164-166, train.py:68-69) with seeds 42, 44, 82, 100, 800
  (tune_vtab.py:284) and report the test top-1 of the last epoch (nothing is selected on them).
  A grid trial reports its last epoch's test as well.
- FGVC. The FGVC datasets have no train+val split (src/data/datasets/json_dataset.py:20-25) and
  train.py:70-71 trains every non-VTAB task on train, evaluating val and test after every epoch
  (src/engine/trainer.py:228-233). So grid trials *and* finals train on train, and a run reports
  the test top-1 of its best-val epoch (the first one on a tie, trainer.py:242-244); tune_fgvc.py
  only runs the grid, so lspt compares trials by that best val top-1.
- Other tasks (imagefolder, digits): no official rule; lspt's below.

Protocol `lspt` (and custom tasks): best-epoch val everywhere, finals on train+val (last epoch).

A diverged trial (NaN/inf loss). The official trainer returns at the bad batch and keeps the epochs
it evaluated (src/engine/trainer.py:104-113,187-189); tune_vtab.py:54-61 then compares it by the last
epoch it holds, like any other trial. Under `paper` lspt's trainer does the same (engine/train.py:
the run finishes on its last finished epoch, `diverged` in summary.json), so the rules above compare
it by the val of the epochs done before divergence; one that diverged in its first epoch has none
and fails (officially: an empty eval_results.pth, skipped at tune_vtab.py:59-61). Under `lspt` a
diverged trial fails and takes no part in the selection.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

LAST = "last epoch"
BEST_VAL = "best val epoch"


@dataclass(frozen=True)
class Rule:
    protocol: str
    benchmark: str
    select_by: str  # grid trials are compared by the val top-1 of: LAST | BEST_VAL
    final_split: str  # what a final run trains on: "trainval" | "train"
    grid_report: str  # which epoch's test a grid (non-final) run reports: LAST | BEST_VAL

    def train_split(self, final: bool) -> str:
        return self.final_split if final else "train"

    def report(self, final: bool) -> str:
        """The epoch whose test top-1 a run reports (a run on train+val has no val: its last)."""
        if final and self.final_split == "trainval":
            return LAST
        return self.grid_report

    def describe(self) -> str:
        finals = "train+val" if self.final_split == "trainval" else "train (test at the best val epoch)"
        return (f"protocol {self.protocol}, {self.benchmark}: grid trials compared by the val top-1 of their "
                f"{self.select_by} (ties: smaller lr, then smaller wd); finals on {finals}")


def rule_for(protocol: str, benchmark: str) -> Rule:
    if protocol == "paper" and benchmark == "vtab":
        return Rule(protocol, benchmark, select_by=LAST, final_split="trainval", grid_report=LAST)
    if protocol == "paper" and benchmark == "fgvc":
        return Rule(protocol, benchmark, select_by=BEST_VAL, final_split="train", grid_report=BEST_VAL)
    return Rule(protocol, benchmark, select_by=BEST_VAL, final_split="trainval", grid_report=BEST_VAL)


def val_curve(run_dir: str | Path) -> list[tuple[int, float]]:
    """(epoch, val top-1) of every epoch in a run's metrics.jsonl that evaluated val, by epoch."""
    from .rundir import METRICS_NAME

    try:
        lines = (Path(run_dir) / METRICS_NAME).read_text().splitlines()
    except OSError:
        return []
    curve: dict[int, float] = {}
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if not isinstance(record, dict):
            continue
        epoch, val = record.get("epoch"), record.get("val_acc")
        if isinstance(epoch, int) and isinstance(val, (int, float)) and not isinstance(val, bool) and math.isfinite(val):
            curve[epoch] = float(val)  # a resumed run may repeat an epoch: the later line wins
    return sorted(curve.items())


def selection_value(run_dir: str | Path, select_by: str) -> tuple[float | None, int | None]:
    """(val top-1, epoch) by which a grid trial is compared: its last epoch's, or its best (the
    first epoch reaching it, as the trainer keeps the earlier epoch on a tie)."""
    curve = val_curve(run_dir)
    if not curve:
        return None, None
    if select_by == LAST:
        epoch, value = curve[-1]
        return value, epoch
    best = max(value for _, value in curve)
    return best, next(epoch for epoch, value in curve if value == best)


def describe_report(report: str, train_split: str) -> str:
    """The summary's `selection` text: "best val top-1", "last epoch (train+val)", "last epoch (train)"."""
    if report == BEST_VAL:
        return "best val top-1"
    return f"last epoch ({'train+val' if train_split == 'trainval' else 'train'})"


def summary_fields(rule: Rule, final: bool) -> dict[str, Any]:
    """What summary.json records about the rule a run followed."""
    return {"train_split": rule.train_split(final), "reported_epoch_rule": rule.report(final)}
