"""Shared fixtures: isolated lspt dirs, no external plugins, tiny random-init ViTs."""

from __future__ import annotations

import os
import signal
from collections import Counter
from pathlib import Path

import pytest

# Never autoload the developer's installed third-party plugins; built-ins still load via entry points.
os.environ.setdefault("LSPT_LOAD_PLUGINS", "")
os.environ["NO_COLOR"] = "1"
os.environ.setdefault("LSPT_NO_PROGRESS", "1")
# Tiny ViTs gain nothing from intra-op threads, and OpenMP's spin-waiting makes them up to 50x
# slower when the cores are shared (other test processes, torchrun ranks). Inherited by subprocesses.
os.environ.setdefault("OMP_NUM_THREADS", "1")
# `amp = auto` (protocol lspt) means bf16 on CPUs with native bf16 (AVX512-BF16/AMX), fp32 elsewhere:
# the suite states the answer instead of reading the CPU, so no result depends on the machine.
# `LSPT_CPU_BF16=1 python -m pytest` runs it as on a native-bf16 CPU; tests of the detection itself
# unset it. Inherited by subprocesses (lspt_cli/engine/accel.py reads it).
os.environ.setdefault("LSPT_CPU_BF16", "0")
if os.environ.get("PYTEST_XDIST_WORKER"):  # `pytest -n N`: N workers x 1 thread, never more threads than cores
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = "1"

# The CLI's rich consoles (lspt_cli/cli/output.py) are module objects that pin COLUMNS/LINES as they
# are when first imported. Created here with both unset, they follow each test's monkeypatch.setenv
# ("COLUMNS", ...), whichever test imports the CLI first (`pytest -n` runs the tests in another order).
os.environ.pop("COLUMNS", None)
os.environ.pop("LINES", None)
import lspt_cli.cli.output  # noqa: E402,F401

# Started in the background (`nohup bash .ci/run &`, some CI runners), SIGINT is ignored, and an
# ignored signal stays ignored through fork and exec: the Ctrl-C tests' `lspt` processes would
# never see their SIGINT. Python's own handler is reset to the default by exec, so with it
# installed here every subprocess handles Ctrl-C as if started from a terminal.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

# The plugin kit's fixtures (lspt_home, lspt_cli, ...), the ones plugin authors use, serve the suite too.
pytest_plugins = ["lspt_cli.testing"]

TINY = dict(img_size=32, patch_size=8, embed_dim=64, depth=4, num_heads=4)


def shared_tmp(tmp_path_factory) -> Path:
    """A temp dir that every worker of this run sees (`pytest -n`: the workers' common base dir), for
    session results computed once per run under a file lock (filelock, as pytest-xdist documents)."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


@pytest.hookimpl(wrapper=True)
def pytest_collection_modifyitems(items):
    """`pytest -n`, after every other plugin's hook (xdist's included):

    - `xdist_group` made to work on pytest >= 9. `--dist loadgroup` sends a group to one worker by
      the "@<group>" suffix pytest-xdist (3.8) appends to each item's node id; it sets the suffix on
      `item._nodeid`, which pytest 9 no longer reads (the id lives in `item._id`). Without it the
      groups were dealt out like any test: two processes pip-installing plugins at once, a server
      or a trained run set up once per worker. The suffix is moved over here.
    - slow tests are handed out first (xdist deals work in collection order, after the xdist_group
      units), so that no long test starts last and runs alone at the end.
    Serial runs keep the file order."""
    result = yield
    if os.environ.get("PYTEST_XDIST_WORKER"):
        for item in items:
            suffixed = item.__dict__.get("_nodeid")
            if suffixed and hasattr(item, "_id") and item.nodeid != suffixed:
                from _pytest.nodeid import coerce_node_id

                item._id = coerce_node_id(suffixed)
        items.sort(key=lambda item: item.get_closest_marker("slow") is None)
    return result


# -- the reliability tally (tests/reliability/conftest.py's `tally` fixture) --------------------------
# Entries ride on each test's user_properties, so they reach this process's reports also from the
# workers of `pytest -n`; they count only if that test's call phase passed. Summed here, in the root
# conftest, because the controller of `pytest -n` loads this file, not tests/reliability/conftest.py.
TALLY = "lspt-tally"
TALLY_KINDS = {"fault": "faults survived", "bad_input": "bad inputs rejected cleanly",
               "fuzz": "fuzz examples (no crash, no hang)"}
_proven: list[tuple[str, str]] = []


def pytest_runtest_logreport(report):
    if report.when == "call" and report.passed:
        for name, value in report.user_properties:
            if name == TALLY:
                kind, what, n = value
                _proven.extend([(kind, what)] * n)


def pytest_terminal_summary(terminalreporter):
    if not _proven:
        return
    tr = terminalreporter
    tr.section("lspt reliability")
    cases = [what for kind, what in _proven if kind != "fuzz"]
    tr.write_line(f"hostile cases handled: {len(cases)} ({len(set(cases))} distinct labels), "
                  f"plus {sum(kind == 'fuzz' for kind, _ in _proven)} fuzz examples")
    for kind, label in TALLY_KINDS.items():
        whats = Counter(what for k, what in _proven if k == kind)
        tr.write_line(f"{label}: {sum(whats.values())}")
        for what, n in sorted(whats.items()):
            tr.write_line(f"    {n:4d}  {what}")


@pytest.fixture(autouse=True)
def isolated_lspt_home(lspt_home):
    """Every test gets its own LSPT_HOME and a fresh plugin host: the plugin kit's `lspt_home`
    (lspt_cli/testing.py), the same fixture plugin authors use."""
    return lspt_home


def make_tiny_vit(seed: int = 0, **overrides):
    """A small timm VisionTransformer (32 px, patch 8, depth 4, dim 64), deterministic init."""
    import torch
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(seed)
    cfg = dict(TINY, num_classes=0)
    cfg.update(overrides)
    return VisionTransformer(**cfg)


@pytest.fixture
def offline_caches(tmp_path_factory, monkeypatch):
    """Empty HF/torch caches and no downloads: no weights outside the test can leak into a backbone test."""
    root = tmp_path_factory.mktemp("caches")
    monkeypatch.setenv("HF_HOME", str(root / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(root / "hf" / "hub"))
    monkeypatch.setenv("TORCH_HOME", str(root / "torch"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("LSPT_ALLOW_DOWNLOAD", raising=False)
    return root


@pytest.fixture
def tiny_backbone():
    """A FrozenBackbone around a tiny ViT with CLS readout."""
    from lspt_cli.backbone import FrozenBackbone

    return FrozenBackbone(make_tiny_vit(), name="tiny-test", readout="cls")


@pytest.fixture
def tiny_backbone_mean():
    """The same tiny ViT with MAE's mean readout."""
    from lspt_cli.backbone import FrozenBackbone

    return FrozenBackbone(make_tiny_vit(), name="tiny-test-mean", readout="mean")


