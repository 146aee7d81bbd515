"""Shared fixtures: isolated lspt dirs, no external plugins, tiny random-init ViTs."""

from __future__ import annotations

import os
import signal

import pytest

# Never autoload the developer's installed third-party plugins; built-ins still load via entry points.
os.environ.setdefault("LSPT_LOAD_PLUGINS", "")
os.environ["NO_COLOR"] = "1"
os.environ.setdefault("LSPT_NO_PROGRESS", "1")
# Tiny ViTs gain nothing from intra-op threads, and OpenMP's spin-waiting makes them up to 50x
# slower when the cores are shared (other test processes, torchrun ranks). Inherited by subprocesses.
os.environ.setdefault("OMP_NUM_THREADS", "1")

TINY = dict(img_size=32, patch_size=8, embed_dim=64, depth=4, num_heads=4)


@pytest.fixture(autouse=True)
def isolated_lspt_home(tmp_path_factory, monkeypatch):
    """Every test gets its own LSPT_HOME, and a fresh plugin host."""
    home = tmp_path_factory.mktemp("lspt_home")
    monkeypatch.setenv("LSPT_HOME", str(home))
    for var in ("LSPT_CACHE_DIR", "LSPT_DATA_DIR", "LSPT_CONFIG_DIR", "LSPT_STRICT_PLUGINS", "LSPT_DEBUG"):
        monkeypatch.delenv(var, raising=False)
    from lspt_cli import paths, plugins

    paths.clear_overrides()
    plugins.reset_host()
    yield home
    paths.clear_overrides()
    plugins.reset_host()


def make_tiny_vit(seed: int = 0, **overrides):
    """A small timm VisionTransformer (32 px, patch 8, depth 4, dim 64), deterministic init."""
    import torch
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(seed)
    cfg = dict(TINY, num_classes=0)
    cfg.update(overrides)
    return VisionTransformer(**cfg)


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
    """Invoke the CLI in-process: cli("list", "strategies", "--json") -> click Result."""
    from typer.testing import CliRunner

    from lspt_cli.cli import create_app

    def invoke(*args, input=None):
        app = create_app()
        return CliRunner().invoke(app, list(args), input=input, catch_exceptions=False)

    return invoke


# -- helpers shared by test modules (`from conftest import ...`) ----------------------------------
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
