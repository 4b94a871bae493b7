"""Token-mean gradient accumulation under 2-process DDP on gloo (run by test_lm_loss.py).

`python lm_accumulation_ddp.py` with RANK, WORLD_SIZE=2, MASTER_ADDR and MASTER_PORT set. Each
rank trains on its half of one global batch in 2 micro-batches through OptimizerStep (DDP
no_sync on the first, the valid-token count all-reduced); rank 0 compares the averaged
gradients and the mean of the ranks' losses with one process on the whole batch in float64,
and prints `ok` (any mismatch raises: exit 1).

Also the toy LM, the batch and the gradient-recording optimizer the single-process tests use.
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

VOCAB, WIDTH, BATCH, BLOCK = 11, 5, 8, 6
# Valid targets per row (the rest -100): micro-batches of 1, 2 or 4 rows hold different counts,
# and one row has none at all.
VALID_PER_ROW = (6, 6, 5, 4, 3, 1, 0, 6)
TOLERANCE = 1e-6


class ToyLM(nn.Module):
    """Embedding + linear: (B, T) token ids -> (B, T, V) logits, float64."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, WIDTH, dtype=torch.float64)
        self.head = nn.Linear(WIDTH, VOCAB, dtype=torch.float64)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.embed(tokens)))  # (B, T, V)


class RecordingSGD(torch.optim.SGD):
    """SGD that keeps a copy of every gradient it steps with (OptimizerStep clears them after)."""

    def step(self, closure=None):
        self.seen = [p.grad.detach().clone() for group in self.param_groups for p in group["params"]]
        return super().step(closure)


def toy_batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(BATCH, BLOCK) inputs and targets; row i has VALID_PER_ROW[i] valid targets, then -100."""
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randint(VOCAB, (BATCH, BLOCK), generator=generator)
    targets = torch.randint(VOCAB, (BATCH, BLOCK), generator=generator)
    for row, valid in enumerate(VALID_PER_ROW):
        targets[row, valid:] = -100
    return inputs, targets


def split(inputs: torch.Tensor, targets: torch.Tensor, parts: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """`parts` micro-batches of consecutive rows."""
    return list(zip(inputs.chunk(parts), targets.chunk(parts), strict=True))


def relative_error(value: torch.Tensor, reference: torch.Tensor) -> float:
    """|value - reference| / |reference| (L2 over the whole tensor)."""
    value, reference = value.detach(), reference.detach()
    return float((value - reference).norm() / reference.norm())


def make_step(model: nn.Module, raw_model: nn.Module, loss_fn, optimizer, accumulate: int, dist=None, **train):
    """An OptimizerStep for one toy step on CPU."""
    from trainer.config import TrainConfig
    from trainer.numerics import NonFiniteGuard
    from trainer.step import OptimizerStep

    cpu = torch.device("cpu")
    return OptimizerStep(
        model=model,
        raw_model=raw_model,
        loss_fn=loss_fn,
        optimizer=optimizer,
        scheduler=None,
        ema=None,
        guard=NonFiniteGuard(train.get("nan_policy", "stop"), 10, cpu),
        config=TrainConfig(total_iters=1, accumulate=accumulate, **train),
        device=cpu,
        dist=dist,
    )


def one_step(model: nn.Module, micro_batches, accumulate: int, dist=None, ddp: nn.Module | None = None, **train):
    """(returned loss, gradients the optimizer saw) of one OptimizerStep with TokenCrossEntropy."""
    from trainer.losses import TokenCrossEntropy

    optimizer = RecordingSGD(model.parameters(), lr=0.1, fused=train.get("nan_policy") == "skip")
    step = make_step(ddp or model, model, TokenCrossEntropy(), optimizer, accumulate, dist, **train)
    loss = step(iter(micro_batches))
    return loss, optimizer.seen


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
