"""LSPT's and GaPT's fast step (plugins/strategies/parts.py: `gated_prompts`, `write_prompts`;
lspt.py: `torch.lstm`) computes what the plain formulation computed, forward and gradients.

The reference below is lspt.py's `start`/`after_block` as they were before the fast step (commit
4b13135): `parts.gate`, the mean of the patch slice, `nn.LSTMCell` and `replace_prompts`, all
through autograd's own backward. Both run on the same strategy object (the same tensors), in fp64
on a tiny ViT: logits and every trainable gradient agree to 1e-10. In fp32 (where `torch.lstm`
runs oneDNN's kernel) they agree to float tolerance, and under bf16 autocast the step runs and
runs the cell in fp32 (oneDNN's fused kernel).
"""

from __future__ import annotations

import types
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from lspt_cli.backbone import FrozenBackbone
from lspt_cli.prompted import PromptedViT, build_strategy
from lspt_plugins.strategies.parts import gate


# -- the reference: the plain formulation (lspt.py at 4b13135) -----------------------------------
def reference_start(self, x: torch.Tensor) -> dict[str, Any]:
    return {"gates": torch.sigmoid(self.gate_logits).to(x.dtype)} if self.num_prompts else {}


def reference_after_block(self, index: int, x: torch.Tensor, state: dict[str, Any]) -> torch.Tensor:
    if not self.num_prompts or index >= self.dims.depth - 1:
        return x
    coded = gate(state["prompts"], self.prompt_tokens(x), state["gates"][index])  # G^l (GaPT)
    if self.spatial == "mean":  # GSPC
        coded = coded + self.patch_tokens(x).mean(dim=1, keepdim=True)
    if self.memory == "lstm":  # LPC
        b, p, d = coded.shape
        h, c = self.lstm(self.memory_in(coded).reshape(b * p, self.lstm_dim), state.get("memory"))
        state["memory"] = (h, c)
        coded = coded + self.memory_out(h).reshape(b, p, d)
    state["prompts"] = coded
    return self.replace_prompts(x, coded)


def reference_gapt_after_block(self, index: int, x: torch.Tensor, state: dict[str, Any]) -> torch.Tensor:
    """gapt.py's after_block before its fast step: the gate on the prompt slice, `replace_prompts`."""
    if not self.num_prompts or index >= self.dims.depth - 1:
        return x
    prompts = gate(state["prompts"], self.prompt_tokens(x), state["gates"][index])  # Z_P^l
    state["prompts"] = prompts
    return self.replace_prompts(x, prompts)


def as_reference(model: PromptedViT) -> PromptedViT:
    """The same model (same tensors) running the plain formulation."""
    strategy = model.strategy
    strategy.start = types.MethodType(reference_start, strategy)
    after_block = reference_gapt_after_block if strategy.strategy_name == "gapt" else reference_after_block
    strategy.after_block = types.MethodType(after_block, strategy)
    return model


# -- helpers ------------------------------------------------------------------------------------
def tiny_model(dtype: torch.dtype, readout: str = "cls", reg_tokens: int = 0, strategy: str = "lspt",
               **config) -> PromptedViT:
    from conftest import make_tiny_vit

    backbone = FrozenBackbone(make_tiny_vit(reg_tokens=reg_tokens), name="tiny-test", readout=readout)
    torch.manual_seed(123)
    model = PromptedViT(backbone, build_strategy(strategy, backbone.dims, config), num_classes=5).to(dtype)
    strategy = model.strategy
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():  # move every tensor off its init: gates open, temperatures, a "trained" W_out
        strategy.gate_logits.copy_(torch.randn(strategy.gate_logits.shape, generator=g, dtype=dtype) * 2)
        if strategy.tau is not None:
            strategy.tau.copy_(0.6 + torch.rand(strategy.tau.shape, generator=g, dtype=dtype))
        if getattr(strategy, "memory", None) == "lstm":
            strategy.memory_out.weight.copy_(torch.randn(strategy.memory_out.weight.shape, generator=g, dtype=dtype) * 0.5)
    return model.train()


def step(model: PromptedViT, images: torch.Tensor, labels: torch.Tensor, seed: int = 7):
    """Logits and {name: gradient} of one cross-entropy step (prompt dropout drawn from `seed`)."""
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    logits = model(images)
    F.cross_entropy(logits.float(), labels).backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    return logits.detach(), grads


