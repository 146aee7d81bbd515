"""Multi-GPU: under `torchrun`, DistributedDataParallel with per-rank sharding, rank 0 writes."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch


@dataclass
class DistContext:
    world_size: int = 1
    rank: int = 0
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls) -> "DistContext":
        """Read torchrun's variables; initialise the process group when there are several ranks."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        import torch.distributed as dist

        ctx = cls(world_size=world, rank=int(os.environ["RANK"]), local_rank=int(os.environ.get("LOCAL_RANK", "0")))
        if not dist.is_initialized():
            backend = "nccl" if torch.cuda.is_available() else "gloo"
            dist.init_process_group(backend=backend)
        if torch.cuda.is_available():
            torch.cuda.set_device(ctx.local_rank)
        return ctx

    def shard(self, order: list[int]) -> list[int]:
        """This rank's slice of an epoch's order; every rank gets the same number of items."""
        if not self.enabled:
            return order
        per_rank = len(order) // self.world_size
        return order[self.rank :: self.world_size][:per_rank]

    def all_reduce_sum(self, values: list[float], device) -> list[float]:
        if not self.enabled:
            return values
        import torch.distributed as dist

        t = torch.tensor(values, dtype=torch.float64, device=device)
        dist.all_reduce(t)
        return t.tolist()

    def barrier(self) -> None:
        if self.enabled:
            import torch.distributed as dist

            dist.barrier()

    def broadcast_tensors(self, tensors) -> None:
        """Rank 0's values of `tensors` copied in place into every rank's (e.g. a strategy's
        data-aware init, computed on rank 0 only)."""
        if not self.enabled:
            return
        import torch.distributed as dist

        for t in tensors:
            dist.broadcast(t, src=0)

    def broadcast_flag(self, flag: bool, device) -> bool:
        """Rank 0's decision (e.g. stop on NaN) for everybody."""
        if not self.enabled:
            return flag
        import torch.distributed as dist

        t = torch.tensor([1 if flag else 0], device=device)
        dist.broadcast(t, src=0)
        return bool(t.item())
