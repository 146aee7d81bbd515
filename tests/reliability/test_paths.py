"""Paths: every image of a prepared task resolves inside its dataset ROOT (split files naming
`../../etc/passwd` or absolute paths are refused; symlinks leading out of ROOT too, unless
`prepare-data --follow-symlinks`); task ids (`--name`) are folder names, not paths; outputs that must
be directories are refused when they are files; an empty split is reported at prepare-data.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from PIL import Image

from .conftest import assert_clean_error

ESCAPES = {
    "../../etc/passwd (climbing to /)": "../" * 40 + "etc/passwd",
    "../sibling": "../outside/x.png",
    "absolute /etc/passwd": "/etc/passwd",
    "absolute path to a real image": None,  # filled in with the outside image's absolute path
    "images/../../outside/x.png": "images/../../outside/x.png",
    "~/x.png": "~/x.png",
}


def _vtab_root(tmp_path: Path, test_line: str) -> Path:
    root = tmp_path / "dtd"
    (root / "images").mkdir(parents=True)
    for i in range(6):
        Image.new("RGB", (8, 8), (i, 0, 0)).save(root / "images" / f"{i}.png")
    (root / "train800.txt").write_text("images/0.png 0\nimages/1.png 1\n")
    (root / "val200.txt").write_text("images/2.png 0\nimages/3.png 1\n")
    (root / "train800val200.txt").write_text("images/0.png 0\nimages/1.png 1\nimages/2.png 0\nimages/3.png 1\n")
    (root / "test.txt").write_text(f"images/4.png 0\n{test_line} 1\n")
    return root


@pytest.fixture
def outside(tmp_path) -> Path:
    (tmp_path / "outside").mkdir()
    path = tmp_path / "outside" / "x.png"
    Image.new("RGB", (8, 8)).save(path)
    return path


@pytest.mark.parametrize("case", list(ESCAPES))
def test_split_file_entries_outside_root(cli_err, tmp_path, outside, isolated_lspt_home, tally, case):
    entry = ESCAPES[case] or str(outside)
    root = _vtab_root(tmp_path, entry)
    code, out, err = cli_err("prepare-data", "vtab/dtd", "--root", root)
    assert_clean_error(code, out, err, exit_code=1)
    assert "not inside the dataset root" in err or "missing" in err, err  # `~/x.png` does not exist
    assert not (isolated_lspt_home / "data" / "tasks" / "vtab" / "dtd" / "manifest.json").exists()
    code, out, err = cli_err("prepare-data", "vtab/dtd", "--root", root, "--follow-symlinks")
    assert code != 0, "--follow-symlinks must not admit '..' or absolute paths"
    tally.bad_input(f"split file entry: {case}")


def test_split_entries_that_stay_inside_root_are_fine(cli_err, tmp_path, tally):
    root = _vtab_root(tmp_path, "images/sub/../5.png")
    (root / "images" / "sub").mkdir()
    code, out, err = cli_err("prepare-data", "vtab/dtd", "--root", root, "--json")
    # 'sub/..' is refused lexically (a '..' part), even though it would stay inside
    assert code == 1 and "not inside the dataset root" in err
    root2 = _vtab_root(tmp_path / "b", "images/5.png")
    code, out, err = cli_err("prepare-data", "vtab/dtd", "--root", root2, "--json")
    assert code == 0, err
    tally.bad_input("split file entry with a '..' that stays inside ROOT")


def test_vpt_json_keys_outside_root(cli_err, tmp_path, tally):
    from lspt_cli.errors import DataError
    from lspt_plugins.datasets.common import finish, read_vpt_json

    root = tmp_path / "cub"
    (root / "images").mkdir(parents=True)
    for i in range(3):
        Image.new("RGB", (8, 8)).save(root / "images" / f"{i}.png")
    (root / "train.json").write_text(json.dumps({"0.png": 0}))
    (root / "val.json").write_text(json.dumps({"1.png": 0}))
    (root / "test.json").write_text(json.dumps({"../../../../../../../../../../etc/passwd": 0}))
    splits, _ = read_vpt_json("cub", root, ["images"], 1, "")
    with pytest.raises(DataError, match="not inside the dataset root"):
        finish("cub", "fgvc", ["a"], root, splits["train"], splits["val"], splits["test"], "vpt json")
    tally.bad_input("VPT json key climbing out of ROOT")


def _imagefolder(root: Path) -> Path:
    for c in "ab":
        (root / "train" / c).mkdir(parents=True, exist_ok=True)
        for i in range(4):
            Image.new("RGB", (8, 8), (i, 0, 0)).save(root / "train" / c / f"{i}.png")
    return root


@pytest.mark.parametrize("case", ["file symlink", "class folder symlink", "file symlink in a sub-folder"])
def test_symlinks_out_of_root(cli_err, tmp_path, outside, isolated_lspt_home, tally, case):
    root = _imagefolder(tmp_path / "imgs")
    if case == "file symlink":
        (root / "train" / "a" / "link.png").symlink_to(outside)
    elif case == "class folder symlink":
        (root / "train" / "c").symlink_to(outside.parent, target_is_directory=True)
        for i in range(3):
            Image.new("RGB", (8, 8)).save(outside.parent / f"{i}.png")
    else:
        (root / "train" / "a" / "deep").mkdir()
        (root / "train" / "a" / "deep" / "link.png").symlink_to(outside)
    code, out, err = cli_err("prepare-data", "imagefolder", "--root", root, "--name", "mine")
    assert_clean_error(code, out, err, "outside the dataset root", exit_code=1)
    assert "--follow-symlinks" in err  # the hint says how to accept it
    assert not (isolated_lspt_home / "data" / "tasks" / "mine").exists(), "a refused prepare left a task dir"
    code, out, err = cli_err("prepare-data", "imagefolder", "--root", root, "--name", "mine", "--follow-symlinks", "--json")
    assert code == 0, err
    doc = json.loads(out)["tasks"][0]
    assert sum(s["images"] for k, s in doc["splits"].items() if k in ("train", "val", "test")) > 8
    tally.bad_input(f"symlink leading out of ROOT: {case}")


def test_symlinks_inside_root_are_fine(cli_err, tmp_path, tally):
    root = _imagefolder(tmp_path / "imgs")
    (root / "train" / "a" / "again.png").symlink_to(root / "train" / "b" / "0.png")
    code, out, err = cli_err("prepare-data", "imagefolder", "--root", root, "--name", "mine")
    assert code == 0, err
    tally.bad_input("symlink that stays inside ROOT (accepted)")


def test_a_hand_edited_manifest_cannot_escape(cli_err, reference_bundle, tmp_path, isolated_lspt_home, tally):
    root = _imagefolder(tmp_path / "imgs")
    code, out, err = cli_err("prepare-data", "imagefolder", "--root", root, "--name", "mine", "-q")
    assert code == 0, err
    path = isolated_lspt_home / "data" / "tasks" / "mine" / "manifest.json"
    doc = json.loads(path.read_text())
    for bad in ("../../../../../../../../etc/passwd", "/etc/passwd"):
        doc["splits"]["test"][0][0] = bad
        path.write_text(json.dumps(doc))
        code, out, err = cli_err("eval", reference_bundle, "--task", "mine")
        assert_clean_error(code, out, err, "not inside the dataset root", exit_code=1)
        tally.bad_input(f"hand-edited manifest key {bad[:12]}...")


NAMES = {
    "newline inside": "my\ndata",
    "trailing newline": "mydata\n",
    "two slashes": "a/b/c",
    "dot-dot": "..",
    "dot-dot component": "a/..",
    "absolute": "/tmp/x",
    "leading dash": "-x",
    "space": "my data",
    "200 characters": "a" * 200,
    "4096 characters": "b" * 4096,
    "tab": "a\tb",
    "backslash": "a\\b",
    "empty component": "a/",
}


@pytest.mark.parametrize("case", list(NAMES))
def test_bad_task_names(cli_err, tmp_path, isolated_lspt_home, tally, case):
    root = _imagefolder(tmp_path / "imgs")
    code, out, err = cli_err("prepare-data", "imagefolder", "--root", root, f"--name={NAMES[case]}")
    assert_clean_error(code, out, err, exit_code=2)
    tasks = isolated_lspt_home / "data" / "tasks"
    assert not tasks.exists() or not any(tasks.iterdir()), "something was written for a refused name"
    tally.bad_input(f"--name: {case}")


def test_longest_name_is_accepted(cli_err, tmp_path, tally):
    root = _imagefolder(tmp_path / "imgs")
    code, out, err = cli_err("prepare-data", "imagefolder", "--root", root, "--name", "n" * 128, "-q")
    assert code == 0, err
    tally.bad_input("--name of exactly 128 characters (accepted)")


def test_outputs_that_must_be_directories(cli_err, reference_bundle, tmp_path, tally):
    image = tmp_path / "d.png"
    Image.new("L", (8, 8)).save(image)
    file = tmp_path / "file"
    file.write_text("keep me")
    code, out, err = cli_err("explain", reference_bundle, image, "-o", file)
    assert_clean_error(code, out, err, str(file), "must be a directory", exit_code=2)
    tally.bad_input("explain -o an existing regular file")
    code, out, err = cli_err("sweep", "-b", "vit-tiny", "-t", "digits", "-s", "linear", "--grid", "lr=0.1",
                             "--epochs", "1", "--seeds", "1", "--out", file, "-q")
    assert_clean_error(code, out, err, str(file), "must be a directory", exit_code=2)
    tally.bad_input("sweep --out an existing regular file")
    code, out, err = cli_err("tune", "-b", "vit-tiny", "-t", "digits", "--out", file, "-q")
    assert_clean_error(code, out, err, str(file), "must be a directory", exit_code=2)
    tally.bad_input("tune --out an existing regular file")
    assert file.read_text() == "keep me"


@pytest.mark.parametrize("grid", ["lr=abc", "lr=0.1,fast", "wd=x", "epochs=1.5", "batch_size=true", "lr=[1]"])
def test_typed_grid_values(cli_err, tally, grid):
    code, out, err = cli_err("sweep", "-b", "vit-tiny", "-t", "digits", "-s", "linear", "--grid", grid, "--plan")
    assert_clean_error(code, out, err, "--grid", exit_code=2)
    tally.bad_input(f"sweep --grid {grid}")


@pytest.mark.parametrize("layout", ["one image per class", "val folder empty", "test folder empty"])
def test_empty_splits_are_reported_at_prepare_data(cli_err, tmp_path, isolated_lspt_home, tally, layout):
    root = tmp_path / "tiny"
    for c in "ab":
        (root / "train" / c).mkdir(parents=True)
        n = 1 if layout == "one image per class" else 6
        for i in range(n):
            Image.new("RGB", (8, 8), (i, 0, 0)).save(root / "train" / c / f"{i}.png")
    if layout == "val folder empty":
        (root / "val" / "a").mkdir(parents=True)
    if layout == "test folder empty":
        (root / "test" / "a").mkdir(parents=True)
    code, out, err = cli_err("prepare-data", "imagefolder", "--root", root, "--name", "tiny")
    assert_clean_error(code, out, err, "tiny", exit_code=1)
    assert "no images" in err
    assert not (isolated_lspt_home / "data" / "tasks" / "tiny").exists()
    tally.bad_input(f"empty split at prepare-data: {layout}")


def test_nan_hint_names_a_checkpoint_only_when_there_is_one(tmp_path, tally):
    from lspt_cli.engine.train import _nan_hint

    hint = _nan_hint(tmp_path, 0)
    assert "no checkpoint" in hint and "checkpoint.pt" not in hint
    (tmp_path / "checkpoint.pt").write_bytes(b"x")
    hint = _nan_hint(tmp_path, 2)
    assert str(tmp_path) in hint and "end of epoch 2" in hint and "no checkpoint" not in hint
    tally.bad_input("NaN loss in the first epoch: the hint names no checkpoint")
