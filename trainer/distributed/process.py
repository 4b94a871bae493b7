"""torchrun environment, rank helpers and the few collectives the trainer needs.

Everything here is torch.distributed; nothing is home-made. Under torchrun (RANK, LOCAL_RANK
and WORLD_SIZE set, WORLD_SIZE > 1) the process group uses nccl on CUDA and gloo on CPU; in a
plain `python train.py` every helper degrades to the single-process answer. Tasks of an
`srun` step without torchrun get the same variables from SLURM's (trainer/distributed/slurm.py;
torchrun's win where both are present).

A worker whose launcher dies stops as if sent SIGTERM (`end_with_launcher`): torchrun starts its
workers in sessions of their own, so after a `kill -9` of torchrun nothing else would tell them,
and they would train on and write checkpoints that a restarted job then races with.
"""

from __future__ import annotations

import datetime
import os
import signal
import time
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from trainer.distributed.slurm import adopt_slurm_environment
from utils.stopping import signal_on_parent_death

# How long a collective may wait for a missing rank before the job fails instead of hanging.
DEFAULT_TIMEOUT = datetime.timedelta(minutes=10)
# torchrun (torch.distributed.run) sets it in every worker's environment.
TORCHRUN_ENV = "TORCHELASTIC_RUN_ID"
# (this process, its parent) at import, before torch.distributed is set up: a launcher that died
# before `end_with_launcher` asked the kernel to tell shows as a changed parent. (A process forked
# after the import has another pid, and the process that forked it as its parent.)
_STARTED_AS = (os.getpid(), os.getppid())


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


def end_with_launcher(signum: int = signal.SIGTERM) -> bool:
    """Under torchrun on Linux: have the kernel send this worker `signum` when its launcher dies.

    The training loop treats it as any SIGTERM (save at the next agreed iteration, exit 143).
    `prctl(PR_SET_PDEATHSIG)` fires when the thread that started this process ends; torchrun
    starts its workers from its main thread, so that is the launcher's death. A launcher that
    died before this call is caught by the parent check: the signal is raised here and now.
    Returns whether the kernel was asked (False outside torchrun, off Linux, without prctl).
    """
    if TORCHRUN_ENV not in os.environ:
        return False
    armed = signal_on_parent_death(signum)  # off Linux or without prctl: the launcher's death goes unnoticed
    pid, parent = _STARTED_AS
    if armed and pid == os.getpid() and os.getppid() != parent:
        signal.raise_signal(signum)  # the launcher is gone already: stop as its signal would have stopped us
    return armed


def from_environment(use_cuda: bool) -> Distributed:
    """Read torchrun's environment (or an srun step's, written into torchrun's variables) and join
    the process group (nccl on CUDA, gloo on CPU); under torchrun a worker also ends with its
    launcher (`end_with_launcher`; srun's tasks end with their slurmstepd, which SLURM kills)."""
    end_with_launcher()
    adopt_slurm_environment()  # srun -n N without torchrun: RANK, WORLD_SIZE, ... from SLURM_PROCID, SLURM_NTASKS, ...
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
