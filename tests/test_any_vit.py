"""Any timm ViT as a backbone (issue 21): `--backbone timm/<model>`, `--img-size`, registers,
LayerScale, patch 14, the cls+mean readout, and bundles that rebuild the same model.

The end-to-end tests use a tiny DINOv2-shaped timm model registered with timm under its own name
(`vit_lspttest_patch14_reg4_dinov2`: timm's vit_small_patch14_reg4_dinov2 at width 64, depth 4,
56 px), so `timm/<name>` goes through exactly the path a real DINOv2 takes: timm's registry and
pretrained config, a timm-layout safetensors file, pos_embed resampled for --img-size, the strict
load. The real ViT-S/14 (22M parameters) trains the same way; it is too slow for the CPU suite.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from lspt_cli.errors import BundleError, UsageError, WeightsError
from lspt_cli.prompted import PromptedViT, build_strategy, load_backbone
from registered import STRATEGIES

TEST_MODEL = "vit_lspttest_patch14_reg4_dinov2"
TEST_ARGS = dict(img_size=56, patch_size=14, embed_dim=64, depth=4, num_heads=4, init_values=1e-5,
                 reg_tokens=4, no_embed_class=True)


def _register_test_model() -> None:
    """timm's DINOv2-with-registers recipe (vision_transformer.py, vit_small_patch14_reg4_dinov2), tiny."""
    import timm
    from timm.models import register_model
    from timm.models.vision_transformer import _create_vision_transformer

    if timm.is_model(TEST_MODEL):
        return

    def vit_lspttest_patch14_reg4_dinov2(pretrained: bool = False, **kwargs):
        return _create_vision_transformer(TEST_MODEL, pretrained=pretrained, **dict(TEST_ARGS, **kwargs))

    vit_lspttest_patch14_reg4_dinov2.__module__ = "timm.models.vision_transformer"
    register_model(vit_lspttest_patch14_reg4_dinov2)


_register_test_model()
NAME = f"timm/{TEST_MODEL}"


@pytest.fixture(autouse=True)
def no_external_weights(offline_caches):
    return offline_caches


@pytest.fixture(scope="module")
def fake_weights(tmp_path_factory) -> Path:
    """A timm-layout safetensors file of the test model at its own 56 px (a 4 x 4 pos_embed grid)."""
    import timm

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        model = timm.create_model(TEST_MODEL, pretrained=False, num_classes=0)
    path = tmp_path_factory.mktemp("weights") / "model.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


# -- the registry ----------------------------------------------------------------------------------
def test_timm_names_resolve_through_the_family():
    from lspt_cli.plugins import FamilyFactory, get_host

    backbones = get_host().backbones
    spec = backbones.get("timm/vit_small_patch14_dinov2")
    assert spec.name == "timm/vit_small_patch14_dinov2" and isinstance(spec.factory, FamilyFactory)
    assert spec.factory.member == "vit_small_patch14_dinov2"
    assert "timm/vit_base_patch14_reg4_dinov2" in backbones and backbones.provider("timm/x") == "backbones"
    assert backbones.is_family("timm/*") and not backbones.registered("timm/vit_x")
    assert "timm/*" in backbones.names() and "timm/vit_x" not in backbones.names()
    with pytest.raises(UsageError, match="unknown backbone 'nope/x'"):
        backbones.get("nope/x")  # no family 'nope/*'


def test_unknown_timm_model_and_the_family_itself_are_clear_errors():
    with pytest.raises(UsageError, match=r"timm has no model 'vit_smal_patch14_dinov2'") as info:
        load_backbone("timm/vit_smal_patch14_dinov2")
    assert "timm/vit_small_patch14_dinov2" in info.value.hint
    with pytest.raises(UsageError, match=r"'timm/\*' is a family, not a model"):
        load_backbone("timm/*")


@pytest.mark.parametrize("model, lacks", [
    ("resnet18", "patch_embed, blocks"),
    ("vit_base_patch16_siglip_224", "global_pool='map'"),
    ("eva02_tiny_patch14_224", "VisionTransformer class (it is Eva)"),
])
def test_a_model_that_is_not_token_driven_is_refused_naming_what_it_lacks(model, lacks):
    with pytest.raises(UsageError) as info:
        load_backbone(f"timm/{model}", img_size=224)  # refused before any weights are looked for
    assert f"backbone 'timm/{model}'" in info.value.message and "cannot be driven token by token" in info.value.message
    assert lacks in info.value.message


