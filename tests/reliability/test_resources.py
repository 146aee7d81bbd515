"""Resource bombs and absurd sizes: a decompression-bomb image, a recipe from /dev/zero or nested 5000
deep, a bundle header or split file claiming gigabytes: one `Error:` line naming the file (no PIL
warning around it, no MemoryError, no RecursionError), through every command that reads them.
Also: Ctrl-C during `prepare-data --cache` exits 130 and leaves no cache that looks complete.
"""

from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import time
import zlib
from pathlib import Path

import pytest
from PIL import Image

from .conftest import assert_clean_error, lspt_cmd, lspt_env


def png_header(path: Path, width: int, height: int, color_type: int = 2, bit_depth: int = 8) -> Path:
    """A PNG that declares width x height but holds one tiny IDAT: PIL refuses it at open() (by
    its size), so a bomb costs nothing to build."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16))
                     + chunk(b"IEND", b""))
    return path


# PIL's limits: a warning above MAX_IMAGE_PIXELS (89.5 M), an error above twice that
BOMBS = {
    "30000x30000 RGB": (30000, 30000, 2, 8),
    "10000x10000 RGB (PIL would only warn)": (10000, 10000, 2, 8),
    "65535x65535 grey 16-bit": (65535, 65535, 0, 16),
    "1x200000000 strip": (1, 200_000_000, 0, 8),
}


def assert_no_bomb_noise(err: str) -> None:
    assert "DecompressionBomb" not in err.replace("decompression bomb", ""), err
    assert "Warning" not in err, err


@pytest.mark.parametrize("bomb", list(BOMBS))
@pytest.mark.parametrize("command", ["predict", "explain"])
def test_bomb_image_via_predict_and_explain(cli_err, reference_bundle, tmp_path, tally, bomb, command):
    img = png_header(tmp_path / "bomb.png", *BOMBS[bomb])
    args = ("predict", reference_bundle, img) if command == "predict" else ("explain", reference_bundle, img, "-o", tmp_path / "maps")
    code, out, err = cli_err(*args)
    assert_clean_error(code, out, err, str(img), "too large to decode safely", exit_code=1)
    assert_no_bomb_noise(err)
    assert not (tmp_path / "maps").exists() or not any((tmp_path / "maps").iterdir())
    tally.bad_input(f"decompression bomb {bomb} via {command}")


def _imagefolder(root: Path, bomb: tuple | None) -> Path:
    for c in "ab":
        (root / "train" / c).mkdir(parents=True, exist_ok=True)
        for i in range(5):
            Image.new("RGB", (12, 12), (40 * i, 0, 0)).save(root / "train" / c / f"{i}.png")
    if bomb is not None:
        png_header(root / "train" / "a" / "zz-bomb.png", *bomb)
    return root


@pytest.mark.parametrize("bomb", list(BOMBS)[:2])
@pytest.mark.parametrize("flag", ["--verify", "--cache"])
def test_bomb_image_via_prepare_data(cli_err, tmp_path, isolated_lspt_home, tally, bomb, flag):
    root = _imagefolder(tmp_path / "imgs", BOMBS[bomb])
    code, out, err = cli_err("prepare-data", "imagefolder", "--root", root, "--name", "bombs", flag, "-j", "0", "-q")
    assert_clean_error(code, out, err, "zz-bomb.png", "too large to decode safely", exit_code=1)
    assert_no_bomb_noise(err)
    task_dir = isolated_lspt_home / "data" / "tasks" / "bombs"
    assert not (task_dir / "manifest.json").exists(), "a manifest was written despite the bomb"
    assert not list(task_dir.glob("cache-*")) if task_dir.exists() else True
    tally.bad_input(f"decompression bomb {bomb} via prepare-data {flag}")


def test_bomb_image_via_tune(cli_err, tmp_path, isolated_lspt_home, tally):
    root = _imagefolder(tmp_path / "imgs", BOMBS["30000x30000 RGB"])
    code, out, err = cli_err("prepare-data", "imagefolder", "--root", root, "--name", "bombs", "-q")
    assert code == 0, err  # without --verify, images are not opened at prepare time
    code, out, err = cli_err("tune", "-b", "vit-tiny", "-t", "bombs", "-s", "linear", "--epochs", "1", "--batch-size", "4",
                             "--out", tmp_path / "run", "-q")
    assert_clean_error(code, out, err, "zz-bomb.png", "too large to decode safely", exit_code=1)
    assert_no_bomb_noise(err)
    tally.bad_input("decompression bomb in a training set (tune)")


RECIPES = {
    "array nested 5000 deep": ("x = " + "[" * 5000 + "]" * 5000 + "\n", "nested too deeply"),
    "inline tables nested 5000 deep": ("x = " + "{a = " * 5000 + "1" + "}" * 5000 + "\n", "nested too deeply"),
    "2 MiB of comments": ("# " + "x" * (2 * 2**20) + "\n", "too large"),
    "NUL bytes": ("\0" * 100, "malformed TOML"),
}


@pytest.mark.parametrize("case", list(RECIPES))
def test_absurd_recipes(cli_err, tmp_path, tally, case):
    text, needle = RECIPES[case]
    recipe = tmp_path / "r.toml"
    recipe.write_text(text)
    code, out, err = cli_err("tune", "-b", "vit-tiny", "-t", "digits", "--recipe", recipe, "--dry-run")
    assert_clean_error(code, out, err, str(recipe), needle, exit_code=2)
    tally.bad_input(f"recipe: {case}")


def _sparse(path: Path, size: int, head: bytes = b"") -> Path:
    with open(path, "wb") as fh:
        fh.write(head)
        fh.truncate(size)
    return path


BUNDLE_HEADERS = {
    "header claims 50 MiB": (lambda p: _sparse(p, 60 * 2**20, struct.pack("<Q", 50 * 2**20) + b"{"), "header claims"),
    "header claims 2^63 bytes": (lambda p: _sparse(p, 4096, struct.pack("<Q", 2**63) + b"{"), "header claims"),
    "header nested 100000 deep": (lambda p: p.write_bytes(struct.pack("<Q", 200_000) + b"[" * 100_000 + b"]" * 100_000), "corrupt safetensors header"),
    "a 5 GiB sparse file": (lambda p: _sparse(p, 5 * 2**30, struct.pack("<Q", 2) + b"{}"), "too large"),
}


@pytest.mark.parametrize("case", list(BUNDLE_HEADERS))
@pytest.mark.parametrize("command", ["inspect", "eval"])
def test_absurd_bundle_sizes(cli_err, tmp_path, tally, case, command):
    make, needle = BUNDLE_HEADERS[case]
    path = tmp_path / "b.safetensors"
    make(path)
    code, out, err = cli_err(command, path)
    assert_clean_error(code, out, err, str(path), needle, exit_code=1)
    tally.bad_input(f"bundle: {case} ({command})")


def test_absurd_split_file_and_metrics_sizes(cli_err, reference_bundle, tmp_path, tally):
    import shutil

    root = tmp_path / "dtd"
    (root / "images").mkdir(parents=True)
    for split in ("val200.txt", "train800val200.txt", "test.txt"):
        (root / split).write_text("images/0.png 0\n")
    _sparse(root / "train800.txt", 300 * 2**20)
    code, out, err = cli_err("prepare-data", "vtab/dtd", "--root", root)
    assert_clean_error(code, out, err, "train800.txt", "too large", exit_code=1)
    tally.bad_input("split file: 300 MiB")
    run = tmp_path / "run"
    shutil.copytree(reference_bundle.parent, run)
    (run / "summary.json").unlink()
    _sparse(run / "metrics.jsonl", 100 * 2**20)
    code, out, err = cli_err("tune", "--resume", run, "-q")
    assert_clean_error(code, out, err, "metrics.jsonl", "too large", exit_code=1)
    tally.bad_input("metrics.jsonl: 100 MiB")
    (run / "metrics.jsonl").unlink()
    _sparse(run / "config.json", 100 * 2**20)
    code, out, err = cli_err("tune", "--resume", run, "-q")
    assert_clean_error(code, out, err, "config.json", "too large", exit_code=1)
    tally.bad_input("config.json: 100 MiB")


@pytest.mark.parametrize("workers", ["0", "2"])
def test_ctrl_c_during_prepare_data_cache(tmp_path, tally, workers):
    """SIGINT while the cache is being decoded: exit 130, no manifest, no cache index (the only
    thing that makes a cache usable), no temp file left."""
    home = tmp_path / "home"
    root = tmp_path / "imgs"
    for c in "ab":
        (root / "train" / c).mkdir(parents=True)
        for i in range(150):
            Image.new("RGB", (300, 200), (i, 0, 0)).save(root / "train" / c / f"{i}.png")
    task_dir = home / "data" / "tasks" / "big"
    proc = subprocess.Popen(lspt_cmd("prepare-data", "imagefolder", "--root", str(root), "--name", "big", "--cache",
                                     "-j", workers, "--input-size", "224"),
                            env=lspt_env(home), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not list(task_dir.glob(".cache-*.tmp")):
            assert proc.poll() is None, f"prepare-data ended before caching: {proc.communicate()}"
            assert time.monotonic() < deadline, "the cache never started"
            time.sleep(0.01)
        time.sleep(0.3)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, (proc.returncode, err)
    assert "Traceback" not in err and "Interrupted" in err
    assert not (task_dir / "manifest.json").exists()
    assert not list(task_dir.glob("cache-*.json")), "a cache index (a usable-looking cache) was written"
    assert not list(task_dir.glob("*.tmp")) and not list(task_dir.glob(".*.tmp")), "temp files left"
    tally.fault(f"Ctrl-C during prepare-data --cache (-j {workers})")