def compare(config: dict, dtype: torch.dtype, tol: float, **model_args) -> None:
    g = torch.Generator().manual_seed(1)
    images = torch.randn(3, 3, 32, 32, generator=g).to(dtype)
    labels = torch.tensor([0, 3, 4])
    fast = tiny_model(dtype, **model_args, **config)
    logits, grads = step(fast, images, labels)
    ref_logits, ref_grads = step(as_reference(fast), images, labels)
    assert set(grads) == set(ref_grads)
    torch.testing.assert_close(logits, ref_logits, rtol=tol, atol=tol)
    for name, grad in grads.items():
        assert grad.abs().sum() > 0, name  # every tensor is in use, so the comparison means something
        torch.testing.assert_close(grad, ref_grads[name], rtol=tol, atol=tol, msg=lambda m: f"{name}: {m}")


CONFIGS = [
    {},  # the defaults: spatial mean, LSTM memory, temperature
    {"lstm_dim": 8, "dropout": 0.2},
    {"memory": "none"},
    {"spatial": "none"},
    {"spatial": "none", "memory": "none", "temperature": False},
]


# -- the tests ----------------------------------------------------------------------------------
@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()) or "defaults")
def test_fast_step_equals_the_plain_formulation_fp64(config):
    compare({"num_prompts": 4, **config}, torch.float64, 1e-10)


@pytest.mark.parametrize("config", [{}, {"temperature": False, "dropout": 0.2}], ids=["defaults", "no-temperature,dropout"])
def test_gapt_fast_step_equals_the_plain_formulation_fp64(config):
    """GaPT reads and writes its prompts through the same two functions (parts.py)."""
    compare({"num_prompts": 4, **config}, torch.float64, 1e-10, strategy="gapt")
    compare({"num_prompts": 3, **config}, torch.float64, 1e-10, strategy="gapt", readout="mean", reg_tokens=2)


@pytest.mark.parametrize("readout", ["cls", "mean"])
def test_fast_step_with_register_tokens_fp64(readout):
    """Prefix 3 (CLS + 2 registers): the prompt slots and the patch mean move with it."""
    compare({"num_prompts": 3}, torch.float64, 1e-10, readout=readout, reg_tokens=2)


def test_fast_step_fp32_uses_the_fused_kernels():
    """fp32: torch.lstm's fused (oneDNN) kernel agrees with LSTMCell's ops to float tolerance."""
    compare({"num_prompts": 4}, torch.float32, 2e-5)


@pytest.mark.parametrize("strategy", ["lspt", "gapt"])
def test_fast_step_launches_no_slice_or_cell_backward(strategy):
    """The point of the fast step: no x-sized zero-filled slice gradients, no decomposed cell."""
    from torch.profiler import ProfilerActivity, profile

    model = tiny_model(torch.float32, strategy=strategy, num_prompts=4)
    images, labels = torch.randn(2, 3, 32, 32), torch.tensor([1, 2])
    step(model, images, labels)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step(model, images, labels)
    names = {e.key for e in prof.key_averages()}
    assert ("aten::lstm" in names) == (strategy == "lspt")
    assert not {"aten::lstm_cell", "aten::tanh_backward", "aten::slice_backward"} & names, names


def test_fast_step_under_bf16_autocast():
    """bf16 autocast: the cell runs in fp32 on oneDNN's fused kernel (it has no bf16 training path:
    torch would fall back to the decomposed cell), the gradients are fp32 and finite, and the logits
    stay close to the plain formulation's."""
    from torch.profiler import ProfilerActivity, profile

    g = torch.Generator().manual_seed(1)
    images, labels = torch.randn(3, 3, 32, 32, generator=g), torch.tensor([0, 3, 4])
    model = tiny_model(torch.float32, num_prompts=4)
    with torch.autocast("cpu", dtype=torch.bfloat16), profile(activities=[ProfilerActivity.CPU]) as prof:
        logits, grads = step(model, images, labels)
    names = {e.key for e in prof.key_averages()}
    assert "aten::mkldnn_rnn_layer_backward" in names and "aten::lstm_cell" not in names, names
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref_logits, _ = step(as_reference(model), images, labels)
    assert logits.dtype == torch.bfloat16
    assert all(grad.dtype == torch.float32 and torch.isfinite(grad).all() for grad in grads.values())
    assert grads["strategy.lstm.weight_ih"].abs().sum() > 0
    torch.testing.assert_close(logits.float(), ref_logits.float(), rtol=0.1, atol=0.05)


