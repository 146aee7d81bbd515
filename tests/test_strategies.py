"""The five built-in strategies against direct re-implementations of their equations (tiny ViTs, CPU)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from registered import PROMPTED, STRATEGIES
import torch
import torch.nn.functional as F

from lspt_cli.backbone import VIT_B16, BackboneDims
from lspt_cli.errors import ConfigError
from lspt_cli.plugins import get_host
from lspt_cli.prompted import PromptedViT, build_strategy



def images(batch: int = 2, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, 32, 32, generator=g)


def model_for(backbone, name: str, **config) -> PromptedViT:
    torch.manual_seed(123)
    model = PromptedViT(backbone, build_strategy(name, backbone.dims, config), num_classes=5)
    return model.eval()


def readout(backbone, x: torch.Tensor) -> torch.Tensor:
    """DESIGN.md section 4: CLS -> norm(x)[:, 0]; mean -> norm(mean of tokens after CLS)."""
    norm, prefix = backbone.model.norm, backbone.model.num_prefix_tokens
    return norm(x)[:, 0] if backbone.readout == "cls" else norm(x[:, prefix:].mean(dim=1))


def timm_tokens(backbone, img: torch.Tensor) -> torch.Tensor:
    """The final tokens of timm's own forward_features, captured at the input of its final norm."""
    captured = {}
    handle = backbone.model.norm.register_forward_hook(lambda m, i, o: captured.setdefault("x", i[0]))
    try:
        backbone.model.forward_features(img)
    finally:
        handle.remove()
    return captured["x"]


