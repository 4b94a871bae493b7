"""Build DataLoaders that fetch whole batches and make augmentation a function of the sample."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset, default_collate

from data.sampler import ResumableBatchSampler
from trainer.errors import first_line
from utils.seed import isolated_rng, sample_seeds, seed_sample


class SampleError(Exception):
    """A sample (or batch) the dataset failed to give: the message names it and the original error."""


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
            try:
                return get_batch(indices, lambda: sample_seeds(self.seed, epoch, indices))
            except Exception as error:
                raise SampleError(f"a batch of {self._name} ({_some(indices)}): {describe_error(error)}") from error
        if isinstance(self.dataset, TensorDataset):  # a user's tensors: one index_select each
            return tuple(tensor.index_select(0, indices) for tensor in self.dataset.tensors)
        seeds = sample_seeds(self.seed, epoch, indices)
        with isolated_rng():
            samples = []
            for index, seed in zip(indices.tolist(), seeds.tolist(), strict=True):
                seed_sample(seed)
                try:
                    samples.append(self.dataset[index])
                except Exception as error:  # name the sample: a message rarely says which one it was
                    raise SampleError(f"sample {index} of {self._name}: {describe_error(error)}") from error
        return default_collate(samples)

    @property
    def _name(self) -> str:
        """The dataset's class name, for messages."""
        return type(self.dataset).__name__


def _some(indices: torch.Tensor, shown: int = 4) -> str:
    """'samples 3, 17, 5, 9, ... (64 in all)'."""
    values = indices.tolist()
    more = f", ... ({len(values)} in all)" if len(values) > shown else ""
    return "samples " + ", ".join(map(str, values[:shown])) + more


# torch re-raises an error of a DataLoader worker with the worker's whole traceback as the
# message (torch/utils/data/_utils/worker.py, ExceptionWrapper): its last exception line,
# `module.Type: message`, is the original error.
_WORKER_TRACEBACK = "Original Traceback (most recent call last):"
_EXCEPTION_LINE = re.compile(r"^(?P<type>[A-Za-z_][\w.]*): (?P<message>.*)$")


def describe_error(error: BaseException) -> str:
    """'Type: first line of the message' of `error`, also when a DataLoader worker raised it."""
    text = str(error)
    if _WORKER_TRACEBACK in text:
        lines = text.split(_WORKER_TRACEBACK, 1)[1].splitlines()
        found = [match for match in map(_EXCEPTION_LINE.match, lines) if match]
        if found:
            kind, message = found[-1]["type"].rsplit(".", 1)[-1], found[-1]["message"]
            return message if kind == SampleError.__name__ else f"{kind}: {message}"
    return first_line(error, strip=True, with_type=not isinstance(error, SampleError))


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


def dataset_of(loader: DataLoader | InProcessLoader) -> Dataset:
    """The dataset a loader from `build_loader` reads (inside its BatchFetcher)."""
    fetcher = loader.fetcher if isinstance(loader, InProcessLoader) else loader.dataset
    return fetcher.dataset


def peek_batch(loader: DataLoader | InProcessLoader) -> Any:
    """The loader's first batch of epoch 0, fetched in this process.

    Neither the loader's iterator nor its sampler's position is touched, and the fetch draws
    no global random number (BatchFetcher seeds each sample), so training goes on as if
    nothing had been read.
    """
    fetcher = loader.fetcher if isinstance(loader, InProcessLoader) else loader.dataset
    return fetcher[loader.sampler.first_request()]


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
