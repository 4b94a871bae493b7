"""The resumable batch sampler: the data order is a function of (seed, epoch) alone."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler


class ResumableBatchSampler(Sampler):
    """Yields `(epoch, indices)` batch requests, starting at any batch position of any epoch.

    The epoch's order is a permutation drawn from a generator seeded by (seed, epoch), so a
    resumed run sees exactly the batches the uninterrupted run saw, and skipping the batches
    already consumed costs nothing (no sample is loaded to get past them). `batch_size` is the
    GLOBAL batch: under data parallelism each rank takes its contiguous slice of every global
    batch, so N ranks together see what one process would see.
    """

    def __init__(
        self,
        dataset_size: int,
        batch_size: int,
        *,
        seed: int,
        shuffle: bool,
        drop_last: bool,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.dataset_size = dataset_size
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        self.start = 0

    @property
    def batches_per_epoch(self) -> int:
        """Global batches in one pass over the data."""
        full, rest = divmod(self.dataset_size, self.batch_size)
        return full if self.drop_last or rest == 0 else full + 1

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Iterate epoch `epoch` from its batch number `start` on."""
        self.epoch = epoch
        self.start = start

    def epoch_order(self, epoch: int) -> torch.Tensor:
        """The sample order of `epoch`: a permutation seeded by (seed, epoch), or 0..N-1."""
        if not self.shuffle:
            return torch.arange(self.dataset_size)
        generator = torch.Generator().manual_seed((self.seed % 2**32) * 2**32 + epoch)
        return torch.randperm(self.dataset_size, generator=generator)

    def __iter__(self) -> Iterator[tuple[int, torch.Tensor]]:
        """The batch requests of the current epoch from the start position on."""
        epoch, order = self.epoch, self.epoch_order(self.epoch)
        for batch in range(self.start, self.batches_per_epoch):
            local = self._share(order, batch)
            # An empty share still yields (a zero-size batch) so that every rank runs the same
            # number of forwards: FSDP gathers parameters inside each one.
            if len(local) or self.world_size > 1:
                yield epoch, local

    def first_request(self) -> tuple[int, torch.Tensor]:
        """The request of epoch 0's first batch (this rank's share), wherever the sampler stands."""
        return 0, self._share(self.epoch_order(0), 0)

    def _share(self, order: torch.Tensor, batch: int) -> torch.Tensor:
        """This rank's sample indices of global batch number `batch` of an epoch's `order`."""
        local = order[batch * self.batch_size : (batch + 1) * self.batch_size]
        if self.world_size > 1:
            # tensor_split gives equal contiguous slices when the batch divides evenly, and
            # never repeats a sample to fill a short last batch (validation counts each once).
            local = torch.tensor_split(local, self.world_size)[self.rank]
        return local

    def __len__(self) -> int:
        """Batches left in the current epoch."""
        return self.batches_per_epoch - self.start
