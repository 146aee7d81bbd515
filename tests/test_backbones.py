"""Built-in backbones: registration, official checkpoint layouts, strict loading, caches, offline.

Every checkpoint is synthetic: written by the test from a tiny timm ViT's state dict in the exact
layout of the official file (the ViT-B loaders take a `model_kwargs` override for the tiny size).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from conftest import TINY, make_tiny_vit
from lspt_cli.backbone import FrozenBackbone
from lspt_cli.errors import WeightsError
from lspt_plugins.backbones import catalog, timm_vit

TINY_B16 = dict(TINY)  # the ViT-B loaders, shrunk: same timm class and key layout


@pytest.fixture(autouse=True)
def no_external_weights(offline_caches):
    return offline_caches


def tiny_state(seed: int = 1) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in make_tiny_vit(seed=seed).state_dict().items()}


def assert_loaded(backbone: FrozenBackbone, expected: dict[str, torch.Tensor]) -> None:
    got = backbone.model.state_dict()
    assert sorted(got) == sorted(expected)
    for key, value in expected.items():
        assert torch.equal(got[key], value), key


def moco_head(prefix: str, dim: int, hidden: int = 16, out: int = 8) -> dict[str, torch.Tensor]:
    """MoCo v3's 3-layer projection MLP (Linear no bias, BatchNorm1d, ..., last BN affine=False)."""
    sd = {
        f"{prefix}0.weight": torch.randn(hidden, dim),
        f"{prefix}1.weight": torch.ones(hidden),
        f"{prefix}1.bias": torch.zeros(hidden),
        f"{prefix}1.running_mean": torch.zeros(hidden),
        f"{prefix}1.running_var": torch.ones(hidden),
        f"{prefix}1.num_batches_tracked": torch.tensor(5),
        f"{prefix}3.weight": torch.randn(out, hidden),
        f"{prefix}4.running_mean": torch.zeros(out),
        f"{prefix}4.running_var": torch.ones(out),
        f"{prefix}4.num_batches_tracked": torch.tensor(5),
    }
    return sd


def write_moco_ssl(path: Path, encoder: dict[str, torch.Tensor]) -> Path:
    dim = encoder["cls_token"].shape[-1]
    sd = {f"module.base_encoder.{k}": v for k, v in encoder.items()}
    sd.update({f"module.base_encoder.{k}": v for k, v in moco_head("head.", dim).items()})
    sd.update({f"module.momentum_encoder.{k}": v + 1 for k, v in encoder.items()})
    sd.update({f"module.momentum_encoder.{k}": v for k, v in moco_head("head.", dim).items()})
    sd.update({f"module.predictor.{k}": v for k, v in moco_head("", 8).items()})
    # the real file also carries the optimizer and AMP scaler state: plain containers, weights_only-safe
    torch.save(
        {
            "epoch": 300,
            "arch": "vit_base",
            "state_dict": sd,
            "optimizer": {"state": {}, "param_groups": [{"lr": 1e-4, "params": [0, 1]}]},
            "scaler": {"scale": 65536.0, "growth_factor": 2.0},
        },
        path,
    )
    return path


# -- registration ---------------------------------------------------------------------------------
def test_all_builtin_backbones_registered_through_the_entry_point():
    from lspt_cli.plugins import get_host

    host = get_host()
    expected = {"mae-vitb": "mean-norm", "mocov3-vitb": "cls", "sup-vitb": "cls", "vit-tiny": "cls"}
    for name, readout in expected.items():
        spec = host.backbones.get(name)
        assert spec.readout == readout
        assert host.backbones.provider(name) == "backbones"
        assert isinstance(spec.factory, str) and spec.factory.startswith("lspt_plugins.backbones.timm_vit:")
    assert host.records["backbones"].builtin
    tiny = host.backbones.get("vit-tiny")
    assert (tiny.embed_dim, tiny.depth, tiny.num_prefix_tokens) == (64, 4, 1)
    assert (host.backbones.get("mae-vitb").embed_dim, host.backbones.get("mae-vitb").depth) == (768, 12)


