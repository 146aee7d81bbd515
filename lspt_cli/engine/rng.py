"""The random streams of a run, and what makes a resume exact.

An epoch is a pure function of (state at its start, seed, epoch): its data order comes from a
generator seeded by (seed, epoch) and the global generators (dropout, augmentation drawn in the
process) are re-seeded at its start from another stream of the same pair. A mid-epoch checkpoint
keeps the global generators' state, and a resume restores it.
"""

from __future__ import annotations

import torch


def seed_everything(seed: int) -> None:
    """The global generators: torch.manual_seed seeds the CPU's and every GPU's (torch/random.py)."""
    torch.manual_seed(seed)


def seed_epoch(seed: int, epoch: int) -> None:
    """The global generators at the start of `epoch` (from 0): seeded seed * 100_003 + epoch + 1, a
    stream apart from the data order's (epoch_order)."""
    seed_everything(seed * 100_003 + epoch + 1)


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """The training order of `epoch`: randperm(n) from a generator seeded seed * 100_003 + epoch. The
    formula is fixed (tests/test_train_protocol_details.py): a seed's runs, and a checkpoint written by
    an older lspt, keep their data order. The global generator of the epoch (dropout) is seeded
    seed * 100_003 + epoch + 1 (seed_epoch), a stream apart from the order's."""
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return torch.randperm(n, generator=g).tolist()


def rng_state(device: torch.device) -> dict[str, torch.Tensor]:
    """What a mid-epoch checkpoint keeps of the global generators: the CPU's, and the GPU's on CUDA."""
    state = {"rng_cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["rng_cuda"] = torch.cuda.get_rng_state(device)
    return state


def restore_rng(state: dict, device: torch.device) -> None:
    """The inverse of rng_state (a CUDA state is ignored on another device: a resume on the CPU)."""
    torch.set_rng_state(state["rng_cpu"])
    if "rng_cuda" in state and device.type == "cuda":
        torch.cuda.set_rng_state(state["rng_cuda"], device)
