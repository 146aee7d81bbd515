"""`lspt explain`: recomputed attention equals timm's, rollout rows are distributions, and the PNGs
(input | prompted | backbone, each panel the input's size) are written and not blank."""

from __future__ import annotations

import json

import numpy as np
import pytest
from registered import PROMPTED
import torch

from lspt_cli.explain import LABEL_BAND, TokenRecorder, compute_maps, panel_scale, rollout
from lspt_cli.prompted import PromptedViT, build_strategy


def test_recorded_attention_equals_timms_explicit_attention_with_temperature(tiny_backbone):
    strategy = build_strategy("gapt", tiny_backbone.dims, {"num_prompts": 3})
    with torch.no_grad():
        strategy.tau.copy_(torch.tensor([0.5, 2.0, 1.0, 0.7]))  # the q-scale hook must be included
    model = PromptedViT(tiny_backbone, strategy, 10).eval()
    images = torch.randn(2, 3, 32, 32)
    recorder = TokenRecorder(tiny_backbone)
    with torch.no_grad():
        fused = model(images)
    ours = [recorder.attention(i) for i in range(4)]
    recorder.remove()
    # timm's explicit path materialises the probabilities and passes them through attn_drop
    explicit, handles = [], []
    for block in tiny_backbone.blocks:
        block.attn.fused_attn = False
        handles.append(block.attn.attn_drop.register_forward_hook(lambda m, i, o: explicit.append(o.mean(dim=1))))
    try:
        with torch.no_grad():
            plain = model(images)
    finally:
        for block, h in zip(tiny_backbone.blocks, handles):
            block.attn.fused_attn = True
            h.remove()
    assert torch.allclose(fused, plain, atol=1e-5)
    assert len(explicit) == 4 and all(a.shape == (2, 1 + 3 + 16, 20) for a in ours)
    for a, b in zip(ours, explicit):
        assert torch.allclose(a, b, atol=1e-5)


def test_rollout_rows_are_distributions_and_maps_have_the_patch_grid(tiny_backbone):
    a = torch.softmax(torch.randn(1, 6, 6), dim=-1)
    r, start = rollout([a, a, a])
    assert start == 0 and torch.allclose(r.sum(-1), torch.ones(1, 6))
    strategy = build_strategy("vpt-deep", tiny_backbone.dims, {"num_prompts": 2})
    maps = compute_maps(PromptedViT(tiny_backbone, strategy, 10).eval(), torch.randn(1, 3, 32, 32))
    assert maps.rollout_cls.shape == maps.rollout_prompts.shape == maps.gradcam.shape == (4, 4)
    assert maps.rollout_cls.std() > 0 and maps.rollout_prompts.std() > 0 and (maps.gradcam >= 0).all()
    base = compute_maps(PromptedViT(tiny_backbone, build_strategy("linear", tiny_backbone.dims), 10).eval(),
                        torch.randn(1, 3, 32, 32))
    assert base.rollout_prompts is None


@pytest.fixture
def bundle(cli, tmp_path):
    result = cli("tune", "--backbone", "vit-tiny", "--task", "digits", "--strategy", "vpt-deep", "--epochs", "1",
                 "--warmup-epochs", "0", "--batch-size", "128", "--set", "num_prompts=2", "--out", str(tmp_path / "run"), "--json")
    assert result.exit_code == 0, result.output
    return tmp_path / "run" / "bundle.safetensors"


