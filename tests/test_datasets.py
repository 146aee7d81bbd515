"""Datasets: manifests, digits, imagefolder, the loader's determinism, images, the cache, the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from lspt_cli.errors import DataError

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def write_jpeg(path: Path, size=(40, 30), seed=0, mode="RGB", fmt=None) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    w, h = size
    arr = (rng.random((h, w, 3)) * 255).astype(np.uint8)
    img = Image.fromarray(arr, "RGB")
    if mode != "RGB":
        img = img.convert(mode)
    img.save(path, format=fmt)
    return path


def make_imagefolder(root: Path, classes=("ant", "bee", "cat"), per_class=6, splits=("train",), size=(40, 30)) -> Path:
    seed = 0
    for split in splits:
        for c in classes:
            for i in range(per_class):
                seed += 1
                write_jpeg(root / split / c / f"{c}_{i}.jpg", size=size, seed=seed)
    return root


# -- manifests -----------------------------------------------------------------------------------
def test_load_manifest_not_prepared_names_task_and_command():
    from lspt_cli.data import load_manifest

    with pytest.raises(DataError) as exc:
        load_manifest("cub")
    assert "'cub'" in exc.value.message
    assert "lspt prepare-data cub --root DIR" in exc.value.hint


def test_manifest_path_uses_name(isolated_lspt_home):
    from lspt_cli.data import manifest_path

    p = manifest_path("imagefolder", "mydata")
    assert p == isolated_lspt_home / "data" / "tasks" / "mydata" / "manifest.json"
    assert manifest_path("vtab/dtd").parts[-3:] == ("vtab", "dtd", "manifest.json")
    assert manifest_path("vtab/cifar100") == manifest_path("vtab/cifar")


def test_digits_offline_and_auto_prepared():
    from lspt_cli.data import load_manifest

    m = load_manifest("digits")  # prepared on first use: no download, no root
    assert m.task == "digits" and m.benchmark == "custom" and m.root is None
    assert m.classes == [str(i) for i in range(10)]
    counts = {s: len(v) for s, v in m.splits.items()}
    assert counts["train"] + counts["val"] + counts["test"] == 1797
    assert counts["trainval"] == counts["train"] + counts["val"]
    keys = [set(k for k, _ in m.splits[s]) for s in ("train", "val", "test")]
    assert not (keys[0] & keys[1]) and not (keys[0] & keys[2]) and not (keys[1] & keys[2])
    assert (m.directory / "digits.npy").exists()


def test_digits_dataset_items():
    from lspt_cli.data import build_dataset, load_manifest

    m = load_manifest("digits")
    ds = build_dataset(m, "test", input_size=32, mean=MEAN, std=STD, train=False)
    x, y = ds[0]
    assert x.shape == (3, 32, 32) and str(x.dtype) == "torch.float32" and isinstance(y, int)
    assert 0 <= y < 10


def test_imagefolder_carves_val_and_test(tmp_path):
    from lspt_plugins.datasets.imagefolder import prepare_imagefolder

    root = make_imagefolder(tmp_path / "data", per_class=10)
    m = prepare_imagefolder(root)
    assert m.classes == ["ant", "bee", "cat"]
    assert {s: len(v) for s, v in m.splits.items()} == {"train": 21, "val": 3, "test": 6, "trainval": 24}
    assert "carved" in m.split_source
    again = prepare_imagefolder(root)
    assert again.splits == m.splits  # carving is deterministic


def test_imagefolder_uses_split_folders(tmp_path):
    from lspt_plugins.datasets.imagefolder import prepare_imagefolder

    root = make_imagefolder(tmp_path / "data", per_class=2, splits=("train", "val", "test"))
    m = prepare_imagefolder(root)
    assert {s: len(v) for s, v in m.splits.items()} == {"train": 6, "val": 6, "test": 6, "trainval": 12}
    assert m.split_source == "train: folder train/; val: folder val/; test: folder test/"
    assert all(0 <= y < 3 for _, y in m.splits["test"])


def test_imagefolder_unknown_class_in_test(tmp_path):
    from lspt_plugins.datasets.imagefolder import prepare_imagefolder

    root = make_imagefolder(tmp_path / "data", per_class=2)
    write_jpeg(root / "test" / "dog" / "x.jpg")
    with pytest.raises(DataError, match="dog"):
        prepare_imagefolder(root)


def test_cli_prepare_imagefolder_with_name_json(cli, tmp_path):
    from lspt_cli.data import load_manifest

    root = make_imagefolder(tmp_path / "data", per_class=4)
    r = cli("prepare-data", "imagefolder", "--root", str(root), "--name", "mydata", "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    (t,) = doc["tasks"]
    assert t["task"] == "mydata" and t["dataset"] == "imagefolder" and t["num_classes"] == 3
    assert t["splits"]["trainval"]["images"] == 9 and t["splits"]["test"]["images"] == 3
    m = load_manifest("mydata")
    assert m.dataset == "imagefolder" and Path(t["manifest"]).exists()
    r2 = cli("prepare-data", "imagefolder", "--root", str(root), "--name", "mydata", "--json")
    assert json.loads(r2.stdout)["tasks"][0]["changed"] is False  # idempotent
    r3 = cli("prepare-data", "imagefolder", "--root", str(root), "--name", "mydata")
    assert r3.exit_code == 0 and "trainval" in r3.stdout and "unchanged" in r3.stdout


def test_cli_missing_root_dir_is_error(cli, tmp_path):
    r = cli("prepare-data", "imagefolder", "--root", str(tmp_path / "nope"))
    assert r.exit_code == 1
    assert "nope" in r.stderr


def test_cli_needs_root(cli):
    r = cli("prepare-data", "cub")
    assert r.exit_code == 2 and "--root" in r.stderr


def test_cli_unknown_dataset(cli):
    r = cli("prepare-data", "cubb", "--root", ".")
    assert r.exit_code == 2 and "unknown dataset" in r.stderr


# -- loader determinism ----------------------------------------------------------------------------
def _prepared_imagefolder(tmp_path, per_class=6, size=(48, 36)):
    from lspt_cli.data import save_manifest
    from lspt_plugins.datasets.imagefolder import prepare_imagefolder

    root = make_imagefolder(tmp_path / "imgs", per_class=per_class, size=size)
    m = prepare_imagefolder(root)
    save_manifest(m)
    return m


def _epoch(m, seed, epoch, workers=0, split="train", train=True):
    from lspt_cli.data import build_loader

    loader = build_loader(
        m, split, input_size=24, mean=MEAN, std=STD, train=train, batch_size=4, seed=seed, epoch=epoch,
        num_workers=workers,
    )
    xs, ys = zip(*[(x, y) for x, y in loader])
    import torch

    return torch.cat(xs), torch.cat(ys)


def test_loader_is_a_function_of_seed_and_epoch(tmp_path):
    import torch

    m = _prepared_imagefolder(tmp_path)
    x1, y1 = _epoch(m, 0, 0)
    torch.manual_seed(1234)  # the caller's global RNG does not matter
    x2, y2 = _epoch(m, 0, 0)
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    x3, y3 = _epoch(m, 0, 1)
    assert not torch.equal(x1, x3)  # another epoch: another order / augmentation
    x4, y4 = _epoch(m, 1, 0)
    assert not torch.equal(x1, x4)


def test_loader_same_with_workers(tmp_path):
    import torch

    m = _prepared_imagefolder(tmp_path, per_class=4)
    x1, y1 = _epoch(m, 3, 2, workers=0)
    x2, y2 = _epoch(m, 3, 2, workers=2)
    assert torch.equal(x1, x2) and torch.equal(y1, y2)


def test_loader_eval_order_and_no_augmentation(tmp_path):
    import torch

    m = _prepared_imagefolder(tmp_path, per_class=3)
    x1, y1 = _epoch(m, 0, 0, split="test", train=False)
    x2, y2 = _epoch(m, 5, 7, split="test", train=False)
    assert torch.equal(x1, x2)
    assert y1.tolist() == [y for _, y in m.splits["test"]]


def test_loader_sampler(tmp_path):
    from torch.utils.data import SequentialSampler

    from lspt_cli.data import build_loader

    m = _prepared_imagefolder(tmp_path, per_class=3)
    ds_len = len(m.splits["train"])
    loader = build_loader(
        m, "train", input_size=16, mean=MEAN, std=STD, train=True, batch_size=2,
        sampler=SequentialSampler(range(ds_len)),
    )
    ys = [int(y) for _, yb in loader for y in yb]
    assert ys == [y for _, y in m.splits["train"]]


def test_unknown_split(tmp_path):
    from lspt_cli.data import build_dataset

    m = _prepared_imagefolder(tmp_path, per_class=2)
    with pytest.raises(DataError, match="no split 'dev'"):
        build_dataset(m, "dev", input_size=16, mean=MEAN, std=STD, train=False)


def test_registration_is_light():
    """Registering the datasets and loading prepare-data import neither torch nor scipy nor PIL."""
    import subprocess
    import sys

    code = (
        "import sys, lspt_plugins.datasets, lspt_cli.cli.prepare_data, lspt_cli.data;"
        "from lspt_cli.plugins import PluginHost;"
        "h = PluginHost(); h.add_plugin(lspt_plugins.datasets, 'datasets');"
        "assert len(h.datasets) == 5 + 19 + 2, h.datasets.names();"
        "bad = [m for m in ('torch', 'scipy', 'PIL', 'sklearn', 'numpy') if m in sys.modules];"
        "assert not bad, bad"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_every_registered_dataset_has_a_layout_and_factory():
    from lspt_cli.plugins import get_host
    from lspt_cli.plugins import resolve_factory

    host = get_host()
    names = host.datasets.names()
    assert {"cub", "nabirds", "flowers", "dogs", "cars", "imagefolder", "digits"} <= set(names)
    assert len([n for n in names if n.startswith("vtab/")]) == 19
    for spec in host.datasets:
        assert callable(resolve_factory(spec.prepare)) and spec.layout
        assert spec.benchmark in ("fgvc", "vtab", "custom")
