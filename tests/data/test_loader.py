"""The loader's fetcher names a sample that fails, also through a DataLoader worker; peek_batch moves nothing."""

from __future__ import annotations

import pytest
import torch
from torch._utils import ExceptionWrapper
from torch.utils.data import Dataset, TensorDataset

from data.loader import BatchFetcher, SampleError, build_loader, describe_error, peek_batch


class OneUnreadable(Dataset):
    """Eight samples; sample 5 is a file that cannot be decoded."""

    def __len__(self) -> int:
        return 8

    def __getitem__(self, index: int):
        if index == 5:
            raise OSError("cannot identify image file 'photos/5.png'")
        return torch.full((2,), float(index)), torch.tensor(index)


def test_a_failing_sample_is_named_with_its_index_dataset_and_original_error():
    fetcher = BatchFetcher(OneUnreadable(), seed=0)
    with pytest.raises(SampleError) as caught:
        fetcher[(0, torch.tensor([1, 5, 2]))]
    assert str(caught.value) == "sample 5 of OneUnreadable: OSError: cannot identify image file 'photos/5.png'"
    assert describe_error(caught.value) == str(caught.value)


def test_describe_error_finds_the_original_error_in_a_dataloader_workers_message():
    """torch re-raises a worker's error with the worker's whole traceback as its message."""
    try:
        BatchFetcher(OneUnreadable(), seed=0)[(0, torch.tensor([5]))]
    except SampleError:
        wrapped = ExceptionWrapper(where="in DataLoader worker process 0")  # what the worker sends back
    with pytest.raises(SampleError) as caught:
        wrapped.reraise()
    assert str(caught.value).startswith("Caught SampleError in DataLoader worker process 0.")
    assert describe_error(caught.value) == "sample 5 of OneUnreadable: OSError: cannot identify image file 'photos/5.png'"
    assert describe_error(KeyError("x")) == "KeyError: 'x'"


def test_peek_batch_is_the_first_training_batch_and_leaves_the_sampler_where_it_was():
    dataset = TensorDataset(torch.arange(20.0)[:, None], torch.arange(20))
    loader = build_loader(dataset, batch_size=4, seed=3, train=True, num_workers=0, pin_memory=False)
    loader.sampler.set_epoch(2, 3)
    inputs, _ = peek_batch(loader)
    assert (loader.sampler.epoch, loader.sampler.start) == (2, 3)
    loader.sampler.set_epoch(0)
    first_inputs, _ = next(iter(loader))
    assert torch.equal(inputs, first_inputs)
