"""models/llama.py against the real transformers: the same logits for llama / mistral / qwen2 / qwen3,
config.json in both RoPE layouts, refusals of what Kiln does not implement, the hf_config round trip,
KV-cache generation and a training step."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from models.llama import KVCache, Llama
from tests.hf_models import LINEAR_ROPE, LLAMA3_ROPE, LLAMA_SIZES, save_tiny
from trainer.config import Component
from trainer.errors import InputError
from trainer.registry import MODELS, build

transformers = pytest.importorskip("transformers")


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_thread):
    """Every test here on one thread (tests/conftest.py)."""


TINY = dict(LLAMA_SIZES)  # 4 query heads share 2 key/value heads


def twins(model_type: str, folder: Path, **overrides: Any) -> tuple[Any, Llama, dict[str, Any]]:
    """(transformers model, Kiln's model with its weights, config.json) of a tiny random model."""
    reference = save_tiny(model_type, folder, **overrides)
    config = json.loads((folder / "config.json").read_text())
    model = Llama.from_hf_config(config, str(folder)).eval()
    load_hf_state(model, reference.state_dict())
    return reference, model, config


def load_hf_state(model: Llama, state: dict[str, torch.Tensor]) -> None:
    """Load a transformers state dict strictly, through hf_import as checkpoint code does."""
    imported = [model.hf_import(name, tensor) for name, tensor in state.items()]
    model.load_state_dict(dict(entry for entry in imported if entry is not None), strict=True)


def batch(T: int = 20, B: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 96, (B, T), generator=torch.Generator().manual_seed(seed))


def hf_logits(reference: Any, idx: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return reference(idx).logits


CASES = {
    "llama": ("llama", {}),
    "llama-tied": ("llama", {"tie_word_embeddings": True}),
    "llama-llama3-rope": ("llama", {"rope_scaling": LLAMA3_ROPE}),
    "llama-linear-rope": ("llama", {"rope_scaling": LINEAR_ROPE, "tie_word_embeddings": True}),
    "llama-biases-mha": ("llama", {"attention_bias": True, "mlp_bias": True, "num_key_value_heads": 4}),
    "mistral": ("mistral", {}),
    "mistral-tied": ("mistral", {"tie_word_embeddings": True}),
    "qwen2": ("qwen2", {}),
    "qwen2-tied": ("qwen2", {"tie_word_embeddings": True}),
    "qwen3": ("qwen3", {"head_dim": 16}),
    "qwen3-tied-bias": ("qwen3", {"head_dim": 8, "tie_word_embeddings": True, "attention_bias": True}),
}


@pytest.mark.parametrize("case", list(CASES))
def test_logits_are_the_same_as_transformers(case, tmp_path):
    model_type, overrides = CASES[case]
    reference, model, _ = twins(model_type, tmp_path, **overrides)
    idx = batch()
    with torch.no_grad():
        torch.testing.assert_close(model(idx), hf_logits(reference, idx))
    tied = overrides.get("tie_word_embeddings", False)
    assert (model.lm_head.weight is model.model.embed_tokens.weight) == tied
    assert not [name for name in model.state_dict() if "rotary" in name]  # the cos/sin tables are not weights
    assert model._ddp_params_and_buffers_to_ignore == ["model.rotary_emb.cos", "model.rotary_emb.sin"]  # nor broadcast


def to_old_layout(config: dict[str, Any], key: str = "rope_type") -> dict[str, Any]:
    """config.json as transformers 4 wrote it: rope_theta at the top, rope_scaling beside it (or null)."""
    old = {name: value for name, value in config.items() if name != "rope_parameters"}
    rope = dict(config["rope_parameters"])
    old["rope_theta"] = rope.pop("rope_theta")
    rope_type = rope.pop("rope_type")
    old["rope_scaling"] = None if rope_type == "default" else {key: rope_type, **rope}
    return old


@pytest.mark.parametrize(
    ("rope", "key"),
    [(None, "rope_type"), (LLAMA3_ROPE, "rope_type"), (LINEAR_ROPE, "type")],
    ids=["default", "llama3", "linear-type-key"],
)
def test_the_older_rope_theta_and_rope_scaling_layout_gives_the_same_model(rope, key, tmp_path):
    overrides = {"rope_parameters": {"rope_type": "default", "rope_theta": 500000.0}} if rope is None else {"rope_scaling": rope}
    reference, model, config = twins("llama", tmp_path, **overrides)
    old = to_old_layout(config, key)
    assert Llama.hf_arguments(old, "old") == model.arguments
    old_model = Llama.from_hf_config(old, "old").eval()
    old_model.load_state_dict(model.state_dict())
    idx = batch()
    with torch.no_grad():
        torch.testing.assert_close(old_model(idx), hf_logits(reference, idx))
    # and transformers reads the old layout as the same RoPE (keeping the old key beside rope_type)
    read = transformers.AutoConfig.for_model(**old).rope_parameters
    assert {name: value for name, value in read.items() if name != "type"} == reference.config.rope_parameters


def test_a_missing_original_max_position_embeddings_of_llama3_rope_is_the_context_length_as_in_transformers():
    rope = {key: value for key, value in LLAMA3_ROPE.items() if key != "original_max_position_embeddings"}
    config = {"model_type": "llama", **TINY, "rope_scaling": rope}
    assert Llama.hf_arguments(config, "x")["rope_scaling"]["original_max_position_embeddings"] == 64
    assert transformers.AutoConfig.for_model(**config).rope_parameters["original_max_position_embeddings"] == 64


@pytest.mark.parametrize("model_type", ["llama", "mistral", "qwen2", "qwen3"])
def test_keys_a_config_leaves_out_take_the_transformers_defaults_of_its_model_type(model_type):
    # 32 query heads: a multiple of every model_type's default num_key_value_heads (mistral 8, qwen 32)
    sizes = {"vocab_size": 96, "hidden_size": 64, "intermediate_size": 48, "num_hidden_layers": 2, "num_attention_heads": 32}
    ours = Llama.hf_arguments({"model_type": model_type, **sizes}, "x")
    theirs = transformers.AutoConfig.for_model(model_type, **sizes)
    for key in ("num_key_value_heads", "max_position_embeddings", "rms_norm_eps", "tie_word_embeddings"):
        assert ours[key] == getattr(theirs, key), key
    assert ours["head_dim"] == (getattr(theirs, "head_dim", None) or 64 // 32)  # Qwen2Config has none: modeling's fallback
    assert ours["rope_theta"] == theirs.rope_parameters["rope_theta"]
    assert ours["rope_scaling"] is None and theirs.rope_parameters["rope_type"] == "default"


def hf_config_of(model_type: str = "llama", **changes: Any) -> dict[str, Any]:
    return {"model_type": model_type, **TINY, **changes}


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        (
            {"rope_parameters": {"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e4}},
            r"rope_type 'yarn' is not supported.*linear, llama3",
        ),
        ({"rope_scaling": {"type": "dynamic", "factor": 2.0}}, "rope_type 'dynamic' is not supported"),
        ({"rope_scaling": {"rope_type": "linear"}}, "rope_type linear has no factor"),
        ({"hidden_act": "gelu"}, "hidden_act 'gelu' is not supported"),
        ({"partial_rotary_factor": 0.5}, "partial_rotary_factor 0.5 is not supported"),
        ({"num_key_value_heads": 3}, r"num_attention_heads \(4\) must be a multiple of num_key_value_heads \(3\)"),
        ({"vocab_size": "96"}, "vocab_size is '96', not a int"),
        ({"model_type": "gpt2"}, "model_type 'gpt2' is not one of Llama's"),
    ],
    ids=["yarn", "dynamic-old-key", "linear-without-factor", "gelu", "partial-rotary", "kv-heads", "vocab-type", "gpt2"],
)
def test_what_kiln_does_not_implement_is_an_input_error_naming_it(changes, match):
    with pytest.raises(InputError, match=match):
        Llama.hf_arguments(hf_config_of(**changes), "model.path x")


def test_a_missing_size_is_an_input_error_naming_the_key():
    config = hf_config_of()
    del config["hidden_size"]
    with pytest.raises(InputError, match="model.path x: config.json has no 'hidden_size'"):
        Llama.hf_arguments(config, "model.path x")


def test_sliding_window_attention_shorter_than_the_context_is_refused_and_a_longer_one_is_full_attention():
    with pytest.raises(
        InputError, match=r"sliding_window 16 is shorter than max_position_embeddings 64.*set sliding_window to null"
    ):
        Llama.hf_arguments(hf_config_of("mistral", sliding_window=16), "x")
    assert Llama.hf_arguments(hf_config_of("mistral", sliding_window=64), "x")["model_type"] == "mistral"
    assert Llama.hf_arguments(hf_config_of("mistral", sliding_window=None), "x")["model_type"] == "mistral"
    for model_type in ("qwen2", "qwen3"):
        sliding = {"use_sliding_window": True, "sliding_window": 16, "max_window_layers": 1}
        with pytest.raises(InputError, match="does not implement sliding-window attention"):
            Llama.hf_arguments(hf_config_of(model_type, **sliding), "x")
        # off, or no layer from max_window_layers on: every layer attends fully (transformers' layer_types)
        Llama.hf_arguments(hf_config_of(model_type, **{**sliding, "use_sliding_window": False}), "x")
        Llama.hf_arguments(hf_config_of(model_type, **{**sliding, "max_window_layers": 2}), "x")
        layer_types = ["full_attention", "full_attention"]
        Llama.hf_arguments(hf_config_of(model_type, **{**sliding, "max_window_layers": 0, "layer_types": layer_types}), "x")


def test_qwen2_has_qkv_biases_and_no_o_proj_bias_whatever_the_config_says():
    arguments = Llama.hf_arguments(hf_config_of("qwen2", attention_bias=False), "x")
    assert (arguments["attention_bias"], arguments["o_proj_bias"]) == (True, False)
    model = Llama(**arguments)
    assert model.model.layers[0].self_attn.q_proj.bias is not None and model.model.layers[0].self_attn.o_proj.bias is None


def export_to(model: Llama, folder: Path) -> None:
    """What an export writes: hf_config() as config.json and the hf_export-ed weights as model.safetensors."""
    from safetensors.torch import save_file

    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(model.hf_config()))
    exported = [model.hf_export(name, tensor) for name, tensor in model.state_dict().items()]
    save_file(
        {name: tensor.contiguous() for name, tensor in filter(None, exported)}, folder / "model.safetensors", {"format": "pt"}
    )


ROUND_TRIPS = {
    "llama-llama3-tied": {"model_type": "llama", "rope_scaling": LLAMA3_ROPE, "tie_word_embeddings": True, "mlp_bias": True},
    "llama-linear": {"model_type": "llama", "rope_scaling": LINEAR_ROPE, "rope_theta": 500000.0, "attention_bias": True},
    "mistral": {"model_type": "mistral", "num_key_value_heads": 1},
    "qwen2": {"model_type": "qwen2", "attention_bias": True, "o_proj_bias": False, "tie_word_embeddings": True},
    "qwen3": {"model_type": "qwen3", "qk_norm": True, "head_dim": 16, "rms_norm_eps": 1e-5},
}


@pytest.mark.parametrize("case", list(ROUND_TRIPS))
def test_hf_config_round_trips_and_transformers_loads_the_export_with_the_same_logits(case, tmp_path):
    torch.manual_seed(0)
    model = Llama(**{**TINY, **ROUND_TRIPS[case]}, dropout=0.1).eval()
    with torch.no_grad():  # random norms and biases, so that a wrongly mapped one shows
        for name, parameter in model.named_parameters():
            parameter.copy_(torch.randn_like(parameter) * 0.2 + (1.0 if "norm" in name else 0.0))
    config = model.hf_config()
    assert {**Llama.hf_arguments(config, "x"), "dropout": 0.1} == model.arguments
    assert model.hf_mismatches(config, "x") == []
    export_to(model, tmp_path / "export")
    reference = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "export").float().eval()
    assert type(reference).__name__ == config["architectures"][0]
    idx = batch()
    with torch.no_grad():
        torch.testing.assert_close(model(idx), hf_logits(reference, idx))


def test_hf_mismatches_names_the_argument_a_config_sets_otherwise():
    model = Llama(**TINY, model_type="qwen3", qk_norm=True, attention_dropout=0.1)
    config = {**model.hf_config(), "num_key_value_heads": 4}
    assert model.hf_mismatches(config, "x") == ["num_key_value_heads: file 4, model 2"]


@pytest.mark.parametrize(
    ("arguments", "match"),
    [
        (
            {"model_type": "qwen2"},
            "model_type qwen2 has attention_bias False, but transformers' Qwen2ForCausalLM always has True",
        ),
        ({"model_type": "mistral", "mlp_bias": True}, "Mistral.*always has False"),
        ({"model_type": "llama", "qk_norm": True}, "qk_norm True"),
        ({"model_type": "qwen3"}, "qk_norm False"),
    ],
)
def test_hf_config_of_switches_the_model_type_cannot_express_is_an_input_error(arguments, match):
    with pytest.raises(InputError, match=match):
        Llama(**TINY, **arguments).hf_config()


def test_hf_import_drops_old_inv_freq_buffers_and_hf_export_drops_only_a_tied_head():
    tied, untied = Llama(**TINY, tie_word_embeddings=True), Llama(**TINY)
    weight = torch.zeros(2)
    assert tied.hf_import("model.layers.0.self_attn.rotary_emb.inv_freq", weight) is None
    assert tied.hf_import("model.norm.weight", weight) == ("model.norm.weight", weight)
    assert tied.hf_export("lm_head.weight", weight) is None
    assert untied.hf_export("lm_head.weight", weight) == ("lm_head.weight", weight)


def greedy(model: Llama, idx: torch.Tensor, n: int, **options: Any) -> torch.Tensor:
    return torch.cat(list(model.generate(idx, n, temperature=0, **options)), dim=1)


@pytest.mark.parametrize("case", ["llama", "llama-llama3-rope", "qwen2", "qwen3"])
def test_greedy_generation_with_and_without_cache_is_transformers_generate(case, tmp_path):
    model_type, overrides = CASES[case]
    reference, model, _ = twins(model_type, tmp_path, **overrides)
    reference.generation_config.eos_token_id = None  # never stop early: compare every token
    idx, n = batch(T=5, seed=3), 24
    with torch.no_grad():
        expected = reference.generate(idx, attention_mask=torch.ones_like(idx), do_sample=False, max_new_tokens=n, pad_token_id=0)
    assert torch.equal(greedy(model, idx, n), expected[:, 5:])
    assert torch.equal(greedy(model, idx, n, use_cache=False), expected[:, 5:])


def test_past_max_position_embeddings_the_cached_path_crops_as_the_uncached_one():
    torch.manual_seed(0)
    model = Llama(**{**TINY, "max_position_embeddings": 12}).eval()
    for prompt in (batch(T=5), batch(T=15)):  # the window fills during generation; the prompt alone overflows it
        assert torch.equal(greedy(model, prompt, 20), greedy(model, prompt, 20, use_cache=False))


def test_sampling_with_a_seeded_generator_repeats():
    torch.manual_seed(0)
    model = Llama(**TINY).eval()

    def sample() -> torch.Tensor:
        generator = torch.Generator().manual_seed(7)
        return torch.cat(list(model.generate(batch(T=4), 12, temperature=0.8, top_k=10, generator=generator)), dim=1)

    first = sample()
    assert first.shape == (2, 12) and torch.equal(first, sample())
    with pytest.raises(ValueError, match="temperature must be >= 0"):
        next(model.generate(batch(T=4), 1, temperature=-1))


def test_a_cached_forward_in_chunks_gives_the_logits_of_one_full_forward():
    torch.manual_seed(0)
    model = Llama(**TINY, model_type="qwen3", qk_norm=True).eval()
    idx = batch(T=12)
    cache = KVCache(model.n_layer, capacity=12)
    with torch.no_grad():
        chunks = [model(idx[:, :5], cache), model(idx[:, 5:6], cache), model(idx[:, 6:], cache)]  # prompt, 1, several
        torch.testing.assert_close(torch.cat(chunks, dim=1), model(idx))
        assert cache.length == 12
        with pytest.raises(ValueError, match="more than its cache holds"):
            model(idx[:, :1], cache)


def test_a_sequence_longer_than_max_position_embeddings_is_a_clear_value_error():
    with pytest.raises(ValueError, match="Llama got 65 positions, more than its block_size"):
        Llama(**TINY)(torch.zeros(1, 65, dtype=torch.long))


def test_a_training_step_gives_finite_gradients_and_a_tied_head_is_one_parameter():
    torch.manual_seed(0)
    tied, untied = Llama(**TINY, tie_word_embeddings=True, dropout=0.1), Llama(**TINY)
    assert len(list(tied.parameters())) == len(list(untied.parameters())) - 1
    assert {"lm_head.weight", "model.embed_tokens.weight"} <= set(tied.state_dict())
    idx = batch(T=16)
    logits = tied.train()(idx[:, :-1])
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, 96), idx[:, 1:].reshape(-1))
    loss.backward()
    assert all(parameter.grad is not None and torch.isfinite(parameter.grad).all() for parameter in tied.parameters())


