"""VFPT (plugins/strategies/vfpt.py) against the official code on identical weights.

`OfficialVFPT` below is the REFERENCE: an independent re-implementation of runtsang/VFPT@1b3d984's
prompted ViT (src/models/vit_prompt/vit_fourier_mae.py and vit_fourier_moco.py, whose prompt code is
the same; the `sequence`/`hidden` FFTs, the `append` location and FOURIER_PERCENTAGE 0 from the
supervised ViT's vit_fourier.py), written from reading that code, on the tiny fake ViT in fp64. lspt's
PromptedViT is compared with it: the initial prompts for a seed (exactly), then features, logits and
the gradients of the prompts and of the head, in training mode with prompt dropout under the same
seed (to 1e-10)."""

from __future__ import annotations

import math
from functools import reduce
from operator import mul

import pytest
import torch
import torch.nn.functional as F
from conftest import make_tiny_vit, mini_digits
from torch import nn

from lspt_cli.backbone import VIT_B16, BackboneDims, FrozenBackbone
from lspt_cli.errors import ConfigError
from lspt_cli.plugins import get_host
from lspt_cli.prompted import PromptedViT, build_strategy


# -- the reference: the official forward, written out ------------------------------------------------
class OfficialVFPT(nn.Module):
    """REFERENCE, not lspt code: VFPT's PromptedVisionTransformer on a timm ViT (fc_norm / norm as the
    MAE / MoCo v3 files read out), with a linear head.

    Init (vit_fourier_mae.py:46-62): val = sqrt(6 / (3 * prod(patch_size) + D)); prompt_embeddings
    [1, Np, D] ~ U(-val, val), then, deep, deep_prompt_embeddings [L-1, Np, D] ~ U(-val, val).
    fourier_num_tokens = floor(Np * FOURIER_PERCENTAGE), 0 for a percentage of 0 (lines 41-44)."""

    def __init__(self, vit, num_tokens, percentage, deep, dropout, dimension="all", location="prepend",
                 pool="cls", num_classes=5):
        super().__init__()
        self.vit, self.num_tokens, self.deep = vit, num_tokens, deep
        self.dimension, self.location, self.pool = dimension, location, pool
        self.prompt_dropout = nn.Dropout(dropout)
        self.fourier_num_tokens = math.floor(num_tokens * percentage) if percentage != 0.0 else 0
        self.percentage = percentage
        embed_dim = vit.embed_dim
        val = math.sqrt(6.0 / float(3 * reduce(mul, vit.patch_embed.patch_size, 1) + embed_dim))
        self.prompt_embeddings = nn.Parameter(torch.zeros(1, num_tokens, embed_dim))
        nn.init.uniform_(self.prompt_embeddings.data, -val, val)
        if deep:
            self.deep_prompt_embeddings = nn.Parameter(torch.zeros(len(vit.blocks) - 1, num_tokens, embed_dim))
            nn.init.uniform_(self.deep_prompt_embeddings.data, -val, val)
        self.fc_norm = nn.LayerNorm(embed_dim, eps=1e-6)  # vit_mae.py:21-26: a fresh norm (weight 1, bias 0)
        self.head = nn.Linear(embed_dim, num_classes)

    def FT(self, x):  # FNetBlock / FNetBlock_sequence / FNetBlock_hidden (vit_fourier.py:33-55)
        if self.dimension == "all":
            return torch.fft.fft(torch.fft.fft(x, dim=-1), dim=-2).real
        if self.dimension == "sequence":
            return torch.fft.fft(x, dim=-2).real
        return torch.fft.fft(x, dim=-1).real

    def embeddings(self, x):  # vit_fourier_moco.py:111-121
        v = self.vit
        x = v.patch_embed(x)
        x = torch.cat((v.cls_token.expand(x.shape[0], -1, -1), x), dim=1)
        return v.pos_drop(x + v.pos_embed)

    def incorporate_prompt(self, x):  # vit_fourier_mae.py:67-93 (+ vit_fourier.py:142,170-182)
        B = x.shape[0]
        x = self.embeddings(x)
        if self.percentage == 0.0:
            return torch.cat((x[:, :1, :], self.prompt_dropout(self.prompt_embeddings.expand(B, -1, -1)),
                              x[:, 1:, :]), dim=1)
        fourier_emb = self.prompt_dropout(self.prompt_embeddings[0][: self.fourier_num_tokens].expand(B, -1, -1))
        if self.fourier_num_tokens == self.num_tokens:
            return torch.cat((x[:, :1, :], self.FT(fourier_emb), x[:, 1:, :]), dim=1)
        rest = self.prompt_dropout(self.prompt_embeddings[0][self.fourier_num_tokens:].expand(B, -1, -1))
        if self.location == "prepend":
            return torch.cat((x[:, :1, :], self.FT(fourier_emb), rest, x[:, 1:, :]), dim=1)
        return torch.cat((x[:, :1, :], rest, self.FT(fourier_emb), x[:, 1:, :]), dim=1)

    def deep_prompt(self, x, i):  # vit_fourier_mae.py:129-150 (+ vit_fourier.py:212-220,281-287)
        B, emb = x.shape[0], self.deep_prompt_embeddings[i - 1]
        if self.percentage == 0.0:
            return torch.cat((x[:, :1, :], self.prompt_dropout(emb.expand(B, -1, -1)),
                              x[:, (1 + self.num_tokens):, :]), dim=1)
        if self.fourier_num_tokens != self.num_tokens:
            deep_prompt_emb = self.prompt_dropout(emb[self.fourier_num_tokens:].expand(B, -1, -1))
        fourier_emb = self.prompt_dropout(emb[: self.fourier_num_tokens].expand(B, -1, -1))
        if self.fourier_num_tokens == self.num_tokens:
            return torch.cat((x[:, :1, :], self.FT(fourier_emb), x[:, (1 + self.num_tokens):, :]), dim=1)
        if self.location == "prepend":
            return torch.cat((x[:, :1, :], self.FT(fourier_emb), deep_prompt_emb, x[:, (1 + self.num_tokens):, :]), dim=1)
        return torch.cat((x[:, :1, :], deep_prompt_emb, self.FT(fourier_emb), x[:, (1 + self.num_tokens):, :]), dim=1)

    def forward_features(self, images):  # vit_fourier_mae.py:118-162, vit_fourier_moco.py:136-177
        x = self.incorporate_prompt(images)
        for i, block in enumerate(self.vit.blocks):
            if self.deep and i > 0:
                x = self.deep_prompt(x, i)
            x = block(x)
        if self.pool == "mean":  # VIT_POOL_TYPE "original" (config.py:150)
            return self.fc_norm(x[:, 1:, :].mean(dim=1))
        return self.vit.norm(x)[:, 0]

    def forward(self, images):
        return self.head(self.forward_features(images))

    def train(self, mode=True):  # vit_fourier_mae.py:105-116: the backbone stays in eval mode
        super().train(mode)
        self.vit.eval()
        return self


