"""The named backbones of plugins/backbones/catalog.py: each official layout converts bit-exactly.

Every checkpoint is a fake from tests/fake_checkpoints.py: the authors' key names, shapes and
nesting at a tiny width and depth (patch size, registers, LayerScale and SwiGLU are the real ones).
Each is converted, strict-loaded into the spec's timm model built at the same size, and compared
tensor by tensor with torch.equal.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import pytest
import torch

import fake_checkpoints
from fake_checkpoints import FakeCheckpoint, all_fakes, fake_checkpoint
from lspt_cli.errors import WeightsError
from lspt_cli.plugins import get_host, resolve_factory
from lspt_plugins.backbones import catalog, timm_vit

NAMED = sorted(fake_checkpoints.SPECS)


@pytest.fixture(autouse=True)
def no_external_weights(offline_caches, monkeypatch, isolated_lspt_home):
    """Empty HF/torch/lspt caches, downloads off and made to fail loudly if anything tries one."""
    root = offline_caches

    def no_download(spec):
        raise AssertionError(f"a download of {spec.name} was attempted")

    monkeypatch.setattr(timm_vit, "download_weights", no_download)
    return root


def build(spec_name: str, weights, **options):
    """The registered factory of `spec_name`, called as lspt calls it."""
    return resolve_factory(get_host().backbones.get(spec_name).factory)(weights, **options)


def assert_names_dropped(fake: FakeCheckpoint, source: str) -> None:
    """Every dropped official key is named in the description, alone or by its group ("head.*")."""
    for key in fake.dropped:
        bare = key[len("module."):] if key.startswith("module.") else key
        parts = bare.split(".")
        groups = {bare} | {".".join(parts[:n]) + ".*" for n in range(1, len(parts))}
        assert any(g in source for g in groups), f"{key} dropped without being named: {source}"


# -- registration ---------------------------------------------------------------------------------
def test_every_catalog_entry_is_registered_with_what_the_list_shows():
    host = get_host()
    assert {e.name for e in catalog.ENTRIES} | {"mae-vitb", "mocov3-vitb"} == set(NAMED)
    for entry in catalog.ENTRIES:
        spec = host.backbones.get(entry.name)
        assert host.backbones.provider(entry.name) == "backbones"
        assert (spec.embed_dim, spec.depth, spec.patch_size, spec.num_prefix_tokens, spec.readout) == (
            entry.embed_dim, entry.depth, entry.patch_size, entry.num_prefix_tokens, entry.readout)
        assert spec.weights_files == entry.local_files and spec.weights_url == entry.download_url
        assert spec.weights_url.endswith("/" + spec.weights_files[0])
        assert spec.weights_files[0] == fake_checkpoints.OFFICIAL_FILES[entry.name]
        assert spec.citation and spec.readout_note and spec.layout and spec.mean and spec.std
        assert spec.tokens() == (224 // entry.patch_size) ** 2 + entry.num_prefix_tokens


@pytest.mark.parametrize("name", sorted(catalog.CATALOG))
def test_each_spec_describes_its_full_size_timm_model(name):
    """Built on the meta device (no memory, no weights): width, depth, patch, prefix tokens and tokens
    per image as registered, at lspt's default input size."""
    entry, spec = catalog.CATALOG[name], get_host().backbones.get(name)
    with torch.device("meta"):
        model = timm_vit.create_model(entry, None, dict(entry.model_kwargs), img_size=spec.input_size)
    patch = model.patch_embed.patch_size[0]
    assert (model.embed_dim, len(model.blocks), patch, model.num_prefix_tokens) == (
        spec.embed_dim, spec.depth, spec.patch_size, spec.num_prefix_tokens)
    assert model.patch_embed.num_patches + model.num_prefix_tokens == spec.tokens()
    # the official head counts: ViT-S 6 (MoCo v3's 12), B 12, L 16, H 16 (mae models_vit.py:70-73), g 24
    heads = 12 if name == "mocov3-vits" else {384: 6, 768: 12, 1024: 16, 1280: 16, 1536: 24}[spec.embed_dim]
    assert model.blocks[0].attn.num_heads == heads


def test_the_original_names_are_unchanged():
    names = set(get_host().backbones.names())
    assert {"mae-vitb", "mocov3-vitb", "sup-vitb", "vit-tiny"} <= names
    assert {"dinov2-vitb14-reg", "dino-vits8", "mae-vitl", "mocov3-vits", "ibot-vitb16"} <= names


