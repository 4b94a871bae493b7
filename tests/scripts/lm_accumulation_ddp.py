"""Token-mean gradient accumulation under 2-process DDP on gloo (run by tests/trainer/test_losses.py).

`python lm_accumulation_ddp.py` with RANK, WORLD_SIZE=2, MASTER_ADDR and MASTER_PORT set. Each
rank trains on its half of one global batch in 2 micro-batches through OptimizerStep (DDP
no_sync on the first, the valid-token count all-reduced); rank 0 compares the averaged
gradients and the mean of the ranks' losses with one process on the whole batch in float64,
and prints `ok` (any mismatch raises: exit 1).

The toy LM, the batch and the gradient-recording optimizer are tests/helpers.py's, which the
single-process tests use too.
"""

from __future__ import annotations

import datetime
import os
import sys
from pathlib import Path

import torch
from torch import nn

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # run as a script: the repo root is not on sys.path

from tests.helpers import BATCH, TOLERANCE, ToyLM, one_step, relative_error, split, toy_batch  # noqa: E402


def main() -> None:
    """Rank r trains rows [4r, 4r + 4) in 2 micro-batches; rank 0 checks against one process."""
    import torch.distributed as dist

    from trainer.distributed import Distributed

    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=60))
    torch.manual_seed(0)
    reference_model, model = ToyLM(), ToyLM()
    model.load_state_dict(reference_model.state_dict())
    inputs, targets = toy_batch()
    reference_loss, reference_grads = one_step(reference_model, [(inputs, targets)], 1)
    mine = slice(rank * BATCH // world, (rank + 1) * BATCH // world)  # rank 0: 17 valid targets, rank 1: 10
    ddp = nn.parallel.DistributedDataParallel(model)
    loss, grads = one_step(model, split(inputs[mine], targets[mine], 2), 2, Distributed(rank, 0, world), ddp)
    dist.all_reduce(loss)  # the Trainer logs the mean of the ranks' losses
    if rank == 0:
        errors = [relative_error(g, r) for g, r in zip(grads, reference_grads, strict=True)]
        loss_error = relative_error(loss / world, reference_loss)
        if max(errors) > TOLERANCE or loss_error > TOLERANCE:
            raise SystemExit(f"mismatch: gradient relative errors {errors}, loss relative error {loss_error}")
        print("ok", max(errors), loss_error)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
