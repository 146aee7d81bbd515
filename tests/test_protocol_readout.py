"""Issue 10 item 4: the MAE readouts. VPT's (`mean-ln`) and GaPT's (`mean-norm`) are checked against
re-implementations of the official forward_features written here from their files:

- VPT, KMnP/vpt@4410440 src/models/vit_backbones/vit_mae.py:17-47: with global_pool=True the
  model deletes `norm` and builds `fc_norm = LayerNorm(D, eps=1e-6)`; forward_features averages the
  tokens after CLS and applies fc_norm. The checkpoint holds no fc_norm (load_state_dict
  strict=False, build_vit_backbone.py:60), so it keeps weight 1 and bias 0, frozen (vit_models.py:319-322).
- GaPT, ryongithub/GatedPromptTuning@dd7d1ea src/models/vit_backbones/vit_mae.py:89,105-107: the
  same mean, then the checkpoint's `norm`.
"""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from conftest import make_tiny_vit


def official_features(vit, images, kind: str) -> torch.Tensor:
    """forward_features of the official MAE ViTs on a timm ViT's weights (no prompts)."""
    if kind == "vpt":
        fc_norm = nn.LayerNorm(vit.embed_dim, eps=1e-6)  # VPT's fc_norm, never loaded, never trained
        fc_norm.load_state_dict({k: v for k, v in vit.state_dict().items() if k.startswith("fc_norm.")}, strict=False)
    b = images.shape[0]
    x = vit.patch_embed(images)
    x = torch.cat((vit.cls_token.expand(b, -1, -1), x), dim=1)
    x = x + vit.pos_embed
    for blk in vit.blocks:
        x = blk(x)
    x = x[:, 1:, :].mean(dim=1)  # global pool without cls token
    return fc_norm(x) if kind == "vpt" else vit.norm(x)


@pytest.fixture
def trained_norm_vit():
    """A tiny ViT whose final norm has a non-trivial affine, as a pre-trained one has."""
    vit = make_tiny_vit(seed=3)
    with torch.no_grad():
        vit.norm.weight.uniform_(0.5, 1.5)
        vit.norm.bias.uniform_(-0.5, 0.5)
    return vit.eval()


@pytest.mark.parametrize("readout,kind", [("mean-ln", "vpt"), ("mean-norm", "gapt")])
def test_readouts_equal_the_official_forward(trained_norm_vit, readout, kind):
    from lspt_cli.backbone import FrozenBackbone
    from lspt_cli.prompted import PromptedViT, PromptStrategy

    backbone = FrozenBackbone(trained_norm_vit, name="tiny-mae", readout="mean-norm")
    model = PromptedViT(backbone, PromptStrategy(backbone.dims), 5, readout=readout).eval()
    images = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        ours = model.forward_features(images)
        theirs = official_features(trained_norm_vit, images, kind)
        other = official_features(trained_norm_vit, images, "gapt" if kind == "vpt" else "vpt")
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    assert (ours - other).abs().max() > 0.1  # the two readouts are different functions


def test_mean_ln_is_the_plain_standardisation_of_the_mean_token(trained_norm_vit):
    from lspt_cli.backbone import FrozenBackbone

    backbone = FrozenBackbone(trained_norm_vit, name="tiny-mae", readout="mean-ln")
    tokens = torch.randn(2, 1 + 7, 64) * 3 + 1  # CLS + 7 tokens (prompts and patches alike)
    pooled = tokens[:, 1:].double().mean(dim=1)
    expected = (pooled - pooled.mean(-1, keepdim=True)) / torch.sqrt(pooled.var(-1, unbiased=False, keepdim=True) + 1e-6)
    torch.testing.assert_close(backbone.read_out(tokens).double(), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(backbone.read_out(tokens, "cls"), trained_norm_vit.norm(tokens)[:, 0])
    assert backbone.read_out(tokens, "mean") .equal(backbone.read_out(tokens, "mean-norm"))  # the old name
    with pytest.raises(ValueError, match="unknown readout"):
        backbone.read_out(tokens, "avg")


def test_mae_recipes_pick_their_papers_readout_and_list_shows_the_default(cli):
    from lspt_cli.plugins import get_host
    from lspt_cli.recipes import resolve_config

    host = get_host()
    for strategy, expected in (("vpt-shallow", "mean-ln"), ("vpt-deep", "mean-ln"), ("linear", "mean-ln"),
                               ("gapt", "mean-norm"), ("lspt", "mean-norm")):
        for task, benchmark in (("cub", "fgvc"), ("vtab/dtd", "vtab")):
            config = resolve_config(backbone="mae-vitb", strategy=strategy, task=task, benchmark=benchmark,
                                    registered_recipes=host.recipes)
            assert config.train.readout == expected, (strategy, task)
    rows = {r["name"]: r for r in json.loads(cli("list", "backbones", "--json").stdout)}
    assert rows["mae-vitb"]["readout"] == "mean-norm" and rows["mocov3-vitb"]["readout"] == "cls"
    result = cli("tune", "--backbone", "vit-tiny", "--task", "digits", "--readout", "avg", "--dry-run")
    assert result.exit_code != 0 and "readout" in result.stderr
    doc = json.loads(cli("tune", "--backbone", "vit-tiny", "--task", "digits", "--readout", "mean-ln", "--dry-run").stdout)
    assert doc["train"]["readout"] == "mean-ln"


def test_bundles_record_the_readout_and_load_it(tmp_path):
    from lspt_cli import bundle
    from lspt_cli.engine.restore import model_from_bundle
    from lspt_cli.engine.train import Trainer
    from lspt_cli.errors import BundleError
    from lspt_cli.plugins import get_host
    from lspt_cli.prompted import forward_shared
    from lspt_cli.recipes import resolve_config

    paths = {}
    for readout in ("mean-ln", "cls"):
        config = resolve_config(backbone="vit-tiny", strategy="vpt-shallow", task="digits", benchmark="custom",
                                registered_recipes=get_host().recipes, strategy_overrides={"num_prompts": 2},
                                train_overrides=dict(epochs=1, batch_size=64, device="cpu", threads=1, readout=readout))
        summary = Trainer(config, tmp_path / readout).run()
        assert summary["readout"] == readout
        paths[readout] = tmp_path / readout / "bundle.safetensors"
        assert bundle.read_header(paths[readout]).backbone["readout"] == readout
    ln, _ = model_from_bundle(paths["mean-ln"])
    cls, _ = model_from_bundle(paths["cls"], backbone=ln.backbone)  # one backbone, two readouts
    assert (ln.readout, cls.readout) == ("mean-ln", "cls")
    images = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        shared = forward_shared([ln, cls], images)
        torch.testing.assert_close(shared[0], ln(images), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(shared[1], cls(images), rtol=1e-5, atol=1e-5)
        plain = model_from_bundle(paths["mean-ln"])[0]
        plain.readout = plain.backbone.readout  # what a loader ignoring the recorded readout builds: cls
        assert (plain(images) - ln(images)).abs().max() > 1e-3

    # a readout this lspt does not know is refused, naming it
    loaded = bundle.load(paths["mean-ln"])
    meta = dict(loaded.header.metadata)
    meta["lspt.backbone"] = json.dumps({**loaded.header.backbone, "readout": "attention-pool"})
    bad = tmp_path / "bad.safetensors"
    bundle.save(bad, loaded.tensors, meta)
    with pytest.raises(BundleError, match="attention-pool"):
        model_from_bundle(bad)
