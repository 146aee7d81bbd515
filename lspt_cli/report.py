"""`lspt report`: the papers' tables from run directories (`summary.json` files), next to the papers.

- Runs are grouped by (backbone, strategy, task). A group's number is the mean ± sample standard
  deviation (n - 1; 0 for one run) of test top-1 over its runs: the final runs (`--final`, train+val)
  when the group has any, else all of its runs (then labelled "not final").
- FGVC: CUB, NABirds, Flowers, Dogs, Cars and their mean (VPT / GaPT Table 1 layout).
- VTAB-1k: the 19 tasks, the Natural (7) / Specialized (4) / Structured (8) group means, and both
  overall conventions, labelled: the mean of the three group means (VPT, GaPT) and the mean over
  the 19 tasks (NOAH and most later PETL papers).
- The papers' reference numbers side by side, with lspt - paper, each row naming where its numbers come
  from (REFERENCE_SOURCES): a table of a paper, or a quote nobody here could check, said as such.
- Every other task (digits, your imagefolder data) goes to a plain "other tasks" table.
- Every row is labelled with the protocol its runs trained under (`paper` | `lspt`, README
  "Protocol"; a run from before protocols existed counts as `lspt`). Runs of different protocols
  are never averaged together silently: a group, or a table row's mean over tasks, that would mix
  them is an error unless `mix_protocols` (`--mix-protocols`), which labels it e.g. "lspt+paper".

A mean over an incomplete set of tasks is shown with `*` and the count, and gets no delta.
Torch-free; `--plots` needs matplotlib (`pip install 'lspt[plots]'`).
"""

from __future__ import annotations

import csv
import io
import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import LsptError, UsageError
from .rundir import METRICS_NAME, SUMMARY_NAME

FGVC_TASKS = ("cub", "nabirds", "flowers", "dogs", "cars")
FGVC_LABELS = {"cub": "CUB", "nabirds": "NABirds", "flowers": "Flowers", "dogs": "Dogs", "cars": "Cars"}
VTAB_GROUPS = {
    "natural": ("cifar", "caltech101", "dtd", "oxford_flowers102", "oxford_iiit_pet", "svhn", "sun397"),
    "specialized": ("patch_camelyon", "eurosat", "resisc45", "diabetic_retinopathy"),
    "structured": ("clevr_count", "clevr_dist", "dmlab", "kitti", "dsprites_loc", "dsprites_ori",
                   "smallnorb_azi", "smallnorb_ele"),
}
VTAB_TASKS = tuple(t for group in VTAB_GROUPS.values() for t in group)
VTAB_ALIASES = {"cifar100": "cifar"}
LEGACY_PROTOCOL = "lspt"  # runs from before the protocol switch trained what `lspt` trains today

