"""`lspt report` on fabricated run directories: grouping, final runs preferred, FGVC mean, VTAB group
means and both overall conventions, the papers' reference numbers and deltas, csv/json, --plots."""

from __future__ import annotations

import csv
import io
import json
import statistics
import sys

import pytest

from lspt_cli.report import FGVC_TASKS, REFERENCE, REFERENCE_SOURCES, VTAB_GROUPS, VTAB_TASKS


def write_run(root, name, task, top1, *, backbone="mae-vitb", strategy="gapt", final=True, seed=42, val=None, metrics=None):
    run = root / name
    run.mkdir(parents=True)
    summary = {"task": task, "backbone": backbone, "strategy": strategy, "final": final, "seed": seed,
               "test_top1": top1, "val_top1": val, "run_dir": str(run)}
    (run / "summary.json").write_text(json.dumps(summary))
    if metrics:
        (run / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))
    return run


@pytest.fixture
def fabricated(tmp_path):
    """mae-vitb/gapt: all 5 FGVC tasks x 2 seeds and all 19 VTAB tasks x 1 seed; mocov3/vpt-deep: 2 FGVC tasks."""
    fgvc = {t: (60.0 + i, 64.0 + i) for i, t in enumerate(FGVC_TASKS)}  # seed means 62 + i
    for t, (a, b) in fgvc.items():
        write_run(tmp_path, f"{t}-42", t, a, seed=42)
        write_run(tmp_path, f"{t}-44", t, b, seed=44)
        write_run(tmp_path, f"{t}-grid", t, 5.0, final=False, val=99.0)  # ignored: the task has final runs
    vtab = {t: 10.0 + 3 * i for i, t in enumerate(VTAB_TASKS)}
    for t, v in vtab.items():
        write_run(tmp_path / "vtab", t, f"vtab/{t}", v)
    write_run(tmp_path, "cub-moco", "cub", 80.0, backbone="mocov3-vitb", strategy="vpt-deep", final=False)
    write_run(tmp_path, "cars-moco", "cars", 70.0, backbone="mocov3-vitb", strategy="vpt-deep", final=False)
    write_run(tmp_path, "digits", "digits", 30.0, backbone="vit-tiny", strategy="lspt", seed=1)
    write_run(tmp_path, "digits2", "digits", 40.0, backbone="vit-tiny", strategy="lspt", seed=2)
    return tmp_path, fgvc, vtab


