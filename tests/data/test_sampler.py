"""The resumable sampler and loader: order from (seed, epoch), resume by position, shards."""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

from data.loader import build_loader
from data.sampler import ResumableBatchSampler


def _batches(sampler: ResumableBatchSampler) -> list[list[int]]:
    return [indices.tolist() for _, indices in sampler]


def test_epoch_order_is_a_function_of_seed_and_epoch():
    first = ResumableBatchSampler(100, 10, seed=3, shuffle=True, drop_last=True)
    second = ResumableBatchSampler(100, 10, seed=3, shuffle=True, drop_last=True)
    first.set_epoch(4)
    second.set_epoch(4)
    assert _batches(first) == _batches(second)
    second.set_epoch(5)
    assert _batches(first) != _batches(second)
    assert sorted(sum(_batches(first), [])) == list(range(100))


def test_starting_at_a_position_yields_exactly_the_remaining_batches():
    sampler = ResumableBatchSampler(100, 8, seed=0, shuffle=True, drop_last=True)
    sampler.set_epoch(2)
    whole = _batches(sampler)
    assert len(whole) == sampler.batches_per_epoch == 12  # 100 // 8, the short tail dropped
    sampler.set_epoch(2, start=7)
    assert _batches(sampler) == whole[7:]
    assert len(sampler) == 5


def test_ranks_split_each_global_batch_into_contiguous_shares():
    single = ResumableBatchSampler(64, 16, seed=1, shuffle=True, drop_last=True)
    shards = [ResumableBatchSampler(64, 16, seed=1, shuffle=True, drop_last=True, rank=r, world_size=2) for r in (0, 1)]
    for rank_batches in zip(*(_batches(shard) for shard in shards), strict=True):
        assert all(len(batch) == 8 for batch in rank_batches)
    joined = [a + b for a, b in zip(_batches(shards[0]), _batches(shards[1]), strict=True)]
    assert joined == _batches(single)


def test_validation_shards_cover_every_sample_once_without_padding():
    shards = [ResumableBatchSampler(10, 4, seed=0, shuffle=False, drop_last=False, rank=r, world_size=3) for r in range(3)]
    seen = sorted(index for shard in shards for batch in _batches(shard) for index in batch)
    assert seen == list(range(10))


class CountingDataset(Dataset):
    """Records every index read: the proof that resuming skips without loading."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.reads: list[int] = []

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int):
        self.reads.append(index)
        return torch.tensor([float(index)]), torch.tensor(index)


def test_resuming_deep_into_an_epoch_loads_no_skipped_sample():
    dataset = CountingDataset(10_000)
    loader = build_loader(dataset, batch_size=10, seed=0, train=True, num_workers=0, pin_memory=False)
    loader.sampler.set_epoch(0, start=900)
    inputs, _ = next(iter(loader))
    assert len(dataset.reads) == 10  # one batch read, not the 9,000 samples before it
    assert inputs.flatten().long().tolist() == loader.sampler.epoch_order(0)[9000:9010].tolist()


class RandomDataset(Dataset):
    """Each sample draws from torch's global RNG, as torchvision transforms do."""

    def __len__(self) -> int:
        return 64

    def __getitem__(self, index: int):
        return torch.rand(3), torch.tensor(index)


def test_per_sample_randomness_does_not_depend_on_workers_or_on_the_main_rng():
    def first_epoch(num_workers: int) -> torch.Tensor:
        loader = build_loader(RandomDataset(), batch_size=16, seed=7, train=True, num_workers=num_workers, pin_memory=False)
        return torch.cat([inputs for inputs, _ in loader])

    torch.manual_seed(0)
    before = torch.get_rng_state()
    in_process = first_epoch(0)
    assert torch.equal(torch.get_rng_state(), before)  # dropout's stream was not touched
    assert torch.equal(in_process, first_epoch(2))


def test_tensor_dataset_is_fetched_a_batch_at_a_time():
    from torch.utils.data import TensorDataset

    inputs, targets = torch.arange(100.0)[:, None], torch.arange(100)
    loader = build_loader(TensorDataset(inputs, targets), batch_size=10, seed=0, train=True, num_workers=0, pin_memory=False)
    batch_inputs, batch_targets = next(iter(loader))
    expected = loader.sampler.epoch_order(0)[:10]
    assert torch.equal(batch_targets, expected) and torch.equal(batch_inputs[:, 0], expected.float())