# Top-1 % on ViT-B/16 as the papers report them. Keys: (backbone, strategy) -> metric -> value; where
# each row comes from is REFERENCE_SOURCES, shown next to the numbers in every format.
REFERENCE: dict[tuple[str, str], dict[str, float]] = {
    ("mae-vitb", "vpt-shallow"): {"fgvc_mean": 57.84, "natural": 39.96, "specialized": 69.65, "structured": 27.50},
    ("mae-vitb", "vpt-deep"): {"fgvc_mean": 72.02, "natural": 36.02, "specialized": 60.61, "structured": 26.57},
    ("mae-vitb", "gapt"): {"fgvc_mean": 73.39, "natural": 47.61, "specialized": 76.86, "structured": 36.80},
    ("mocov3-vitb", "vpt-shallow"): {"fgvc_mean": 79.26, "natural": 67.34, "specialized": 82.26, "structured": 37.55},
    ("mocov3-vitb", "vpt-deep"): {"fgvc_mean": 83.12, "natural": 70.27, "specialized": 83.04, "structured": 42.38},
    ("mocov3-vitb", "gapt"): {"fgvc_mean": 83.00, "natural": 74.84, "specialized": 83.38, "structured": 49.10},
    # SPT and VFPT: neither paper's tables could be read offline. SPT's VTAB-1k Natural means come from
    # Papers with Code's "VTAB-1k (Natural<7>)" leaderboard of SPT's paper (the sotaverified.org mirror,
    # which lists GaPT's and VPT's rows above with the same values as their tables), SPT-Deep MoCo v3's
    # FGVC mean from its paper's Papers with Code page. Issue #22's "62.5 / 80.9 / 53.5 on MAE ViT-B"
    # is filed under spt-shallow: its 62.5 is SPT-Shallow's 62.53 there (SPT-Deep's is 67.19).
    ("mae-vitb", "spt-shallow"): {"natural": 62.53, "specialized": 80.9, "structured": 53.5},
    ("mae-vitb", "spt-deep"): {"natural": 67.19},
    ("mocov3-vitb", "spt-shallow"): {"natural": 74.47},
    ("mocov3-vitb", "spt-deep"): {"fgvc_mean": 86.00, "natural": 76.2},
    ("mae-vitb", "vfpt"): {"natural": 53.6, "specialized": 77.8, "structured": 36.2},
    ("mocov3-vitb", "vfpt"): {"natural": 77.5, "specialized": 85.8, "structured": 58.7},
}
_GAPT_TABLES = "GaPT's paper (arXiv 2306.05067), its FGVC and VTAB-1k tables"
_UNVERIFIED = "quoted by issue #22, unverified"
_PWC_SPT = ("SPT's paper (arXiv 2402.02382) as Papers with Code lists it (sotaverified.org mirror: VTAB-1k "
            "Natural leaderboard; FGVC on the paper's page); SPT's own tables not read")
REFERENCE_SOURCES: dict[tuple[str, str], str] = {
    **{key: _GAPT_TABLES for key in REFERENCE if key[1] in ("vpt-shallow", "vpt-deep", "gapt")},
    ("mae-vitb", "spt-shallow"): f"Natural: {_PWC_SPT}; Specialized and Structured {_UNVERIFIED} (its Natural, "
                                 "62.5, is SPT-Shallow's)",
    ("mae-vitb", "spt-deep"): _PWC_SPT,
    ("mocov3-vitb", "spt-shallow"): _PWC_SPT,
    ("mocov3-vitb", "spt-deep"): _PWC_SPT,
    ("mae-vitb", "vfpt"): f"{_UNVERIFIED} (VFPT, arXiv 2411.01327; its tables not checked, its README gives none)",
    ("mocov3-vitb", "vfpt"): f"{_UNVERIFIED} (VFPT, arXiv 2411.01327; its tables not checked, its README gives none)",
}
METRIC_LABELS = {
    "fgvc_mean": "FGVC mean (5)",
    "natural": "VTAB Natural",
    "specialized": "VTAB Specialized",
    "structured": "VTAB Structured",
    "mean_of_groups": "VTAB mean of 3 group means",
    "mean_of_tasks": "VTAB mean over 19 tasks",
}


def classify(task: str) -> tuple[str, str | None, str]:
    """(benchmark, VTAB group or None, short task name) of a task id."""
    if task in FGVC_TASKS:
        return "fgvc", None, task
    if task.startswith("vtab/"):
        name = VTAB_ALIASES.get(task[5:], task[5:])
        for group, tasks in VTAB_GROUPS.items():
            if name in tasks:
                return "vtab", group, name
    return "other", None, task


# -- collecting -----------------------------------------------------------------------------------
def collect(path: str | Path) -> list[dict[str, Any]]:
    """Every readable summary.json under `path` (a run dir, a sweep dir, or any folder of runs)."""
    path = Path(path)
    if not path.exists():
        raise UsageError(f"{path}: no such file or directory")
    files = [path] if path.is_file() else sorted(path.rglob(SUMMARY_NAME))
    runs = []
    for file in files:
        try:
            doc = json.loads(file.read_text())
        except (OSError, ValueError):
            continue
        if not isinstance(doc, dict) or not all(k in doc for k in ("task", "backbone", "strategy", "test_top1")):
            continue
        doc.setdefault("run_dir", str(file.parent))
        doc["_dir"] = str(file.parent)
        doc["_protocol"] = str(doc.get("protocol") or LEGACY_PROTOCOL)
        runs.append(doc)
    return runs