def test_importing_the_backbones_plugin_does_not_import_torch():
    code = "import lspt_plugins.backbones, sys; assert 'torch' not in sys.modules and 'timm' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_spec_readout_matches_the_built_backbone(tmp_path):
    from lspt_cli.plugins import get_host
    from lspt_cli.prompted import load_backbone
    from lspt_cli.plugins import resolve_factory

    backbone = load_backbone("vit-tiny")
    assert isinstance(backbone, FrozenBackbone)
    assert backbone.name == "vit-tiny" and backbone.readout == "cls"
    path = tmp_path / "weights.pth"
    torch.save({"model": tiny_state()}, path)  # a layout all three ViT-B loaders accept
    for spec in get_host().backbones:
        if spec.name == "vit-tiny" or get_host().backbones.is_family(spec.name):  # timm/*: tests/test_any_vit.py
            continue
        if spec.name in catalog.CATALOG:  # each from its own official layout: tests/test_backbone_catalog.py
            continue
        built = resolve_factory(spec.factory)(path, model_kwargs=TINY_B16)
        assert (built.name, built.readout) == (spec.name, spec.readout)


# -- vit-tiny -------------------------------------------------------------------------------------
def test_vit_tiny_is_deterministic_frozen_and_leaves_the_rng_alone():
    torch.manual_seed(123)
    before = torch.rand(3)
    torch.manual_seed(123)
    backbone = timm_vit.load_vit_tiny()
    after = torch.rand(3)
    assert torch.equal(before, after)  # building it did not consume the caller's RNG stream
    assert_loaded(backbone, make_tiny_vit(seed=0).state_dict())  # same as conftest's tiny ViT
    assert backbone.dims.embed_dim == 64 and backbone.dims.depth == 4 and backbone.dims.num_patches == 16
    assert backbone.source.startswith("random init")
    assert backbone.weights_file is None
    assert all(not p.requires_grad for p in backbone.parameters())
    backbone.train()
    assert not backbone.training and not backbone.model.training
    with torch.no_grad():
        feats = backbone.read_out(backbone.embed(torch.randn(2, 3, 32, 32)))
    assert feats.shape == (2, 64)


def test_vit_tiny_fingerprint_is_stable_between_processes():
    code = textwrap.dedent(
        """
        from lspt_plugins.backbones.timm_vit import load_vit_tiny
        print(load_vit_tiny().fingerprint)
        """
    )
    other = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    assert other.stdout.strip() == timm_vit.load_vit_tiny().fingerprint


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_vit_tiny_loads_a_saved_state_dict(tmp_path, suffix):
    state = tiny_state(seed=7)
    path = tmp_path / f"tiny{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(state, str(path))
    else:
        torch.save(state, path)
    backbone = timm_vit.load_vit_tiny(path)
    assert_loaded(backbone, state)
    assert backbone.weights_file == path and str(path) in backbone.source
    assert not any(p.requires_grad for p in backbone.parameters())


# -- MAE ------------------------------------------------------------------------------------------
def test_mae_official_layout_loads_with_its_norm(tmp_path):
    state = tiny_state()
    path = tmp_path / "mae_pretrain_vit_base.pth"
    torch.save({"model": state}, path)
    backbone = timm_vit.load_mae_vitb(path, model_kwargs=TINY_B16)
    assert_loaded(backbone, state)
    assert backbone.readout == "mean-norm" and backbone.name == "mae-vitb"
    assert "MAE pre-training checkpoint" in backbone.source and "--weights" in backbone.source
    # the pretrained final norm exists and is loaded; fc_norm carries no weights
    assert torch.equal(backbone.model.norm.weight, state["norm.weight"])
    assert isinstance(backbone.model.fc_norm, torch.nn.Identity)
    assert backbone.model.pretrained_cfg["file"] == str(path)
    assert backbone.data_config["mean"] == [0.485, 0.456, 0.406]


def test_mae_full_pretraining_checkpoint_drops_the_decoder(tmp_path):
    state = tiny_state()
    full = dict(state)
    full["mask_token"] = torch.zeros(1, 1, 32)
    full["decoder_embed.weight"] = torch.randn(32, 64)
    full["decoder_blocks.0.norm1.weight"] = torch.ones(32)
    path = tmp_path / "checkpoint-799.pth"
    torch.save({"model": full, "epoch": 799}, path)
    backbone = timm_vit.load_mae_vitb(path, model_kwargs=TINY_B16)
    assert_loaded(backbone, state)
    assert "decoder dropped" in backbone.source


def test_mae_finetuned_checkpoint_without_norm_is_refused(tmp_path):
    """MAE fine-tuning uses fc_norm instead of norm: not the pretrained encoder, say so."""
    state = tiny_state()
    state["fc_norm.weight"] = state.pop("norm.weight")
    state["fc_norm.bias"] = state.pop("norm.bias")
    path = tmp_path / "finetuned.pth"
    torch.save({"model": state}, path)
    with pytest.raises(WeightsError) as info:
        timm_vit.load_mae_vitb(path, model_kwargs=TINY_B16)
    message = info.value.message
    assert "missing keys: norm.weight, norm.bias" in message
    assert "unexpected keys: fc_norm.weight, fc_norm.bias" in message


