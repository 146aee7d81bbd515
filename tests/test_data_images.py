"""Images (modes, corrupt files), `--verify`, and the decoded-image cache against the decoded path."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from lspt_cli.errors import DataError

MEAN = (0.5, 0.5, 0.5)
STD = (0.25, 0.25, 0.25)


def rgb_array(w, h, seed=0):
    return (np.random.default_rng(seed).random((h, w, 3)) * 255).astype(np.uint8)


def make_folder(root: Path, sizes, classes=("a", "b")) -> Path:
    from PIL import Image

    k = 0
    for c in classes:
        for split in ("train", "test"):
            for (w, h) in sizes:
                k += 1
                p = root / split / c / f"{k}.jpg"
                p.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(rgb_array(w, h, k)).save(p, quality=92)
    return root


@pytest.mark.parametrize("mode", ["L", "LA", "P", "RGBA", "CMYK", "I;16", "I", "F", "1", "P-transparent"])
def test_modes_convert_to_rgb(tmp_path, mode):
    from PIL import Image

    from lspt_cli.data.images import load_image

    base = Image.fromarray(rgb_array(12, 10))
    if mode == "I;16":
        img = Image.fromarray((np.arange(120, dtype=np.uint16).reshape(10, 12) * 500))
    elif mode == "P-transparent":
        img = base.convert("P")
        img.info["transparency"] = 0
    else:
        img = base.convert(mode)
    fmt, ext = ("TIFF", ".tif") if mode in ("CMYK", "F", "I") else ("PNG", ".png")
    path = tmp_path / f"x{ext}"
    img.save(path, format=fmt)
    out = load_image(path)
    assert out.mode == "RGB" and out.size == (12, 10)


def test_16bit_png_keeps_contrast(tmp_path):
    from PIL import Image

    from lspt_cli.data.images import load_image

    arr = np.linspace(0, 65535, 120, dtype=np.uint16).reshape(10, 12)
    Image.fromarray(arr).save(tmp_path / "d.png")
    out = np.asarray(load_image(tmp_path / "d.png"))
    assert out.min() == 0 and out.max() == 255


def test_bad_images_name_the_path(tmp_path):
    from PIL import Image

    from lspt_cli.data.images import load_image

    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    garbage = tmp_path / "garbage.jpg"
    garbage.write_bytes(b"not a jpeg at all" * 10)
    good = tmp_path / "good.jpg"
    Image.fromarray(rgb_array(64, 48)).save(good, quality=95)
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    folder = tmp_path / "folder.jpg"
    folder.mkdir()
    for path, what in ((empty, "0 bytes"), (garbage, "corrupt"), (truncated, "truncated"), (folder, "directory")):
        with pytest.raises(DataError) as exc:
            load_image(path)
        assert str(path) in exc.value.message and what in exc.value.message
    with pytest.raises(DataError, match="not found"):
        load_image(tmp_path / "missing.jpg")


def test_loader_raises_on_corrupt_image(tmp_path):
    from lspt_cli.data import build_loader, save_manifest
    from lspt_plugins.datasets.imagefolder import prepare_imagefolder

    root = make_folder(tmp_path / "d", [(20, 16)] * 2)
    bad = sorted((root / "train" / "a").iterdir())[0]
    bad.write_bytes(b"\xff\xd8\xff garbage")
    m = prepare_imagefolder(root)
    save_manifest(m)
    loader = build_loader(m, "trainval", input_size=16, mean=MEAN, std=STD, train=True, batch_size=8)
    with pytest.raises(DataError, match=str(bad)):
        list(loader)


def test_cli_verify_reports_corrupt(cli, tmp_path, isolated_lspt_home):
    root = make_folder(tmp_path / "d", [(20, 16)] * 2)
    bad = sorted((root / "test" / "b").iterdir())[0]
    bad.write_bytes(b"")
    r = cli("prepare-data", "imagefolder", "--root", str(root), "--verify")
    assert r.exit_code == 1 and str(bad) in r.stderr and "1 corrupt image" in r.stderr
    assert not list((isolated_lspt_home / "data").rglob("manifest.json"))
    r = cli("prepare-data", "imagefolder", "--root", str(root))  # without --verify the layout is fine
    assert r.exit_code == 0
    from PIL import Image

    Image.fromarray(rgb_array(20, 16)).save(bad, format="JPEG")
    r = cli("prepare-data", "imagefolder", "--root", str(root), "--verify", "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["tasks"][0]["verify"] == {"checked": 8, "corrupt": []}


# -- the cache ------------------------------------------------------------------------------------------
SIZES = [(50, 40), (40, 50), (45, 45), (80, 30), (30, 75)]  # landscape, portrait, square, elongated both ways


def _prepared(cli, tmp_path, input_size=24, extra=()):
    from lspt_cli.data import load_manifest

    root = make_folder(tmp_path / "d", SIZES)
    r = cli("prepare-data", "imagefolder", "--root", str(root), "--cache", "--input-size", str(input_size), "--json", *extra)
    assert r.exit_code == 0, r.output
    return load_manifest("imagefolder"), json.loads(r.stdout)["tasks"][0]["cache"]


def _all(m, split, train, use_cache, seed=0, epoch=0, input_size=24, workers=0):
    import torch

    from lspt_cli.data import build_loader

    loader = build_loader(
        m, split, input_size=input_size, mean=MEAN, std=STD, train=train, batch_size=4, seed=seed,
        epoch=epoch, shuffle=False, use_cache=use_cache, num_workers=workers,
    )
    assert loader.dataset.cached == use_cache
    return torch.cat([x for x, _ in loader])


def test_cache_is_used_and_matches_decoding(cli, tmp_path):
    import torch

    m, info = _prepared(cli, tmp_path)
    # every image as resized, true aspect kept: 80x30 -> 72x27 and 30x75 -> 27x67 (largest h, w shown)
    assert info["images"] == 20 and info["stored"] == [67, 72, 3] and not info["reused"]
    assert Path(info["path"]).name == "cache-crop-24.bin"
    n = len(m.splits["trainval"])
    # eval and train augmentation: bit-for-bit the decoded path's, elongated images included
    assert torch.equal(_all(m, "trainval", False, False), _all(m, "trainval", False, True))
    dec, cac = _all(m, "trainval", True, False, seed=3, epoch=1), _all(m, "trainval", True, True, seed=3, epoch=1)
    assert torch.equal(dec, cac)
    assert dec.shape == (n, 3, 24, 24)


def test_cache_workers_and_reuse(cli, tmp_path):
    import torch

    m, info = _prepared(cli, tmp_path)
    a = _all(m, "train", True, True, seed=1, epoch=4)
    b = _all(m, "train", True, True, seed=1, epoch=4, workers=2)
    assert torch.equal(a, b)
    r = cli("prepare-data", "imagefolder", "--root", m.root.rsplit("/", 0)[0], "--cache", "--input-size", "24", "--json")
    assert json.loads(r.stdout)["tasks"][0]["cache"]["reused"] is True


def test_cache_for_another_size_or_stale_is_ignored(cli, tmp_path):
    from lspt_cli.data import build_dataset, save_manifest

    m, info = _prepared(cli, tmp_path)
    assert not build_dataset(m, "test", input_size=32, mean=MEAN, std=STD, train=False).cached
    assert build_dataset(m, "test", input_size=24, mean=MEAN, std=STD, train=False).cached
    m.splits["test"] = m.splits["test"][:-1]  # the manifest changed: its fingerprint no longer matches
    save_manifest(m)
    assert not build_dataset(m, "test", input_size=24, mean=MEAN, std=STD, train=False).cached


def test_vtab_cache_is_exact(cli, tmp_path):
    import sys

    import torch

    sys.path.insert(0, str(Path(__file__).parent))
    from test_data_layouts import make_vtab_task

    from lspt_cli.data import load_manifest

    make_vtab_task(tmp_path / "v" / "dtd")
    r = cli("prepare-data", "vtab/dtd", "--root", str(tmp_path / "v"), "--cache", "--input-size", "16", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["tasks"][0]["cache"]["stored"] == [16, 16, 3]
    m = load_manifest("vtab/dtd")
    assert torch.equal(_all(m, "test", False, False, input_size=16), _all(m, "test", False, True, input_size=16))
    assert torch.equal(_all(m, "train", True, False, input_size=16), _all(m, "train", True, True, input_size=16))


def test_digits_cache_note(cli):
    r = cli("prepare-data", "digits", "--cache", "--json")
    assert r.exit_code == 0 and "no cache needed" in json.loads(r.stdout)["tasks"][0]["cache"]["note"]
