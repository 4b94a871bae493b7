"""models/gpt.py: shapes, causality, GPT-2 init, tied weights through every file format, FLOPs, sampling."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from models.gpt import GPT
from trainer.checkpoint import extract_weights, load_file, load_model_state
from trainer.config import Component
from trainer.errors import InputError
from trainer.registry import MODELS, build


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_thread):
    """Every test here on one thread (tests/conftest.py)."""


TINY = {"vocab_size": 64, "block_size": 16, "n_layer": 2, "n_head": 2, "n_embd": 32}


def tiny_gpt(seed: int = 0, **changes) -> GPT:
    torch.manual_seed(seed)
    return GPT(**{**TINY, **changes})


def assert_tied(model: GPT) -> None:
    assert model.lm_head.weight is model.transformer.wte.weight


def test_gpt_is_registered_and_maps_token_ids_to_logits_at_every_position():
    model = build(MODELS, Component("GPT", dict(TINY)), key="model")
    idx = torch.randint(0, 64, (3, 10))
    assert model(idx).shape == (3, 10, 64)
    assert isinstance(model, GPT)


def test_changing_a_later_token_never_changes_an_earlier_positions_logits():
    model = tiny_gpt().eval()
    idx = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(1))
    before = model(idx)
    for position in (5, 15):
        changed = idx.clone()
        changed[:, position] = (changed[:, position] + 1) % 64
        after = model(changed)
        torch.testing.assert_close(after[:, :position], before[:, :position], rtol=0, atol=1e-6)
        assert not torch.allclose(after[:, position], before[:, position])  # the changed position does see it


def test_gpt2_init_std_002_and_residual_projections_scaled_by_depth():
    model = tiny_gpt(n_embd=128, n_layer=4, bias=True)
    residual = 0.02 / math.sqrt(2 * 4)
    for name, parameter in model.named_parameters():
        if name.endswith("c_proj.weight"):
            assert parameter.std().item() == pytest.approx(residual, rel=0.05), name
        elif name.endswith(("wte.weight", "wpe.weight", "c_attn.weight", "c_fc.weight")):
            assert parameter.std().item() == pytest.approx(0.02, rel=0.05), name
        elif "ln" in name:
            assert torch.all(parameter == (1.0 if name.endswith("weight") else 0.0)), name
        elif name.endswith("bias"):
            assert torch.all(parameter == 0), name


def test_bias_false_leaves_no_bias_anywhere():
    names = [name for name, _ in tiny_gpt().named_parameters()]
    assert not [name for name in names if name.endswith("bias")]


def test_a_sequence_longer_than_block_size_is_a_clear_value_error():
    with pytest.raises(ValueError, match="sequence of 17 tokens, longer than its block_size 16"):
        tiny_gpt()(torch.zeros(1, 17, dtype=torch.long))


def test_bad_sizes_are_value_errors_that_build_names_under_the_model_key():
    with pytest.raises(InputError, match=r"config key model: model GPT: n_embd \(30\) must be a multiple of n_head \(4\)"):
        build(MODELS, Component("GPT", {**TINY, "n_embd": 30, "n_head": 4}), key="model")


def test_tied_weights_stay_tied_after_loading_a_torch_saved_state_dict(tmp_path):
    source, target = tiny_gpt(0), tiny_gpt(1)
    torch.save(source.state_dict(), tmp_path / "sd.pt")
    target.load_state_dict(torch.load(tmp_path / "sd.pt", weights_only=True))
    assert_tied(target)
    torch.testing.assert_close(target.lm_head.weight, source.transformer.wte.weight, rtol=0, atol=0)


def test_tied_weights_stay_tied_after_loading_a_kiln_pth_as_pretrain(tmp_path):
    source, target = tiny_gpt(0), tiny_gpt(1)
    torch.save({"params": source.state_dict()}, tmp_path / "w.pth")
    state = extract_weights(load_file(tmp_path / "w.pth", "pretrain_path"), "auto", tmp_path / "w.pth")
    load_model_state(target, state, strict=True, source="pretrain_path")
    assert_tied(target)
    torch.testing.assert_close(target.transformer.wte.weight, source.transformer.wte.weight, rtol=0, atol=0)


def test_tied_weights_stay_tied_after_a_safetensors_round_trip(tmp_path):
    from safetensors.torch import load_file as load_safetensors
    from safetensors.torch import save_file

    source, target = tiny_gpt(0), tiny_gpt(1)
    # safetensors refuses tensors that share memory: tools/export.py saves a clone of each, as here
    save_file({key: value.clone() for key, value in source.state_dict().items()}, tmp_path / "w.safetensors")
    target.load_state_dict(load_safetensors(tmp_path / "w.safetensors"))
    assert_tied(target)
    torch.testing.assert_close(target.lm_head.weight, source.lm_head.weight, rtol=0, atol=0)


def test_flops_per_token_is_nanogpts_6n_plus_12lhqt():
    model = tiny_gpt()
    n = sum(p.numel() for p in model.parameters()) - model.transformer.wpe.weight.numel()  # the tied head once
    assert model.flops_per_token() == 6 * n + 12 * 2 * 2 * 16 * 16
    assert model.flops_per_token(seq_len=8) == 6 * n + 12 * 2 * 2 * 16 * 8


def test_check_data_rejects_a_vocabulary_larger_than_the_models():
    data = SimpleNamespace(vocab_size=256, block_size=16)
    with pytest.raises(InputError) as error:
        tiny_gpt(vocab_size=200).check_data(data)
    assert str(error.value) == (
        "config key model.vocab_size: 200 is smaller than the tokenizer's 256 tokens of data.train; "
        "set model.vocab_size to at least 256"
    )


def test_check_data_rejects_windows_longer_than_the_models_block_size():
    data = SimpleNamespace(vocab_size=64, block_size=32)
    with pytest.raises(InputError) as error:
        tiny_gpt().check_data(data, key="data.val")
    assert str(error.value) == (
        "config key data.val.block_size: 32 is larger than model.block_size 16, the longest sequence the model has "
        "positions for; set data.val.block_size to at most 16 or model.block_size to at least 32"
    )


def test_check_data_accepts_a_smaller_vocabulary_and_shorter_windows():
    tiny_gpt().check_data(SimpleNamespace(vocab_size=50, block_size=8))


def test_generate_yields_one_token_per_step_and_crops_the_context():
    model = tiny_gpt().eval()
    prompt = torch.randint(0, 64, (2, 20))  # longer than block_size: only the last 16 are seen
    tokens = list(model.generate(prompt, 5, temperature=0))
    assert len(tokens) == 5 and all(t.shape == (2, 1) and t.dtype == torch.long for t in tokens)
    greedy = model(prompt[:, -16:])[:, -1].argmax(-1, keepdim=True)
    assert torch.equal(tokens[0], greedy)


def test_generate_is_deterministic_for_a_seeded_generator():
    model = tiny_gpt().eval()
    prompt = torch.zeros(1, 1, dtype=torch.long)

    def sample(seed: int) -> list[int]:
        generator = torch.Generator().manual_seed(seed)
        return [int(t) for t in model.generate(prompt, 30, temperature=1.5, top_k=10, generator=generator)]

    assert sample(3) == sample(3)
    assert sample(3) != sample(4)
