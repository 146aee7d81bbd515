"""What the hardware and torch offer for speed: native bf16 on the CPU, and torch.compile.

bf16 autocast pays off on a CPU only where its matmuls run natively (AVX512-BF16 or AMX);
elsewhere torch emulates them and bf16 is *slower* than fp32, so protocol `lspt`'s `amp: auto`
turns it on only there (docs/performance.md). torch.compile needs a working inductor backend
(a C++ compiler on CPU, Triton on GPU); where it fails, the run says why and stays eager.
"""

from __future__ import annotations

import contextlib
import os
import time
from functools import lru_cache
from typing import Any, Callable

import torch

BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")  # /proc/cpuinfo flags of native bf16 dot products


def cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> set[str]:
    """The CPU's feature flags (Linux); empty where /proc/cpuinfo is unreadable."""
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.partition(":")[2].split())
    except OSError:
        pass
    return set()


def cpu_capability() -> str:
    """torch's own view of the CPU's vector unit ("AVX2", "AVX512", ...); "" on old torch."""
    try:
        return str(torch.backends.cpu.get_cpu_capability())
    except Exception:  # torch < 2.1 has no get_cpu_capability
        return ""


# `LSPT_CPU_BF16=1|0` states the answer instead of detecting it: a benchmark comparing both paths on
# one CPU, and the test suite, which pins it so that no result depends on the CPU it runs on.
CPU_BF16_ENV = "LSPT_CPU_BF16"


def cpu_bf16_native() -> bool:
    """True where the CPU multiplies bf16 natively: an AVX512-BF16 or AMX flag in /proc/cpuinfo,
    or torch reporting an AMX-capable vector unit; `LSPT_CPU_BF16=1|0` overrides the detection."""
    stated = os.environ.get(CPU_BF16_ENV, "").strip()
    if stated in ("0", "1"):
        return stated == "1"
    return detect_cpu_bf16()


@lru_cache(maxsize=1)
def detect_cpu_bf16() -> bool:
    """What this CPU offers, read once per process (the flags, then torch's vector unit)."""
    return bool(cpu_flags() & set(BF16_CPU_FLAGS)) or "AMX" in cpu_capability().upper()


def bf16_report(device: torch.device) -> dict[str, Any]:
    """For benchmarks and logs: does `device` run bf16 matmuls natively, and how do we know."""
    if device.type == "cuda":
        return {"device": torch.cuda.get_device_name(device), "bf16_native": bool(torch.cuda.is_bf16_supported()),
                "how": "torch.cuda.is_bf16_supported()"}
    flags = sorted(cpu_flags() & set(BF16_CPU_FLAGS))
    return {"device": "cpu", "bf16_native": cpu_bf16_native(), "cpu_bf16_flags": flags,
            "cpu_capability": cpu_capability(), "how": "/proc/cpuinfo flags avx512_bf16/amx_bf16, torch cpu capability"}


_SCALARS = (bool, int, float, str, type(None))


@contextlib.contextmanager
def preserved_state(model: torch.nn.Module):
    """Whatever runs inside leaves `model` as it found it: every trainable parameter and every
    buffer get their values back (in place: the optimizer's and the compiled graph's tensors stay
    the same objects), and so do the plain attributes (flags, counters) of each submodule. Frozen
    parameters are not copied (nothing inside may change them: they get no gradient).

    `--compile`'s warm-up runs in it: a forward and backward on a batch of zeros must not leave any
    trace in a strategy (a lazily initialised one would otherwise take its values from the zeros)."""
    tensors = [t for t in model.parameters() if t.requires_grad] + list(model.buffers())
    saved = [t.detach().clone() for t in tensors]
    attrs = [(m, {k: v for k, v in vars(m).items() if isinstance(v, _SCALARS)}) for m in model.modules()]
    try:
        yield
    finally:
        with torch.no_grad():
            for t, value in zip(tensors, saved):
                t.copy_(value)
        for m, values in attrs:
            for k, v in values.items():
                if getattr(m, k, None) is not v:
                    object.__setattr__(m, k, v)


def compile_forward(model: torch.nn.Module, warm_up: Callable[[Callable], None], log: Callable[[str], None]):
    """(forward, seconds): `torch.compile(model)` and the time its first compilation took, or
    (model, 0.0) with one warning line where compiling is unavailable or fails.

    `warm_up(fn)` runs one representative step through `fn` (forward and backward) so that the
    compilation happens here, timed apart from the training steps; `model` is restored after it
    (`preserved_state`), so the run starts from the state an eager run starts from."""
    if not hasattr(torch, "compile"):
        log("Warning: --compile needs torch >= 2.0; running eager")
        return model, 0.0
    try:
        # inductor draws its own random numbers; fallback_random makes dropout (prompt dropout)
        # draw eager's, so a compiled run's masks, and so its result, are the eager run's
        import torch._inductor.config as inductor_config

        inductor_config.fallback_random = True
        compiled = torch.compile(model, dynamic=False)  # one static graph per batch size (full, last)
        start = time.perf_counter()
        with preserved_state(model):  # the warm-up changes no strategy state, also when it fails
            warm_up(compiled)
        return compiled, time.perf_counter() - start
    except Exception as exc:  # no C++ compiler, an unsupported op, an old Triton, ...
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        log(f"Warning: --compile is unavailable here ({type(exc).__name__}: {first}); running eager")
        with contextlib.suppress(Exception):  # best effort: drop what the failed compile cached
            torch._dynamo.reset()
        return model, 0.0