def test_offline_without_weights_names_timms_hub_repo_and_the_official_file():
    with pytest.raises(WeightsError) as info:
        load_backbone("timm/vit_small_patch14_dinov2")
    text = info.value.message + " " + info.value.hint
    assert "dinov2_vits14_pretrain.pth" in text and "--weights FILE" in text
    assert "timm/vit_small_patch14_dinov2.lvd142m" in text and "LSPT_ALLOW_DOWNLOAD=1" in text


# -- loading -------------------------------------------------------------------------------------
def test_img_size_resamples_pos_embed_before_the_strict_load(fake_weights):
    from timm.layers import resample_abs_pos_embed

    own = load_backbone(NAME, fake_weights)
    assert own.img_size == (56, 56) and own.dims.num_prefix_tokens == 5 and own.dims.patch_size == 14
    assert own.readout == "cls+mean" and own.timm_model == TEST_MODEL
    small = load_backbone(NAME, fake_weights, img_size=28)
    assert small.img_size == (28, 28) and small.dims.num_patches == 4
    assert small.data_config["input_size"] == [3, 28, 28]
    # registers: DINOv2's size-based bicubic with antialiasing (= timm's resample_abs_pos_embed)
    expected = resample_abs_pos_embed(own.model.pos_embed.detach(), new_size=[2, 2], old_size=[4, 4],
                                      num_prefix_tokens=0, interpolation="bicubic", antialias=True)
    assert torch.equal(small.model.pos_embed.detach(), expected)
    for key, value in own.model.state_dict().items():  # nothing else changes
        if key != "pos_embed":
            assert torch.equal(small.model.state_dict()[key], value), key


def test_dinov2_without_registers_resamples_with_the_official_offset():
    """dinov2/models/vision_transformer.py:195-207: scale factor (grid + 0.1) / old grid, bicubic, no
    antialiasing; the CLS position (timm keeps it in pos_embed without registers) is untouched."""
    import timm

    from lspt_plugins.backbones.pos_embed import fit_pos_embed

    model = timm.create_model("vit_small_patch14_dinov2", pretrained=False, num_classes=0, img_size=98,
                              embed_dim=32, depth=1, num_heads=2)
    pos = torch.randn(1, 1 + 16 * 16, 32)
    out = fit_pos_embed({"pos_embed": pos}, model, "vit_small_patch14_dinov2", "file")["pos_embed"]
    grid = pos[:, 1:].reshape(1, 16, 16, 32).permute(0, 3, 1, 2)
    official = torch.nn.functional.interpolate(grid, scale_factor=(7.1 / 16, 7.1 / 16), mode="bicubic", antialias=False)
    assert out.shape == (1, 1 + 49, 32) and torch.equal(out[:, :1], pos[:, :1])
    assert torch.equal(out[:, 1:], official.permute(0, 2, 3, 1).reshape(1, 49, 32))


def test_a_wrong_file_still_fails_by_name_at_another_size(fake_weights, tmp_path):
    from safetensors.torch import load_file

    state = load_file(str(fake_weights))
    state["blocks.9.extra"] = torch.zeros(1)
    del state["blocks.0.ls1.gamma"]
    path = tmp_path / "wrong.safetensors"
    save_file(state, str(path))
    with pytest.raises(WeightsError) as info:
        load_backbone(NAME, path, img_size=28)
    assert "missing keys: blocks.0.ls1.gamma" in info.value.message and "unexpected keys: blocks.9.extra" in info.value.message


def test_img_size_must_be_whole_patches(fake_weights):
    with pytest.raises(UsageError, match=r"--img-size 30: backbone 'timm/vit_lspttest_patch14_reg4_dinov2' has 14-px patches; expected a multiple of 14"):
        load_backbone(NAME, fake_weights, img_size=30)


def test_without_img_size_a_file_at_another_resolution_is_refused(fake_weights, tmp_path):
    from safetensors.torch import load_file

    state = load_file(str(fake_weights))
    state["pos_embed"] = torch.zeros(1, 9, 64)  # a 3 x 3 grid: 42 px
    path = tmp_path / "other.safetensors"
    save_file(state, str(path))
    with pytest.raises(WeightsError, match=r"shape mismatches: pos_embed"):
        load_backbone(NAME, path)


def test_same_file_same_size_same_fingerprint(fake_weights):
    a = load_backbone(NAME, fake_weights, img_size=28).fingerprint
    assert a == load_backbone(NAME, fake_weights, img_size=28).fingerprint
    assert a != load_backbone(NAME, fake_weights, img_size=42).fingerprint  # pos_embed differs


