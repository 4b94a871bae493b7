"""torchrun environment, rank helpers and the few collectives the trainer needs.

Everything here is torch.distributed; nothing is home-made. Under torchrun (RANK, LOCAL_RANK
and WORLD_SIZE set, WORLD_SIZE > 1) the process group uses nccl on CUDA and gloo on CPU; in a
plain `python train.py` every helper degrades to the single-process answer.
"""

from __future__ import annotations

import datetime
import os
import time
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
        generation = _agreed_generation(store, rank, world_size)
        dist.init_process_group(
            "nccl" if use_cuda else "gloo",
            store=dist.PrefixStore(f"kiln/generation_{generation}", store),
            rank=rank,
            world_size=world_size,
            timeout=DEFAULT_TIMEOUT,
        )
    return Distributed(rank=rank, local_rank=local_rank, world_size=world_size)


def _agreed_generation(store: dist.Store, rank: int, world_size: int, timeout: datetime.timedelta = DEFAULT_TIMEOUT) -> int:
    """The number of this start of the job's workers: one on every rank, new at every start."""
    # Why: torchrun's store (the agent's, at MASTER_ADDR:MASTER_PORT) outlives its workers, so the
    # keys of a dead attempt stay there, and a restarted gloo group without a fresh key prefix
    # reads the dead workers' addresses. TORCHELASTIC_RESTART_COUNT is no such prefix: each agent
    # counts its own restarts, and an agent restarted because another node's worker failed does
    # not count it, so two nodes would wait under different prefixes until the timeout.
    # How: rank 0 counts the starts in the store (kiln/generation); rank r records the generation
    # it last joined (kiln/joined/<r>) and takes the first newer one whose rank 0 welcomes it
    # (kiln/welcome/<g>/<r>, an answer to its kiln/hello/<g>/<r>), which a dead rank 0 never does.
    # - First start: empty store; rank 0 makes generation 1, every rank r (record 0) waits for 1.
    # - Every worker restarted (--standalone --max-restarts, or two agents of which only one
    #   counts a restart): rank 0 makes g + 1; every rank r last joined g and waits for g + 1.
    # - Rank 0 on another node: torch starts a fresh store server there, the keys are gone, and
    #   it is a first start again.
    # - A rank killed before it reached the store: if rank 0, the counter did not move, nothing
    #   changes. If rank r, generation g + 1 never saw it; its successor may take g + 1 for new
    #   before rank 0 makes g + 2, says hello, gets no welcome, and moves on to g + 2 when the
    #   counter gets there. (Without the welcome it could stay one generation behind rank 0.)
    # - A bigger world: welcomes are per rank, so a new rank never takes an old generation.
    counter = "kiln/generation"
    if rank == 0:
        generation = store.add(counter, 1)
        hellos = [f"kiln/hello/{generation}/{peer}" for peer in range(1, world_size)]
        try:
            store.wait(hellos, timeout)
        except RuntimeError as error:  # DistStoreError: a timeout
            missing = [peer for peer, key in enumerate(hellos, start=1) if not store.check([key])]
            raise RuntimeError(
                f"rank 0: ranks {missing} did not join generation {generation} of the process group within {timeout}"
            ) from error
        for peer in range(1, world_size):
            store.set(f"kiln/welcome/{generation}/{peer}", "1")
        return generation
    record = f"kiln/joined/{rank}"
    joined = candidate = int(store.get(record)) if store.check([record]) else 0
    deadline = time.monotonic() + timeout.total_seconds()
    while time.monotonic() < deadline:
        latest = store.add(counter, 0)
        if latest > candidate:
            candidate = latest
            store.set(record, str(candidate))
            store.set(f"kiln/hello/{candidate}/{rank}", "1")
        elif candidate > joined and store.check([f"kiln/welcome/{candidate}/{rank}"]):
            return candidate
        time.sleep(0.05)
    raise RuntimeError(
        f"rank {rank}: rank 0 did not start a generation of the process group after {joined} and welcome this rank "
        f"within {timeout} (newest generation seen: {candidate})"
    )


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