# -- MoCo v3 --------------------------------------------------------------------------------------
def test_mocov3_ssl_checkpoint_keeps_only_the_base_encoder(tmp_path):
    encoder = tiny_state()
    path = write_moco_ssl(tmp_path / "vit-b-300ep.pth.tar", encoder)
    backbone = timm_vit.load_mocov3_vitb(path, model_kwargs=TINY_B16)
    assert_loaded(backbone, encoder)  # not the momentum encoder (+1), no projection/predictor MLP
    assert backbone.readout == "cls" and backbone.name == "mocov3-vitb"
    assert "self-supervised" in backbone.source and "linear" not in backbone.source


def test_mocov3_linear_probe_checkpoint_loads_and_says_so(tmp_path):
    encoder = tiny_state()
    sd = {f"module.{k}": v for k, v in encoder.items()}
    sd["module.head.weight"] = torch.randn(1000, 64)
    sd["module.head.bias"] = torch.zeros(1000)
    path = tmp_path / "linear-vit-b-300ep.pth.tar"
    torch.save({"epoch": 90, "arch": "vit_base", "state_dict": sd, "best_acc1": 76.7}, path)
    backbone = timm_vit.load_mocov3_vitb(path, model_kwargs=TINY_B16)
    assert_loaded(backbone, encoder)
    assert "linear-probe" in backbone.source


def test_mocov3_unknown_key_in_ssl_checkpoint_is_named(tmp_path):
    encoder = tiny_state()
    encoder["blocks.0.attn.extra_scale"] = torch.ones(1)
    path = write_moco_ssl(tmp_path / "vit-b-300ep.pth.tar", encoder)
    with pytest.raises(WeightsError, match=r"unexpected keys: blocks\.0\.attn\.extra_scale"):
        timm_vit.load_mocov3_vitb(path, model_kwargs=TINY_B16)


# -- strictness -----------------------------------------------------------------------------------
def test_extra_key_is_refused_by_name(tmp_path):
    state = tiny_state()
    state["blocks.9.mlp.fc1.weight"] = torch.zeros(4, 4)
    path = tmp_path / "extra.pth"
    torch.save({"model": state}, path)
    with pytest.raises(WeightsError) as info:
        timm_vit.load_mae_vitb(path, model_kwargs=TINY_B16)
    assert "unexpected keys: blocks.9.mlp.fc1.weight" in info.value.message
    assert "partial" in info.value.hint


def test_missing_key_is_refused_by_name(tmp_path):
    state = tiny_state()
    del state["blocks.2.attn.qkv.bias"]
    path = tmp_path / "missing.safetensors"
    from safetensors.torch import save_file

    save_file(state, str(path))
    with pytest.raises(WeightsError, match=r"missing keys: blocks\.2\.attn\.qkv\.bias"):
        timm_vit.load_sup_vitb(path, model_kwargs=TINY_B16)


def test_shape_mismatch_is_refused_by_name(tmp_path):
    state = tiny_state()
    state["blocks.1.mlp.fc1.weight"] = torch.zeros(10, 64)
    path = tmp_path / "shape.pth"
    torch.save(state, path)
    with pytest.raises(WeightsError) as info:
        timm_vit.load_vit_tiny(path)
    assert "shape mismatches: blocks.1.mlp.fc1.weight (file (10, 64), model (256, 64))" in info.value.message


def test_a_different_resolution_is_not_resampled_silently(tmp_path):
    state = tiny_state()
    state["pos_embed"] = torch.zeros(1, 1 + 8 * 8, 64)  # a 64-px checkpoint
    path = tmp_path / "big.pth"
    torch.save({"model": state}, path)
    with pytest.raises(WeightsError, match=r"shape mismatches: pos_embed"):
        timm_vit.load_mae_vitb(path, model_kwargs=TINY_B16)


class NotWeights:
    def __init__(self):
        self.payload = "anything"


def test_pickle_with_objects_is_refused_for_safety(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"model": tiny_state(), "extra": NotWeights()}, path)
    with pytest.raises(WeightsError) as info:
        timm_vit.load_mae_vitb(path, model_kwargs=TINY_B16)
    assert "weights_only" in info.value.message and "refused" in info.value.message
    assert "NotWeights" in info.value.message


