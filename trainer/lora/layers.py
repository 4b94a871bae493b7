"""The LoRA linear layer: a frozen nn.Linear plus a trained low-rank update (Hu et al. 2021).

    y = x W^T + b + (alpha / r) * B(A(dropout(x)))      A: (r, in), B: (out, r)

Kiln's own module rather than `peft`'s, for three reasons:

- names: the layer takes the wrapped nn.Linear's place and keeps its parameters as its own, so
  the base keys stay what they were (`...q_proj.weight`, `...q_proj.bias`: a Hugging Face
  directory or a Kiln .pth loads into them unchanged) and the adapters are PEFT's
  `...q_proj.lora_A.weight` / `...q_proj.lora_B.weight`. PEFT's wrapping renames every module
  (`base_model.model.<name>.base_layer.weight`), which every loader, param_groups pattern and
  checkpoint would have to translate;
- FSDP2 and checkpoints: plain nn.Linear submodules shard, gather and save like any other
  (no adapter dicts keyed by adapter name, no hooks of PEFT's own);
- exact resume: nothing random happens outside the model's construction and torch's dropout,
  whose RNG state the checkpoint keeps; the layer is a subclass of nn.Linear, so code that
  checks for one (initialisers, FLOP counters) still sees one.

Interoperability is by file: trainer/lora/peft.py writes the adapters as a PEFT adapter
directory, and merging (`merged`) is PEFT's `W + (alpha / r) * B @ A`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def lora_delta(lora_a: torch.Tensor, lora_b: torch.Tensor, scaling: float) -> torch.Tensor:
    """(alpha / r) * B @ A: the update adapters A (r, in) and B (out, r) make to a weight (out, in)."""
    return (lora_b @ lora_a) * scaling


class LoRALinear(nn.Linear):
    """An nn.Linear whose `weight` and `bias` are the wrapped layer's own Parameters (frozen by
    the caller), plus `lora_A` (in -> r) and `lora_B` (r -> out), initialised as PEFT does."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float = 0.0) -> None:
        nn.Module.__init__(self)  # not nn.Linear's: the weight and bias are the base's, not new ones
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight = base.weight
        self.register_parameter("bias", base.bias)  # None stays a registered None, as nn.Linear has it
        self.rank, self.alpha, self.scaling = rank, alpha, alpha / rank
        # nn.Identity without dropout, as PEFT has it: no RNG is drawn
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        factory = {"device": base.weight.device, "dtype": base.weight.dtype}
        # skip_init: the constructor's own init would draw from the RNG once more, for nothing
        self.lora_A = nn.utils.skip_init(nn.Linear, self.in_features, rank, bias=False, **factory)
        self.lora_B = nn.utils.skip_init(nn.Linear, rank, self.out_features, bias=False, **factory)
        self.reset_lora_parameters()

    def reset_lora_parameters(self) -> None:
        """PEFT's init: A kaiming-uniform (a = sqrt(5), nn.Linear's own), B zeros, so the update starts at 0."""
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The base layer's output plus the scaled low-rank update (PEFT's order of operations)."""
        result = F.linear(x, self.weight, self.bias)
        return result + self.lora_B(self.lora_A(self.lora_dropout(x))) * self.scaling

    def delta_weight(self) -> torch.Tensor:
        """(alpha / r) * B @ A, the update as a weight of the base's shape (out, in)."""
        return lora_delta(self.lora_A.weight, self.lora_B.weight, self.scaling)

    def merged(self) -> nn.Linear:
        """A plain nn.Linear with weight W + (alpha / r) * B @ A and the base's bias (new tensors)."""
        linear = nn.utils.skip_init(
            nn.Linear,
            self.in_features,
            self.out_features,
            bias=self.bias is not None,
            device=self.weight.device,
            dtype=self.weight.dtype,
        )
        with torch.no_grad():
            linear.weight.copy_(self.weight + self.delta_weight())
            if self.bias is not None:
                linear.bias.copy_(self.bias)
        return linear

    def extra_repr(self) -> str:
        """nn.Linear's, with the rank and alpha."""
        return f"{super().extra_repr()}, rank={self.rank}, alpha={self.alpha}"
