"""LoRALinear against peft's own LoRA layer: the same init, the same output, the same merge, and
the base's parameter names kept."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from trainer.lora import LoRALinear

peft_lora = pytest.importorskip("peft.tuners.lora")


def _base(bias: bool = True) -> nn.Linear:
    torch.manual_seed(0)
    return nn.Linear(12, 10, bias=bias)


def _with_random_adapters(layer: LoRALinear, seed: int = 1) -> LoRALinear:
    """B is zeros at init (the update starts at 0): random A and B make the update matter."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        layer.lora_A.weight.copy_(torch.randn(layer.lora_A.weight.shape, generator=generator))
        layer.lora_B.weight.copy_(torch.randn(layer.lora_B.weight.shape, generator=generator))
    return layer


def _peft_layer(base: nn.Linear, layer: LoRALinear) -> nn.Module:
    """peft's lora.Linear over a copy of `base`, with `layer`'s A and B."""
    copy = nn.Linear(base.in_features, base.out_features, bias=base.bias is not None)
    copy.load_state_dict(base.state_dict())
    config = peft_lora.LoraConfig(r=layer.rank, lora_alpha=layer.alpha, lora_dropout=0.0)
    theirs = peft_lora.Linear(copy, "default", config, r=layer.rank, lora_alpha=layer.alpha)
    with torch.no_grad():
        theirs.lora_A["default"].weight.copy_(layer.lora_A.weight)
        theirs.lora_B["default"].weight.copy_(layer.lora_B.weight)
    return theirs


@pytest.mark.parametrize("bias", [True, False])
def test_the_layer_keeps_the_base_parameters_and_names_its_adapters_as_peft_does(bias):
    base = _base(bias)
    layer = LoRALinear(base, rank=4, alpha=8.0)
    assert layer.weight is base.weight and layer.bias is base.bias
    assert isinstance(layer, nn.Linear)
    expected = ["weight", *(["bias"] if bias else []), "lora_A.weight", "lora_B.weight"]
    assert list(layer.state_dict()) == expected
    assert layer.lora_A.weight.shape == (4, 12) and layer.lora_B.weight.shape == (10, 4)


def test_init_is_peft_s_kaiming_uniform_a_and_zero_b():
    layer = LoRALinear(_base(), rank=4, alpha=8.0)
    assert torch.count_nonzero(layer.lora_B.weight) == 0
    bound = 1 / math.sqrt(12)  # kaiming_uniform_ with a = sqrt(5): U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    assert layer.lora_A.weight.abs().max() <= bound and layer.lora_A.weight.std() > bound / 4
    x = torch.randn(3, 12)
    assert torch.equal(layer(x), _base()(x))  # B = 0: the base's output, bit for bit


def test_forward_is_base_plus_scaled_update_and_equals_peft_s():
    base = _base()
    layer = _with_random_adapters(LoRALinear(base, rank=4, alpha=8.0))
    x = torch.randn(5, 7, 12)
    expected = base(x) + 2.0 * (x @ layer.lora_A.weight.T @ layer.lora_B.weight.T)
    torch.testing.assert_close(layer(x), expected)
    assert torch.equal(layer(x), _peft_layer(base, layer)(x))


def test_merge_is_exactly_w_plus_alpha_over_r_times_b_a_as_peft_merges():
    base = _base()
    layer = _with_random_adapters(LoRALinear(base, rank=4, alpha=6.0))
    merged = layer.merged()
    assert type(merged) is nn.Linear
    assert torch.equal(merged.weight, base.weight + (layer.lora_B.weight @ layer.lora_A.weight) * (6.0 / 4))
    assert torch.equal(merged.bias, base.bias) and merged.bias is not base.bias
    theirs = _peft_layer(base, layer)
    theirs.merge()
    assert torch.equal(theirs.base_layer.weight, merged.weight)
    x = torch.randn(4, 12)
    torch.testing.assert_close(merged(x), layer(x))


def test_dropout_applies_to_the_adapter_input_only_in_training():
    layer = _with_random_adapters(LoRALinear(_base(), rank=4, alpha=8.0, dropout=0.5))
    x = torch.randn(64, 12)
    layer.eval()
    evaluated = layer(x)
    layer.train()
    torch.manual_seed(0)
    first = layer(x)
    torch.manual_seed(0)
    assert torch.equal(layer(x), first) and not torch.equal(first, evaluated)  # random, from torch's RNG
    no_dropout = LoRALinear(_base(), rank=4, alpha=8.0)
    assert isinstance(no_dropout.lora_dropout, nn.Identity)