def test_unreadable_and_missing_files_are_weights_errors(tmp_path):
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="cannot read"):
        timm_vit.load_vit_tiny(junk)
    with pytest.raises(WeightsError, match="not found"):
        timm_vit.load_vit_tiny(tmp_path / "nope.safetensors")
    not_a_state = tmp_path / "list.pth"
    torch.save([1, 2, 3], not_a_state)
    with pytest.raises(WeightsError, match="does not hold a state dict"):
        timm_vit.load_vit_tiny(not_a_state)


def test_supervised_safetensors_with_classifier_loads(tmp_path):
    from safetensors.torch import save_file

    state = tiny_state()
    with_head = dict(state, **{"head.weight": torch.randn(21843, 64), "head.bias": torch.zeros(21843)})
    path = tmp_path / "model.safetensors"
    save_file(with_head, str(path))
    backbone = timm_vit.load_sup_vitb(path, model_kwargs=TINY_B16)
    assert_loaded(backbone, state)
    assert "classifier head dropped" in backbone.source
    assert backbone.data_config["mean"] == [0.5, 0.5, 0.5]  # timm's augreg config applies


# -- resolution: caches and the offline error ------------------------------------------------------
@pytest.mark.parametrize(
    "load, file_name",
    [
        (timm_vit.load_mae_vitb, "mae_pretrain_vit_base.pth"),
        (timm_vit.load_mocov3_vitb, "vit-b-300ep.pth.tar"),
        (timm_vit.load_sup_vitb, "model.safetensors"),
    ],
)
def test_offline_with_nothing_cached_names_the_file_and_the_flag(load, file_name):
    with pytest.raises(WeightsError) as info:
        load(None, model_kwargs=TINY_B16)
    message = info.value.message
    assert file_name in message and "https://" in message and "--weights" in message
    assert "LSPT_ALLOW_DOWNLOAD=1" in info.value.hint


def test_offline_error_through_the_registry():
    from lspt_cli.prompted import load_backbone

    with pytest.raises(WeightsError, match=r"mae_pretrain_vit_base\.pth.*--weights"):
        load_backbone("mae-vitb")


def test_hugging_face_cache_is_used_without_the_network(no_external_weights):
    from safetensors.torch import save_file

    state = tiny_state()
    repo = no_external_weights / "hf" / "hub" / "models--timm--vit_base_patch16_224.mae"
    revision = "0123456789abcdef0123456789abcdef01234567"
    snapshot = repo / "snapshots" / revision
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    save_file(state, str(snapshot / "model.safetensors"))
    backbone = timm_vit.load_mae_vitb(None, model_kwargs=TINY_B16)
    assert_loaded(backbone, state)
    assert "Hugging Face cache" in backbone.source
    assert backbone.weights_file == snapshot / "model.safetensors"


def test_lspt_and_torch_hub_caches_hold_official_files(no_external_weights, isolated_lspt_home):
    encoder = tiny_state()
    lspt_file = isolated_lspt_home / "cache" / "weights" / "vit-b-300ep.pth.tar"
    lspt_file.parent.mkdir(parents=True)
    write_moco_ssl(lspt_file, encoder)
    backbone = timm_vit.load_mocov3_vitb(None, model_kwargs=TINY_B16)
    assert_loaded(backbone, encoder)
    assert "lspt cache" in backbone.source

    hub_file = no_external_weights / "torch" / "hub" / "checkpoints" / "mae_pretrain_vit_base.pth"
    hub_file.parent.mkdir(parents=True)
    torch.save({"model": encoder}, hub_file)
    mae = timm_vit.load_mae_vitb(None, model_kwargs=TINY_B16)
    assert_loaded(mae, encoder)
    assert "torch.hub cache" in mae.source


# -- fingerprint ----------------------------------------------------------------------------------
def test_fingerprint_is_computed_once_per_weights_file(tmp_path, monkeypatch):
    import lspt_cli.backbone as core

    path = tmp_path / "tiny.safetensors"
    from safetensors.torch import save_file

    save_file(tiny_state(seed=3), str(path))
    calls = []
    real = core.state_dict_fingerprint

    def counting(state):
        calls.append(1)
        return real(state)

    monkeypatch.setattr(core, "state_dict_fingerprint", counting)
    first = timm_vit.load_vit_tiny(path).fingerprint
    second = timm_vit.load_vit_tiny(path).fingerprint  # a new process would read the same cache file
    assert first == second and first.startswith("sha256:")
    assert len(calls) == 1
    other = tmp_path / "other.safetensors"
    save_file(tiny_state(seed=4), str(other))
    assert timm_vit.load_vit_tiny(other).fingerprint != first
    assert len(calls) == 2