@pytest.mark.slow
def test_explain_writes_side_by_side_overlays(cli, bundle, tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    big, small = tmp_path / "big.png", tmp_path / "small.jpg"
    Image.fromarray(rng.integers(0, 255, (100, 120, 3), dtype=np.uint8)).save(big)  # 120 x 100: panels as is
    Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(small)  # 64 x 48: enlarged x2
    out = tmp_path / "explained"
    result = cli("explain", str(bundle), str(big), str(small), "-o", str(out), "--json")
    assert result.exit_code == 0, result.output
    docs = json.loads(result.stdout)
    assert [d["scale"] for d in docs] == [1, 2] and docs[1]["panel_size"] == [128, 96]
    assert panel_scale((64, 48)) == 2 and panel_scale((120, 100)) == 1
    for doc, (w, h) in zip(docs, [(120, 100), (128, 96)]):
        assert set(doc["files"]) == {"rollout-cls", "rollout-prompts", "gradcam"}
        assert 0 <= doc["predicted"]["index"] < 10 and 0 < doc["predicted"]["probability"] <= 1
        for path in doc["files"].values():
            with Image.open(path) as img:
                assert img.format == "PNG" and img.size == (3 * w, h + LABEL_BAND)
                pixels = np.asarray(img.convert("RGB"), dtype=np.float32)
            first = pixels[LABEL_BAND:, :w]
            for k in (1, 2):  # prompted and backbone panels: overlays, not the input, not blank
                panel = pixels[LABEL_BAND:, k * w : (k + 1) * w]
                assert panel.std() > 1.0 and np.abs(panel - first).mean() > 1.0

    # the human-readable form, and a strategy without prompts has no prompt rollout
    text = cli("explain", str(bundle), str(big), "-o", str(out))
    assert text.exit_code == 0 and "rollout-cls:" in text.stdout and "gradcam:" in text.stdout
    missing = cli("explain", str(bundle), str(tmp_path / "nope.png"), "-o", str(out))
    assert missing.exit_code == 2 and "no such image" in missing.output


@pytest.mark.slow
def test_linear_bundle_has_no_prompt_map(cli, tmp_path):
    from PIL import Image

    result = cli("tune", "--backbone", "vit-tiny", "--task", "digits", "--strategy", "linear", "--epochs", "1",
                 "--warmup-epochs", "0", "--batch-size", "128", "--out", str(tmp_path / "run"), "--json")
    assert result.exit_code == 0, result.output
    image = tmp_path / "x.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (96, 96, 3), dtype=np.uint8)).save(image)
    doc = json.loads(cli("explain", str(tmp_path / "run" / "bundle.safetensors"), str(image), "-o", str(tmp_path / "o"), "--json").stdout)
    assert set(doc[0]["files"]) == {"rollout-cls", "gradcam"}


@pytest.mark.parametrize("name", PROMPTED)
def test_prompts_sit_right_after_the_prefix(tiny_backbone, name):
    """Block 1 sees [CLS, P_1..P_n, patches]: what explain's maps (prompt rows, last n = patches) assume.
    A strategy that moved its prompts elsewhere (e.g. consistently to the end) has the same logits but
    wrong prompt and patch maps, so the position is pinned here, for every block of VPT-deep."""
    strategy = build_strategy(name, tiny_backbone.dims, {"num_prompts": 3})
    model = PromptedViT(tiny_backbone, strategy, 10).eval()
    images = torch.randn(2, 3, 32, 32)
    inputs, handles = [], [b.register_forward_pre_hook(lambda m, args: inputs.append(args[0].detach()))
                           for b in tiny_backbone.blocks]
    with torch.no_grad():
        model(images)
        embedded = tiny_backbone.embed(images)
    for h in handles:
        h.remove()
    prefix = tiny_backbone.dims.num_prefix_tokens
    first = inputs[0]
    assert prefix == 1 and first.shape == (2, 1 + 3 + 16, 64)
    deep = strategy.prompts.dim() == 3  # one set of prompts per block (vpt-deep, spt-deep)

    def inserted(prompts):  # what a set puts in its slots: VFPT's are its Fourier prompts (all, by default)
        if name.startswith("vfpt"):
            from lspt_plugins.strategies.vfpt import fourier

            return fourier(prompts, "all")
        return prompts

    prompts = strategy.prompts[0] if deep else strategy.prompts
    assert torch.equal(first[:, :prefix], embedded[:, :prefix])
    assert torch.equal(first[:, prefix : prefix + 3], inserted(prompts).expand(2, -1, -1))
    assert torch.equal(first[:, prefix + 3 :], embedded[:, prefix:])
    if deep:  # every block: fresh prompts in the same slots
        for index, x in enumerate(inputs):
            assert torch.equal(x[:, prefix : prefix + 3], inserted(strategy.prompts[index]).expand(2, -1, -1))


def test_rollout_multiplies_later_blocks_on_the_left():
    """Two blocks, three tokens, by hand: A' = (A + I) / 2 (rows already sum to 1), R = A2' A1'."""
    a1 = torch.tensor([[1.0, 0.0, 0.0], [0.5, 0.5, 0.0], [0.0, 0.0, 1.0]])
    a2 = torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
    p1 = [[1.0, 0.0, 0.0], [0.25, 0.75, 0.0], [0.0, 0.0, 1.0]]
    p2 = [[0.5, 0.5, 0.0], [0.0, 0.5, 0.5], [0.5, 0.0, 0.5]]
    expected = torch.tensor([[sum(p2[i][k] * p1[k][j] for k in range(3)) for j in range(3)] for i in range(3)])
    # e.g. row 0: 0.5 * [1, 0, 0] + 0.5 * [0.25, 0.75, 0] = [0.625, 0.375, 0]
    assert torch.allclose(expected[0], torch.tensor([0.625, 0.375, 0.0]))
    r, start = rollout([a1.unsqueeze(0), a2.unsqueeze(0)])
    assert start == 0 and torch.allclose(r[0], expected)
    wrong_order = torch.tensor(p1) @ torch.tensor(p2)
    assert not torch.allclose(wrong_order, expected)  # the toy tells the two orders apart


@pytest.mark.parametrize("width", [28, 84, 224])
def test_panel_titles_never_run_into_the_next_panel(width):
    """Each label is cut to its panel (84-px inputs used to get overlapping titles): the band's ink of
    panel k stays inside panel k's columns."""
    import numpy as np
    from PIL import Image

    from lspt_cli.explain import compose

    panels = [Image.new("RGB", (width, width), (255, 255, 255)) for _ in range(3)]
    labels = ["input: a very long class name indeed 97%", "rollout of the prompts (GaPT)", "Grad-CAM, last block"]
    for k in range(3):  # one label at a time: all of its ink lies in its own panel's columns
        alone = ["" if j != k else labels[k] for j in range(3)]
        band = np.asarray(compose(panels, alone))[:LABEL_BAND]
        columns = np.where((band < 128).any(axis=(0, 2)))[0]
        assert columns.size and columns.min() >= k * width and columns.max() < (k + 1) * width - 2, (k, width)
