"""models/gpt.py against transformers' GPT-2: the same logits and greedy tokens from one file,
old files' buffers, the import/export round trip, and Kiln's export loading in transformers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")

from safetensors.torch import load_file, save_file  # noqa: E402  (after the skip: transformers brings safetensors)

from models.gpt import GPT  # noqa: E402
from tests.hf_models import save_tiny  # noqa: E402
from trainer.checkpoint import load_model_state  # noqa: E402

VOCAB, POSITIONS = 96, 64  # tests/hf_models.py GPT2_SIZES


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_thread):
    """Every test here on one thread (tests/conftest.py)."""


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    """(folder, transformers model) of the default tiny GPT-2 (gelu_new, eps 1e-5), shared by the module."""
    folder = tmp_path_factory.mktemp("gpt2")
    return folder, save_tiny("gpt2", folder)


def tokens(batch: int, length: int, seed: int = 0) -> torch.Tensor:
    """(batch, length) random ids inside the tiny vocabulary."""
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


def import_state(model: GPT, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A file's tensors as GPT's state dict, through hf_import (buffers dropped)."""
    return dict(mapped for name, tensor in tensors.items() if (mapped := model.hf_import(name, tensor)) is not None)


def kiln_from(folder: Path, weights: Path | None = None) -> GPT:
    """A GPT built from folder/config.json and strictly loaded with the file's weights (eval mode)."""
    model = GPT.from_hf_config(json.loads((folder / "config.json").read_text()), f"test {folder}")
    state = import_state(model, load_file(weights or folder / "model.safetensors"))
    load_model_state(model, state, strict=True, source=f"test {folder}")  # the tied lm_head loads through wte
    return model.eval()


@torch.no_grad()
def assert_same_logits(kiln: torch.nn.Module, hf: torch.nn.Module) -> None:
    idx = tokens(2, 20)
    torch.testing.assert_close(kiln(idx), hf(idx).logits)


def test_kiln_gpt_gives_transformers_gpt2_logits(tiny):
    folder, hf = tiny
    kiln = kiln_from(folder)
    assert kiln.arguments["activation"] == "gelu_tanh" and kiln.arguments["bias"] is True
    assert_same_logits(kiln, hf)


@pytest.mark.parametrize(
    "overrides",
    [
        {"activation_function": "gelu"},
        {"activation_function": "gelu_pytorch_tanh"},
        {"layer_norm_epsilon": 1e-2},
        {"n_inner": 48},
    ],
    ids=["gelu", "gelu_pytorch_tanh", "layer_norm_epsilon", "n_inner"],
)
def test_parity_holds_for_other_activations_epsilons_and_mlp_widths(tmp_path, overrides):
    hf = save_tiny("gpt2", tmp_path, seed=1, **overrides)
    kiln = kiln_from(tmp_path)
    assert_same_logits(kiln, hf)


@pytest.mark.parametrize("prefix", ["transformer.", ""], ids=["GPT2LMHeadModel", "bare-GPT2Model"])
def test_an_old_file_with_mask_buffers_and_without_the_prefix_imports(tiny, tmp_path, prefix):
    folder, hf = tiny
    tensors = load_file(folder / "model.safetensors")
    old = {name.removeprefix("transformer."): tensor for name, tensor in tensors.items()} if not prefix else dict(tensors)
    for layer in range(2):  # what GPT-2 files of 2019 hold: the causal mask and the masked value, per layer
        old[f"{prefix}h.{layer}.attn.bias"] = torch.tril(torch.ones(POSITIONS, POSITIONS)).view(1, 1, POSITIONS, POSITIONS)
        old[f"{prefix}h.{layer}.attn.masked_bias"] = torch.tensor(-1e4)
    save_file(old, tmp_path / "old.safetensors")
    (tmp_path / "config.json").write_text((folder / "config.json").read_text())
    assert_same_logits(kiln_from(tmp_path, tmp_path / "old.safetensors"), hf)


def test_import_then_export_gives_back_every_tensor_of_the_file(tiny):
    folder, _ = tiny
    tensors = load_file(folder / "model.safetensors")
    model = GPT.from_hf_config(json.loads((folder / "config.json").read_text()), "test")
    exported = {}
    for name, tensor in import_state(model, tensors).items():
        mapped = model.hf_export(name, tensor)
        if mapped is not None:
            exported[mapped[0]] = mapped[1]
            assert mapped[1].is_contiguous(), name
    assert exported.keys() == tensors.keys()
    assert all(torch.equal(exported[name], tensors[name]) for name in tensors)


