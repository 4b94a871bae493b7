"""Throughput counts: MFU = model flops per token x tokens/s / peak, peaks by device name, never a guess."""

from __future__ import annotations

import pytest
import torch

from trainer.tracking.throughput import Throughput, describe_throughput, mfu, peak_flops, peak_flops_of


def test_mfu_is_the_models_flops_at_the_measured_token_rate_over_the_peak():
    assert mfu(flops_per_token=6e9, tokens_per_sec=1e4, peak=1.2e14) == 0.5


@pytest.mark.parametrize(
    ("name", "peak"),
    [
        ("NVIDIA A100-SXM4-80GB", 312e12),
        ("NVIDIA A100 80GB PCIe", 312e12),
        ("NVIDIA H100 80GB HBM3", 989e12),
        ("NVIDIA H100 PCIe", 756e12),
        ("NVIDIA H100 NVL", 835e12),
        ("NVIDIA H200", 989e12),
        ("NVIDIA L4", 121e12),
        ("NVIDIA L40S", 362e12),
        ("NVIDIA A10", 125e12),
        ("NVIDIA GeForce RTX 4090", 165.2e12),
        ("NVIDIA A10G", None),  # not "A10": no published figure, so no MFU
        ("NVIDIA L40", None),  # not "L4"
        ("Tesla V100-SXM2-16GB", None),  # no bf16 tensor cores
    ],
)
def test_the_peak_is_looked_up_by_device_name_and_an_unknown_device_has_none(name, peak):
    assert peak_flops_of(name) == peak


class CountsFlops(torch.nn.Module):
    """A model declaring flops_per_token, as GPT does; it records the sequence length it was asked for."""

    def flops_per_token(self, seq_len: int | None = None) -> float:
        self.asked = seq_len
        return 1e6


class Windows:
    tokens_per_sample = 64


def test_flops_are_counted_for_a_token_dataset_on_a_known_cuda_device_and_the_peak_covers_every_rank(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H100 80GB HBM3")
    model = CountsFlops()
    counts = describe_throughput(model, Windows(), samples_per_step=32, device=torch.device("cuda", 0), world_size=2)
    assert counts == Throughput(samples_per_step=32, tokens_per_sample=64, flops_per_token=1e6, peak_flops=2 * 989e12)
    assert model.asked == 64  # flops at the sequence length the run trains on


def test_on_cpu_or_without_tokens_there_is_no_mfu():
    cpu = torch.device("cpu")
    assert peak_flops(cpu) is None
    on_cpu = describe_throughput(CountsFlops(), Windows(), samples_per_step=8, device=cpu, world_size=1)
    assert on_cpu == Throughput(samples_per_step=8, tokens_per_sample=64)
    assert describe_throughput(CountsFlops(), object(), samples_per_step=8, device=cpu, world_size=1) == Throughput(8)
