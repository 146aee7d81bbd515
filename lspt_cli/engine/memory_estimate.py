"""How much memory a run needs, said before it starts: parameters, tokens, activations.

A ViT-L or ViT-H run at batch 64 can need more memory than the machine has, and finds out only
when the first backward fails. `lspt tune` therefore prints one line up front (and `--dry-run`
puts the same figures in its JSON) and warns, suggesting `--grad-checkpointing` and then a
smaller batch, when the estimate does not fit (docs/performance.md, "Memory before the run").
It never refuses a run: only validate.check_param_memory does that, for absurd parameter counts.

What autograd keeps per frozen block (timm's pre-norm `Block`; x is [B, T, D], T = prefix +
prompts + patches, r = mlp_ratio). The block's weights are frozen, so a linear layer keeps
nothing of its own for backward (its input is needed only for the weight's gradient, which is not
computed); what is kept is what the input gradient needs:

- norm1 keeps its input x (the block's input, the residual stream): 1 x BTD;
- attention: the fused kernel (SDPA's flash/memory-efficient one, CPU or CUDA) keeps q, k, v
  (views of the qkv output: 3 x BTD), its output (1 x BTD) and the log-sum-exp [B, heads, T]; the
  explicit ("math") path also keeps the softmax output [B, heads, T, T];
- norm2 keeps its input x + attn (1 x BTD); GELU keeps fc1's output (r x BTD); a gated MLP
  (SwiGLU) keeps fc1's output and the activation's output (1.5 r x BTD, r = fc1's width / D).

So (6 + r) x BTD + B*heads*T per block, for every block, at the end of the forward; the backward
of the last block adds its transient gradients, (1 + 2r) x BTD at most (the output gradient, then
fc2's and GELU's input gradients side by side). Under bf16 autocast the residual stream (x,
x + attn) and the log-sum-exp stay fp32 and the rest is bf16. With gradient checkpointing a block
keeps only its input (1 x BTD) and the block being recomputed holds the full set once. A strategy
without trainable parameters (a linear probe) has no backward through the blocks: its training
forward holds what an evaluation forward holds. Evaluation (no grad, `eval_batch_size`) holds one
block's temporaries: at most (1 + 2r) x BTD (fc1's output and GELU's output side by side) or
(7 x BTD + the scores on the math path).

A run's line assumes the fused kernel (timm calls F.scaled_dot_product_attention wherever torch
has it). Checked against the live-tensor peak of one training step on the CPU (benchmarks/
backbones.py for every named backbone, tests/test_memory_estimate.py; docs/performance.md has the
figures): fp32 within 0.99-1.07x, bf16 0.92-1.25x. Torch is imported only to ask the device (CUDA's
free memory, a CPU's native bf16 for `--amp auto`) and to read a `timm/<model>`'s shape on the
meta device.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import Any

from ..validate import BYTES_PER_TRAINED_PARAM

GIB = 2**30
# Warn when the estimate passes this share of the memory that is free: the estimate leaves out the
# data loader, the allocator's fragmentation and whatever else the machine runs.
FIT_FRACTION = 0.9
DEFAULT_MLP_RATIO = 4.0
DEFAULT_PATCH_SIZE = 16
HEAD_DIM = 64  # ViT-S/B/L/H's width per head: the head count of a spec that does not give one


@dataclass(frozen=True)
class ModelShape:
    """The numbers of a ViT that its memory depends on (no weights, no torch)."""

    embed_dim: int
    depth: int
    num_heads: int
    num_patches: int
    num_prefix_tokens: int = 1
    patch_size: int = DEFAULT_PATCH_SIZE
    in_chans: int = 3
    mlp_ratio: float = DEFAULT_MLP_RATIO  # fc1's output width / embed_dim
    image_size: int = 224
    gated: bool = False  # a gated MLP (SwiGLU, DINOv2 ViT-g): fc1's output is two halves, fc2 takes one
    layer_scale: bool = False  # LayerScale's per-channel gammas (DINOv2)

    @property
    def mlp_kept(self) -> float:
        """What the MLP keeps for backward, in units of BTD: the activation's input (fc1's output),
        and for a gated MLP also the activation's output that multiplies the other half."""
        return self.mlp_ratio * (1.5 if self.gated else 1.0)

    def tokens(self, num_prompts: int = 0) -> int:
        """Tokens per image through every block: prefix (CLS, registers) + prompts + patches."""
        return self.num_prefix_tokens + num_prompts + self.num_patches

    def backbone_params(self) -> int:
        """timm's VisionTransformer parameter count for this shape (no classifier head).

        Per block: qkv (D x 3D + 3D), proj (D x D + D), fc1 (D x rD + rD), fc2 (rD x D + D), two
        LayerNorms (4D); then the patch embedding, position embedding, prefix tokens, final norm."""
        d, hidden = self.embed_dim, int(round(self.embed_dim * self.mlp_ratio))
        inner = hidden // 2 if self.gated else hidden  # fc2's input
        block = (d * 3 * d + 3 * d) + (d * d + d) + (d * hidden + hidden) + (inner * d + d) + 4 * d
        block += 2 * d if self.layer_scale else 0
        embed = self.in_chans * self.patch_size**2 * d + d
        positions = (self.num_patches + self.num_prefix_tokens) * d
        return self.depth * block + embed + positions + self.num_prefix_tokens * d + 2 * d


