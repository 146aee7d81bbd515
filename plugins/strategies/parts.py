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
  `PromptSlots` reads the gated prompts from a block's output and writes the next prompts back
  (hand-written backwards: one x-sized gradient per block instead of three zero-filled ones);
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
    "PromptSlots",
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
    "kmeans",
    "prompt_init",
    "project_tau",
    "spt_prototypes",
    "temperatures",
    "vpt_prompts",
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


# -- a block's prompt slots: read after block l, written back for block l+1 (GaPT, LSPT) ------------
class PromptSlots:
    """One block's read and write of its prompt slots [start, start + Np) in the block output x:
    `read` gives GaPT's gated prompts Z^l (`gate`; with `spatial`, plus the mean patch token, LSPT's
    GSPC), `write` puts the next prompts into x. Make one per block, read first, then write:

        slots = PromptSlots(self.prefix)
        coded = slots.read(x, state["prompts"], gates[index], spatial=...)
        return slots.write(x, coded)

    Why not plain slicing and `torch.cat` (the values are the same, bit for bit): x is the largest
    tensor of the step ([B, T, D]) and autograd's own backward of the slices, the mean and the cat
    builds three x-sized zero-filled gradients per block and sums them. Here the write goes into x
    in place (x is a block's output, which nothing saved for backward), its backward hands x's
    gradient to the read's backward through this object, and the read's backward assembles x's
    whole gradient once: one x-sized tensor per block. Under torch.compile / torch.export the plain
    ops run instead (the compiler fuses them itself; it cannot trace the hand-off), and for an x that
    is a leaf or a view needing a gradient. tests/test_lspt_fast.py holds both to the plain ops."""

    def __init__(self, start: int):
        self.start = start
        self.plain = True  # read() decides, write() follows
        self.grad_after_write: torch.Tensor | None = None  # set by the write's backward

    def read(self, x: torch.Tensor, inputs: torch.Tensor, g: torch.Tensor, spatial: bool = False) -> torch.Tensor:
        # the plain ops where the hand-off cannot run: traced by a compiler, or x a leaf or a view
        # that needs a gradient (neither can be written in place by a custom autograd function)
        self.plain = torch.compiler.is_compiling() or (x.requires_grad and (x.is_leaf or x._is_view()))
        if self.plain:
            end = self.start + inputs.shape[1]
            coded = gate(inputs, x[:, self.start : end], g)
            return coded + x[:, end:].mean(dim=1, keepdim=True) if spatial else coded
        return _ReadPrompts.apply(x, inputs, g, self, spatial)

    def write(self, x: torch.Tensor, prompts: torch.Tensor) -> torch.Tensor:
        if self.plain:
            return torch.cat([x[:, : self.start], prompts, x[:, self.start + prompts.shape[1] :]], dim=1)
        return _WritePrompts.apply(x, prompts, self)


class _ReadPrompts(torch.autograd.Function):
    """PromptSlots.read. Its backward runs after the write's (the write consumes what it returns),
    so x's gradient is complete here: the write's gradient outside the prompt slots, g * grad in
    them, and with `spatial` 1/N of the summed prompt gradient on each of the N patch tokens."""

    @staticmethod
    def forward(ctx, x, inputs, g, slots: PromptSlots, spatial: bool):
        start, end = slots.start, slots.start + inputs.shape[1]
        diff = x[:, start:end] - inputs
        coded = inputs + g * diff
        if spatial:
            coded = coded + x[:, end:].mean(dim=1, keepdim=True)
        ctx.save_for_backward(diff, g)
        ctx.slots, ctx.spatial, ctx.end, ctx.x_shape = slots, spatial, end, x.shape
        return coded

    @staticmethod
    def backward(ctx, grad):
        diff, g = ctx.saved_tensors
        start, end, slots = ctx.slots.start, ctx.end, ctx.slots
        after, slots.grad_after_write = slots.grad_after_write, None  # None: x's write got no gradient
        to_outputs = grad * g
        grad_x = grad_g = None
        if ctx.needs_input_grad[0]:
            grad_x = grad.new_empty(ctx.x_shape)
            if after is None:
                grad_x[:, :start] = 0
            else:
                grad_x[:, :start] = after[:, :start]
            grad_x[:, start:end] = to_outputs
            share = grad.sum(dim=1, keepdim=True) / (ctx.x_shape[1] - end) if ctx.spatial else None
            if after is None:
                grad_x[:, end:] = 0 if share is None else share
            elif share is None:
                grad_x[:, end:] = after[:, end:]
            else:
                torch.add(after[:, end:], share, out=grad_x[:, end:])
        if ctx.needs_input_grad[2]:
            grad_g = (grad * diff).sum().reshape(g.shape)
        return grad_x, grad - to_outputs, grad_g, None, None


class _WritePrompts(torch.autograd.Function):
    """PromptSlots.write: the prompts go into x's slots in place. x's gradient is left to the read
    (None here); the prompts' gradient is the slots' share of the incoming one."""

    @staticmethod
    def forward(ctx, x, prompts, slots: PromptSlots):
        ctx.slots, ctx.end = slots, slots.start + prompts.shape[1]
        x[:, slots.start : ctx.end] = prompts
        ctx.mark_dirty(x)
        return x

    @staticmethod
    def backward(ctx, grad):
        ctx.slots.grad_after_write = grad
        return None, grad[:, ctx.slots.start : ctx.end], None


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
