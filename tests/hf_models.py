"""Tiny random models and tokenizers "from the hub", built locally with transformers (tests only).

`save_tiny(model_type, folder, **overrides)` writes what `save_pretrained` writes for a small
random model of that architecture (config.json, model.safetensors, generation_config.json) and
returns the transformers model in float32 eval mode, so a test compares Kiln against it.
transformers is imported inside the functions: a test module that uses them calls
`pytest.importorskip("transformers")` first.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

# Sizes small enough for a test, with grouped-query attention (4 query heads share 2 KV heads).
LLAMA_SIZES: dict[str, Any] = {
    "vocab_size": 96,
    "hidden_size": 32,
    "intermediate_size": 48,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 64,
}
GPT2_SIZES: dict[str, Any] = {"vocab_size": 96, "n_positions": 64, "n_embd": 32, "n_layer": 2, "n_head": 4}
LLAMA3_ROPE = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 16,
}
LINEAR_ROPE = {"rope_type": "linear", "factor": 2.0}


# A dataset plugin for run configs (written beside the config as fixed_batch.py and imported
# through `imports: [fixed_batch]`): the same two rows of token ids at every step, so that a
# reference loop over transformers' model takes exactly the trainer's batches.
FIXED_BATCH = '''
import torch
from torch.utils.data import Dataset


class FixedTokens(Dataset):
    def __init__(self, vocab_size, length, seed=0):
        generator = torch.Generator().manual_seed(seed)
        self.tokens = torch.randint(vocab_size, (2, length + 1), generator=generator)
        self.vocab_size = vocab_size

    def __len__(self):
        return 2

    def __getitem__(self, index):
        row = self.tokens[index]
        return row[:-1], row[1:]
'''


def _classes(model_type: str) -> tuple[Any, Any]:
    """(config class, causal-LM class) of transformers for `model_type`."""
    import transformers

    names = {
        "llama": ("LlamaConfig", "LlamaForCausalLM"),
        "mistral": ("MistralConfig", "MistralForCausalLM"),
        "qwen2": ("Qwen2Config", "Qwen2ForCausalLM"),
        "qwen3": ("Qwen3Config", "Qwen3ForCausalLM"),
        "gpt2": ("GPT2Config", "GPT2LMHeadModel"),
    }[model_type]
    return getattr(transformers, names[0]), getattr(transformers, names[1])


def tiny_config(model_type: str, **overrides: Any) -> Any:
    """A transformers config of a tiny model (dropout off, ids inside the vocabulary)."""
    config_class, _ = _classes(model_type)
    if model_type == "gpt2":
        sizes = {**GPT2_SIZES, "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0, "bos_token_id": 1, "eos_token_id": 2}
    else:
        sizes = {**LLAMA_SIZES, "bos_token_id": 1, "eos_token_id": 2}
    return config_class(**{**sizes, **overrides})


def save_tiny(model_type: str, folder: Path, seed: int = 0, **overrides: Any) -> Any:
    """Write a tiny random model to `folder` with save_pretrained; return it (float32, eval mode).

    The weights are random normal (std 0.2, norms around 1), not the init's zeros and ones, so
    that biases, norms and every projection matter to the logits.
    """
    _, model_class = _classes(model_type)
    torch.manual_seed(seed)
    model = model_class(tiny_config(model_type, **overrides)).float().eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            noise = torch.randn_like(parameter)
            if ("norm" in name or "ln_" in name) and name.endswith("weight"):
                parameter.copy_(1.0 + 0.1 * noise)
            elif "norm" in name or "ln_" in name:
                parameter.copy_(0.1 * noise)
            else:
                parameter.copy_(0.2 * noise)
    model.save_pretrained(folder)
    return model
