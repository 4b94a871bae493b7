"""What the training log line needs to turn it/s into samples/s, tokens/s and MFU: plain numbers,
taken once from the config, the training dataset, the model and the device."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import torch

# Dense (no sparsity) bf16 tensor-core peaks from the vendors' datasheets, per device; the first
# pattern that matches torch.cuda.get_device_name wins, so a specific name precedes a general one.
# They are the figures of nanochat's table (common.py, after torchtitan's tools/utils.py), plus
# the A10's datasheet figure (250 TFLOPS with sparsity). Word boundaries keep "L4" from matching
# "L40S" and "A10" from matching "A10G" (whose peak is not published): a device with no entry
# gets no MFU, never a guess that would be reported as a measurement.
PEAK_BF16_FLOPS: tuple[tuple[str, float], ...] = (
    (r"\bB200\b", 2.25e15),
    (r"\bH200\b.*\b(NVL|PCIe)\b", 836e12),
    (r"\bH200\b", 989e12),  # SXM
    (r"\bH100\b.*\bNVL\b", 835e12),
    (r"\bH100\b.*\bPCIe\b", 756e12),
    (r"\bH100\b", 989e12),  # SXM ("NVIDIA H100 80GB HBM3")
    (r"\bA100\b", 312e12),  # SXM and PCIe alike
    (r"\bL40S\b", 362e12),
    (r"\bL4\b", 121e12),
    (r"\bA10\b", 125e12),
    (r"\b4090\b", 165.2e12),  # GeForce RTX 4090, FP32 accumulate
    (r"\b3090\b", 71e12),
)


@dataclass(frozen=True)
class Throughput:
    """The counts that scale the measured it/s: global samples per optimizer step, tokens per sample
    (None: the dataset declares none), model flops per token and the peak flops of all devices
    (None: no MFU)."""

    samples_per_step: int = 1
    tokens_per_sample: int | None = None
    flops_per_token: float | None = None
    peak_flops: float | None = None


def peak_flops(device: torch.device) -> float | None:
    """The dense bf16 peak of a CUDA device from PEAK_BF16_FLOPS; None on CPU or for a device not listed."""
    if device.type != "cuda":
        return None
    return peak_flops_of(torch.cuda.get_device_name(device))


def peak_flops_of(device_name: str) -> float | None:
    """The dense bf16 peak PEAK_BF16_FLOPS gives a device name ("NVIDIA H100 PCIe"), or None."""
    for pattern, flops in PEAK_BF16_FLOPS:
        if re.search(pattern, device_name, flags=re.IGNORECASE):
            return flops
    return None


def mfu(flops_per_token: float, tokens_per_sec: float, peak: float) -> float:
    """Model flops utilisation, a fraction: the flops the model's tokens/s needs over the devices' peak."""
    return flops_per_token * tokens_per_sec / peak


def describe_throughput(model: Any, dataset: Any, *, samples_per_step: int, device: torch.device, world_size: int) -> Throughput:
    """The Throughput of a run: `dataset.tokens_per_sample` if it declares one, the model's
    `flops_per_token(seq_len=tokens_per_sample)` if it has that method and the device's peak is known.

    Flops are counted only where MFU can be reported (a token count and a known CUDA peak), and
    the peak is that of every device, since tokens/s is the global rate.
    """
    tokens = getattr(dataset, "tokens_per_sample", None)
    peak = peak_flops(device)
    counts_flops = tokens is not None and peak is not None and callable(getattr(model, "flops_per_token", None))
    return Throughput(
        samples_per_step=samples_per_step,
        tokens_per_sample=None if tokens is None else int(tokens),
        flops_per_token=float(model.flops_per_token(seq_len=int(tokens))) if counts_flops else None,
        peak_flops=peak * world_size if counts_flops else None,
    )