def build_pair(deep, num_prompts, fraction, dims, location, dropout, pool, seed=7):
    """The reference and lspt's PromptedViT on the same tiny ViT, each building its prompts after
    torch.manual_seed(seed); the head copied from lspt's into the reference; both in fp64 afterwards."""
    vit = make_tiny_vit()
    torch.manual_seed(seed)
    reference = OfficialVFPT(vit, num_prompts, fraction, deep, dropout, dims, location, "mean" if pool == "mean-ln" else "cls")
    backbone = FrozenBackbone(vit, name="tiny-test", readout=pool)
    options = {"num_prompts": num_prompts, "fourier_fraction": fraction, "fourier_dims": dims, "dropout": dropout}
    torch.manual_seed(seed)
    ours = PromptedViT(backbone, build_strategy("vfpt" if deep else "vfpt-shallow", backbone.dims, options), num_classes=5)
    with torch.no_grad():
        reference.head.weight.copy_(ours.head.weight)
        reference.head.bias.copy_(ours.head.bias)
    return reference, ours


def official_prompts(reference) -> torch.Tensor:
    """The reference's prompt tensors in lspt's layout: [L, Np, D] deep, [Np, D] shallow."""
    if reference.deep:
        return torch.cat([reference.prompt_embeddings, reference.deep_prompt_embeddings])
    return reference.prompt_embeddings[0]