@pytest.fixture
def cli():
    """Invoke the CLI in-process: cli("list", "strategies", "--json") -> the kit's CliResult
    (exit_code, stdout, stderr, output, exception, json), through the kit's own run_cli."""
    from lspt_cli.testing import run_cli

    def invoke(*args, input=None):
        return run_cli(*args, input=input)

    return invoke


# -- helpers shared by test modules (`from conftest import ...`) ----------------------------------
def cli_in_own_home(home: Path, *args):
    """Invoke the CLI in-process under its own LSPT_HOME: for module-scoped fixtures, which are set up
    before (and outlive) each test's isolated_lspt_home."""
    from lspt_cli.testing import run_cli

    return run_cli(*args, home=home)


def free_port() -> int:
    """A free loopback port (torchrun's rendezvous; a fixed one collides under `pytest -n` or a second run)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def colour_image_folder(root: Path, classes: tuple[str, ...], per_split: dict[str, int], size=(30, 30), seed: int = 0) -> Path:
    """An image folder (`root/<split>/<class>/<i>.png`) whose class k is noise on a bright channel k:
    learnable in a step or two, for tests that prepare a real `imagefolder` task."""
    import torch
    from PIL import Image

    g = torch.Generator().manual_seed(seed)
    for split, n in per_split.items():
        for c, name in enumerate(classes):
            (root / split / name).mkdir(parents=True)
            for i in range(n):
                base = torch.zeros(*size, 3)
                base[..., c] = 150
                pixels = (base + torch.rand(*size, 3, generator=g) * 105).to(torch.uint8).numpy()
                Image.fromarray(pixels).save(root / split / name / f"{i}.png")
    return root


def mini_digits(name: str = "mini", n_train: int = 48, n_val: int = 24, n_test: int = 24):
    """A prepared task: the first images of digits' own splits (same array, fewer rows)."""
    from lspt_cli.data.manifest import save_manifest, task_dir
    from lspt_plugins.datasets.digits import prepare_digits

    m = prepare_digits(out_dir=task_dir(name), task_id=name)
    train, val, test = m.splits["train"][:n_train], m.splits["val"][:n_val], m.splits["test"][:n_test]
    m.splits = {"train": train, "val": val, "test": test, "trainval": train + val}
    save_manifest(m)
    return m


def interrupt_after(monkeypatch, stop_epoch: int, batches: int) -> None:
    """Send Ctrl-C to this process after `batches` training batches of `stop_epoch` (0-based)."""
    from lspt_cli.engine import train

    original = train.Trainer.loader

    def loader(self, split, train, order=None, epoch=0):
        inner = original(self, split, train, order, epoch)
        if not (train and epoch == stop_epoch):
            return inner

        def batches_then_interrupt():
            for i, batch in enumerate(inner):
                if i == batches:
                    os.kill(os.getpid(), signal.SIGINT)
                yield batch

        return batches_then_interrupt()

    monkeypatch.setattr(train.Trainer, "loader", loader)
