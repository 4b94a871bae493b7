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


# --- activation, layer_norm_epsilon, n_inner ---


def test_default_activation_is_the_exact_gelu_and_keeps_the_state_dict_keys():
    default, explicit = tiny_gpt(0).eval(), tiny_gpt(0, activation="gelu").eval()
    idx = torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(2))
    assert torch.equal(default(idx), explicit(idx))
    assert default.transformer.h[0].mlp.gelu.approximate == "none"
    per_layer = ["ln_1.weight", "attn.c_attn.weight", "attn.c_proj.weight", "ln_2.weight", "mlp.c_fc.weight", "mlp.c_proj.weight"]
    expected = ["transformer.wte.weight", "transformer.wpe.weight"]
    expected += [f"transformer.h.{layer}.{name}" for layer in range(2) for name in per_layer]
    assert list(default.state_dict()) == [*expected, "transformer.ln_f.weight", "lm_head.weight"]


def test_gelu_tanh_is_the_tanh_approximation():
    exact, tanh = tiny_gpt(0).eval(), tiny_gpt(0, activation="gelu_tanh").eval()
    x = torch.linspace(-4, 4, 101)
    expected = 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))  # GPT-2's gelu_new
    torch.testing.assert_close(tanh.transformer.h[0].mlp.gelu(x), expected)
    idx = torch.randint(0, 64, (1, 8))
    assert not torch.allclose(exact(idx), tanh(idx))


def test_an_unknown_activation_is_a_value_error_listing_both():
    with pytest.raises(ValueError, match=r"activation must be 'gelu' \(exact\) or 'gelu_tanh'.*got 'relu'"):
        tiny_gpt(activation="relu")


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"n_inner": 0}, "n_inner must be a positive integer"),
        ({"layer_norm_epsilon": 0.0}, "layer_norm_epsilon must be a positive"),
    ],
)
def test_bad_mlp_width_or_epsilon_is_a_value_error(changes, message):
    with pytest.raises(ValueError, match=message):
        tiny_gpt(**changes)


def test_n_inner_sets_the_mlp_width_and_the_default_width_is_recorded_as_none():
    model = tiny_gpt(n_inner=48)
    assert model.transformer.h[1].mlp.c_fc.weight.shape == (48, 32)
    assert model.transformer.h[1].mlp.c_proj.weight.shape == (32, 48)
    assert model.arguments["n_inner"] == 48
    assert tiny_gpt(n_inner=128).arguments["n_inner"] is None  # 4 * n_embd: the same model as the default
    assert tiny_gpt().transformer.h[0].mlp.c_fc.weight.shape == (128, 32)


def test_layer_norm_epsilon_reaches_every_layer_norm():
    model = tiny_gpt(layer_norm_epsilon=1e-3)
    norms = [module for module in model.modules() if isinstance(module, torch.nn.LayerNorm)]
    assert len(norms) == 5 and all(norm.eps == 1e-3 for norm in norms)


def test_arguments_record_the_constructor_arguments():
    assert tiny_gpt(bias=True, activation="gelu_tanh").arguments == {
        **TINY,
        "dropout": 0.0,
        "bias": True,
        "activation": "gelu_tanh",
        "layer_norm_epsilon": 1e-5,
        "n_inner": None,
    }


# --- the KV cache ---


def test_feeding_the_sequence_in_pieces_through_a_cache_gives_the_full_forwards_logits():
    from models.gpt import KVCache

    model = tiny_gpt(bias=True).eval()
    idx = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(3))
    full = model(idx)
    cache = KVCache(model.n_layer, model.block_size)
    pieces = [model(idx[:, start:end], cache) for start, end in ((0, 5), (5, 8), (8, 9), (9, 16))]  # prompt, several, one
    assert cache.length == 16
    torch.testing.assert_close(torch.cat(pieces, dim=1), full)


def test_a_cache_cannot_take_positions_past_block_size():
    from models.gpt import KVCache

    model = tiny_gpt().eval()
    cache = KVCache(model.n_layer, model.block_size)
    model(torch.zeros(1, 12, dtype=torch.long), cache)
    with pytest.raises(ValueError, match="5 tokens after the 12 its KV cache holds, more than its block_size 16"):
        model(torch.zeros(1, 5, dtype=torch.long), cache)


@pytest.mark.parametrize(
    "prompt, new, use_cache, fed",
    [
        (4, 6, True, [4, 1, 1, 1, 1, 1]),  # the prompt once, then one position per token
        (14, 5, True, [14, 1, 1, 16, 16]),  # past block_size: the cropped context again, every token
        (14, 5, False, [14, 15, 16, 16, 16]),  # the reference: the whole (cropped) context every token
        (20, 2, True, [16, 16]),  # a prompt longer than block_size never uses the cache
    ],
)
def test_generate_feeds_each_position_once_while_the_sequence_fits(prompt, new, use_cache, fed):
    model = tiny_gpt().eval()
    lengths: list[int] = []
    model.transformer.wte.register_forward_hook(lambda module, args, output: lengths.append(args[0].size(1)))
    reference = list(tiny_gpt().eval().generate(torch.ones(2, prompt, dtype=torch.long), new, temperature=0, use_cache=False))
    tokens = list(model.generate(torch.ones(2, prompt, dtype=torch.long), new, temperature=0, use_cache=use_cache))
    assert lengths == fed
    assert torch.equal(torch.cat(tokens, dim=1), torch.cat(reference, dim=1))


def test_generate_checks_its_sampling_arguments():
    with pytest.raises(ValueError, match="temperature must be >= 0"):
        next(tiny_gpt().generate(torch.zeros(1, 1, dtype=torch.long), 1, temperature=-1))
    with pytest.raises(ValueError, match="top_k must be a positive integer"):
        next(tiny_gpt().generate(torch.zeros(1, 1, dtype=torch.long), 1, top_k=0))


