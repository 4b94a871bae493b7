"""train.activation_checkpointing (trainer/activation_checkpointing.py): GPT and Llama recompute
each block in the backward. What a user relies on: the same gradients, bit for bit, and the same
RNG stream afterwards (dropout included), with fewer activations kept; a model that cannot do it
is one line, exit 2."""

from __future__ import annotations

import pytest
import torch

from models.gpt import GPT
from models.llama import Llama
from tests.helpers import error_of, tiny_config
from trainer.activation_checkpointing import apply_activation_checkpointing
from trainer.config import config_from_dict

LLAMA = {
    "vocab_size": 64, "hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 3, "num_attention_heads": 4,
    "num_key_value_heads": 2, "max_position_embeddings": 16, "dropout": 0.1, "attention_dropout": 0.1,
}  # fmt: skip
GPT_SIZES = {"vocab_size": 64, "block_size": 16, "n_layer": 3, "n_head": 2, "n_embd": 32, "dropout": 0.1}
ON = config_from_dict(tiny_config(train={"total_iters": 1, "activation_checkpointing": True}))


def step(model: torch.nn.Module, recompute: bool) -> tuple[dict[str, torch.Tensor], torch.Tensor, int]:
    """(gradients, RNG state afterwards, bytes of saved activations) of one forward and backward in train mode."""
    model.activation_checkpointing = recompute
    model.zero_grad(set_to_none=True)
    torch.manual_seed(7)  # the dropout masks
    idx = torch.randint(64, (2, 16), generator=torch.Generator().manual_seed(0))
    saved: dict[int, int] = {}
    parameters = {parameter.untyped_storage().data_ptr() for parameter in model.parameters()}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in parameters:
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        logits = model.train()(idx)
    torch.nn.functional.cross_entropy(logits.flatten(0, 1), idx.flatten()).backward()
    return {name: p.grad.clone() for name, p in model.named_parameters()}, torch.get_rng_state(), sum(saved.values())


@pytest.mark.parametrize("build", [lambda: GPT(**GPT_SIZES), lambda: Llama(**LLAMA)], ids=["gpt", "llama"])
def test_recomputed_blocks_give_the_same_gradients_and_rng_stream_with_fewer_activations_kept(build):
    torch.manual_seed(0)
    model = build()
    kept, rng_kept, saved_kept = step(model, recompute=False)
    recomputed, rng_recomputed, saved_recomputed = step(model, recompute=True)
    assert kept.keys() == recomputed.keys()
    for name, gradient in kept.items():
        assert torch.equal(gradient, recomputed[name]), name  # dropout masks replayed: bit for bit
    assert torch.equal(rng_kept, rng_recomputed)  # the recomputation draws nothing from the global stream
    assert saved_recomputed < saved_kept / 2


def test_the_trainer_turns_it_on_and_a_model_without_blocks_is_refused():
    model = GPT(**GPT_SIZES)
    apply_activation_checkpointing(model, ON)
    assert model.activation_checkpointing is True
    cnn = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3))
    assert error_of(lambda: apply_activation_checkpointing(cnn, ON)) == (
        "config key train.activation_checkpointing: model Sequential does not support it (GPT, Llama and hf models do: "
        "a model offers it with a boolean attribute activation_checkpointing its forward consults); set it to false"
    )