# -- readouts ------------------------------------------------------------------------------------
def test_cls_plus_mean_concatenates_normed_cls_and_mean_patch_token(fake_weights):
    """dinov2/eval/linear.py:171-183: [CLS, mean of the patch tokens], both after the final norm;
    registers and prompts are not patch tokens."""
    backbone = load_backbone(NAME, fake_weights, img_size=28).double()
    torch.manual_seed(0)
    model = PromptedViT(backbone, build_strategy("vpt-shallow", backbone.dims, {"num_prompts": 3}), 7,
                        readout="cls+mean").double()
    assert model.head.in_features == 2 * 64
    x = torch.randn(5, 5 + 3 + 4, 64, dtype=torch.float64)  # 5 prefix, 3 prompts, 4 patches
    normed = backbone.model.norm(x)
    expected = torch.cat([normed[:, 0], normed[:, 8:].mean(dim=1)], dim=-1)
    assert torch.equal(backbone.read_out(x, "cls+mean"), expected)
    images = torch.randn(2, 3, 28, 28, dtype=torch.float64)
    assert model(images).shape == (2, 7)


def test_mean_stays_mean_norms_name():
    from lspt_cli.specs import READOUTS, canonical_readout, readout_dim

    assert canonical_readout("mean") == "mean-norm" and "cls+mean" in READOUTS
    assert readout_dim("cls+mean", 384) == 768 and readout_dim("mean", 384) == 384


# -- every strategy on the DINOv2 shape ----------------------------------------------------------
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_every_strategy_runs_on_a_dinov2_shaped_model(strategy):
    """`lspt plugins check` runs this check for every strategy (lspt_cli/conformance.py)."""
    from lspt_cli.conformance import _dinov2_shaped_check
    from lspt_cli.plugins import get_host

    message = _dinov2_shaped_check(strategy, get_host())
    assert "5 prefix tokens (CLS + 4 registers)" in message and "width 128" in message


# -- end to end: tune, then eval / predict / explain rebuild the same model -----------------------
@pytest.fixture(scope="module")
def trained(tmp_path_factory, fake_weights):
    from lspt_cli.testing import run_cli

    base = tmp_path_factory.mktemp("anyvit")
    result = run_cli("tune", "--backbone", NAME, "--weights", str(fake_weights), "--img-size", "28", "--task", "digits",
                     "--strategy", "gapt", "--epochs", "1", "--warmup-epochs", "0", "--batch-size", "128",
                     "--set", "num_prompts=4", "--out", str(base / "run"), "--json", home=base / "home")
    assert result.exit_code == 0, result.output
    return base, base / "run", json.loads(result.stdout)


@pytest.mark.slow
def test_tune_on_a_timm_dinov2_at_another_size_and_rebuild_the_same_model(trained, fake_weights, tmp_path):
    from PIL import Image

    from lspt_cli import bundle
    from lspt_cli.engine.restore import model_from_bundle
    from lspt_cli.testing import run_cli

    base, run, summary = trained
    home = base / "home"
    header = bundle.read_header(run / "bundle.safetensors")
    info = header.backbone
    assert info["name"] == NAME and info["img_size"] == [28, 28] and info["timm_model"] == TEST_MODEL
    assert info["readout"] == "cls+mean" and info["weights"] == str(fake_weights.resolve())
    assert header.meta("lspt.data_config")["input_size"] == [3, 28, 28]

    result = run_cli("eval", str(run / "bundle.safetensors"), "--json", home=home)
    assert result.exit_code == 0, result.output
    assert abs(json.loads(result.stdout)["top1"] - summary["test_top1"]) < 1e-6  # the same model, rebuilt

    # rebuilt from the bundle alone = built by hand at the recorded size, with the bundle's tensors
    model, _ = model_from_bundle(run / "bundle.safetensors")
    assert model.backbone.img_size == (28, 28) and model.backbone.fingerprint == info["fingerprint"]
    by_hand = PromptedViT(load_backbone(NAME, fake_weights, img_size=28),
                          build_strategy("gapt", model.backbone.dims, header.strategy["config"]), 10, readout="cls+mean")
    by_hand.load_trainable_state_dict(bundle.load(run / "bundle.safetensors").tensors)
    images = torch.randn(3, 3, 28, 28)
    with torch.no_grad():
        assert torch.equal(model.eval()(images), by_hand.eval()(images))

    image = tmp_path / "digit.png"
    Image.new("RGB", (40, 40), (90, 90, 90)).save(image)
    result = run_cli("predict", str(run / "bundle.safetensors"), str(image), "--json", home=home)
    assert result.exit_code == 0, result.output
    assert len(json.loads(result.stdout)[str(run / "bundle.safetensors")][str(image)]) == 5
    result = run_cli("explain", str(run / "bundle.safetensors"), str(image), "--out", str(tmp_path / "maps"), "--json",
                     home=home)
    assert result.exit_code == 0, result.output
    assert list((tmp_path / "maps").glob("*.png"))