def test_untrained_memory_adds_exactly_zero():
    """W_out = 0 at init: the fast step's prompts are the spatial-only step's, bit for bit (as before)."""
    images = torch.randn(2, 3, 32, 32)
    with_memory = tiny_model(torch.float32, num_prompts=4)
    torch.nn.init.zeros_(with_memory.strategy.memory_out.weight)
    spatial_only = tiny_model(torch.float32, num_prompts=4, memory="none")
    spatial_only.strategy.load_state_dict(
        {k: v for k, v in with_memory.strategy.state_dict().items() if k in spatial_only.strategy.state_dict()})
    spatial_only.head.load_state_dict(with_memory.head.state_dict())
    with torch.no_grad():
        assert torch.equal(with_memory.eval()(images), spatial_only.eval()(images))


@pytest.mark.slow
def test_fast_step_compiles():
    """`--compile`: torch.compile'd logits and gradients of the fast step equal eager ones."""
    try:
        torch.compile(torch.nn.Linear(2, 2))(torch.zeros(1, 2))
    except Exception:
        pytest.skip("torch.compile does not work on this machine (tests/test_performance.py tests the fallback)")
    model = tiny_model(torch.float32, num_prompts=4).eval()  # eval: no prompt dropout, the same tokens
    images, labels = torch.randn(3, 3, 32, 32), torch.tensor([0, 3, 4])
    logits, grads = step(model, images, labels)
    compiled = torch.compile(model, dynamic=False)
    try:
        model.zero_grad(set_to_none=True)
        compiled_logits = compiled(images)
        F.cross_entropy(compiled_logits, labels).backward()
        torch.testing.assert_close(compiled_logits.detach(), logits, rtol=1e-4, atol=1e-4)
        for name, p in model.named_parameters():
            if p.requires_grad:
                torch.testing.assert_close(p.grad, grads[name], rtol=1e-3, atol=1e-4, msg=lambda m: f"{name}: {m}")
    finally:
        torch._dynamo.reset()


@pytest.mark.slow
def test_fast_step_exports():
    """`lspt export --format pt2`: the model with the fast step goes through torch.export (dynamic
    batch) and the program gives the eager logits."""
    model = tiny_model(torch.float32, num_prompts=4).eval()
    batch = torch.export.Dim("batch", min=1, max=65536)
    program = torch.export.export(model, (torch.zeros(2, 3, 32, 32),), dynamic_shapes={"images": {0: batch}})
    images = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(program.module()(images), model(images), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("strategy", ["lspt", "gapt"])
@pytest.mark.parametrize("kind", ["block output", "leaf", "view"])
def test_prompt_slots_on_every_kind_of_block_output(strategy, kind):
    """`parts.PromptSlots` writes in place into a block's output and hands x's gradient from the
    write to the read; for an x it cannot write in place (a leaf or a view that needs a gradient) it
    runs the plain ops. Every way gives the plain formulation's outputs and gradients (fp64)."""
    model = tiny_model(torch.float64, strategy=strategy, num_prompts=3)
    s = model.strategy
    g = torch.Generator().manual_seed(3)
    dims = model.backbone.dims
    base = torch.randn(2, s.prefix + 3 + dims.num_patches, dims.embed_dim, generator=g, dtype=torch.float64)
    inputs = torch.randn(2, 3, dims.embed_dim, generator=g, dtype=torch.float64, requires_grad=True)
    weights = torch.randn(base.shape, generator=g, dtype=torch.float64)

    def run(after_block):
        leaf = base.clone().requires_grad_()
        x = {"block output": leaf * 1.0, "leaf": leaf, "view": (leaf * 1.0)[:, :]}[kind]
        state = {"gates": torch.sigmoid(s.gate_logits), "prompts": inputs * 1.0}
        out = after_block(s, 0, x, state)
        written_in_place = out is x
        loss = (out * weights).sum() + (state["prompts"] ** 2).sum()
        grads = torch.autograd.grad(loss, [leaf, inputs, *s.parameters()], allow_unused=True)
        return out.detach(), grads, written_in_place

    fast_out, fast_grads, in_place = run(type(s).after_block)
    reference = reference_gapt_after_block if strategy == "gapt" else reference_after_block
    ref_out, ref_grads, _ = run(reference)
    assert in_place == (kind == "block output")
    torch.testing.assert_close(fast_out, ref_out, rtol=1e-12, atol=1e-12)
    for got, want in zip(fast_grads, ref_grads):
        if want is None:
            assert got is None
        else:
            torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
