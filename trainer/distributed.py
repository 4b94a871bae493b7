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


# -- FSDP2: sharding and full (unsharded) state dicts ---------------------------------------------


def shard_model(model: torch.nn.Module) -> None:
    """Shard `model` in place with FSDP2: each unit `_shard_units` picks, then the root.

    Sharding units separately lets FSDP free one unit's gathered parameters before the next is
    gathered; the root call covers the parameters that sit directly on the model and the units
    left out because they share a parameter (tied embeddings).
    """
    from torch.distributed.fsdp import fully_shard

    for unit in _shard_units(model):
        fully_shard(unit)
    fully_shard(model)


def _shard_units(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The modules to shard on their own: the model's children that hold parameters, looking
    inside containers without a forward (ModuleDict, ModuleList: a GPT's `transformer` and its
    blocks), except modules that share a parameter with another unit (a GPT's `wte` and
    `lm_head`): FSDP2 cannot shard one parameter in two units, so those stay with the root."""
    candidates: list[torch.nn.Module] = []

    def visit(module: torch.nn.Module) -> None:
        for child in module.children():
            if isinstance(child, (torch.nn.ModuleDict, torch.nn.ModuleList)):
                visit(child)
            elif any(True for _ in child.parameters()):
                candidates.append(child)

    visit(model)
    owners: dict[int, int] = {}
    for index, unit in enumerate(candidates):
        for parameter in unit.parameters():
            owners[id(parameter)] = -1 if owners.get(id(parameter), index) != index else index
    return [unit for index, unit in enumerate(candidates) if all(owners[id(p)] == index for p in unit.parameters())]


def is_sharded(model: torch.nn.Module) -> bool:
    """Whether `model` was sharded by FSDP2."""
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def _full_options(**extra: Any):
    """torch.distributed.checkpoint options for whole, host-side state dicts."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, cpu_offload=True, **extra)


def model_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's whole state dict: gathered on rank 0 under FSDP (every rank must call this)."""
    if not is_sharded(model):
        return model.state_dict()
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    return get_model_state_dict(model, options=_full_options())


def load_model_state_dict(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load a whole state dict (the keys already checked); FSDP shards it onto every rank."""
    if not is_sharded(model):
        model.load_state_dict(state, strict=False)
        return
    from torch.distributed.checkpoint.state_dict import set_model_state_dict

    set_model_state_dict(model, state, options=_full_options(strict=False))


def optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """optimizer.state_dict(), or under FSDP the whole one keyed by parameter name (rank 0)."""
    if not is_sharded(model):
        return optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    return get_optimizer_state_dict(model, optimizer, options=_full_options())


def load_optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """The inverse of `optimizer_state`."""
    if not is_sharded(model):
        optimizer.load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

    set_optimizer_state_dict(model, optimizer, state, options=_full_options())


def keyed_by_name(optimizer_state: dict) -> bool:
    """Whether an optimizer state dict names parameters (FSDP's whole state) rather than numbering them."""
    groups = optimizer_state.get("param_groups") or [{}]
    return any(isinstance(param, str) for param in groups[0].get("params", []))