def mean_std(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


@dataclass
class Group:
    backbone: str
    strategy: str
    task: str
    benchmark: str
    vtab_group: str | None
    name: str
    values: list[float] = field(default_factory=list)
    seeds: list[Any] = field(default_factory=list)
    final: bool = False
    runs: int = 0  # all runs found, final or not
    val: list[float] = field(default_factory=list)
    protocols: list[str] = field(default_factory=list)  # of the runs averaged (one, unless mixed on request)

    @property
    def protocol(self) -> str:
        return "+".join(self.protocols)

    @property
    def mean(self) -> float | None:
        return mean_std(self.values)[0]

    @property
    def std(self) -> float | None:
        return mean_std(self.values)[1]

    def to_json(self) -> dict[str, Any]:
        return {
            "backbone": self.backbone, "strategy": self.strategy, "task": self.task, "benchmark": self.benchmark,
            "vtab_group": self.vtab_group, "protocol": self.protocol, "n": len(self.values), "final": self.final,
            "runs_found": self.runs,
            "test_top1": self.values, "seeds": self.seeds, "mean": self.mean, "std": self.std,
            "val_top1_mean": mean_std(self.val)[0],
        }


def _seed_order(seed: Any) -> tuple:
    return (0, seed, "") if isinstance(seed, int) else (1, 0, str(seed))


def group_runs(runs: list[dict[str, Any]], mix_protocols: bool = False) -> list[Group]:
    """One Group per (backbone, strategy, task): its final runs if it has any, else all runs; the
    runs averaged must share one protocol unless `mix_protocols`."""
    by_key: dict[tuple[str, str, str], list[dict]] = {}
    for run in runs:
        by_key.setdefault((run["backbone"], run["strategy"], run["task"]), []).append(run)
    groups = []
    for (backbone, strategy, task), members in sorted(by_key.items()):
        finals = [r for r in members if r.get("final")]
        chosen = finals or members
        chosen = sorted(chosen, key=lambda r: (_seed_order(r.get("seed")), r["_dir"]))
        protocols = sorted({r["_protocol"] for r in chosen})
        if len(protocols) > 1 and not mix_protocols:
            counts = ", ".join(f"{p} ({sum(r['_protocol'] == p for r in chosen)} runs)" for p in protocols)
            raise _mixed_error(f"{backbone} / {strategy} / {task} has runs under {counts}")
        benchmark, vtab_group, name = classify(task)
        groups.append(Group(
            backbone=backbone, strategy=strategy, task=task, benchmark=benchmark, vtab_group=vtab_group, name=name,
            values=[float(r["test_top1"]) for r in chosen], seeds=[r.get("seed") for r in chosen],
            final=bool(finals), runs=len(members), protocols=protocols,
            val=[float(r["val_top1"]) for r in chosen if isinstance(r.get("val_top1"), (int, float))],
        ))
    return groups


# -- aggregating ----------------------------------------------------------------------------------
def _agg(values: list[float], expected: int) -> dict[str, Any]:
    return {"value": statistics.fmean(values) if values else None, "tasks": len(values), "of": expected,
            "complete": len(values) == expected}


def aggregate(groups: list[Group], mix_protocols: bool = False) -> dict[str, Any]:
    """The three tables as data: fgvc and vtab rows per (backbone, strategy), other tasks.
    A row's means over tasks need one protocol across its tasks unless `mix_protocols`."""
    methods = sorted({(g.backbone, g.strategy) for g in groups if g.benchmark != "other"})
    fgvc_rows, vtab_rows = [], []
    for backbone, strategy in methods:
        mine = {g.name: g for g in groups if (g.backbone, g.strategy) == (backbone, strategy) and g.benchmark != "other"}
        ref = REFERENCE.get((backbone, strategy), {})
        source = REFERENCE_SOURCES.get((backbone, strategy))
        fgvc = {t: mine[t] for t in FGVC_TASKS if t in mine and mine[t].benchmark == "fgvc"}
        if fgvc:
            mean = _agg([g.mean for g in fgvc.values()], len(FGVC_TASKS))
            fgvc_rows.append({
                "backbone": backbone, "strategy": strategy,
                "protocol": _row_protocol(list(fgvc.values()), f"the FGVC mean of {backbone} / {strategy}", mix_protocols),
                "tasks": {t: {"mean": g.mean, "std": g.std, "n": len(g.values), "final": g.final, "protocol": g.protocol}
                          for t, g in fgvc.items()},
                "fgvc_mean": _with_reference(mean, ref.get("fgvc_mean"), source),
            })
        vtab = {t: mine[t] for t in VTAB_TASKS if t in mine and mine[t].benchmark == "vtab"}
        if vtab:
            row: dict[str, Any] = {
                "backbone": backbone, "strategy": strategy,
                "protocol": _row_protocol(list(vtab.values()), f"the VTAB means of {backbone} / {strategy}", mix_protocols),
                "tasks": {t: {"mean": g.mean, "std": g.std, "n": len(g.values), "final": g.final, "protocol": g.protocol}
                          for t, g in vtab.items()},
            }
            group_means = {}
            for group, tasks in VTAB_GROUPS.items():
                agg = _agg([vtab[t].mean for t in tasks if t in vtab], len(tasks))
                row[group] = _with_reference(agg, ref.get(group), source)
                group_means[group] = agg
            present = [a["value"] for a in group_means.values() if a["value"] is not None]
            row["mean_of_groups"] = {
                "value": statistics.fmean(present) if present else None, "tasks": len(vtab), "of": len(VTAB_TASKS),
                "complete": len(vtab) == len(VTAB_TASKS),
            }
            row["mean_of_tasks"] = _agg([g.mean for g in vtab.values()], len(VTAB_TASKS))
            vtab_rows.append(row)
    other = [g.to_json() for g in groups if g.benchmark == "other"]
    return {"fgvc": fgvc_rows, "vtab": vtab_rows, "other": other}


def _with_reference(agg: dict[str, Any], reference: float | None, source: str | None) -> dict[str, Any]:
    agg = dict(agg)
    agg["reference"] = reference
    agg["reference_source"] = source if reference is not None else None
    agg["delta"] = (agg["value"] - reference) if (reference is not None and agg["complete"] and agg["value"] is not None) else None
    return agg


def build_report(path: str | Path, mix_protocols: bool = False) -> dict[str, Any]:
    runs = collect(path)
    if not runs:
        raise LsptError(f"{path}: no finished runs (summary.json) found", hint="a run writes summary.json when it finishes")
    groups = group_runs(runs, mix_protocols)
    doc = {"source": str(path), "runs": len(runs), "mix_protocols": mix_protocols, "groups": [g.to_json() for g in groups]}
    doc.update(aggregate(groups, mix_protocols))
    return doc


def _mixed_error(what: str) -> UsageError:
    return UsageError(
        f"runs of different protocols would be averaged into one number: {what}",
        hint="report each protocol's runs from its own folder, or pass --mix-protocols to average them anyway "
        "(labelled with both protocols); docs/protocol.md",
    )


def _row_protocol(groups: list[Group], what: str, mix_protocols: bool) -> str:
    """The protocol label of a table row; refuse a mean over tasks of different protocols."""
    protocols = sorted({p for g in groups for p in g.protocols})
    if len(protocols) > 1 and not mix_protocols:
        by = ", ".join(f"{p}: {', '.join(g.name for g in groups if p in g.protocols)}" for p in protocols)
        raise _mixed_error(f"{what} mixes tasks run under different protocols ({by})")
    return "+".join(protocols)


# -- rendering ------------------------------------------------------------------------------------
def _cell(mean: float | None, std: float | None = None) -> str:
    if mean is None:
        return "—"
    return f"{mean:.2f}" if std is None else f"{mean:.2f} ± {std:.2f}"


def _agg_cell(agg: dict[str, Any]) -> str:
    if agg["value"] is None:
        return "—"
    return f"{agg['value']:.2f}" + ("" if agg["complete"] else f"* ({agg['tasks']}/{agg['of']})")


def _ref_cell(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}"


def _delta_cell(value: float | None) -> str:
    return "—" if value is None else f"{value:+.2f}"


def _source_cell(agg: dict[str, Any]) -> str:
    return agg.get("reference_source") or "—"


def _table(header: list[str], rows: list[list[str]], right_from: int, left: tuple[str, ...] = ()) -> list[str]:
    """A markdown table: columns from `right_from` on are right-aligned (numbers), except those in `left`."""
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join("---:" if i >= right_from and name not in left else "---"
                            for i, name in enumerate(header)) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def render_markdown(doc: dict[str, Any]) -> str:
    lines = [f"Test top-1 (%), mean ± std over seeds (final runs where present), "
             f"from {doc['runs']} run(s) under `{doc['source']}`; `protocol`: what the runs trained under "
             "(docs/protocol.md).", ""]
    if doc["fgvc"]:
        lines += ["### FGVC", ""]
        rows = []
        for r in doc["fgvc"]:
            cells = [_cell(r["tasks"][t]["mean"], r["tasks"][t]["std"]) if t in r["tasks"] else "—" for t in FGVC_TASKS]
            m = r["fgvc_mean"]
            rows.append([r["backbone"], r["strategy"], r["protocol"], *cells, _agg_cell(m), _ref_cell(m["reference"]),
                         _delta_cell(m["delta"]), _source_cell(m)])
        lines += _table(["backbone", "strategy", "protocol", *[FGVC_LABELS[t] for t in FGVC_TASKS], "mean", "paper", "Δ",
                         "paper's source"], rows, 3, left=("paper's source",))
        lines.append("")
    if doc["vtab"]:
        lines += ["### VTAB-1k", ""]
        rows = []
        for r in doc["vtab"]:
            cells = [_cell(r["tasks"][t]["mean"]) if t in r["tasks"] else "—" for t in VTAB_TASKS]
            rows.append([r["backbone"], r["strategy"], r["protocol"], *cells, _agg_cell(r["natural"]),
                         _agg_cell(r["specialized"]), _agg_cell(r["structured"]), _agg_cell(r["mean_of_groups"]),
                         _agg_cell(r["mean_of_tasks"])])
        lines += _table(["backbone", "strategy", "protocol", *VTAB_TASKS, "Natural", "Specialized", "Structured",
                         "mean of 3 groups", "mean of 19 tasks"], rows, 3)
        lines += ["", "Per-task cells are means over seeds (std in `--format json`/`csv`). Two overall means: "
                  "of the 3 group means (VPT, GaPT) and over the 19 tasks (NOAH and later PETL papers).", ""]
        rows = []
        for r in doc["vtab"]:
            for group in VTAB_GROUPS:
                a = r[group]
                rows.append([r["backbone"], r["strategy"], r["protocol"], group.capitalize(), _agg_cell(a),
                             _ref_cell(a["reference"]), _delta_cell(a["delta"]), _source_cell(a)])
        lines += ["#### VTAB-1k group means vs. the papers", ""]
        lines += _table(["backbone", "strategy", "protocol", "group", "lspt", "paper", "Δ", "paper's source"], rows, 4,
                        left=("paper's source",))
        lines.append("")
    if doc["other"]:
        lines += ["### Other tasks", ""]
        rows = [[g["backbone"], g["strategy"], g["protocol"], g["task"], f"{g['n']} {'final' if g['final'] else 'not final'}",
                 ",".join(map(str, g["seeds"])), _cell(g["mean"], g["std"]), _cell(g["val_top1_mean"])] for g in doc["other"]]
        lines += _table(["backbone", "strategy", "protocol", "task", "runs", "seeds", "test top-1", "val top-1"], rows, 6)
        lines.append("")
    if doc["fgvc"] or doc["vtab"]:
        lines += ["Paper: the ViT-B/16 numbers reported for this backbone and strategy, where lspt has them "
                  "(`paper's source` says from where; a number marked unverified is a quote nobody here checked against "
                  "its paper); Δ = lspt - paper, only over complete task sets. "
                  "`*` = mean over the tasks present (count in brackets).", ""]
    return "\n".join(lines)


def render_csv(doc: dict[str, Any]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["backbone", "strategy", "protocol", "benchmark", "group", "task", "n", "final", "test_top1_mean",
                     "test_top1_std", "tasks", "complete", "reference", "delta", "reference_source"])
    for g in doc["groups"]:
        writer.writerow([g["backbone"], g["strategy"], g["protocol"], g["benchmark"], g["vtab_group"] or "", g["task"],
                         g["n"], g["final"], g["mean"], g["std"], "", "", "", "", ""])
    for r in doc["fgvc"]:
        a = r["fgvc_mean"]
        writer.writerow([r["backbone"], r["strategy"], r["protocol"], "fgvc", "", "mean", "", "", a["value"], "", a["tasks"],
                         a["complete"], a["reference"] if a["reference"] is not None else "", _blank(a["delta"]),
                         _blank(a["reference_source"])])
    for r in doc["vtab"]:
        for key in (*VTAB_GROUPS, "mean_of_groups", "mean_of_tasks"):
            a = r[key]
            writer.writerow([r["backbone"], r["strategy"], r["protocol"], "vtab", key if key in VTAB_GROUPS else "",
                             "mean" if key in VTAB_GROUPS else key, "", "", a["value"], "", a["tasks"], a["complete"],
                             _blank(a.get("reference")), _blank(a.get("delta")), _blank(a.get("reference_source"))])
    return buf.getvalue()


def _blank(value: Any) -> Any:
    return "" if value is None else value


def render(doc: dict[str, Any], fmt: str) -> str:
    if fmt == "md":
        return render_markdown(doc)
    if fmt == "csv":
        return render_csv(doc)
    if fmt == "json":
        from .messages import json_text  # strict JSON: a NaN std of one seed becomes null

        return json_text(doc) + "\n"
    raise UsageError(f"unknown --format {fmt!r}; use md, csv or json")


# -- training curves ------------------------------------------------------------------------------
def plot_curves(run_dir: str | Path, out: str | Path | None = None) -> Path | None:
    """curves.png in the run dir: loss (train, val), accuracy (train, val) and lr per epoch."""
    run_dir = Path(run_dir)
    metrics = run_dir / METRICS_NAME
    if not metrics.exists():
        return None
    records = []
    for line in metrics.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            continue
    if not records:
        return None
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise LsptError("--plots needs matplotlib, which is not installed",
                        hint="install the extra: pip install 'lspt[plots]'") from None
    epochs = [r["epoch"] for r in records]

    def series(key):
        return [r.get(key) if isinstance(r.get(key), (int, float)) else math.nan for r in records]

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4))
    axes[0].plot(epochs, series("train_loss"), label="train")
    if any(k in records[0] for k in ("val_loss",)):
        axes[0].plot(epochs, series("val_loss"), label="val")
    axes[0].set_title("loss")
    axes[1].plot(epochs, series("train_acc"), label="train")
    if "val_acc" in records[0]:
        axes[1].plot(epochs, series("val_acc"), label="val")
    axes[1].set_title("top-1 (%)")
    axes[2].plot(epochs, series("lr"))
    axes[2].set_title("lr (end of epoch)")
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    for ax in axes[:2]:
        ax.legend()
    fig.suptitle(run_dir.name, fontsize=9)
    fig.tight_layout()
    target = Path(out) if out else run_dir / "curves.png"
    fig.savefig(target, dpi=100)
    plt.close(fig)
    return target


def plot_all(path: str | Path) -> list[Path]:
    path = Path(path)
    dirs = sorted({p.parent for p in ([path / METRICS_NAME] if (path / METRICS_NAME).exists() else path.rglob(METRICS_NAME))})
    written = []
    for run_dir in dirs:
        target = plot_curves(run_dir)
        if target is not None:
            written.append(target)
    return written