@pytest.mark.slow
def test_a_bundle_refuses_another_img_size_unless_asked(trained, fake_weights):
    from lspt_cli.engine.restore import model_from_bundle
    from lspt_cli.testing import run_cli

    base, run, _ = trained
    result = run_cli("eval", str(run / "bundle.safetensors"), "--img-size", "42", home=base / "home")
    assert result.exit_code != 0
    assert "trained at --img-size 28, but the backbone is built for --img-size 42" in result.output
    assert "--allow-img-size-mismatch" in result.output
    with pytest.raises(BundleError, match="trained at --img-size 28"):  # a shared backbone of another size too
        model_from_bundle(run / "bundle.safetensors", backbone=load_backbone(NAME, fake_weights, img_size=42))
    model, _ = model_from_bundle(run / "bundle.safetensors", img_size=42, allow_img_size_mismatch=True)
    assert model.backbone.img_size == (42, 42)
    with torch.no_grad():
        assert model(torch.randn(2, 3, 42, 42)).shape == (2, 10)


def test_a_bundle_without_a_recorded_size_loads_at_the_backbones_own(tmp_path):
    from lspt_cli import bundle
    from lspt_cli.engine.restore import model_from_bundle

    backbone = load_backbone("vit-tiny")
    model = PromptedViT(backbone, build_strategy("linear", backbone.dims), 3)
    info = {"name": "vit-tiny", "fingerprint": backbone.fingerprint, "source": backbone.source}  # as before img_size
    path = tmp_path / "old.safetensors"
    bundle.save(path, model.trainable_state_dict(), bundle.make_metadata(
        backbone=info, strategy={"name": "linear", "config": {}},
        task={"name": "t", "classes": ["a", "b", "c"], "benchmark": "custom"}, data_config=dict(backbone.data_config)))
    restored, _ = model_from_bundle(path)
    assert restored.backbone.img_size == (32, 32)


def test_dinov2s_official_layout_loads_through_timm_names(fake_weights, tmp_path):
    """The hub file (dinov2_vits14_reg4_pretrain.pth's layout): CLS's position inside pos_embed,
    register_tokens, mask_token; converted to timm's keys, then resampled and loaded strictly."""
    from safetensors.torch import load_file

    timm_state = load_file(str(fake_weights))
    cls_pos = torch.randn(1, 1, 64)
    official = {k: v for k, v in timm_state.items() if k not in ("reg_token", "cls_token", "pos_embed")}
    official.update(register_tokens=timm_state["reg_token"], cls_token=timm_state["cls_token"] - cls_pos[:, 0],
                    pos_embed=torch.cat([cls_pos, timm_state["pos_embed"]], dim=1), mask_token=torch.zeros(1, 64))
    path = tmp_path / "dinov2_official.pth"
    torch.save(official, path)
    backbone = load_backbone(NAME, path)
    assert "DINOv2" in backbone.source and "mask_token" in backbone.source
    for key, value in timm_state.items():
        assert torch.allclose(backbone.model.state_dict()[key], value, atol=1e-6), key
    assert load_backbone(NAME, path, img_size=28).img_size == (28, 28)


def test_plugins_check_runs_on_a_timm_member_and_refuses_the_family(fake_weights):
    from lspt_cli.conformance import run_check

    report = run_check(NAME, "backbone", weights=fake_weights).assert_ok()
    assert "a member of family 'timm/*'" in report.result("dims").message
    family = run_check("timm/*", "backbone")
    assert family.failed == ["build"] and "is a family" in family.result("build").message


@pytest.mark.parametrize("command", [("tune", "--dry-run"), ("sweep", "--plan")])
def test_the_family_pattern_itself_is_refused_as_a_backbone_to_run(cli, command):
    """`--backbone 'timm/*'` names no model: one usage error naming the member form, nothing planned."""
    name, flag = command
    result = cli(name, "--backbone", "timm/*", "--task", "digits", flag)
    assert result.exit_code == 2, result.output
    assert "is a family, not one model" in result.output and "timm/<model>" in result.output
