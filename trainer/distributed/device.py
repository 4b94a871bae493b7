"""The device a process computes on, and the backend settings that go with it."""

from __future__ import annotations

import torch

from trainer.errors import InputError


def wants_cuda(name: str) -> bool:
    """Whether the device setting means CUDA here (auto with a GPU, or cuda[:N])."""
    return name.startswith("cuda") or (name == "auto" and torch.cuda.is_available())


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """auto -> cuda when available, else cpu; under torchrun `cuda` is this rank's GPU.
    Asking for CUDA without a GPU is an InputError."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(f"cuda:{local_rank}" if name == "cuda" and torch.cuda.is_available() else name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(f"config key device: {name!r} was asked for but CUDA is not available here; set device: cpu or auto")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise InputError(f"config key device: {name!r} does not exist ({torch.cuda.device_count()} GPUs); pick a lower index")
    return device


def configure_backends(deterministic: bool) -> None:
    """deterministic: PyTorch's deterministic algorithms; otherwise let cuDNN pick the fastest."""
    # Only when it changes something: the call imports torch._inductor (seconds of start-up).
    if deterministic or torch.are_deterministic_algorithms_enabled():
        torch.use_deterministic_algorithms(deterministic)
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cudnn.benchmark = not deterministic