def shape_from_spec(spec: Any, image_size: int | None = None) -> ModelShape:
    """The shape a registered BackboneSpec describes, without building the model.

    `image_size` overrides the spec's input size (an `img_size` setting); fields a spec does not
    have fall back to ViT defaults (patch 16, 64 per head, MLP ratio 4)."""
    embed_dim = int(spec.embed_dim)
    size = int(image_size or getattr(spec, "input_size", None) or 224)
    patch = int(getattr(spec, "patch_size", None) or DEFAULT_PATCH_SIZE)
    heads = int(getattr(spec, "num_heads", None) or max(1, embed_dim // HEAD_DIM))
    return ModelShape(
        embed_dim=embed_dim,
        depth=int(spec.depth),
        num_heads=heads,
        num_patches=(size // patch) ** 2,
        num_prefix_tokens=int(getattr(spec, "num_prefix_tokens", 1)),
        patch_size=patch,
        in_chans=int(getattr(spec, "in_chans", None) or 3),
        mlp_ratio=float(getattr(spec, "mlp_ratio", None) or DEFAULT_MLP_RATIO),
        image_size=size,
    )


def shape_from_dims(dims: Any, mlp_ratio: float = DEFAULT_MLP_RATIO) -> ModelShape:
    """The shape of a built backbone's BackboneDims (FrozenBackbone.dims); square inputs."""
    side = int(round(dims.num_patches**0.5))
    return ModelShape(
        embed_dim=dims.embed_dim, depth=dims.depth, num_heads=dims.num_heads, num_patches=dims.num_patches,
        num_prefix_tokens=dims.num_prefix_tokens, patch_size=dims.patch_size, in_chans=dims.in_chans,
        mlp_ratio=mlp_ratio, image_size=side * dims.patch_size,
    )


def shape_from_timm(model_name: str, image_size: int | None = None) -> ModelShape | None:
    """The shape of timm's model `model_name`, built on the meta device (no memory, no weights);
    None where timm has no such model or it is not a VisionTransformer."""
    import timm
    import torch

    if not timm.is_model(model_name):
        return None
    kwargs: dict[str, Any] = {"num_classes": 0, **({"img_size": int(image_size)} if image_size else {})}
    try:
        with torch.device("meta"):
            vit = timm.create_model(model_name, pretrained=False, **kwargs)
        return shape_from_model(vit)
    except (AttributeError, TypeError, ValueError, RuntimeError):  # not a ViT of timm's layout
        return None


def shape_from_model(vit: Any) -> ModelShape:
    """The shape of a timm VisionTransformer (its MLP ratio read from the first block)."""
    block = vit.blocks[0]
    patch = vit.patch_embed.patch_size
    patch = patch[0] if isinstance(patch, (tuple, list)) else patch
    size = vit.patch_embed.img_size
    fc1, fc2 = block.mlp.fc1, block.mlp.fc2
    return ModelShape(
        embed_dim=vit.embed_dim, depth=len(vit.blocks), num_heads=block.attn.num_heads,
        num_patches=vit.patch_embed.num_patches, num_prefix_tokens=vit.num_prefix_tokens, patch_size=int(patch),
        in_chans=vit.patch_embed.proj.in_channels, mlp_ratio=fc1.out_features / vit.embed_dim,
        image_size=int(size[0] if isinstance(size, (tuple, list)) else size),
        gated=fc2.in_features * 2 == fc1.out_features,
        layer_scale=hasattr(getattr(block, "ls1", None), "gamma"),
    )


@dataclass(frozen=True)
class Estimate:
    """Bytes a training run needs, by part. `activations` is the larger of the training step's
    peak and the evaluation forward's (evaluation runs at its own batch, without gradients)."""

    backbone_params: int
    tokens: int
    num_prompts: int
    batch: int
    eval_batch: int
    precision: str
    grad_checkpointing: bool
    fused_attention: bool
    frozen_param_bytes: int
    strategy_params: int
    head_params: int
    trainable_param_bytes: int
    train_activation_bytes: int
    eval_activation_bytes: int
    input_bytes: int

    @property
    def activation_bytes(self) -> int:
        return max(self.train_activation_bytes, self.eval_activation_bytes) + self.input_bytes

    @property
    def param_bytes(self) -> int:
        return self.frozen_param_bytes + self.trainable_param_bytes

    @property
    def total_bytes(self) -> int:
        return self.activation_bytes + self.param_bytes

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "activation_bytes": self.activation_bytes, "param_bytes": self.param_bytes,
                "total_bytes": self.total_bytes}


def block_bytes(shape: ModelShape, batch: int, tokens: int, precision: str, fused_attention: bool) -> dict[str, int]:
    """What one frozen block keeps for backward, and its largest transients (see the module doc)."""
    low = 2 if precision == "bf16" else 4  # autocast's matmul outputs
    btd = batch * tokens * shape.embed_dim
    r = shape.mlp_ratio
    scores = batch * shape.num_heads * tokens * tokens
    # x, x + attn (fp32); qkv, attention output, the MLP's activation input (and output, gated); lse
    kept = btd * (2 * 4 + (4 + shape.mlp_kept) * low) + batch * shape.num_heads * tokens * 4
    if not fused_attention:
        kept += scores * low  # the softmax output
    backward = int(btd * (1 + 2 * r) * 4)  # gradients are fp32 for the fp32 residual stream; an upper bound under bf16
    forward = int(max(btd * (1 + 2 * r) * low, btd * 7 * low + (0 if fused_attention else 2 * scores * low)))
    return {"kept": int(kept), "input": btd * 4, "backward": backward, "forward": forward}


def estimate(
    shape: ModelShape,
    *,
    batch: int,
    num_prompts: int = 0,
    precision: str = "fp32",
    grad_checkpointing: bool = False,
    strategy_params: int = 0,
    head_params: int = 0,
    eval_batch: int | None = None,
    fused_attention: bool = True,
    backbone_params: int | None = None,
) -> Estimate:
    """The memory a run of `shape` at `batch` needs (bytes), by part.

    `strategy_params`: the strategy's trainable parameter count; 0 means a linear probe, whose
    training step has no backward through the blocks. `head_params`: the head's (0 where the
    classes are not known yet). `backbone_params`: the real count when the model is built (else
    the formula of ModelShape.backbone_params). Frozen weights stay fp32."""
    if precision not in ("fp32", "bf16"):
        raise ValueError(f"precision must be fp32 or bf16, got {precision!r}")
    tokens = shape.tokens(num_prompts)
    eval_batch = eval_batch or batch
    train = block_bytes(shape, batch, tokens, precision, fused_attention)
    # (the readout's final norm keeps 2 x BTD more, freed by the time the last block's backward
    # peaks: the backward's transients, not the readout's, set the peak)
    if strategy_params <= 0:  # nothing to send a gradient to through the blocks
        train_peak = train["forward"] + train["input"]
    elif grad_checkpointing:
        train_peak = shape.depth * train["input"] + train["kept"] + train["backward"]
    else:
        train_peak = shape.depth * train["kept"] + train["backward"]
    evaluation = block_bytes(shape, eval_batch, tokens, precision, fused_attention)
    params = shape.backbone_params() if backbone_params is None else int(backbone_params)
    return Estimate(
        backbone_params=params,
        tokens=tokens,
        num_prompts=num_prompts,
        batch=batch,
        eval_batch=eval_batch,
        precision=precision,
        grad_checkpointing=grad_checkpointing,
        fused_attention=fused_attention,
        frozen_param_bytes=params * 4,
        strategy_params=int(strategy_params),
        head_params=int(head_params),
        trainable_param_bytes=(int(strategy_params) + int(head_params)) * BYTES_PER_TRAINED_PARAM,
        train_activation_bytes=int(train_peak),
        eval_activation_bytes=evaluation["forward"] + evaluation["input"],
        input_bytes=max(batch, eval_batch) * shape.in_chans * shape.image_size**2 * 4,
    )


# -- what the machine offers ----------------------------------------------------------------------
def meminfo_available(path: str = "/proc/meminfo") -> int | None:
    """Linux's MemAvailable (what can be allocated without swapping), in bytes."""
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def cgroup_available(root: str = "/sys/fs/cgroup") -> int | None:
    """A container's remaining allowance (cgroup v2 memory.max - memory.current), if it has one."""
    try:
        with open(os.path.join(root, "memory.max")) as f:
            limit = f.read().strip()
        with open(os.path.join(root, "memory.current")) as f:
            used = int(f.read().strip())
    except (OSError, ValueError):
        return None
    return None if limit == "max" else max(0, int(limit) - used)


def cuda_visible(device: str) -> bool:
    """Whether `device` (auto, cpu, cuda[:N], mps) may mean a CUDA GPU; without an NVIDIA driver
    loaded, `auto` is the CPU and torch need not be imported to know it."""
    if device.startswith("cuda"):
        return True
    return device == "auto" and os.path.isdir("/proc/driver/nvidia")


def available_memory(device: str = "auto") -> tuple[int, str] | None:
    """(bytes free, where) on the device a run would use: CUDA's free memory
    (torch.cuda.mem_get_info), else the host's MemAvailable (or a tighter cgroup limit). None
    where it cannot be told (mps, no /proc)."""
    if cuda_visible(device):
        import torch

        if torch.cuda.is_available():
            index = int(device.partition(":")[2] or 0) if device.startswith("cuda") else 0
            if index < torch.cuda.device_count():
                free, _total = torch.cuda.mem_get_info(index)
                return int(free), f"free on cuda:{index}"
    if device == "mps":
        return None
    found = [(n, w) for n, w in ((meminfo_available(), "available (MemAvailable)"),
                                 (cgroup_available(), "left in this container's cgroup")) if n is not None]
    return min(found) if found else None


def gib(n: float) -> str:
    """"1.2 GiB", or "350 MiB" below one GiB."""
    return f"{n / GIB:,.1f} GiB" if n >= GIB / 2 else f"{n / 2**20:,.0f} MiB"


def millions(n: int) -> str:
    return f"{n / 1e6:,.0f}M" if n >= 10e6 else f"{n / 1e6:,.1f}M"


def summary_line(name: str, est: Estimate, available: tuple[int, str] | None) -> str:
    """One line: parameters, tokens per image, activations at the batch, of what is available."""
    where = f" of {gib(available[0])} {available[1]}" if available else ""
    checkpointed = ", grad checkpointing" if est.grad_checkpointing else ""
    return (f"backbone {name}: {millions(est.backbone_params)} params (frozen), {est.tokens} tokens/image, "
            f"~{gib(est.activation_bytes)} activations at batch {est.batch} ({est.precision}{checkpointed}) "
            f"[+ {gib(est.param_bytes)} params]{where}")


def largest_batch(fits, start: int) -> int:
    """The largest batch in [1, start) with fits(batch) true (fits is monotone); 0 if none."""
    low, high = 0, start  # fits(low) holds (vacuously for 0), fits(high) does not
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if fits(middle) else (low, middle)
    return low


def advice(shape: ModelShape, est: Estimate, available: tuple[int, str] | None) -> list[str]:
    """Warnings when `est` passes FIT_FRACTION of the available memory: the estimate with
    --grad-checkpointing, and a batch that fits when even that does not. Empty when it fits."""
    if available is None or est.total_bytes <= FIT_FRACTION * available[0]:
        return []
    budget = FIT_FRACTION * available[0]
    lines = [f"the estimate, ~{gib(est.total_bytes)}, is more than {FIT_FRACTION:.0%} of the "
             f"{gib(available[0])} {available[1]}: the run may run out of memory"]

    def at(batch: int, checkpointed: bool) -> Estimate:
        eval_batch = est.eval_batch if batch == est.batch else min(est.eval_batch, batch)
        return estimate(shape, batch=batch, num_prompts=est.num_prompts, precision=est.precision,
                        grad_checkpointing=checkpointed, strategy_params=est.strategy_params,
                        head_params=est.head_params, eval_batch=eval_batch,
                        fused_attention=est.fused_attention, backbone_params=est.backbone_params)

    if not est.grad_checkpointing and est.strategy_params > 0:
        checkpointed = at(est.batch, True)
        fits = " (fits)" if checkpointed.total_bytes <= budget else ""
        lines.append(f"try --grad-checkpointing: ~{gib(checkpointed.activation_bytes)} activations at batch "
                     f"{est.batch}, ~{gib(checkpointed.total_bytes)} in all{fits}")
        if checkpointed.total_bytes <= budget:
            return lines
    use_checkpointing = est.strategy_params > 0
    batch = largest_batch(lambda b: at(b, use_checkpointing).total_bytes <= budget, est.batch)
    flag = " with --grad-checkpointing" if use_checkpointing else ""
    if batch:
        lines.append(f"or a smaller batch: --batch-size {batch}{flag} (~{gib(at(batch, use_checkpointing).total_bytes)}; "
                     f"--eval-batch-size {min(batch, est.eval_batch)} too)")
    else:
        lines.append("even batch 1 does not fit: use a smaller backbone or input size, or a device with more memory")
    return lines


# -- one run's config ----------------------------------------------------------------------------
def run_precision(amp: str, device: str) -> str:
    """What `amp` resolves to on `device`, as engine/train.py's use_bf16 resolves it at run time."""
    if amp != "auto":
        return "bf16" if amp == "bf16" else "fp32"
    if cuda_visible(device):
        import torch

        if torch.cuda.is_available():
            return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    if device in ("auto", "cpu"):
        from .accel import cpu_bf16_native

        return "bf16" if cpu_bf16_native() else "fp32"
    return "fp32"


def run_memory(config: Any, host: Any, available: tuple[int, str] | None | str = "ask") -> dict[str, Any] | None:
    """The estimate of a resolved run config (recipes.ResolvedConfig), from the registered specs
    alone (no model is built): {"line", "warnings", "estimate", "available_bytes", ...}.
    None when the backbone's spec does not give the shape. `available`: "ask" the machine, or
    the (bytes, where) to compare with."""
    from ..backbone_dims import BackboneDims

    spec = host.backbones.get(config.backbone)
    train = config.train
    image_size = getattr(train, "img_size", None) or None
    registered = getattr(host.backbones, "registered", None)
    is_family = getattr(host.backbones, "is_family", None)
    if is_family is not None and is_family(config.backbone):  # "timm/*" names no model: nothing to size
        return None
    if registered is not None and not registered(config.backbone):
        # a member of a family (`timm/<model>`): the family's spec gives no size, timm's model does
        shape = shape_from_timm(config.backbone.partition("/")[2], image_size)
    else:
        try:
            shape = shape_from_spec(spec, image_size=image_size)
        except (AttributeError, TypeError, ValueError):  # a third-party spec without the fields
            shape = None
    if shape is None:
        return None
    strategy = host.strategies.get(config.strategy)
    options = strategy.options(config.strategy_config)
    dims = BackboneDims(embed_dim=shape.embed_dim, depth=shape.depth, num_heads=shape.num_heads,
                        num_prefix_tokens=shape.num_prefix_tokens, num_patches=shape.num_patches,
                        patch_size=shape.patch_size, in_chans=shape.in_chans)
    try:
        strategy_params = int(strategy.count_params(dims, options)) if strategy.count_params else 0
    except Exception:  # a plugin's counter failing here is reported by the build, not by an estimate
        strategy_params = 0
    num_prompts = options.get("num_prompts", 0)
    num_prompts = num_prompts if isinstance(num_prompts, int) and not isinstance(num_prompts, bool) else 0
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    batch = train.batch_size // world if train.ddp_batch == "split" and world > 1 else train.batch_size
    est = estimate(shape, batch=max(1, batch), num_prompts=num_prompts, precision=run_precision(train.amp, train.device),
                   grad_checkpointing=bool(train.grad_checkpointing), strategy_params=strategy_params,
                   eval_batch=train.eval_batch_size or train.batch_size)
    if available == "ask":
        available = available_memory(train.device)
    return {
        "line": summary_line(config.backbone, est, available),
        "warnings": advice(shape, est, available),
        "estimate": est.to_json(),
        "available_bytes": available[0] if available else None,
        "available": available[1] if available else None,
        "fit_fraction": FIT_FRACTION,
    }