def manual_block(block, x: torch.Tensor, q_mult: float | torch.Tensor = 1.0) -> torch.Tensor:
    """timm's pre-norm block with explicit attention: softmax((q * q_mult) k^T / sqrt(d)) v."""
    attn = block.attn
    y = block.norm1(x)
    b, n, c = y.shape
    qkv = attn.qkv(y).reshape(b, n, 3, attn.num_heads, c // attn.num_heads).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    q, k = attn.q_norm(q) * q_mult, attn.k_norm(k)
    weights = ((q * attn.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
    o = (weights @ v).transpose(1, 2).reshape(b, n, c)
    x = x + block.ls1(attn.proj(attn.norm(o)))
    return x + block.ls2(block.mlp(block.norm2(x)))


def cat_prompts(x: torch.Tensor, prompts: torch.Tensor, replace: int = 0, prefix: int = 1) -> torch.Tensor:
    """[cls (+ registers), prompts, patches]; `replace` = how many old prompt slots to drop."""
    return torch.cat([x[:, :prefix], prompts, x[:, prefix + replace :]], dim=1)


def manual_gapt(backbone, img, prompts, gates, q_mults=None, spatial=False, lstm=None):
    """GaPT (+ GSPC, + LPC) written out from DESIGN.md section 4, block by block."""
    blocks = backbone.model.blocks
    depth, p, pre = len(blocks), prompts.shape[0], backbone.model.num_prefix_tokens
    x0 = backbone.embed(img)
    p_in = prompts.unsqueeze(0).expand(img.shape[0], -1, -1)
    x = cat_prompts(x0, p_in, prefix=pre)
    h = c = None
    for l, block in enumerate(blocks):
        x = manual_block(block, x, 1.0 if q_mults is None else q_mults[l])
        if l == depth - 1:
            break
        out = x[:, pre : pre + p]
        z = gates[l] * out + (1 - gates[l]) * p_in
        if spatial:
            z = z + x[:, pre + p :].mean(dim=1, keepdim=True)
        if lstm is not None:
            w_in, w_ih, w_hh, b_ih, b_hh, w_out = lstm
            inp = (z @ w_in.T).reshape(-1, w_in.shape[0])
            if h is None:
                h = c = torch.zeros_like(inp)
            gi, gf, gg, go = (inp @ w_ih.T + b_ih + h @ w_hh.T + b_hh).chunk(4, dim=1)
            c = torch.sigmoid(gf) * c + torch.sigmoid(gi) * torch.tanh(gg)
            h = torch.sigmoid(go) * torch.tanh(c)
            z = z + (h @ w_out.T).reshape(z.shape)
        x = cat_prompts(x, z, replace=p, prefix=pre)
        p_in = z
    return readout(backbone, x)


def randomize_gates(strategy, seed: int = 5) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        strategy.gate_logits.copy_(torch.randn(strategy.gate_logits.shape, generator=g) * 2)


# -- identity with plain timm -----------------------------------------------------------------
@pytest.mark.parametrize("name", STRATEGIES)
def test_no_prompts_reproduce_timm_cls(tiny_backbone, name):
    config = {} if name == "linear" else {"num_prompts": 0}
    model = model_for(tiny_backbone, name, **config)
    img = images()
    with torch.no_grad():
        expected = tiny_backbone.model.forward_features(img)[:, 0]
        got = model.forward_features(img)
    assert torch.equal(got, expected)


@pytest.mark.parametrize("name", STRATEGIES)
def test_no_prompts_reproduce_timm_mean(tiny_backbone_mean, name):
    backbone = tiny_backbone_mean
    config = {} if name == "linear" else {"num_prompts": 0}
    model = model_for(backbone, name, **config).train()  # train mode: dropout must not matter
    img = images()
    with torch.no_grad():
        tokens = timm_tokens(backbone, img)
        expected = backbone.model.norm(tokens[:, 1:].mean(dim=1))
        got = model.forward_features(img)
    assert torch.equal(got, expected)


# -- VPT ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("readout_kind", ["cls", "mean"])
def test_vpt_shallow_matches_equations(tiny_backbone, tiny_backbone_mean, readout_kind):
    backbone = tiny_backbone if readout_kind == "cls" else tiny_backbone_mean
    model = model_for(backbone, "vpt-shallow", num_prompts=5)
    prompts = model.strategy.prompts.detach()
    img = images()
    with torch.no_grad():
        x = cat_prompts(backbone.embed(img), prompts.expand(2, -1, -1))
        for block in backbone.model.blocks:
            x = block(x)
        expected = readout(backbone, x)
        got = model.forward_features(img)
    torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("readout_kind", ["cls", "mean"])
def test_vpt_deep_matches_equations(tiny_backbone, tiny_backbone_mean, readout_kind):
    backbone = tiny_backbone if readout_kind == "cls" else tiny_backbone_mean
    model = model_for(backbone, "vpt-deep", num_prompts=3)
    prompts = model.strategy.prompts.detach()  # [L, Np, D]
    assert prompts.shape == (4, 3, 64)
    img = images()
    with torch.no_grad():
        x = backbone.embed(img)
        for l, block in enumerate(backbone.model.blocks):
            x = cat_prompts(x, prompts[l].expand(2, -1, -1), replace=0 if l == 0 else 3)
            x = block(x)
        expected = readout(backbone, x)
        got = model.forward_features(img)
    torch.testing.assert_close(got, expected)


def test_vpt_init_range_and_dropout(tiny_backbone):
    bound = (6.0 / (3 * 8 * 8 + 64)) ** 0.5
    for name in ("vpt-shallow", "vpt-deep"):
        strategy = model_for(tiny_backbone, name, num_prompts=50).strategy
        assert strategy.prompts.abs().max() <= bound
        assert strategy.prompts.abs().max() > 0.9 * bound
    model = model_for(tiny_backbone, "vpt-deep", num_prompts=4, dropout=0.5)
    img = images()
    with torch.no_grad():
        evaluated = model.forward_features(img)
        assert torch.equal(model.forward_features(img), evaluated)  # eval: deterministic
        model.train()
        assert not model.backbone.training
        assert not torch.allclose(model.forward_features(img), evaluated)  # dropout at insertion
    assert model_for(tiny_backbone, "vpt-deep").strategy.dropout.p == 0.1
    assert model_for(tiny_backbone, "vpt-shallow").strategy.dropout.p == 0.0


# -- GaPT ---------------------------------------------------------------------------------------
def test_gapt_open_gates_no_temperature_is_vpt_shallow(tiny_backbone):
    gapt = model_for(tiny_backbone, "gapt", num_prompts=5, temperature=False)
    vpt = model_for(tiny_backbone, "vpt-shallow", num_prompts=5)
    with torch.no_grad():
        gapt.strategy.prompts.copy_(vpt.strategy.prompts)
        gapt.strategy.gate_logits.fill_(100.0)  # sigmoid(100) == 1: keep every block's prompt output
    img = images()
    with torch.no_grad():
        torch.testing.assert_close(gapt.forward_features(img), vpt.forward_features(img))
        gapt.strategy.gate_logits.fill_(-5.0)  # closed-ish gates: a different model
        assert not torch.allclose(gapt.forward_features(img), vpt.forward_features(img), atol=1e-4)


@pytest.mark.parametrize("readout_kind", ["cls", "mean"])
def test_gapt_matches_equations(tiny_backbone, tiny_backbone_mean, readout_kind):
    backbone = tiny_backbone if readout_kind == "cls" else tiny_backbone_mean
    model = model_for(backbone, "gapt", num_prompts=4, temperature=False)
    strategy = model.strategy
    assert strategy.gate_logits.shape == (3,)  # blocks 1..L-1
    assert torch.equal(strategy.gate_logits, torch.full((3,), -5.0))
    randomize_gates(strategy)
    img = images()
    with torch.no_grad():
        gates = torch.sigmoid(strategy.gate_logits)
        expected = manual_gapt(backbone, img, strategy.prompts, gates)
        torch.testing.assert_close(model.forward_features(img), expected)


def test_gapt_temperature(tiny_backbone):
    img = images()
    plain = model_for(tiny_backbone, "gapt", num_prompts=4, temperature=False)
    tempered = model_for(tiny_backbone, "gapt", num_prompts=4, temperature=True)
    randomize_gates(plain.strategy)
    tempered.strategy.load_state_dict({**plain.strategy.state_dict(), "tau": torch.ones(4)})
    assert torch.equal(tempered.strategy.tau, torch.ones(4))  # init 1
    # manual attention is timm's attention
    x = tiny_backbone.embed(img)
    with torch.no_grad():
        torch.testing.assert_close(manual_block(tiny_backbone.model.blocks[0], x), tiny_backbone.model.blocks[0](x))
        # tau = 1 is a no-op
        assert torch.equal(tempered.forward_features(img), plain.forward_features(img))
        # tau != 1 scales q: softmax(QK^T / (sqrt(d) tau)), tau clamped to [0.01, 10]
        tempered.strategy.tau.copy_(torch.tensor([0.5, 2.0, 50.0, 0.001]))
        got = tempered.forward_features(img)
        assert not torch.allclose(got, plain.forward_features(img), atol=1e-3)
        gates = torch.sigmoid(tempered.strategy.gate_logits)
        q_mults = [2.0, 0.5, 0.1, 100.0]
        expected = manual_gapt(tiny_backbone, img, tempered.strategy.prompts, gates, q_mults=q_mults)
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    # the runner leaves the backbone's attention plain afterwards
    with torch.no_grad():
        torch.testing.assert_close(
            tiny_backbone.model.forward_features(img)[:, 0],
            model_for(tiny_backbone, "linear").forward_features(img),
        )


def test_gapt_temperature_gets_gradients(tiny_backbone):
    model = model_for(tiny_backbone, "gapt", num_prompts=4)
    model(images()).logsumexp(dim=1).sum().backward()
    assert model.strategy.tau.grad is not None and model.strategy.tau.grad.abs().sum() > 0


# -- LSPT ---------------------------------------------------------------------------------------
def test_lspt_without_codings_is_gapt(tiny_backbone):
    lspt = model_for(tiny_backbone, "lspt", num_prompts=4, spatial="none", memory="none")
    gapt = model_for(tiny_backbone, "gapt", num_prompts=4)
    randomize_gates(gapt.strategy)
    with torch.no_grad():
        gapt.strategy.tau.copy_(torch.tensor([0.7, 1.3, 1.0, 2.0]))
    assert set(lspt.strategy.state_dict()) == set(gapt.strategy.state_dict())
    lspt.strategy.load_state_dict(gapt.strategy.state_dict())
    img = images()
    with torch.no_grad():
        assert torch.equal(lspt.forward_features(img), gapt.forward_features(img))


@pytest.mark.parametrize("readout_kind", ["cls", "mean"])
def test_untrained_lspt_is_gapt_plus_spatial_coding(tiny_backbone, tiny_backbone_mean, readout_kind):
    backbone = tiny_backbone if readout_kind == "cls" else tiny_backbone_mean
    model = model_for(backbone, "lspt", num_prompts=4, temperature=False)
    strategy = model.strategy
    assert torch.count_nonzero(strategy.memory_out.weight) == 0  # W_out starts at zero
    randomize_gates(strategy)
    img = images()
    spatial_only = model_for(backbone, "lspt", num_prompts=4, temperature=False, memory="none")
    spatial_only.strategy.load_state_dict(
        {k: v for k, v in strategy.state_dict().items() if k in spatial_only.strategy.state_dict()}
    )
    with torch.no_grad():
        gates = torch.sigmoid(strategy.gate_logits)
        expected = manual_gapt(backbone, img, strategy.prompts, gates, spatial=True)
        got = model.forward_features(img)
        torch.testing.assert_close(got, expected)
        assert torch.equal(got, spatial_only.forward_features(img))
        # and the spatial coding does change the model
        assert not torch.allclose(got, manual_gapt(backbone, img, strategy.prompts, gates), atol=1e-4)


def test_lspt_memory_matches_shared_lstm_equations(tiny_backbone_mean):
    backbone = tiny_backbone_mean
    model = model_for(backbone, "lspt", num_prompts=3, lstm_dim=8)
    strategy = model.strategy
    randomize_gates(strategy)
    with torch.no_grad():
        strategy.memory_out.weight.normal_(0, 0.5)  # a "trained" memory
        strategy.tau.copy_(torch.tensor([0.8, 1.0, 1.5, 1.2]))
    lstm = strategy.lstm
    weights = (
        strategy.memory_in.weight, lstm.weight_ih, lstm.weight_hh, lstm.bias_ih, lstm.bias_hh,
        strategy.memory_out.weight,
    )
    img = images(batch=3)
    with torch.no_grad():
        gates = torch.sigmoid(strategy.gate_logits)
        q_mults = list(1.0 / strategy.tau)
        expected = manual_gapt(backbone, img, strategy.prompts, gates, q_mults=q_mults, spatial=True, lstm=weights)
        got = model.forward_features(img)
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
        untrained = manual_gapt(backbone, img, strategy.prompts, gates, q_mults=q_mults, spatial=True)
        assert not torch.allclose(got, untrained, atol=1e-3)  # the memory is in use
    # one cell for every block: its parameters exist once
    assert sum(1 for n, _ in strategy.named_parameters() if n.startswith("lstm.")) == 4


def test_lspt_memory_learns_from_zero_init(tiny_backbone):
    model = model_for(tiny_backbone, "lspt", num_prompts=3, lstm_dim=8).train()
    opt = torch.optim.SGD(model.trainable_parameters(), lr=0.5)
    for _ in range(2):
        opt.zero_grad()
        F.cross_entropy(model(images()), torch.tensor([1, 3])).backward()
        opt.step()
    assert model.strategy.memory_out.weight.abs().sum() > 0
    assert model.strategy.lstm.weight_ih.grad.abs().sum() > 0  # nonzero once W_out has moved


@pytest.mark.parametrize("readout_kind", ["cls", "mean"])
def test_prompts_go_after_register_tokens(readout_kind):
    """With register tokens (prefix 3), prompts sit after them and the spatial mean skips them."""
    from conftest import make_tiny_vit

    from lspt_cli.backbone import FrozenBackbone

    backbone = FrozenBackbone(make_tiny_vit(reg_tokens=2), name="tiny-reg", readout=readout_kind)
    assert backbone.dims.num_prefix_tokens == 3
    img = images()
    shallow = model_for(backbone, "vpt-shallow", num_prompts=2)
    lspt = model_for(backbone, "lspt", num_prompts=2, memory="none")
    randomize_gates(lspt.strategy)
    with torch.no_grad():
        x = cat_prompts(backbone.embed(img), shallow.strategy.prompts.expand(2, -1, -1), prefix=3)
        for block in backbone.model.blocks:
            x = block(x)
        torch.testing.assert_close(shallow.forward_features(img), readout(backbone, x))
        gates = torch.sigmoid(lspt.strategy.gate_logits)
        expected = manual_gapt(backbone, img, lspt.strategy.prompts, gates, spatial=True)
        torch.testing.assert_close(lspt.forward_features(img), expected)


# -- frozen backbone ----------------------------------------------------------------------------
@pytest.mark.parametrize("name", STRATEGIES)
def test_training_touches_only_strategy_and_head(tiny_backbone, name):
    config = {} if name == "linear" else {"num_prompts": 3}
    if name in ("vpt-deep", "vpt-shallow", "gapt", "lspt"):
        config["dropout"] = 0.1
    model = model_for(tiny_backbone, name, **config).train()
    backbone_before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    strategy_before = {k: v.clone() for k, v in model.strategy.state_dict().items()}
    trainable = model.trainable_parameters()
    expected_ids = {id(p) for p in model.strategy.parameters()} | {id(p) for p in model.head.parameters()}
    assert {id(p) for p in trainable} == expected_ids
    opt = torch.optim.SGD(trainable, lr=0.5, momentum=0.9, weight_decay=1e-3)
    labels = torch.tensor([0, 4])
    for _ in range(3):
        opt.zero_grad()
        F.cross_entropy(model(images()), labels).backward()
        opt.step()
    assert not model.backbone.training and not model.backbone.model.training
    for key, value in model.backbone.state_dict().items():
        assert torch.equal(value, backbone_before[key]), key
    for param in model.backbone.parameters():
        assert param.grad is None and not param.requires_grad
    for pname, param in list(model.strategy.named_parameters()) + list(model.head.named_parameters()):
        assert param.grad is not None and param.grad.abs().sum() > 0, pname
    for key, value in model.strategy.state_dict().items():
        if key in ("prompts", "tau"):
            assert not torch.equal(value, strategy_before[key]), key


# -- parameter counts ---------------------------------------------------------------------------
VIT_B16_COUNTS = {
    "linear": 0,
    "vpt-shallow": 76_800,  # 100 * 768
    "vpt-deep": 92_160,  # 12 * 10 * 768
    "gapt": 76_823,  # 100 * 768 + 11 gates + 12 temperatures
    "lspt": 208_407,  # gapt + 768*64 (W_in) + 33_280 (LSTMCell 64) + 64*768 (W_out)
    "spt-shallow": 76_800,  # 100 * 768
    "spt-deep": 184_320,  # 12 * 20 * 768
    "vfpt": 92_160,  # 12 * 10 * 768
    "vfpt-shallow": 7_680,  # 10 * 768
}


TINY = BackboneDims(embed_dim=64, depth=4, num_heads=4, num_patches=16, patch_size=8)  # conftest's tiny ViT


def trainable_count(module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


@pytest.mark.parametrize("name", STRATEGIES)
def test_count_params_at_vit_b16_defaults(name):
    spec = get_host().strategies.get(name)
    strategy = build_strategy(name, VIT_B16)
    assert strategy.config() == spec.defaults
    assert spec.count_params(VIT_B16, dict(spec.defaults)) == trainable_count(strategy) == VIT_B16_COUNTS[name]
    assert sum(t.numel() for t in strategy.state_dict().values()) == VIT_B16_COUNTS[name]


@pytest.mark.parametrize(
    "name, config",
    [
        ("vpt-shallow", {"num_prompts": 7}),
        ("vpt-deep", {"num_prompts": 50}),
        ("gapt", {"num_prompts": 3, "temperature": False}),
        ("lspt", {"memory": "none"}),
        ("lspt", {"lstm_dim": 16, "temperature": False, "num_prompts": 1}),
        ("lspt", {"spatial": "none", "num_prompts": 0, "gate_init": 1}),
        ("gapt", {}),
        ("vpt-deep", {"num_prompts": 0}),
        ("linear", {}),
    ],
)
@pytest.mark.parametrize("dims", [VIT_B16, TINY], ids=["vit-b16", "tiny"])
def test_count_params_follows_config(name, config, dims):
    """The count (the module built on the meta device) is the real module's, for any options and shapes."""
    spec = get_host().strategies.get(name)
    strategy = build_strategy(name, dims, config)
    assert spec.count_params(dims, {**spec.defaults, **config}) == trainable_count(strategy)
    assert spec.count_params(dims, config) == trainable_count(strategy)  # partial config: defaults fill in


# -- registration and config --------------------------------------------------------------------
def test_builtin_registration():
    host = get_host()
    assert set(STRATEGIES) <= set(host.strategies.names())
    for name in STRATEGIES:
        spec = host.strategies.get(name)
        assert host.strategies.provider(name) == "strategies"
        assert spec.paper and spec.description and callable(spec.count_params)
        assert isinstance(spec.factory, str) and spec.factory.startswith("lspt_plugins.strategies.")
    assert host.records["strategies"].builtin


def test_registration_module_does_not_import_torch():
    """The specs (names, defaults, factories) are read from the strategy files' STRATEGIES tables
    without importing them; only counting (the module built on the meta device) imports torch."""
    code = (
        "import sys, lspt_plugins.strategies as s\n"
        "assert [x.name for x in s.SPECS] == ['linear', 'vpt-shallow', 'vpt-deep', 'gapt', 'lspt', 'spt-shallow', 'spt-deep',"
        " 'vfpt', 'vfpt-shallow']\n"
        "assert s.SPECS[4].defaults['lstm_dim'] == 64 and s.SPECS[4].factory.endswith('.lspt:LSPT')\n"
        "assert 'torch' not in sys.modules and 'lspt_plugins.strategies.lspt' not in sys.modules\n"
        "from lspt_cli.backbone_dims import VIT_B16\n"
        "assert [x.count_params(VIT_B16, {}) for x in s.SPECS] == [0, 76800, 92160, 76823, 208407, 76800, 184320, 92160, 7680]"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_each_file_declares_what_it_registers():
    """The STRATEGIES table read from a file's source is the one the imported file defines, and its
    defaults are its class's own (a strategy is registered next to its class)."""
    import importlib
    import inspect

    from lspt_plugins import strategies

    for family in strategies.FAMILIES:
        module = importlib.import_module(f"lspt_plugins.strategies.{family}")
        assert strategies.read_table(family) == tuple(module.STRATEGIES)
        for entry in module.STRATEGIES:
            cls = getattr(module, entry["class"])
            assert entry["class"] in module.__all__
            signature = inspect.signature(cls.__init__).parameters
            defaults = {k: p.default for k, p in signature.items() if k not in ("self", "dims", "config")}
            assert defaults == entry["defaults"]


def test_a_table_that_is_not_plain_data_is_refused(tmp_path, monkeypatch):
    from lspt_plugins import strategies

    (tmp_path / "odd.py").write_text("PAPER = 'x'\nSTRATEGIES = ({'name': 'odd', 'paper': PAPER},)\n")
    (tmp_path / "none.py").write_text("import torch\n")
    monkeypatch.setattr(strategies, "__file__", str(tmp_path / "__init__.py"))
    with pytest.raises(ValueError):
        strategies.read_table("odd")
    with pytest.raises(Exception, match="has no STRATEGIES table"):
        strategies.read_table("none")


def test_no_strategy_inherits_from_another():
    """LSPT reads on its own from lspt.py: GaPT's and VPT's pieces come from parts.py, not their classes."""
    import ast
    from pathlib import Path

    from lspt_cli.prompted import PromptStrategy
    from lspt_plugins import strategies
    from lspt_plugins.strategies.gapt import GaPT
    from lspt_plugins.strategies.lspt import LSPT
    from lspt_plugins.strategies.vpt import VPTDeep, VPTShallow

    for cls in (VPTShallow, VPTDeep, GaPT, LSPT):
        assert cls.__bases__ == (PromptStrategy,), cls
    for family in ("vpt", "gapt", "lspt"):
        tree = ast.parse(Path(strategies.__file__).with_name(f"{family}.py").read_text())
        local = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level}
        assert local <= {"parts", None}, (family, local)  # `from . import parts`, `from .parts import ...`


TENSOR_NAMES = {  # the bundles' tensor names: old bundles must keep loading
    "linear": set(),
    "vpt-shallow": {"prompts"},
    "vpt-deep": {"prompts"},
    "gapt": {"prompts", "gate_logits", "tau"},
    "lspt": {"prompts", "gate_logits", "tau", "memory_in.weight", "lstm.weight_ih", "lstm.weight_hh",
             "lstm.bias_ih", "lstm.bias_hh", "memory_out.weight"},
}


@pytest.mark.parametrize("name", sorted(TENSOR_NAMES))
def test_bundle_tensor_names_are_stable(tiny_backbone, name):
    assert set(build_strategy(name, tiny_backbone.dims).state_dict()) == TENSOR_NAMES[name]


def test_unknown_option_names_the_allowed_ones():
    with pytest.raises(ConfigError) as info:
        build_strategy("gapt", VIT_B16, {"num_tokens": 10})
    assert "num_tokens" in str(info.value)
    assert "allowed: dropout, gate_init, init, init_images, num_prompts, temperature" in str(info.value)
    with pytest.raises(ConfigError, match=r"unknown option 'num_prompts' for strategy 'linear'; allowed: \(none\)"):
        build_strategy("linear", VIT_B16, {"num_prompts": 10})


@pytest.mark.parametrize(
    "name, config",
    [
        ("vpt-shallow", {"num_prompts": -1}),
        ("vpt-deep", {"num_prompts": 2.5}),
        ("vpt-deep", {"dropout": 1.0}),
        ("gapt", {"temperature": "yes"}),
        ("gapt", {"gate_init": "5"}),
        ("lspt", {"spatial": "max"}),
        ("lspt", {"memory": "gru"}),
        ("lspt", {"lstm_dim": 0}),
    ],
)
def test_bad_option_values_are_config_errors(name, config):
    with pytest.raises(ConfigError):
        build_strategy(name, VIT_B16, config)


@pytest.mark.parametrize("name", STRATEGIES)
def test_config_round_trip(tiny_backbone, name):
    """A bundle rebuilds the strategy from config() and loads its state_dict strictly."""
    strategy = build_strategy(name, tiny_backbone.dims, {} if name == "linear" else {"num_prompts": 2})
    rebuilt = build_strategy(name, tiny_backbone.dims, strategy.config())
    assert rebuilt.config() == strategy.config()
    rebuilt.load_state_dict(strategy.state_dict(), strict=True)


def test_check_float_bounds_are_closed_unless_asked_open():
    """[low, high] by default; VPT's dropout asks for [0, 1): p = 1 would drop every prompt."""
    from lspt_plugins.strategies.parts import check_float

    assert check_float("s", "k", 1, 0.0, 1.0) == 1.0 and check_float("s", "k", 0.0, 0.0, 1.0) == 0.0
    with pytest.raises(ConfigError, match=r"k must be a number in \[0.0, 1.0\), got 1.0"):
        check_float("s", "k", 1.0, 0.0, 1.0, high_open=True)
    for bad in (1.5, -0.1, True, "0.5"):
        with pytest.raises(ConfigError, match=r"in \[0.0, 1.0\], got"):
            check_float("s", "k", bad, 0.0, 1.0)


def test_linear_probe_has_no_prompt_slots(tiny_backbone):
    """The prompt/patch helpers see no prompt tokens: every token after the prefix is a patch."""
    strategy = build_strategy("linear", tiny_backbone.dims)
    x = torch.randn(2, strategy.prefix + 16, tiny_backbone.dims.embed_dim)
    assert strategy.num_prompts == 0 and strategy.prompt_tokens(x).shape[1] == 0
    assert torch.equal(strategy.patch_tokens(x), x[:, strategy.prefix :])


def test_count_trainable_fills_the_defaults_and_takes_any_dims():
    """count_params(dims, config): the defaults under `config`; `dims` anything with BackboneDims' fields."""
    from types import SimpleNamespace

    spec = get_host().strategies.get("vpt-deep")
    assert spec.count_params(VIT_B16) == 12 * 10 * 768
    assert spec.count_params(SimpleNamespace(embed_dim=64, depth=4.0), {"num_prompts": 2}) == 4 * 2 * 64
    assert spec.count_params(VIT_B16, {"num_prompts": 10**9}) == 12 * 10**9 * 768  # meta: nothing allocated
    with pytest.raises(ConfigError):
        spec.count_params(VIT_B16, {"num_prompts": "x"})