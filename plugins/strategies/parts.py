"""The small pieces the prompt strategies share, each named for what it is.

No strategy inherits from another: vpt.py, gapt.py and lspt.py each subclass
`lspt_cli.prompted.PromptStrategy` and build their tensors and their forward from these pieces, so
each file reads top to bottom on its own. The pieces are functions, not modules: a strategy keeps
its tensors as its own attributes (`prompts`, `gate_logits`, `tau`), which are the tensor names of
its bundles.

- option checks: `check_int`, `check_float`, `check_number`, `check_bool`, `check_choice` (a bad
  `--set` value is one `ConfigError` naming the strategy and the option);
- VPT's prompt tokens: `vpt_prompts` (the U(-v, v) init), `drop_prompts` (prompt dropout);
- GaPT's gate: `gate_logits` (gamma, init -gate_init) and `gate` (Z = g * out + (1 - g) * in);
  `gated_prompts` and `write_prompts` read the gated prompts from a block's output and write the
  next prompts back, with hand-written backwards (one cat each instead of x-sized slice gradients);
- GaPT's attention temperature: `temperatures` (tau, init 1) and `attention_scales` (tau projected
  into [TAU_MIN, TAU_MAX] in place, then 1 / tau per block);
- SPT's token prototypes: `spt_prototypes` (random, mean/max pooling, k-means of the task's own
  tokens; spt.py describes them and cites the official code), `kmeans`, and `prompt_init`, the
  `init` / `init_images` options with which GaPT and LSPT start their prompts from them too.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import torch
from torch import nn

from lspt_cli.backbone import BackboneDims, FrozenBackbone
from lspt_cli.errors import ConfigError
from lspt_cli.prompted import vpt_uniform_bound

__all__ = [
    "INITS",
    "KMEANS_TOKENS",
    "TAU_MAX",
    "TAU_MIN",
    "attention_scales",
    "check_bool",
    "check_choice",
    "check_float",
    "check_int",
    "check_number",
    "drop_prompts",
    "gate",
    "gate_logits",
    "gated_prompts",
    "kmeans",
    "prompt_init",
    "project_tau",
    "spt_prototypes",
    "temperatures",
    "vpt_prompts",
    "write_prompts",
]


# -- option checks --------------------------------------------------------------------------------
def check_int(name: str, key: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ConfigError(f"strategy '{name}': {key} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def check_float(name: str, key: str, value: Any, low: float, high: float, high_open: bool = False) -> float:
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if ok:
        ok = low <= float(value) < high if high_open else low <= float(value) <= high
    if not ok:
        bracket = ")" if high_open else "]"
        raise ConfigError(f"strategy '{name}': {key} must be a number in [{low}, {high}{bracket}, got {value!r}")
    return float(value)


def check_number(name: str, key: str, value: Any) -> float:
    """Any finite number (an int or a float, never a bool)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"strategy '{name}': {key} must be a finite number, got {value!r}")
    return value


def check_bool(name: str, key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"strategy '{name}': {key} must be true or false, got {value!r}")
    return value