def perturbed_gpt(seed: int, **changes) -> GPT:
    """A GPT-2-shaped Kiln GPT whose every weight is random (not the init's zero biases and unit norms)."""
    torch.manual_seed(seed)
    arguments = {"vocab_size": VOCAB, "block_size": POSITIONS, "n_layer": 2, "n_head": 4, "n_embd": 32, "bias": True}
    model = GPT(**{**arguments, **changes}).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.2 * torch.randn_like(parameter))
    return model


@pytest.mark.parametrize(
    "changes",
    [{"activation": "gelu_tanh"}, {"activation": "gelu", "layer_norm_epsilon": 1e-3, "n_inner": 40}],
    ids=["gpt2", "gelu-eps-n_inner"],
)
def test_an_exported_kiln_gpt_loads_in_transformers_with_the_same_logits(tmp_path, changes):
    kiln = perturbed_gpt(2, **changes)
    (tmp_path / "config.json").write_text(json.dumps(kiln.hf_config()))
    exported = dict(mapped for name, tensor in kiln.state_dict().items() if (mapped := kiln.hf_export(name, tensor)) is not None)
    save_file(exported, tmp_path / "model.safetensors")
    hf, info = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, output_loading_info=True)
    assert type(hf).__name__ == "GPT2LMHeadModel"
    assert not (info["missing_keys"] or info["unexpected_keys"] or info["mismatched_keys"])
    assert_same_logits(kiln, hf.float().eval())
    assert GPT.hf_arguments(kiln.hf_config(), "test") == kiln.arguments  # the config describes this model exactly


@torch.no_grad()
def hf_greedy(hf: torch.nn.Module, prompt: torch.Tensor, new: int) -> torch.Tensor:
    """transformers' greedy continuation (B, new), never stopped early by an end-of-sequence id."""
    out = hf.generate(
        prompt, attention_mask=torch.ones_like(prompt), do_sample=False, max_new_tokens=new, eos_token_id=None, pad_token_id=0
    )
    assert out.shape == (prompt.size(0), prompt.size(1) + new)
    return out[:, prompt.size(1) :]


def kiln_tokens(model: GPT, prompt: torch.Tensor, new: int, **options) -> torch.Tensor:
    """GPT.generate's (B, new) tokens."""
    return torch.cat(list(model.generate(prompt, new, **options)), dim=1)


def test_greedy_generation_with_and_without_the_cache_is_transformers_greedy_generation(tiny):
    folder, hf = tiny
    kiln = kiln_from(folder)
    prompt = tokens(2, 7, seed=3)
    cached = kiln_tokens(kiln, prompt, 24, temperature=0)
    assert torch.equal(cached, kiln_tokens(kiln, prompt, 24, temperature=0, use_cache=False))
    assert torch.equal(cached, hf_greedy(hf, prompt, 24))


@pytest.mark.parametrize("prompt_length", [58, 64, 70], ids=["passes-block_size", "fills-block_size", "longer-prompt"])
def test_greedy_generation_past_block_size_falls_back_to_the_cropped_context(tiny, prompt_length):
    folder, _ = tiny
    kiln = kiln_from(folder)
    prompt = tokens(2, prompt_length, seed=4)
    cached = kiln_tokens(kiln, prompt, 12, temperature=0)
    assert torch.equal(cached, kiln_tokens(kiln, prompt, 12, temperature=0, use_cache=False))


def test_seeded_sampling_is_reproducible_and_the_same_with_and_without_the_cache(tiny):
    folder, _ = tiny
    kiln = kiln_from(folder)
    prompt = tokens(1, 5, seed=5)

    def sample(seed: int, use_cache: bool = True) -> torch.Tensor:
        generator = torch.Generator().manual_seed(seed)
        return kiln_tokens(kiln, prompt, 30, temperature=0.8, top_k=20, generator=generator, use_cache=use_cache)

    assert torch.equal(sample(7), sample(7))
    assert torch.equal(sample(7), sample(7, use_cache=False))
    assert not torch.equal(sample(7), sample(8))
