"""Build DataLoaders that fetch whole batches and make augmentation a function of the sample."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset, default_collate

from data.sampler import ResumableBatchSampler
from utils.seed import isolated_rng, sample_seeds, seed_sample


class BatchFetcher(Dataset):
    """Turns one `(epoch, indices)` request of the sampler into a collated batch.

    Datasets that live in memory define `get_batch(indices, seeds)` (or are a TensorDataset)
    and are fetched with one index_select per batch; `seeds()` returns one seed per sample,
    a function of (seed, epoch, index), and costs nothing unless the dataset augments. Any
    other map-style dataset is read sample by sample, each sample under generators seeded
    that way, so its random transforms do not depend on the worker that runs them or on where
    a run was resumed.
    """

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset = dataset
        self.seed = seed

    def __len__(self) -> int:
        """The wrapped dataset's length."""
        return len(self.dataset)

    def __getitem__(self, request: tuple[int, torch.Tensor]):
        """The batch for `request` = (epoch, sample indices)."""
        epoch, indices = request
        if len(indices) == 0:  # a rank's empty share of the last validation batch
            return _empty_like(self[(epoch, torch.zeros(1, dtype=torch.int64))])
        get_batch = getattr(self.dataset, "get_batch", None)
        if get_batch is not None:
            return get_batch(indices, lambda: sample_seeds(self.seed, epoch, indices))
        if isinstance(self.dataset, TensorDataset):  # a user's tensors: one index_select each
            return tuple(tensor.index_select(0, indices) for tensor in self.dataset.tensors)
        seeds = sample_seeds(self.seed, epoch, indices)
        with isolated_rng():
            samples = []
            for index, seed in zip(indices.tolist(), seeds.tolist(), strict=True):
                seed_sample(seed)
                samples.append(self.dataset[index])
        return default_collate(samples)


def _empty_like(batch: Any) -> Any:
    """The same structure with every tensor cut to zero rows."""
    if isinstance(batch, torch.Tensor):
        return batch[:0]
    if isinstance(batch, (list, tuple)):
        return type(batch)(_empty_like(item) for item in batch)
    if isinstance(batch, dict):
        return {key: _empty_like(value) for key, value in batch.items()}
    return batch


class InProcessLoader:
    """What DataLoader does with no workers and no pinning, minus its per-batch bookkeeping.

    For in-memory datasets that bookkeeping is a sizeable share of a small model's step.
    """

    def __init__(self, fetcher: BatchFetcher, sampler: ResumableBatchSampler) -> None:
        self.fetcher = fetcher
        self.sampler = sampler

    def __iter__(self) -> Iterator:
        """The batches of the sampler's current epoch, from its start position on."""
        return (self.fetcher[request] for request in self.sampler)

    def __len__(self) -> int:
        """Batches left in the current epoch."""
        return len(self.sampler)


def build_loader(
    dataset: Dataset,
    *,
    batch_size: int,
    seed: int,
    train: bool,
    num_workers: int,
    pin_memory: bool,
    persistent_workers: bool = True,
    prefetch_factor: int | None = None,
    rank: int = 0,
    world_size: int = 1,
) -> DataLoader | InProcessLoader:
    """A DataLoader over `dataset` driven by a ResumableBatchSampler (`loader.sampler`).

    Training batches are shuffled and full (drop_last); validation batches are in order and
    cover every sample exactly once.
    """
    sampler = ResumableBatchSampler(
        len(dataset), batch_size, seed=seed, shuffle=train, drop_last=train, rank=rank, world_size=world_size
    )
    if num_workers == 0 and not pin_memory:
        return InProcessLoader(BatchFetcher(dataset, seed), sampler)
    return DataLoader(
        BatchFetcher(dataset, seed),
        sampler=sampler,
        batch_size=None,  # the sampler yields whole batches; the fetcher collates them
        num_workers=num_workers,
        pin_memory=pin_memory,
        persistent_workers=persistent_workers and num_workers > 0,
        prefetch_factor=prefetch_factor if num_workers > 0 else None,
        # A private generator: the loader draws its workers' base seed from it, not from the
        # global torch RNG that dropout uses, so creating an iterator never shifts that stream.
        generator=torch.Generator().manual_seed(seed),
    )