# --- the Hugging Face layout (GPT-2); parity with transformers is tests/models/test_gpt2_parity.py ---

GPT2_CONFIG = {
    "model_type": "gpt2",
    "vocab_size": 64,
    "n_positions": 16,
    "n_layer": 2,
    "n_head": 2,
    "n_embd": 32,
    "n_inner": None,
    "activation_function": "gelu_new",
    "layer_norm_epsilon": 1e-5,
    "resid_pdrop": 0.1,
}


def test_hf_arguments_map_a_gpt2_config_and_fill_gpt2config_defaults():
    expected = {**TINY, "dropout": 0.1, "bias": True, "activation": "gelu_tanh", "layer_norm_epsilon": 1e-5, "n_inner": None}
    assert GPT.hf_arguments(GPT2_CONFIG, "test") == expected
    sizes_only = {key: GPT2_CONFIG[key] for key in ("vocab_size", "n_positions", "n_layer", "n_head", "n_embd")}
    assert GPT.hf_arguments(sizes_only, "test") == expected
    assert GPT.hf_arguments({**GPT2_CONFIG, "n_inner": 128}, "test")["n_inner"] is None  # 4 * n_embd
    assert GPT.hf_arguments({**GPT2_CONFIG, "activation_function": "gelu"}, "test")["activation"] == "gelu"
    assert GPT.hf_arguments({**GPT2_CONFIG, "activation_function": "gelu_pytorch_tanh"}, "test")["activation"] == "gelu_tanh"


@pytest.mark.parametrize(
    "key, value",
    [
        ("activation_function", "relu"),
        ("scale_attn_by_inverse_layer_idx", True),
        ("reorder_and_upcast_attn", True),
        ("scale_attn_weights", False),
        ("add_cross_attention", True),
        ("tie_word_embeddings", False),
        ("n_embd", "32"),
        ("n_inner", 1.5),
    ],
)
def test_hf_arguments_refuse_what_gpt_does_not_implement_naming_the_key(key, value):
    with pytest.raises(InputError, match=rf"^model.path d: config.json {key} is "):
        GPT.hf_arguments({**GPT2_CONFIG, key: value}, "model.path d")


def test_hf_arguments_refuse_another_model_type():
    with pytest.raises(InputError, match="model_type is 'llama'; GPT implements gpt2"):
        GPT.hf_arguments({**GPT2_CONFIG, "model_type": "llama"}, "test")


def test_hf_config_describes_the_model_and_maps_back_to_its_arguments():
    model = tiny_gpt(bias=True, activation="gelu_tanh", n_inner=48, layer_norm_epsilon=1e-6, dropout=0.1)
    config = model.hf_config()
    assert config["architectures"] == ["GPT2LMHeadModel"] and config["model_type"] == "gpt2"
    assert config["activation_function"] == "gelu_new" and config["tie_word_embeddings"] is True
    assert (config["n_positions"], config["n_inner"], config["layer_norm_epsilon"]) == (16, 48, 1e-6)
    assert GPT.hf_arguments(config, "test") == model.arguments
    assert model.hf_mismatches(config, "test") == []
    assert tiny_gpt(bias=True).hf_config()["activation_function"] == "gelu"


def test_hf_config_refuses_a_model_without_biases():
    with pytest.raises(InputError, match="bias: false has no GPT-2 equivalent.*needs a model trained with bias: true"):
        tiny_gpt().hf_config()


def test_hf_config_works_on_the_meta_device():
    with torch.device("meta"):
        model = GPT(**TINY, bias=True)
    assert model.hf_config()["n_embd"] == 32


def test_hf_mismatches_name_what_a_default_gpt_lacks_of_gpt2():
    assert tiny_gpt().hf_mismatches(GPT2_CONFIG, "test") == [
        "activation: file 'gelu_tanh', model 'gelu'",
        "bias: file True, model False",
    ]


def test_hf_import_transposes_conv1d_weights_and_drops_only_the_mask_buffers():
    model = tiny_gpt(bias=True)
    weight = torch.arange(32 * 96.0).view(32, 96)  # Conv1D: (in, out)
    name, imported = model.hf_import("transformer.h.1.attn.c_attn.weight", weight)
    assert name == "transformer.h.1.attn.c_attn.weight" and torch.equal(imported, weight.t()) and imported.is_contiguous()
    bias = torch.zeros(96)
    assert model.hf_import("transformer.h.1.attn.c_attn.bias", bias) == ("transformer.h.1.attn.c_attn.bias", bias)
    assert model.hf_import("transformer.h.1.attn.bias", torch.ones(1, 1, 16, 16)) is None
    assert model.hf_import("h.0.attn.masked_bias", torch.tensor(-1e4)) is None
    assert model.hf_import("wte.weight", weight)[0] == "transformer.wte.weight"  # a bare GPT2Model's file
    assert model.hf_import("transformer.wte.weight", weight)[1] is weight  # embeddings are (rows, C) in both


def test_hf_export_transposes_back_and_leaves_out_the_tied_head():
    model = tiny_gpt(bias=True)
    state = model.state_dict()
    assert model.hf_export("lm_head.weight", state["lm_head.weight"]) is None
    name, exported = model.hf_export("transformer.h.0.mlp.c_fc.weight", state["transformer.h.0.mlp.c_fc.weight"])
    assert exported.shape == (32, 128) and exported.is_contiguous()
    assert torch.equal(model.hf_import(name, exported)[1], state["transformer.h.0.mlp.c_fc.weight"])