def test_from_scratch_init_is_normal_002_with_zero_biases_and_unit_norms():
    model = Llama(**{**TINY, "hidden_size": 128, "intermediate_size": 256}, attention_bias=True)
    for name, parameter in model.named_parameters():
        if "norm" in name:
            assert torch.all(parameter == 1), name
        elif name.endswith("bias"):
            assert torch.all(parameter == 0), name
        else:
            assert parameter.std().item() == pytest.approx(0.02, rel=0.1), name


def test_llama_is_registered_and_bad_sizes_are_input_errors_under_the_model_key():
    model = build(MODELS, Component("Llama", dict(TINY)), key="model")
    assert isinstance(model, Llama) and model.block_size == 64
    with pytest.raises(
        InputError, match=r"config key model: .*num_attention_heads \(4\) must be a multiple of num_key_value_heads"
    ):
        build(MODELS, Component("Llama", {**TINY, "num_key_value_heads": 3}), key="model")
    with pytest.raises(InputError, match="rope_type 'yarn' is not supported"):
        build(MODELS, Component("Llama", {**TINY, "rope_scaling": {"rope_type": "yarn", "factor": 2.0}}), key="model")


def test_num_params_and_flops_per_token_count_the_matmul_weights():
    tied, untied = Llama(**TINY, tie_word_embeddings=True), Llama(**TINY)
    embedding = 96 * 32
    assert untied.num_params() == untied.num_params(non_embedding=False) - embedding  # the lookup is no matmul
    assert tied.num_params() == tied.num_params(non_embedding=False) == untied.num_params()  # the shared matrix: the head
    assert untied.flops_per_token(seq_len=10) == 6 * untied.num_params() + 12 * 2 * 4 * 8 * 10
    assert untied.flops_per_token() == untied.flops_per_token(seq_len=64)


def test_check_data_refuses_a_larger_vocabulary_or_longer_windows():
    model = Llama(**TINY)
    model.check_data(SimpleNamespace(vocab_size=96, block_size=64))
    with pytest.raises(InputError, match="vocab_size 96 is smaller than the tokenizer's 100 tokens of data.train"):
        model.check_data(SimpleNamespace(vocab_size=100, block_size=8))
    with pytest.raises(
        InputError, match="config key data.train.block_size: 65 is larger than the model's max_position_embeddings 64"
    ):
        model.check_data(SimpleNamespace(vocab_size=96, block_size=65))


def test_the_model_builds_on_the_meta_device_for_export():
    with torch.device("meta"):
        model = Llama(**TINY, rope_scaling=LLAMA3_ROPE)
    assert model.lm_head.weight.is_meta
    assert model.hf_config()["rope_parameters"]["rope_type"] == "llama3"
