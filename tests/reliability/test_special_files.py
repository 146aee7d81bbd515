"""Special files: every input must be a regular file, checked before it is read (a FIFO never hangs,
`/dev/zero` is never read endlessly), and outputs only ever replace regular files (a device, a FIFO,
a socket or a directory at the output path is one `Error:` line and stays what it was). Output files
get the mode the umask gives (0644 under 022), not mkstemp's 0600.

In-process through the CLI app, each command under a SIGALRM watchdog: a hang fails the test instead
of blocking the suite.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import stat
from pathlib import Path

import pytest
from PIL import Image

from lspt_cli import atomic
from lspt_cli.errors import LsptError

from .conftest import assert_clean_error

WATCHDOG_S = 60


@contextlib.contextmanager
def watchdog(seconds: int = WATCHDOG_S):
    """Fail (not hang) if the block takes longer: a blocked open() of a FIFO is interrupted too."""
    def on_alarm(signum, frame):
        raise TimeoutError(f"hung for {seconds} s")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


def unix_socket(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    return sock


def run(cli_err, *args):
    with watchdog():
        return cli_err(*args)


@pytest.fixture
def image(tmp_path) -> Path:
    path = tmp_path / "digit.png"
    Image.new("L", (8, 8), 0).save(path)
    return path


# -- inputs ---------------------------------------------------------------------------------------
SPECIAL_KINDS = ("fifo", "dev-zero", "directory")


def special(kind: str, path: Path) -> Path:
    """A non-regular file at `path` (a FIFO, a symlink to /dev/zero, a directory)."""
    if kind == "fifo":
        return fifo(path)
    if kind == "dev-zero":
        path.symlink_to("/dev/zero")
        return path
    path.mkdir()
    return path


@pytest.mark.parametrize("kind", SPECIAL_KINDS)
@pytest.mark.parametrize("command", ["inspect", "eval", "predict", "explain", "export", "export-pt2"])
def test_special_file_as_bundle(cli_err, tmp_path, image, tally, kind, command):
    bundle = special(kind, tmp_path / "b.safetensors")
    args = {
        "inspect": ("inspect", bundle), "eval": ("eval", bundle), "predict": ("predict", bundle, image),
        "explain": ("explain", bundle, image, "-o", tmp_path / "maps"),
        "export": ("export", bundle, "-o", tmp_path / "out.safetensors"),
        "export-pt2": ("export", bundle, "--format", "pt2", "-o", tmp_path / "out.pt2"),
    }[command]
    code, out, err = run(cli_err, *args)
    assert_clean_error(code, out, err, str(bundle))
    assert not (tmp_path / "out.safetensors").exists() and not (tmp_path / "out.pt2").exists()
    tally.bad_input(f"{kind} as a bundle ({command})")


@pytest.mark.parametrize("kind", SPECIAL_KINDS)
def test_special_file_as_recipe(cli_err, tmp_path, tally, kind):
    recipe = special(kind, tmp_path / "r.toml")
    code, out, err = run(cli_err, "tune", "-b", "vit-tiny", "-t", "digits", "--recipe", recipe, "--dry-run")
    assert_clean_error(code, out, err, str(recipe), "recipe", exit_code=2)
    tally.bad_input(f"{kind} as a recipe")


@pytest.mark.parametrize("kind", SPECIAL_KINDS)
@pytest.mark.parametrize("command", ["predict", "explain"])
def test_special_file_as_image(cli_err, reference_bundle, tmp_path, tally, kind, command):
    img = special(kind, tmp_path / "x.png")
    args = ("predict", reference_bundle, img) if command == "predict" else ("explain", reference_bundle, img, "-o", tmp_path / "maps")
    code, out, err = run(cli_err, *args)
    assert_clean_error(code, out, err, str(img))
    tally.bad_input(f"{kind} as an image ({command})")


@pytest.mark.parametrize("kind", SPECIAL_KINDS)
def test_special_file_as_image_in_a_dataset(tmp_path, tally, kind):
    """Inside a training set, at the one image-open helper every loader, --verify and --cache use."""
    from lspt_cli.data.images import check_image, load_image
    from lspt_cli.errors import DataError

    img = special(kind, tmp_path / "x.png")
    with watchdog():
        with pytest.raises(DataError) as exc:
            load_image(img)
        assert str(img) in exc.value.message
        assert check_image(img) is not None
    tally.bad_input(f"{kind} as an image of a dataset")


@pytest.mark.parametrize("kind", SPECIAL_KINDS)
def test_special_file_as_weights(cli_err, reference_bundle, tmp_path, tally, kind):
    weights = special(kind, tmp_path / "w.pth")
    code, out, err = run(cli_err, "eval", reference_bundle, "--weights", weights)
    assert_clean_error(code, out, err, str(weights))
    tally.bad_input(f"{kind} as backbone weights")


@pytest.mark.parametrize("kind", SPECIAL_KINDS)
def test_special_file_as_manifest(cli_err, reference_bundle, isolated_lspt_home, tally, kind):
    from lspt_cli.data.manifest import load_manifest, manifest_path

    load_manifest("digits")  # prepared on first use
    path = manifest_path("digits")
    path.unlink()
    special(kind, path)
    code, out, err = run(cli_err, "eval", reference_bundle, "--task", "digits")
    assert_clean_error(code, out, err, "manifest")
    tally.bad_input(f"{kind} as a manifest")


@pytest.mark.parametrize("kind", SPECIAL_KINDS)
@pytest.mark.parametrize("name", ["train800.txt", "test.txt"])
def test_special_file_as_split_file(cli_err, tmp_path, tally, kind, name):
    root = tmp_path / "dtd"
    (root / "images").mkdir(parents=True)
    for i in range(4):
        Image.new("RGB", (8, 8)).save(root / "images" / f"{i}.png")
    for split in ("train800.txt", "val200.txt", "train800val200.txt", "test.txt"):
        (root / split).write_text("images/0.png 0\n")
    (root / name).unlink()
    special(kind, root / name)
    code, out, err = run(cli_err, "prepare-data", "vtab/dtd", "--root", root)
    assert_clean_error(code, out, err, name, exit_code=1)
    tally.bad_input(f"{kind} as a split file")


@pytest.mark.parametrize("kind", SPECIAL_KINDS)
def test_special_file_as_vpt_json_split(cli_err, tmp_path, tally, kind):
    root = tmp_path / "imgs"
    (root / "images").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(root / "images" / "0.png")
    for split in ("train800.txt", "val200.txt", "train800val200.txt", "test.txt"):
        (root / split).write_text("images/0.png 0\n")
    from lspt_cli.data.manifest import check_key  # noqa: F401  (the module the reader lives beside)
    from lspt_plugins.datasets.common import read_vpt_json
    from lspt_cli.errors import DataError

    for name in ("train.json", "val.json"):
        (root / name).write_text('{"images/0.png": 0}')
    (root / "test.json").unlink(missing_ok=True)
    special(kind, root / "test.json")
    with watchdog():
        with pytest.raises(DataError) as exc:
            read_vpt_json("cub", root, ["", "images"], 2, "")
    assert "test.json" in exc.value.message
    tally.bad_input(f"{kind} as a VPT json split")


@pytest.mark.parametrize("kind", SPECIAL_KINDS)
@pytest.mark.parametrize("name", ["config.json", "checkpoint.pt", "metrics.jsonl"])
def test_special_file_in_a_run_dir(cli_err, reference_bundle, tmp_path, tally, kind, name):
    run_dir = tmp_path / "run"
    shutil.copytree(reference_bundle.parent, run_dir)
    (run_dir / "summary.json").unlink()
    (run_dir / name).unlink()
    special(kind, run_dir / name)
    code, out, err = run(cli_err, "tune", "--resume", run_dir, "-q")
    assert_clean_error(code, out, err, name)
    tally.bad_input(f"{kind} as {name} (tune --resume)")


def test_regular_file_reader_refuses_every_special_kind(tmp_path, tally):
    sock = unix_socket(tmp_path / "sock")
    try:
        cases = {"fifo": fifo(tmp_path / "p"), "socket": tmp_path / "sock", "dev-zero": Path("/dev/zero"),
                 "dev-null": Path("/dev/null"), "directory": tmp_path, "missing": tmp_path / "absent"}
        expected = {"fifo": "FIFO", "socket": "socket", "dev-zero": "character device", "dev-null": "character device",
                    "directory": "directory", "missing": "not found"}
        for name, path in cases.items():
            with watchdog(), pytest.raises(LsptError) as exc:
                atomic.read_regular_bytes(path, "test input")
            assert str(path) in exc.value.message and expected[name] in exc.value.message, exc.value.message
            tally.bad_input(f"regular-file reader: {name}")
    finally:
        sock.close()
    big = tmp_path / "big"
    big.write_bytes(b"x" * 2048)
    with pytest.raises(LsptError, match="too large"):
        atomic.read_regular_bytes(big, "test input", max_bytes=1024)
    assert atomic.read_regular_bytes(big, "test input", max_bytes=4096) == b"x" * 2048
    tally.bad_input("regular-file reader: over the size cap")


# -- outputs --------------------------------------------------------------------------------------
def _output_targets(tmp_path: Path):
    """name -> (path, check that it is still what it was)."""
    fifo_path = fifo(tmp_path / "out.fifo")
    dev_link = tmp_path / "out-dev"
    dev_link.symlink_to("/dev/null")  # a device behind a link: the link must not become a file either
    folder = tmp_path / "out-dir"
    folder.mkdir()
    (folder / "keep").write_text("x")
    return {
        "fifo": (fifo_path, lambda: stat.S_ISFIFO(fifo_path.lstat().st_mode)),
        "device": (dev_link, lambda: dev_link.is_symlink() and stat.S_ISCHR(dev_link.stat().st_mode)),
        "directory": (folder, lambda: folder.is_dir() and (folder / "keep").read_text() == "x"),
    }


@pytest.mark.parametrize("command", ["export", "export-pt2", "report"])
def test_outputs_never_replace_special_files(cli_err, reference_bundle, tmp_path, tally, command):
    sock = unix_socket(tmp_path / "out.sock")
    try:
        targets = _output_targets(tmp_path)
        targets["socket"] = (tmp_path / "out.sock", lambda: stat.S_ISSOCK((tmp_path / "out.sock").lstat().st_mode))
        for name, (target, unchanged) in targets.items():
            args = {"export": ("export", reference_bundle, "-o", target),
                    "export-pt2": ("export", reference_bundle, "--format", "pt2", "-o", target),
                    "report": ("report", reference_bundle.parent, "-o", target)}[command]
            code, out, err = run(cli_err, *args)
            assert_clean_error(code, out, err, str(target), "regular file")
            assert unchanged(), f"{command} -o {name}: the {name} was replaced"
            assert not list(tmp_path.glob(".out*.tmp")), "a temp file was left behind"
            tally.bad_input(f"{command} -o a {name}")
    finally:
        sock.close()


def test_dev_full_is_refused_before_anything_is_written(tmp_path, tally):
    """The issue's case, checked without risking the machine's /dev/full: the path check itself."""
    from lspt_cli.errors import UsageError

    for device in ("/dev/full", "/dev/null", "/dev/zero"):
        before = os.lstat(device)
        with pytest.raises(UsageError, match="character device"):
            atomic.check_output_path(device)
        after = os.lstat(device)
        assert stat.S_ISCHR(after.st_mode) and after.st_rdev == before.st_rdev
        tally.bad_input(f"output path {device}")


def test_output_through_a_symlink_updates_its_target(cli_err, reference_bundle, tmp_path, tally):
    target = tmp_path / "real.safetensors"
    target.write_bytes(b"old")
    link = tmp_path / "link.safetensors"
    link.symlink_to(target)
    code, out, err = run(cli_err, "export", reference_bundle, "-o", link)
    assert code == 0, err
    from safetensors.torch import load_file

    assert link.is_symlink() and target.read_bytes() != b"old"
    exported, reference = load_file(str(target)), load_file(str(reference_bundle))
    assert exported.keys() == reference.keys() and all((exported[k] == reference[k]).all() for k in reference)
    tally.bad_input("export -o a symlink to a regular file (the link survives)")


@pytest.mark.parametrize("mask,mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664), (0o027, 0o640)])
def test_outputs_honour_the_umask(cli_err, reference_bundle, tmp_path, tally, mask, mode):
    old = os.umask(mask)
    try:
        for args, out_path in (
            (("export", reference_bundle, "-o", tmp_path / "b.safetensors"), tmp_path / "b.safetensors"),
            (("report", reference_bundle.parent, "-o", tmp_path / "r.md"), tmp_path / "r.md"),
        ):
            code, out, err = run(cli_err, *args)
            assert code == 0, err
            assert stat.S_IMODE(out_path.stat().st_mode) == mode, f"{out_path.name}: {oct(out_path.stat().st_mode)}"
        atomic.write_text(tmp_path / "x.json", "{}")
        assert stat.S_IMODE((tmp_path / "x.json").stat().st_mode) == mode
    finally:
        os.umask(old)
    tally.bad_input(f"outputs under umask {mask:03o}")


def test_run_dir_files_honour_the_umask(reference_bundle, tally):
    """The reference run was written under the test process's umask (022 in CI): files are 0644."""
    mask = os.umask(0)
    os.umask(mask)
    for path in reference_bundle.parent.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask, path.name
    tally.bad_input("run directory files honour the umask")