def check_choice(name: str, key: str, value: Any, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ConfigError(f"strategy '{name}': {key} must be one of {', '.join(choices)}; got {value!r}")
    return value


# -- VPT's prompt tokens ----------------------------------------------------------------------------
def vpt_prompts(dims: BackboneDims, num_prompts: int, sets: int | None = None) -> nn.Parameter:
    """Prompt tokens with VPT's init U(-v, v), v = sqrt(6 / (3 * patch * patch + D)) (VPT section 3.2
    / its code: Xavier uniform with the patch embedding's fan-in). `sets` None: one [Np, D] set
    (inserted once); an int L: [L, Np, D], one set per block (VPT-deep)."""
    bound = vpt_uniform_bound(dims)
    shape = (num_prompts, dims.embed_dim) if sets is None else (sets, num_prompts, dims.embed_dim)
    return nn.Parameter(torch.empty(shape).uniform_(-bound, bound))


def drop_prompts(prompts: torch.Tensor, dropout: nn.Dropout, training: bool) -> torch.Tensor:
    """Prompt dropout (VPT's `prompt_dropout`, each sample its own mask); no kernel is launched in
    eval mode or with p = 0, where dropout is the identity anyway."""
    if training and dropout.p > 0:
        return dropout(prompts)
    return prompts


# -- GaPT's gate ------------------------------------------------------------------------------------
def gate_logits(depth: int, gate_init: float) -> nn.Parameter:
    """gamma_l for l = 1..L-1 (index 0..L-2), init -gate_init: g_l = sigmoid(gamma_l) starts almost
    closed for a large gate_init. The last block's prompt output is not carried on: no gate."""
    return nn.Parameter(torch.full((depth - 1,), -float(gate_init)))


def gate(inputs: torch.Tensor, outputs: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Z = g * outputs + (1 - g) * inputs, written as inputs + g * (outputs - inputs): autograd then
    keeps only the small difference, not a view that would pin the whole [B, T, D] block output."""
    return inputs + g * (outputs - inputs)


def gated_prompts(x: torch.Tensor, inputs: torch.Tensor, g: torch.Tensor, start: int,
                  spatial: bool = False) -> torch.Tensor:
    """GaPT's Z^l = `gate(inputs, prompt outputs of x, g)` read from block l's output x [B, T, D]
    (prompt slots [start, start + Np)); with `spatial`, plus the mean patch token of x (LSPT's GSPC).
    The same values as the plain ops; x's gradient is built in one `cat` (`_GatedPrompts`)."""
    return _GatedPrompts.apply(x, inputs, g, start, spatial)


def write_prompts(x: torch.Tensor, prompts: torch.Tensor, start: int) -> torch.Tensor:
    """x with its prompt slots [start, start + P) replaced by prompts [B, P, D]: the values of
    `PromptStrategy.replace_prompts`, x's gradient in one `cat` (`_WritePrompts`)."""
    return _WritePrompts.apply(x, prompts, start)


class _GatedPrompts(torch.autograd.Function):
    """`gated_prompts`. The forward runs exactly the plain ops; the backward writes x's gradient
    (g * grad in the prompt slots, the mean's share in the patch slots, zero in the prefix) with one
    cat, where autograd's own backward of the slices and the mean filled an x-sized zero tensor per
    slice and summed them (GaPT and LSPT read and write prompts after every block: 3 of them per block)."""

    @staticmethod
    def forward(ctx, x, inputs, g, start: int, spatial: bool):
        end = start + inputs.shape[1]
        diff = x[:, start:end] - inputs
        coded = inputs + g * diff
        if spatial:
            coded = coded + x[:, end:].mean(dim=1, keepdim=True)
        ctx.save_for_backward(diff, g)
        ctx.start, ctx.spatial, ctx.patches = start, spatial, x.shape[1] - end
        return coded

    @staticmethod
    def backward(ctx, grad):
        diff, g = ctx.saved_tensors
        b, _, d = grad.shape
        to_outputs = grad * g
        grad_x = grad_g = None
        if ctx.needs_input_grad[0]:
            if ctx.spatial:  # every patch token has 1/N of the mean, which every prompt received
                patches = (grad.sum(dim=1, keepdim=True) / ctx.patches).expand(b, ctx.patches, d)
            else:
                patches = grad.new_zeros(b, ctx.patches, d)
            grad_x = torch.cat([grad.new_zeros(b, ctx.start, d), to_outputs, patches], dim=1)
        if ctx.needs_input_grad[2]:
            grad_g = (grad * diff).sum().reshape(g.shape)
        return grad_x, grad - to_outputs, grad_g, None, None


class _WritePrompts(torch.autograd.Function):
    """`write_prompts`: the forward is `replace_prompts`' cat; the backward gives x's gradient in one cat."""

    @staticmethod
    def forward(ctx, x, prompts, start: int):
        end = start + prompts.shape[1]
        ctx.start, ctx.end = start, end
        return torch.cat([x[:, :start], prompts, x[:, end:]], dim=1)

    @staticmethod
    def backward(ctx, grad):
        start, end = ctx.start, ctx.end
        grad_x = None
        if ctx.needs_input_grad[0]:
            empty = grad.new_zeros(grad.shape[0], end - start, grad.shape[2])
            grad_x = torch.cat([grad[:, :start], empty, grad[:, end:]], dim=1)
        return grad_x, grad[:, start:end], None


# -- GaPT's attention temperature -------------------------------------------------------------------
TAU_MIN, TAU_MAX = 0.01, 10.0


def temperatures(depth: int) -> nn.Parameter:
    """tau_l, one per block, init 1: attention becomes softmax(Q K^T / (sqrt(d) tau_l))."""
    return nn.Parameter(torch.ones(depth))


@torch.no_grad()
def project_tau(tau: torch.Tensor) -> None:
    """Clamp tau into [TAU_MIN, TAU_MAX] in place before each forward, as GaPT does (`reinit_temp`,
    GatedPromptTuning@dd7d1ea src/models/vit_prompt/vit_mae.py:106-108 and 133-135; vit_moco.py:108-110
    and 135-137). A projection, not a clamp in the graph: a tau the optimizer pushed past a bound is
    put back on it and still gets gradient, so it can come back (a clamp in the graph would stop it)."""
    tau.clamp_(TAU_MIN, TAU_MAX)


def attention_scales(tau: torch.Tensor | None) -> list[torch.Tensor] | None:
    """The runner's per-block q multipliers, 1 / tau_l (q * 1/tau works with timm's fused
    attention); None without temperature."""
    if tau is None:
        return None
    if torch.compiler.is_compiling():  # torch.export cannot mutate a parameter: the same values
        tau = tau.clamp(TAU_MIN, TAU_MAX)
    else:
        project_tau(tau)
    return list((1.0 / tau).unbind(0))


# -- SPT's token prototypes (spt.py) ----------------------------------------------------------------
INITS = ("random", "mean_pooling", "max_pooling", "kmeans")
KMEANS_TOKENS = 32768  # candidate tokens per prompt set for k-means (a random subsample beyond it)
CHUNK = 64  # images per forward during the init


def prompt_init(name: str, init: Any, init_images: Any, num_prompts: int) -> tuple[str, int]:
    """GaPT's and LSPT's `init` / `init_images` options: "uniform" (VPT's U(-v, v), their papers')
    or one of SPT's prototypes (INITS) from `init_images` training images. Returns (init, the
    strategy's data_init_images: 0 for "uniform" or no prompts)."""
    init = check_choice(name, "init", init, ("uniform",) + INITS)
    init_images = check_int(name, "init_images", init_images, 1)
    if init in ("mean_pooling", "max_pooling") and num_prompts == 1:
        raise ConfigError(f"strategy '{name}': init={init} needs num_prompts >= 2 (Np - 1 pooling windows)")
    return init, (init_images if init != "uniform" and num_prompts else 0)


def kmeans(x: torch.Tensor, k: int, iters: int) -> torch.Tensor:
    """Lloyd's k-means of the rows of x [M, D]: centres start at k distinct rows drawn as
    `argsort(rand(M))[:k]` (the global RNG), then `iters` rounds of assign-to-nearest (squared
    Euclidean, first index on ties) and centre = mean of its rows (an empty cluster keeps its centre)."""
    centres = x[torch.argsort(torch.rand(x.shape[0]))[:k]].clone()
    for _ in range(iters):
        assign = torch.cdist(x, centres).argmin(dim=1)
        sums = torch.zeros_like(centres).index_add_(0, assign, x)
        counts = torch.bincount(assign, minlength=k).to(x.dtype).unsqueeze(1)
        centres = torch.where(counts > 0, sums / counts.clamp(min=1), centres)
    return centres


def _token_sets(backbone: FrozenBackbone, images: torch.Tensor, sets: int):
    """Per chunk of images: (start, reps), reps[l] = the [b, N, D] tokens prompt set l comes from:
    the patch embeddings for l = 0, block l-1's output without the prefix for l >= 1."""
    model, prefix = backbone.model, backbone.dims.num_prefix_tokens
    for start in range(0, images.shape[0], CHUNK):
        batch = images[start : start + CHUNK]
        reps = [model.patch_embed(batch)]
        if sets > 1:
            x = backbone.embed(batch)
            for block in list(backbone.blocks)[: sets - 1]:
                x = block(x)
                reps.append(x[:, prefix:])
        yield start, reps


def spt_prototypes(backbone: FrozenBackbone, images: torch.Tensor, sets: int, num_prompts: int, init: str,
                   kmeans_iters: int = 20) -> torch.Tensor:
    """SPT's initial prompts, [sets, Np, D], from `images` [B, 3, H, W] (spt.py's docstring says how).

    The random draws, in this order: for each set l = 0..sets-1 the selection noise (`random`:
    rand(B*N); pooling: rand(Np*B); `kmeans`: rand(B*N) when B*N > KMEANS_TOKENS), then, for
    `kmeans`, each set's centre init. The images go through the backbone in chunks; only the tokens
    drawn are kept."""
    device = images.device
    B, N, D = images.shape[0], backbone.model.patch_embed.num_patches, backbone.dims.embed_dim
    Np = num_prompts
    dtype = next(backbone.model.parameters()).dtype
    if init in ("mean_pooling", "max_pooling"):
        window = N // (Np - 1)
        if window == 0:
            raise ConfigError(f"SPT init={init}: num_prompts - 1 = {Np - 1} pooling windows exceed the {N} patch tokens")
        remain = N % window
    # which candidate rows each set keeps: flat indices into [B*N] tokens, or [Np*B] pooled rows
    if init == "random":
        picks = [torch.argsort(torch.rand(B * N))[:Np] for _ in range(sets)]
    elif init == "kmeans":
        picks = [torch.argsort(torch.rand(B * N))[:KMEANS_TOKENS] if B * N > KMEANS_TOKENS else torch.arange(B * N)
                 for _ in range(sets)]
    else:
        picks = [torch.argsort(torch.rand(Np * B))[:Np] for _ in range(sets)]
    kept = [torch.empty(len(p), D, dtype=dtype, device=device) for p in picks]
    for start, reps in _token_sets(backbone, images, sets):
        b = reps[0].shape[0]
        for l, (rep, pick, out) in enumerate(zip(reps, picks, kept)):
            if init in ("random", "kmeans"):
                image, token = pick // N, pick % N
                mine = ((image >= start) & (image < start + b)).nonzero().squeeze(1)
                if len(mine):
                    out[mine.to(device)] = rep[(image[mine] - start).to(device), token[mine].to(device)]
                continue
            window_of, image = pick // B, pick % B
            for j in ((image >= start) & (image < start + b)).nonzero().squeeze(1).tolist():
                p, tokens = int(window_of[j]), rep[int(image[j]) - start]
                part = tokens[p * window : (p + 1) * window] if p < Np - 1 else tokens[-remain:]
                out[j] = part.mean(dim=0) if init == "mean_pooling" else part.max(dim=0).values
    if init == "kmeans":
        kept = [kmeans(x, Np, kmeans_iters) for x in kept]
    return torch.stack(kept)
