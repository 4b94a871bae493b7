"""torchrun environment, rank helpers and the few collectives the trainer needs.

Everything here is torch.distributed; nothing is home-made. Under torchrun (RANK, LOCAL_RANK
and WORLD_SIZE set, WORLD_SIZE > 1) the process group uses nccl on CUDA and gloo on CPU; in a
plain `python train.py` every helper degrades to the single-process answer.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

# How long a collective may wait for a missing rank before the job fails instead of hanging.
DEFAULT_TIMEOUT = datetime.timedelta(minutes=10)


@dataclass(frozen=True)
class Distributed:
    """This process's place in the job: rank, local rank (its device) and world size."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def enabled(self) -> bool:
        """True under torchrun with more than one process."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the only process that writes logs and checkpoints."""
        return self.rank == 0

    def barrier(self) -> None:
        """Wait until every rank gets here."""
        if self.enabled:
            dist.barrier()

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """The element-wise sum of `tensor` over all ranks (in place; returned for chaining)."""
        if self.enabled:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def any(self, flag: bool, device: torch.device) -> bool:
        """Whether `flag` is true on at least one rank (every rank must call this together)."""
        if not self.enabled:
            return flag
        value = torch.tensor([int(flag)], device=device)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item())

    def gather_objects(self, obj: Any) -> list[Any]:
        """[obj of rank 0, obj of rank 1, ...] on every rank (pickled: for small host objects)."""
        if not self.enabled:
            return [obj]
        gathered: list[Any] = [None] * self.world_size
        dist.all_gather_object(gathered, obj)
        return gathered

    def close(self) -> None:
        """Tear the process group down."""
        if self.enabled and dist.is_initialized():
            dist.destroy_process_group()


def from_environment(use_cuda: bool) -> Distributed:
    """Read torchrun's environment and join the process group (nccl on CUDA, gloo on CPU)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Distributed()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    if use_cuda:
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        store, _, _ = next(dist.rendezvous("env://", rank, world_size, timeout=DEFAULT_TIMEOUT))
        # torchrun keeps its store across --max-restarts; without a prefix per attempt a restarted
        # gloo group reads the dead processes' addresses and fails to connect (torch 2.14).
        attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
        dist.init_process_group(
            "nccl" if use_cuda else "gloo",
            store=dist.PrefixStore(f"kiln/attempt_{attempt}", store),
            rank=rank,
            world_size=world_size,
            timeout=DEFAULT_TIMEOUT,
        )
    return Distributed(rank=rank, local_rank=local_rank, world_size=world_size)