def test_the_catalog_and_the_plugin_import_neither_torch_nor_timm():
    code = ("import lspt_plugins.backbones, lspt_plugins.backbones.catalog as c, sys; c.cached_weights('dino-vits8'); "
            "assert 'torch' not in sys.modules and 'timm' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


# -- bit-exact conversion ----------------------------------------------------------------------------
@pytest.mark.parametrize("spec_name,variant", all_fakes(), ids=[f"{s}-{v or 'main'}" for s, v in all_fakes()])
def test_official_layout_converts_bit_exactly(spec_name, variant, tmp_path):
    fake = fake_checkpoint(spec_name, variant)
    path = fake.save(tmp_path)
    backbone = build(spec_name, path, model_kwargs=fake.model_kwargs)
    got = backbone.model.state_dict()
    assert sorted(got) == sorted(fake.expected)
    for key, value in fake.expected.items():
        assert got[key].dtype == value.dtype and torch.equal(got[key], value), key
    assert_names_dropped(fake, backbone.source)
    assert str(path) in backbone.source and backbone.readout == get_host().backbones.get(spec_name).readout


@pytest.mark.parametrize("spec_name", NAMED)
def test_an_unknown_key_fails_the_strict_load_by_name(spec_name, tmp_path):
    fake = fake_checkpoint(spec_name)
    state = fake.obj.get("model") or fake.obj.get("state_dict") or fake.obj
    anchor = next(k for k in state if k.endswith("blocks.0.norm1.weight"))
    state[anchor.replace("norm1.weight", "attn.unexpected_scale")] = torch.ones(3)
    with pytest.raises(WeightsError) as info:
        build(spec_name, fake.save(tmp_path), model_kwargs=fake.model_kwargs)
    assert "unexpected keys: blocks.0.attn.unexpected_scale" in str(info.value)


def test_mocov3_vits_has_twelve_heads_where_timm_has_six(tmp_path):
    fake = fake_checkpoint("mocov3-vits")
    backbone = build("mocov3-vits", fake.save(tmp_path), model_kwargs=fake.model_kwargs)
    assert backbone.dims.num_heads == 12  # moco-v3 vits.py:115-119; timm's vit_small_patch16_224 has 6
    assert backbone.model.blocks[0].attn.head_dim == fake_checkpoints.TINY_DIM // 12


@pytest.mark.parametrize("spec_name", ["dinov2-vits14", "dinov2-vits14-reg"])
def test_dinov2_tokens_entering_the_first_block_are_the_official_ones(spec_name, tmp_path):
    """dinov2/models/vision_transformer.py:214-230: [CLS + pos[0], registers, patches + pos[1:]]."""
    fake = fake_checkpoint(spec_name)
    backbone = build(spec_name, fake.save(tmp_path), model_kwargs=fake.model_kwargs)
    official = fake.obj
    images = torch.randn(2, 3, 28, 28)
    with torch.no_grad():
        patches = backbone.model.patch_embed(images)
        tokens = torch.cat([official["cls_token"].expand(2, -1, -1), patches], dim=1) + official["pos_embed"]
        if "register_tokens" in official:
            tokens = torch.cat([tokens[:, :1], official["register_tokens"].expand(2, -1, -1), tokens[:, 1:]], dim=1)
        assert torch.equal(backbone.embed(images), tokens)
    assert backbone.dims.num_prefix_tokens == (5 if "register_tokens" in official else 1)


def test_dinov2_giant_swiglu_is_the_official_one(tmp_path):
    """dinov2/layers/swiglu_ffn.py:31-35: x12 = w12(x); x1, x2 = chunk(2); w3(silu(x1) * x2)."""
    fake = fake_checkpoint("dinov2-vitg14-reg")
    backbone = build("dinov2-vitg14-reg", fake.save(tmp_path), model_kwargs=fake.model_kwargs)
    x = torch.randn(2, 9, fake_checkpoints.TINY_DIM)
    o = fake.obj
    x1, x2 = torch.nn.functional.linear(x, o["blocks.1.mlp.w12.weight"], o["blocks.1.mlp.w12.bias"]).chunk(2, dim=-1)
    expected = torch.nn.functional.linear(torch.nn.functional.silu(x1) * x2, o["blocks.1.mlp.w3.weight"], o["blocks.1.mlp.w3.bias"])
    with torch.no_grad():
        assert torch.equal(backbone.model.blocks[1].mlp(x), expected)


@pytest.mark.parametrize("spec_name", ["dino-vits8", "dinov2-vits14-reg", "dinov2-vitg14", "mae-vith"])
def test_timms_own_safetensors_load_unchanged(spec_name, tmp_path):
    """The file the Hugging Face cache (or LSPT_ALLOW_DOWNLOAD=1) gives: timm's layout, loaded as is."""
    from safetensors.torch import save_file

    fake = fake_checkpoint(spec_name)
    first = build(spec_name, fake.save(tmp_path), model_kwargs=fake.model_kwargs)
    timm_state = {k: v.clone().contiguous() for k, v in first.model.state_dict().items()}
    save_file(timm_state, str(tmp_path / "model.safetensors"))
    again = build(spec_name, tmp_path / "model.safetensors", model_kwargs=fake.model_kwargs)
    got = again.model.state_dict()
    assert sorted(got) == sorted(timm_state) and all(torch.equal(got[k], v) for k, v in timm_state.items())


def test_dinov2_is_built_at_224_px_from_the_518_px_hub_grid(tmp_path):
    """The hub file's 37 x 37 position grid, resampled for lspt's default 224-px input (16 x 16)."""
    fake = fake_checkpoint("dinov2-vits14", grid=fake_checkpoints.DINOV2_GRID)
    kwargs = {k: v for k, v in fake.model_kwargs.items() if k != "img_size"}
    backbone = build("dinov2-vits14", fake.save(tmp_path), model_kwargs=kwargs)
    assert backbone.dims.num_patches == 16 * 16 and tuple(backbone.model.pos_embed.shape) == (1, 257, 48)
    assert torch.equal(backbone.model.pos_embed[:, 0], fake.obj["pos_embed"][:, 0])  # CLS's position kept
    assert backbone.data_config["input_size"][-1] == 224
    at_28 = build("dinov2-vits14", tmp_path / fake.file_name, model_kwargs=kwargs, img_size=28)
    assert at_28.dims.num_patches == 4


@pytest.mark.parametrize("spec_name", ["dino-vits16", "ibot-vitb16", "mae-vitl"])
def test_a_training_checkpoint_with_its_pickled_args_loads(tmp_path, spec_name):
    """The authors' training checkpoints (DINO, iBOT, MAE) also pickle the run's `args`, an
    argparse.Namespace of plain values: lspt allows that one class (rebuilding it runs no code), so
    the released training file loads as its backbone file does."""
    variant = "full"
    fake = fake_checkpoint(spec_name, variant)
    fake.obj["args"] = argparse.Namespace(arch="vit_small", patch_size=16, lr=5e-4, output_dir="/out", drop=[0.1, None])
    backbone = build(spec_name, fake.save(tmp_path), model_kwargs=fake.model_kwargs)
    state = backbone.model.state_dict()
    assert all(torch.equal(state[key], value) for key, value in fake.expected.items())


def test_a_namespace_holding_an_object_is_still_refused_by_name(tmp_path):
    """Only the Namespace itself is allowed: an object inside it (here a Path) is refused, named."""
    import pathlib

    fake = fake_checkpoint("dino-vits16", "full")
    fake.obj["args"] = argparse.Namespace(arch="vit_small", output_dir=pathlib.PurePosixPath("/out"))
    with pytest.raises(WeightsError, match="PurePosixPath"):
        build("dino-vits16", fake.save(tmp_path), model_kwargs=fake.model_kwargs)


# -- offline: no file, no download ------------------------------------------------------------------
@pytest.mark.parametrize("spec_name", sorted(e.name for e in catalog.ENTRIES))
def test_without_a_file_the_error_names_the_official_file_and_url(spec_name):
    entry = catalog.CATALOG[spec_name]
    with pytest.raises(WeightsError) as info:
        build(spec_name, None)
    message = str(info.value)
    assert entry.local_files[0] in message and entry.download_url in message and "--weights" in message
    assert "LSPT_ALLOW_DOWNLOAD=1" in info.value.hint


def test_a_file_in_the_weights_folder_is_found_and_listed_as_cached(cli, isolated_lspt_home):
    fake = fake_checkpoint("dino-vits8")
    folder = timm_vit.lspt_weights_dir()
    folder.mkdir(parents=True)
    rows = {r["name"]: r for r in json.loads(cli("list", "backbones", "--json").stdout)}
    assert rows["dino-vits8"]["cached"] is False and rows["dino-vits8"]["cached_file"] is None
    path = fake.save(folder)
    assert catalog.cached_weights("dino-vits8") == str(path)
    backbone = build("dino-vits8", None, model_kwargs=fake.model_kwargs)
    assert "(lspt cache)" in backbone.source
    rows = {r["name"]: r for r in json.loads(cli("list", "backbones", "--json").stdout)}
    assert rows["dino-vits8"]["cached"] is True and rows["dino-vits8"]["cached_file"] == str(path)
    assert rows["dino-vits16"]["cached"] is False


def test_list_backbones_shows_the_generic_form_and_every_named_spec(cli):
    rows = {r["name"]: r for r in json.loads(cli("list", "backbones", "--json").stdout)}
    assert set(NAMED) <= set(rows)
    reg = rows["dinov2-vitb14-reg"]
    assert (reg["embed_dim"], reg["depth"], reg["patch_size"], reg["tokens"], reg["readout"]) == (768, 12, 14, 261, "cls+mean")
    assert reg["weights_files"] == ["dinov2_vitb14_reg4_pretrain.pth"] and reg["weights_url"].startswith("https://")
    assert rows["dino-vits8"]["tokens"] == 785 and rows["mae-vith"]["patch_size"] == 14
    generic = [r for r in rows.values() if r["generic"]]
    assert [r["name"] for r in generic] == ["timm/*"] and generic[0]["tokens"] is None
    table = cli("list", "backbones").stdout
    for name in NAMED:
        assert name in table
    assert "cached" in table and "tokens" in table


def test_paths_shows_where_weights_files_go(cli, isolated_lspt_home):
    doc = json.loads(cli("paths", "--json").stdout)
    assert doc["weights"]["path"] == str(timm_vit.lspt_weights_dir())
    assert "put official backbone weights files here" in cli("paths").stdout


# -- end to end ------------------------------------------------------------------------------------
# The CLI builds each backbone's real architecture, so these fakes are full width and depth (small
# random values); a small --img-size keeps them fast on a CPU. MAE ViT-H (632M parameters) and
# DINOv2 ViT-g train through the Python path below instead, at the tiny size.
E2E = [("dinov2-vits14-reg", "", 384, 12, fake_checkpoints.DINOV2_GRID, 28),  # registers, the hub's 37 x 37 grid
       ("dino-vits16", "full", 384, 12, 14, 32),  # the training checkpoint's teacher
       ("mocov3-vits", "", 384, 12, 14, 32),  # 12 heads
       ("mae-vitl", "", 1024, 24, 14, 32)]  # 304M parameters: a 1.2 GB file, 24 blocks at 4 patches an image


@pytest.fixture
def tiny_task(cli, tmp_path):
    """A two-class image folder (6 + 3 images per class), prepared as task 'rg'."""
    from conftest import colour_image_folder

    root = colour_image_folder(tmp_path / "photos", ("red", "green"), {"train": 6, "test": 3})
    assert cli("prepare-data", "imagefolder", "--root", str(root), "--name", "rg").exit_code == 0
    return "rg"


@pytest.mark.slow
@pytest.mark.parametrize("spec_name,variant,dim,depth,grid,img_size", E2E, ids=[f"{e[0]}-{e[1] or 'main'}" for e in E2E])
def test_tune_on_an_official_file(spec_name, variant, dim, depth, grid, img_size, cli, tmp_path, tiny_task):
    fake = fake_checkpoint(spec_name, variant, embed_dim=dim, depth=depth, grid=grid, scale=0.02)
    weights = fake.save(tmp_path)
    result = cli("tune", "--backbone", spec_name, "--weights", str(weights), "--task", tiny_task,
                 "--strategy", "vpt-deep", "--epochs", "1", "--warmup-epochs", "0", "--batch-size", "4",
                 "--img-size", str(img_size), "--set", "num_prompts=2", "--out", str(tmp_path / "run"), "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["backbone"] == spec_name and summary["readout"] == get_host().backbones.get(spec_name).readout
    source = json.loads((tmp_path / "run" / "config.json").read_text())["meta"]["backbone"]["source"]
    assert str(weights) in source
    assert_names_dropped(fake, source)
    evaluated = cli("eval", str(tmp_path / "run" / "bundle.safetensors"), "--weights", str(weights), "--json")
    assert evaluated.exit_code == 0, evaluated.output  # the same backbone rebuilt: same size, same fingerprint
    assert json.loads(evaluated.stdout)["top1"] == pytest.approx(summary["test_top1"])


@pytest.mark.parametrize("spec_name,variant", [("mae-vitl", ""), ("mae-vith", "full"), ("dino-vits16", "full"),
                                               ("mocov3-vits", ""), ("ibot-vitb16", "full"), ("dinov2-vitg14-reg", "")])
def test_prompts_train_on_the_converted_backbone(spec_name, variant, tmp_path):
    """The Python path at the tiny size: vpt-deep's prompts and head move, the backbone does not."""
    from lspt_cli.prompted import PromptedViT, build_strategy

    fake = fake_checkpoint(spec_name, variant)
    backbone = build(spec_name, fake.save(tmp_path), model_kwargs=fake.model_kwargs)
    frozen = {k: v.clone() for k, v in backbone.state_dict().items()}
    torch.manual_seed(0)
    model = PromptedViT(backbone, build_strategy("vpt-deep", backbone.dims, {"num_prompts": 2}), 3)
    trainable = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    size = fake.model_kwargs["img_size"]
    images, labels = torch.randn(4, 3, size, size), torch.tensor([0, 1, 2, 0])
    model.train()
    for _ in range(3):
        loss = torch.nn.functional.cross_entropy(model(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert torch.isfinite(loss)
    moved = [n for n, p in model.named_parameters() if p.requires_grad and not torch.equal(p, trainable[n])]
    assert any("prompt" in n for n in moved) and any("head" in n for n in moved), moved
    assert all(torch.equal(v, frozen[k]) for k, v in backbone.state_dict().items())