CASES = [  # deep, Np, fourier_fraction, fourier_dims, the reference's FOURIER_LOCATION, dropout, readout
    (True, 4, 1.0, "all", "prepend", 0.3, "cls"),  # the README's command (all prompts Fourier)
    (True, 5, 0.5, "all", "prepend", 0.3, "mean-ln"),  # m = 2: Fourier and plain prompts, MAE's readout
    # 10 * 0.3 = 3.0000000000000004: m = 3. The official `append` (Fourier prompts after the plain ones)
    # against lspt's order: prompts have no position embedding, so only their order differs, never a number
    (True, 10, 0.3, "all", "append", 0.2, "cls"),
    (True, 4, 0.5, "sequence", "prepend", 0.3, "cls"),
    (True, 4, 0.75, "hidden", "append", 0.3, "mean-ln"),
    (True, 4, 0.0, "all", "prepend", 0.3, "cls"),  # percentage 0: VPT-deep
    (True, 4, 0.5, "all", "prepend", 0.0, "cls"),  # no dropout: one FFT per set
    (False, 6, 0.5, "all", "prepend", 0.3, "mean-ln"),
    (False, 4, 1.0, "all", "prepend", 0.0, "cls"),
]


@pytest.mark.parametrize("deep, num_prompts, fraction, dims, location, dropout, pool", CASES)
def test_initial_prompts_equal_the_official_code(deep, num_prompts, fraction, dims, location, dropout, pool):
    """Same seed, same numbers: lspt's one [L, Np, D] draw is the official two draws, in order (fp32)."""
    reference, ours = build_pair(deep, num_prompts, fraction, dims, location, dropout, pool)
    official = official_prompts(reference).detach()
    assert ours.strategy.prompts.dtype == official.dtype == torch.float32
    assert torch.equal(ours.strategy.prompts.detach(), official)
    bound = math.sqrt(6.0 / (3 * 8 * 8 + 64))
    assert official.abs().max() <= bound and official.abs().max() > 0.9 * bound


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("deep, num_prompts, fraction, dims, location, dropout, pool", CASES)
def test_forward_and_gradients_equal_the_official_code(deep, num_prompts, fraction, dims, location, dropout, pool, mode):
    reference, ours = build_pair(deep, num_prompts, fraction, dims, location, dropout, pool)
    reference.double().train(mode == "train")
    ours.double().train(mode == "train")
    assert not ours.backbone.model.training and not reference.vit.training
    images = torch.randn(3, 3, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    labels = torch.tensor([0, 3, 4])
    outputs = []
    for model in (reference, ours):
        torch.manual_seed(21)  # the same dropout masks, drawn in the same order
        features = model.forward_features(images)
        logits = model.head(features)
        F.cross_entropy(logits, labels).backward()
        outputs.append((features, logits))
    (ref_features, ref_logits), (features, logits) = outputs
    assert features.dtype == torch.float64
    assert torch.allclose(features, ref_features, rtol=0, atol=1e-10)
    assert torch.allclose(logits, ref_logits, rtol=0, atol=1e-10)
    ref_grad = official_prompts_grad(reference)
    assert ours.strategy.prompts.grad.abs().max() > 0
    assert torch.allclose(ours.strategy.prompts.grad, ref_grad, rtol=0, atol=1e-10)
    assert torch.allclose(ours.head.weight.grad, reference.head.weight.grad, rtol=0, atol=1e-10)
    assert torch.allclose(ours.head.bias.grad, reference.head.bias.grad, rtol=0, atol=1e-10)
    if mode == "train" and dropout > 0:  # dropout did act: a second seed gives other features
        torch.manual_seed(22)
        assert not torch.allclose(ours.forward_features(images), features)


def official_prompts_grad(reference) -> torch.Tensor:
    if reference.deep:
        return torch.cat([reference.prompt_embeddings.grad, reference.deep_prompt_embeddings.grad])
    return reference.prompt_embeddings.grad[0]


def test_fourier_prompts_are_the_real_part_of_the_2d_fft():
    """Spelled out once without the reference: the inserted Fourier prompts are Re(DFT_m P DFT_D)
    (the DFT matrices written out), the plain prompts are P itself."""
    from lspt_plugins.strategies.vfpt import VFPTShallow

    dims = BackboneDims(embed_dim=6, depth=2, num_heads=2, patch_size=8, num_prefix_tokens=1)
    strategy = VFPTShallow(dims, num_prompts=5, fourier_fraction=0.6).double().eval()
    x = torch.zeros(2, 1 + 4, 6, dtype=torch.float64)  # CLS + 4 patches
    out = strategy.before_block(0, x, {})
    P = strategy.prompts.detach()

    def dft(n):
        k = torch.arange(n, dtype=torch.float64)
        return torch.exp(-2j * math.pi * torch.outer(k, k) / n)

    spectral = (dft(3) @ P[:3].to(torch.complex128) @ dft(6)).real  # m = floor(5 * 0.6) = 3
    assert out.shape == (2, 1 + 5 + 4, 6)
    assert torch.allclose(out[:, 1:4], spectral.expand(2, -1, -1), rtol=0, atol=1e-12)
    assert torch.equal(out[:, 4:6], P[3:].expand(2, -1, -1))


def test_the_fourier_count_is_floored_as_written():
    from lspt_plugins.strategies.vfpt import VFPT

    dims = BackboneDims(embed_dim=8, depth=2, num_heads=2)
    with torch.device("meta"):
        assert VFPT(dims, num_prompts=100, fourier_fraction=0.29).num_fourier == 28  # 100 * 0.29 = 28.999999999999996
        assert VFPT(dims, num_prompts=10, fourier_fraction=0.3).num_fourier == 3
        assert VFPT(dims, num_prompts=1, fourier_fraction=0.5).num_fourier == 0  # no Fourier prompt: VPT
        assert VFPT(dims, num_prompts=10, fourier_fraction=1).num_fourier == 10


# -- parameters, options -------------------------------------------------------------------------------
TINY = BackboneDims(embed_dim=64, depth=4, num_heads=4, num_patches=16, patch_size=8)


@pytest.mark.parametrize("name, config, vit_b16, tiny", [
    ("vfpt", {}, 12 * 10 * 768, 4 * 10 * 64),
    ("vfpt-shallow", {}, 10 * 768, 10 * 64),
    ("vfpt", {"num_prompts": 50, "fourier_fraction": 0.3}, 12 * 50 * 768, 4 * 50 * 64),
    ("vfpt-shallow", {"num_prompts": 7, "fourier_dims": "hidden"}, 7 * 768, 7 * 64),
    ("vfpt", {"num_prompts": 0}, 0, 0),
])
def test_parameter_count_equals_the_built_module(name, config, vit_b16, tiny):
    """count_params (the module on the meta device) is the real module's: the prompts, nothing else."""
    spec = get_host().strategies.get(name)
    for dims, count in ((VIT_B16, vit_b16), (TINY, tiny)):
        strategy = build_strategy(name, dims, config)
        real = sum(p.numel() for p in strategy.parameters() if p.requires_grad)
        assert spec.count_params(dims, config) == real == count
        assert set(strategy.state_dict()) == {"prompts"}


@pytest.mark.parametrize("config, needle", [
    ({"fourier_fraction": 1.5}, r"fourier_fraction must be a number in \[0.0, 1.0\], got 1.5"),
    ({"fourier_fraction": -0.1}, "fourier_fraction must be a number"),
    ({"fourier_fraction": "0.5"}, "fourier_fraction must be a number"),
    ({"fourier_fraction": True}, "fourier_fraction must be a number"),
    ({"fourier_dims": "both"}, "fourier_dims must be one of all, sequence, hidden; got 'both'"),
    ({"fourier_location": "append"}, "unknown option 'fourier_location'"),
    ({"dropout": 1.0}, r"dropout must be a number in \[0.0, 1.0\)"),
    ({"num_prompts": -1}, "num_prompts must be an integer >= 0"),
    ({"num_prompts": 2.5}, "num_prompts must be an integer >= 0"),
    ({"fourier": 0.5}, "unknown option 'fourier'"),
])
@pytest.mark.parametrize("name", ["vfpt", "vfpt-shallow"])
def test_bad_options_are_one_line_config_errors(name, config, needle):
    with pytest.raises(ConfigError, match=needle) as info:
        build_strategy(name, VIT_B16, config)
    assert f"'{name}'" in str(info.value) and "\n" not in str(info.value)


def test_bf16_autocast_trains(tiny_backbone):
    """The FFT has no bf16 kernels: it runs in the parameters' dtype, and autocast training works."""
    torch.manual_seed(0)
    model = PromptedViT(tiny_backbone, build_strategy("vfpt", tiny_backbone.dims, {"num_prompts": 4,
                                                                                   "fourier_fraction": 0.5}), 5).train()
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = F.cross_entropy(model(images), torch.tensor([1, 2]))
    loss.backward()
    assert torch.isfinite(model.strategy.prompts.grad).all() and model.strategy.prompts.grad.abs().sum() > 0


# -- a few training steps on the tiny data ----------------------------------------------------------
@pytest.mark.parametrize("name", ["vfpt", "vfpt-shallow"])
def test_trains_on_tiny_digits(tmp_path, name):
    from lspt_cli.engine.train import Trainer
    from lspt_cli.recipes import resolve_config

    mini_digits()
    knobs = dict(protocol="lspt", schedule="per-step", lr_scaling="none", epochs=2, warmup_epochs=0, batch_size=16,
                 optimizer="sgd", lr=0.1, momentum=0.9, weight_decay=0.0, grad_clip=0.0, amp="off", device="cpu",
                 threads=1, seed=0, num_workers=0)
    config = resolve_config(backbone="vit-tiny", strategy=name, task="mini", benchmark="custom",
                            registered_recipes=get_host().recipes, train_overrides=knobs,
                            strategy_overrides={"num_prompts": 4, "fourier_fraction": 0.5, "dropout": 0.1})
    trainer = Trainer(config, tmp_path / "run", host=get_host())
    trainer.setup()
    before = trainer.model.strategy.prompts.detach().clone()
    summary = trainer.run()
    after = trainer.model.strategy.prompts.detach()
    assert not torch.equal(before, after) and torch.isfinite(after).all()
    assert (tmp_path / "run" / "bundle.safetensors").exists()


# -- the recipes --------------------------------------------------------------------------------------
@pytest.mark.parametrize("strategy", ["vfpt", "vfpt-shallow"])
@pytest.mark.parametrize("backbone", ["mae-vitb", "mocov3-vitb"])
@pytest.mark.parametrize("benchmark, task", [("fgvc", "cub"), ("vtab", "vtab/cifar")])
def test_paper_recipes_carry_the_cited_values(strategy, backbone, benchmark, task):
    """runtsang/VFPT@1b3d984: configs/base-prompt_fourier_{mae,moco}.yaml (SGD 0.9, 100 epochs, 10 warm-up,
    batch 64, wd 1e-4), README.md:182-190 (10 prompts, dropout 0.10, percentage 1.0), tune_vtab.py /
    tune_fgvc.py (lr x batch/256, the prompt grids); MAE reads out through a fresh fc_norm (mean-ln)."""
    from lspt_cli.recipes import resolve_config

    config = resolve_config(backbone=backbone, strategy=strategy, task=task, benchmark=benchmark,
                            registered_recipes=get_host().recipes)
    assert config.recipes == [f"{strategy}-{backbone}-{benchmark}"]
    train = config.train
    assert (train.protocol, train.epochs, train.warmup_epochs, train.batch_size) == ("paper", 100, 10, 64)
    assert (train.optimizer, train.momentum, train.weight_decay, train.lr_scaling) == ("sgd", 0.9, 0.0001, "batch/256")
    assert train.readout == ("mean-ln" if backbone == "mae-vitb" else "")
    assert config.strategy_config == {"num_prompts": 10, "fourier_fraction": 1.0, "fourier_dims": "all",
                                      "dropout": 0.1 if strategy == "vfpt" else 0.0}
    lrs = [0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 50.0]
    assert config.grid == {"lr": ([0.05] + lrs) if benchmark == "vtab" else lrs, "weight_decay": [0.01, 0.001, 0.0001, 0.0]}
    assert train.lr in config.grid["lr"]


@pytest.mark.parametrize("strategy", ["vfpt", "vfpt-shallow"])
def test_the_vit_tiny_demo(strategy):
    from lspt_cli.recipes import resolve_config

    config = resolve_config(backbone="vit-tiny", strategy=strategy, task="digits", benchmark="custom",
                            registered_recipes=get_host().recipes)
    assert config.recipes == [f"vit-tiny-{strategy}"]
    assert config.strategy_config["num_prompts"] == 8 and config.strategy_config["fourier_fraction"] == 0.5
    model = build_strategy(strategy, TINY, config.strategy_config)
    assert model.num_fourier == 4  # half Fourier prompts, half plain: the demo runs both kinds