def test_tables_means_and_reference(cli, fabricated):
    root, fgvc, vtab = fabricated
    result = cli("report", str(root), "--format", "json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    rows = {(r["backbone"], r["strategy"]): r for r in doc["fgvc"]}
    gapt = rows[("mae-vitb", "gapt")]
    for t, (a, b) in fgvc.items():
        cell = gapt["tasks"][t]
        assert cell["mean"] == pytest.approx((a + b) / 2) and cell["std"] == pytest.approx(statistics.stdev([a, b]))
        assert cell["n"] == 2 and cell["final"]
    expected_fgvc = statistics.fmean((a + b) / 2 for a, b in fgvc.values())  # 64.0
    assert gapt["fgvc_mean"]["value"] == pytest.approx(expected_fgvc) and gapt["fgvc_mean"]["complete"]
    assert gapt["fgvc_mean"]["reference"] == 73.39
    assert gapt["fgvc_mean"]["delta"] == pytest.approx(expected_fgvc - 73.39)
    moco = rows[("mocov3-vitb", "vpt-deep")]
    assert moco["fgvc_mean"]["value"] == pytest.approx(75.0) and not moco["fgvc_mean"]["complete"]
    assert moco["fgvc_mean"]["delta"] is None and moco["fgvc_mean"]["reference"] == 83.12

    (v,) = doc["vtab"]
    groups = {g: statistics.fmean(vtab[t] for t in tasks) for g, tasks in VTAB_GROUPS.items()}
    for g, value in groups.items():
        assert v[g]["value"] == pytest.approx(value) and v[g]["complete"]
        assert v[g]["delta"] == pytest.approx(value - REFERENCE[("mae-vitb", "gapt")][g])
    assert v["mean_of_groups"]["value"] == pytest.approx(sum(groups.values()) / 3)
    assert v["mean_of_tasks"]["value"] == pytest.approx(sum(vtab.values()) / 19)
    assert v["mean_of_groups"]["value"] != pytest.approx(v["mean_of_tasks"]["value"])  # the conventions differ
    (other,) = doc["other"]
    assert other["task"] == "digits" and other["mean"] == 35.0 and other["seeds"] == [1, 2]

    md = cli("report", str(root)).stdout
    gapt_source = "GaPT's paper (arXiv 2306.05067), its FGVC and VTAB-1k tables"
    assert gapt["fgvc_mean"]["reference_source"] == gapt_source and v["natural"]["reference_source"] == gapt_source
    assert ("| mae-vitb | gapt | lspt | 62.00 ± 2.83 | 63.00 ± 2.83 | 64.00 ± 2.83 | 65.00 ± 2.83 | 66.00 ± 2.83 | 64.00 "
            f"| 73.39 | -9.39 | {gapt_source} |") in md
    assert f"| mocov3-vitb | vpt-deep | lspt | 80.00 ± 0.00 | — | — | — | 70.00 ± 0.00 | 75.00* (2/5) | 83.12 | — | {gapt_source} |" in md
    assert "mean of 3 groups" in md and "mean of 19 tasks" in md
    natural = groups["natural"]
    assert f"| mae-vitb | gapt | lspt | Natural | {natural:.2f} | 47.61 | {natural - 47.61:+.2f} | {gapt_source} |" in md
    assert "| vit-tiny | lspt | lspt | digits | 2 final | 1,2 | 35.00 ± 7.07 | — |" in md

    table = list(csv.DictReader(io.StringIO(cli("report", str(root), "--format", "csv").stdout)))
    agg = {(r["backbone"], r["benchmark"], r["group"], r["task"]): r for r in table}
    assert float(agg[("mae-vitb", "vtab", "", "mean_of_tasks")]["test_top1_mean"]) == pytest.approx(sum(vtab.values()) / 19)
    assert float(agg[("mae-vitb", "vtab", "structured", "mean")]["delta"]) == pytest.approx(groups["structured"] - 36.80)
    assert agg[("mae-vitb", "vtab", "structured", "mean")]["reference_source"] == gapt_source
    assert float(agg[("mae-vitb", "fgvc", "", "cub")]["test_top1_std"]) == pytest.approx(statistics.stdev(fgvc["cub"]))


def test_partial_vtab_and_non_final_runs(cli, tmp_path):
    write_run(tmp_path, "a", "vtab/cifar100", 50.0, final=False, seed=1)  # alias of cifar; no final runs: all count
    write_run(tmp_path, "b", "vtab/cifar100", 60.0, final=False, seed=2)
    write_run(tmp_path, "c", "vtab/eurosat", 90.0)
    doc = json.loads(cli("report", str(tmp_path), "--format", "json").stdout)
    (v,) = doc["vtab"]
    assert v["tasks"]["cifar"]["mean"] == 55.0 and not v["tasks"]["cifar"]["final"]
    assert v["natural"] == {"value": 55.0, "tasks": 1, "of": 7, "complete": False, "reference": 47.61, "delta": None,
                            "reference_source": "GaPT's paper (arXiv 2306.05067), its FGVC and VTAB-1k tables"}
    assert v["structured"]["value"] is None
    assert v["mean_of_groups"]["value"] == pytest.approx(72.5) and not v["mean_of_groups"]["complete"]
    md = cli("report", str(tmp_path)).stdout
    assert "55.00* (1/7)" in md


# Issue #22's figures for SPT-shallow (MAE; its Natural as Papers with Code lists it) and VFPT (MAE,
# MoCo v3): VTAB-1k Natural / Specialized / Structured.
QUOTED = {
    ("mae-vitb", "spt-shallow"): (62.53, 80.9, 53.5),
    ("mae-vitb", "vfpt"): (53.6, 77.8, 36.2),
    ("mocov3-vitb", "vfpt"): (77.5, 85.8, 58.7),
}


@pytest.mark.parametrize("backbone, strategy", sorted(QUOTED))
def test_spt_and_vfpt_runs_are_shown_next_to_the_quoted_numbers(cli, tmp_path, backbone, strategy):
    """A full VTAB-1k run of spt-deep / vfpt gets the issue's numbers, its delta, and a source that says
    they are unverified (no paper table was read); its FGVC row gets no paper number at all."""
    vtab = {t: 40.0 + i for i, t in enumerate(VTAB_TASKS)}
    for t, value in vtab.items():
        write_run(tmp_path / "vtab", t, f"vtab/{t}", value, backbone=backbone, strategy=strategy)
    for t in FGVC_TASKS:
        write_run(tmp_path / "fgvc", t, t, 70.0, backbone=backbone, strategy=strategy)
    assert tuple(REFERENCE[(backbone, strategy)][g] for g in VTAB_GROUPS) == QUOTED[(backbone, strategy)]
    source = REFERENCE_SOURCES[(backbone, strategy)]
    assert "quoted by issue #22, unverified" in source

    doc = json.loads(cli("report", str(tmp_path), "--format", "json").stdout)
    (row,) = doc["vtab"]
    for group, quoted in zip(VTAB_GROUPS, QUOTED[(backbone, strategy)]):
        mine = statistics.fmean(vtab[t] for t in VTAB_GROUPS[group])
        assert row[group]["reference"] == quoted and row[group]["delta"] == pytest.approx(mine - quoted)
        assert row[group]["reference_source"] == source
    (fgvc,) = doc["fgvc"]
    assert fgvc["fgvc_mean"]["reference"] is None and fgvc["fgvc_mean"]["reference_source"] is None

    md = cli("report", str(tmp_path)).stdout
    natural = statistics.fmean(vtab[t] for t in VTAB_GROUPS["natural"])
    quoted = QUOTED[(backbone, strategy)][0]
    assert f"| {backbone} | {strategy} | lspt | Natural | {natural:.2f} | {quoted:.2f} | {natural - quoted:+.2f} | {source} |" in md
    assert f"| {backbone} | {strategy} | lspt | {' | '.join(['70.00 ± 0.00'] * 5)} | 70.00 | — | — | — |" in md
    table = list(csv.DictReader(io.StringIO(cli("report", str(tmp_path), "--format", "csv").stdout)))
    structured = next(r for r in table if r["group"] == "structured" and r["task"] == "mean")
    assert float(structured["reference"]) == QUOTED[(backbone, strategy)][2] and structured["reference_source"] == source


def test_every_reference_row_names_its_source():
    assert set(REFERENCE_SOURCES) == set(REFERENCE)
    for key, source in REFERENCE_SOURCES.items():
        assert source.startswith(("GaPT's paper (arXiv 2306.05067)", "quoted by issue #22, unverified",
                                  "SPT's paper (arXiv 2402.02382)", "Natural: SPT's paper")), key


def test_a_partial_reference_row_shows_only_what_the_paper_gives(cli, tmp_path):
    """SPT-deep on MAE has only a VTAB Natural reference: its other groups and FGVC show none."""
    for t in VTAB_TASKS:
        write_run(tmp_path, t, f"vtab/{t}", 60.0, backbone="mae-vitb", strategy="spt-deep")
    (row,) = json.loads(cli("report", str(tmp_path), "--format", "json").stdout)["vtab"]
    assert row["natural"]["reference"] == 67.19 and row["natural"]["delta"] == pytest.approx(60.0 - 67.19)
    assert row["specialized"]["reference"] is None and row["structured"]["reference"] is None


def test_no_runs_is_an_error(cli, tmp_path):
    result = cli("report", str(tmp_path))
    assert result.exit_code == 1 and "no finished runs" in result.output
    assert cli("report", str(tmp_path / "missing")).exit_code == 2


def test_plots_write_curves_and_name_the_extra_when_missing(cli, tmp_path, monkeypatch):
    metrics = [{"epoch": e, "train_loss": 2.0 / e, "val_loss": 2.1 / e, "train_acc": 10.0 * e, "val_acc": 9.0 * e,
                "lr": 0.1 / e} for e in (1, 2, 3)]
    run = write_run(tmp_path, "run", "digits", 30.0, backbone="vit-tiny", metrics=metrics)
    result = cli("report", str(tmp_path), "--plots", "--format", "json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["plots"] == [str(run / "curves.png")]
    from PIL import Image

    with Image.open(run / "curves.png") as img:
        assert img.format == "PNG" and img.width > 300
    (run / "curves.png").unlink()
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import fails as if not installed
    result = cli("report", str(tmp_path), "--plots")
    assert result.exit_code == 1 and "matplotlib" in result.output and "lspt[plots]" in result.output
