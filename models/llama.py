"""A Llama-family decoder-only language model, numerically the same as transformers' for the same weights.

Token embedding, pre-norm blocks (RMSNorm, grouped-query causal self-attention with rotary
position embeddings, RMSNorm, a SwiGLU MLP), a final RMSNorm and a language-model head,
optionally tied to the embedding. One class covers four Hugging Face `model_type`s, which differ
only in small switches:

- `llama`   (LlamaForCausalLM): optional biases (`attention_bias`, `mlp_bias`), RoPE scaling;
- `mistral` (MistralForCausalLM): no biases (sliding-window attention is not implemented, so a
  window shorter than the context is refused);
- `qwen2`   (Qwen2ForCausalLM): biases on q/k/v, none on o_proj;
- `qwen3`   (Qwen3ForCausalLM): a per-head RMSNorm on q and k before RoPE (`qk_norm`).

Module and parameter names are transformers' (`model.embed_tokens`,
`model.layers.0.self_attn.q_proj`, `model.layers.0.mlp.gate_proj`,
`model.layers.0.input_layernorm`, `model.norm`, `lm_head`, ...) and RoPE rotates halves as
transformers stores q/k, so a transformers state dict loads as it is. RoPE's cos/sin tables are
non-persistent buffers: not in the state dict.

Shapes: B batch, T sequence length (<= block_size = max_position_embeddings), C = hidden_size,
nh = num_attention_heads, nkv = num_key_value_heads (nh / nkv query heads share one key/value
head), hs = head_dim, F = intermediate_size, V = vocab_size, L = positions in the KV cache.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from models.hf_config import HFCompatible, require
from models.sampling import check_sampling, sample_next
from models.text_data import check_length, check_vocabulary
from trainer.errors import InputError
from trainer.registry import MODELS

# model_type -> the transformers class (config.json `architectures`) of the causal LM.
ARCHITECTURES = {
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
}

# The keys each supported rope_type needs besides rope_type (rope_theta is a constructor argument of its own).
ROPE_KEYS: dict[str, tuple[str, ...]] = {
    "default": (),
    "linear": ("factor",),
    "llama3": ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"),
}

# transformers' defaults for keys a config.json may leave out (its config classes' field defaults).
HF_DEFAULTS: dict[str, dict[str, Any]] = {
    "llama": {"num_key_value_heads": None, "head_dim": None, "max_position_embeddings": 2048},
    "mistral": {"num_key_value_heads": 8, "head_dim": None, "max_position_embeddings": 4096 * 32},
    "qwen2": {"num_key_value_heads": 32, "head_dim": None, "max_position_embeddings": 32768},
    "qwen3": {"num_key_value_heads": 32, "head_dim": 128, "max_position_embeddings": 32768},
}
DEFAULT_ROPE_THETA = 10000.0  # transformers' RotaryEmbeddingConfigMixin.default_theta
INIT_STD = 0.02  # transformers' initializer_range default


class RMSNorm(nn.Module):
    """Root-mean-square norm over the last dimension, in float32 and cast back (transformers' LlamaRMSNorm)."""

    def __init__(self, size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., size) -> (..., size); the operations in transformers' order, so float32 results agree bit for bit."""
        dtype = x.dtype
        x = x.to(torch.float32)
        variance = x.pow(2).mean(-1, keepdim=True)  # (..., 1)
        x = x * torch.rsqrt(variance + self.eps)
        return self.weight * x.to(dtype)

    def extra_repr(self) -> str:
        """The size and eps in print(model)."""
        return f"{tuple(self.weight.shape)}, eps={self.eps}"


def rope_inv_freq(head_dim: int, theta: float, scaling: dict[str, Any] | None) -> torch.Tensor:
    """(hs / 2,) float32 inverse frequencies of RoPE, computed as transformers' modeling_rope_utils does.

    `scaling` None is plain RoPE; `linear` divides every frequency by `factor` (positions / factor);
    `llama3` (Llama 3.1) divides the low frequencies by `factor`, keeps the high ones and
    interpolates smoothly in between.
    """
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).to(dtype=torch.float) / head_dim))
    if scaling is None:
        return inv_freq
    factor = scaling["factor"]
    if scaling["rope_type"] == "linear":
        return inv_freq / factor
    low, high = scaling["low_freq_factor"], scaling["high_freq_factor"]
    old_context = scaling["original_max_position_embeddings"]
    low_freq_wavelen, high_freq_wavelen = old_context / low, old_context / high
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)  # long wavelengths: / factor
    smooth = (old_context / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    is_medium = ~(wavelen < high_freq_wavelen) * ~(wavelen > low_freq_wavelen)
    return torch.where(is_medium, smoothed, scaled)


class RotaryEmbedding(nn.Module):
    """cos and sin of every position's rotation angles, tabulated once for max_position_embeddings.

    The tables are float32 non-persistent buffers (not in the state dict; model.to(dtype) casts
    them as transformers casts its cos/sin to the activations' dtype). They cost
    2 * max_position_embeddings * hs values, 128 MiB for Llama 3.1's 131072 x 128: traded for
    no per-step trigonometry in generation.
    """

    def __init__(self, head_dim: int, max_positions: int, theta: float, scaling: dict[str, Any] | None) -> None:
        super().__init__()
        inv_freq = rope_inv_freq(head_dim, theta, scaling)  # (hs / 2,)
        positions = torch.arange(max_positions, dtype=torch.int64).float()  # (max_positions,)
        freqs = positions[:, None] * inv_freq  # (max_positions, hs / 2): the same products as transformers'
        angles = torch.cat((freqs, freqs), dim=-1)  # (max_positions, hs): rotate-half pairs i with i + hs / 2
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)

    def forward(self, start: int, length: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """(cos, sin), each (length, hs), of positions start .. start + length - 1, in `dtype`."""
        return self.cos[start : start + length].to(dtype), self.sin[start : start + length].to(dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """(..., hs) -> (..., hs): [x1, x2] -> [-x2, x1], the halves of the last dimension."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """(B, heads, T, hs) rotated by the (T, hs) angles: x cos + rotate_half(x) sin."""
    return (x * cos) + (rotate_half(x) * sin)


class KVCache:
    """Every layer's keys and values of the positions seen so far, for generation one token at a time.

    Preallocated per layer on the first write: (B, nkv, capacity, hs) keys and values, filled
    from the front; `length` positions are valid. A step writes its T positions after them, and
    attention reads the first length + T (a view, no copy), so a new token costs one position of
    projections and attention over L cached keys, not the whole context again.
    """

    def __init__(self, num_layers: int, capacity: int) -> None:
        self.capacity = capacity
        self.length = 0  # positions written by every layer; the next step's first position
        self.keys: list[torch.Tensor | None] = [None] * num_layers
        self.values: list[torch.Tensor | None] = [None] * num_layers

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store (B, nkv, T, hs) k and v at positions length .. length + T - 1 of `layer`; return the
        layer's keys and values of positions 0 .. length + T - 1, each (B, nkv, length + T, hs)."""
        if self.keys[layer] is None:
            B, nkv, _, hs = k.shape
            self.keys[layer] = k.new_empty(B, nkv, self.capacity, hs)
            self.values[layer] = v.new_empty(B, nkv, self.capacity, hs)
        end = self.length + k.size(2)
        keys, values = self.keys[layer], self.values[layer]
        keys[:, :, self.length : end] = k
        values[:, :, self.length : end] = v
        return keys[:, :, :end], values[:, :, :end]

    def advance(self, steps: int) -> None:
        """Mark `steps` more positions valid, once every layer has written them."""
        self.length += steps


class Attention(nn.Module):
    """Grouped-query causal self-attention with RoPE (transformers' LlamaAttention; Qwen3's q/k norms)."""

    def __init__(self, arguments: dict[str, Any]) -> None:
        super().__init__()
        a = arguments
        C, nh, nkv, hs = a["hidden_size"], a["num_attention_heads"], a["num_key_value_heads"], a["head_dim"]
        self.q_proj = nn.Linear(C, nh * hs, bias=a["attention_bias"])
        self.k_proj = nn.Linear(C, nkv * hs, bias=a["attention_bias"])
        self.v_proj = nn.Linear(C, nkv * hs, bias=a["attention_bias"])
        self.o_proj = nn.Linear(nh * hs, C, bias=a["o_proj_bias"])
        self.qk_norm = a["qk_norm"]
        if self.qk_norm:  # Qwen3: one RMSNorm over each head's hs channels, shared by the heads
            self.q_norm = RMSNorm(hs, a["rms_norm_eps"])
            self.k_norm = RMSNorm(hs, a["rms_norm_eps"])
        self.num_heads, self.num_kv_heads, self.head_dim = nh, nkv, hs
        self.scale = hs**-0.5  # passed to SDPA as transformers passes it, so the same float scales
        self.attention_dropout = a["attention_dropout"]

    def forward(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cache: KVCache | None = None, layer: int = 0
    ) -> torch.Tensor:
        """(B, T, C) -> (B, T, C); with `cache`, x holds the positions after the cached ones."""
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.num_heads, self.head_dim)  # (B, T, nh, hs)
        k = self.k_proj(x).view(B, T, self.num_kv_heads, self.head_dim)  # (B, T, nkv, hs)
        v = self.v_proj(x).view(B, T, self.num_kv_heads, self.head_dim).transpose(1, 2)  # (B, nkv, T, hs)
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        q = apply_rope(q.transpose(1, 2), cos, sin)  # (B, nh, T, hs)
        k = apply_rope(k.transpose(1, 2), cos, sin)  # (B, nkv, T, hs)
        past = 0
        if cache is not None:
            past = cache.length
            k, v = cache.update(layer, k, v)  # (B, nkv, past + T, hs) each
        y = self._attend(q, k, v, past)  # (B, nh, T, hs)
        y = y.transpose(1, 2).reshape(B, T, self.num_heads * self.head_dim)  # heads side by side: (B, T, nh * hs)
        return self.o_proj(y)

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, past: int) -> torch.Tensor:
        """Scaled dot-product attention of (B, nh, T, hs) queries at positions past .. past + T - 1
        over (B, nkv, past + T, hs) keys and values -> (B, nh, T, hs).

        enable_gqa lets each group of nh / nkv query heads read its key/value head without
        copying k and v nh / nkv times (flash and math kernels support it; transformers uses it
        too when there is no mask). The causal pattern: is_causal when there is no cache (the
        fast kernels' case), nothing for a single new token (it sees every cached position), an
        explicit mask for several new tokens after cached ones (is_causal would align top-left).
        """
        T, S = q.size(2), k.size(2)
        mask, causal = None, past == 0 and T > 1
        if past > 0 and T > 1:
            rows = torch.arange(past, past + T, device=q.device)[:, None]  # (T, 1) query positions
            mask = rows >= torch.arange(S, device=q.device)[None, :]  # (T, S): key position <= query position
        return F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=mask,
            dropout_p=self.attention_dropout if self.training else 0.0,
            is_causal=causal,
            scale=self.scale,
            enable_gqa=self.num_kv_heads != self.num_heads,
        )


class MLP(nn.Module):
    """The SwiGLU feed-forward network: down(silu(gate(x)) * up(x)), C -> F -> C."""

    def __init__(self, hidden_size: int, intermediate_size: int, bias: bool) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(hidden_size, intermediate_size, bias=bias)
        self.up_proj = nn.Linear(hidden_size, intermediate_size, bias=bias)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, C) -> (B, T, C); (B, T, F) in between."""
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    """One pre-norm block: x + attn(norm(x)), then x + mlp(norm(x)) (transformers' LlamaDecoderLayer)."""

    def __init__(self, arguments: dict[str, Any]) -> None:
        super().__init__()
        a = arguments
        eps = a["rms_norm_eps"]
        self.input_layernorm = RMSNorm(a["hidden_size"], eps)
        self.self_attn = Attention(a)
        self.post_attention_layernorm = RMSNorm(a["hidden_size"], eps)
        self.mlp = MLP(a["hidden_size"], a["intermediate_size"], a["mlp_bias"])
        self.dropout = nn.Dropout(a["dropout"])  # on each residual branch, as GPT's; transformers has none

    def forward(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cache: KVCache | None = None, layer: int = 0
    ) -> torch.Tensor:
        """(B, T, C) -> (B, T, C)."""
        x = x + self.dropout(self.self_attn(self.input_layernorm(x), cos, sin, cache, layer))
        return x + self.dropout(self.mlp(self.post_attention_layernorm(x)))


@MODELS.register
class Llama(HFCompatible, nn.Module):
    """Llama / Mistral / Qwen2 / Qwen3 language model: (B, T) token ids -> (B, T, vocab_size) next-token logits.

    The constructor takes transformers' config names. num_key_value_heads None is
    num_attention_heads (plain multi-head attention); head_dim None is hidden_size /
    num_attention_heads. rope_scaling is None (plain RoPE) or {"rope_type": "linear", "factor": f}
    or {"rope_type": "llama3", "factor", "low_freq_factor", "high_freq_factor",
    "original_max_position_embeddings"}. attention_bias puts biases on q/k/v/o_proj; o_proj_bias
    None follows it (Qwen2: q/k/v biases, none on o_proj). qk_norm adds Qwen3's per-head q/k
    RMSNorm. With tie_word_embeddings, `lm_head.weight` is `model.embed_tokens.weight` (one
    Parameter, both keys in the state dict). dropout drops on each residual branch (transformers
    has none), attention_dropout the attention weights; both only in training. model_type only
    chooses the config.json `hf_config` writes.
    """

    hf_model_types = tuple(ARCHITECTURES)
    hf_architectures = ARCHITECTURES

    def __init__(
        self,
        vocab_size: int,
        hidden_size: int,
        intermediate_size: int,
        num_hidden_layers: int,
        num_attention_heads: int,
        num_key_value_heads: int | None = None,
        head_dim: int | None = None,
        max_position_embeddings: int = 2048,
        rms_norm_eps: float = 1e-6,
        rope_theta: float = DEFAULT_ROPE_THETA,
        rope_scaling: dict[str, Any] | None = None,
        attention_bias: bool = False,
        o_proj_bias: bool | None = None,
        mlp_bias: bool = False,
        qk_norm: bool = False,
        tie_word_embeddings: bool = False,
        model_type: str = "llama",
        dropout: float = 0.0,
        attention_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        a = _checked_arguments(locals())
        self.arguments = a
        self.vocab_size, self.block_size = vocab_size, max_position_embeddings
        self.n_layer, self.n_head, self.head_dim = num_hidden_layers, num_attention_heads, a["head_dim"]
        self.tied = tie_word_embeddings
        # train.activation_checkpointing sets it (trainer/activation_checkpointing.py)
        self.activation_checkpointing = False
        self.model = nn.ModuleDict(
            dict(
                embed_tokens=nn.Embedding(vocab_size, hidden_size),
                layers=nn.ModuleList(DecoderLayer(a) for _ in range(num_hidden_layers)),
                norm=RMSNorm(hidden_size, a["rms_norm_eps"]),
                rotary_emb=RotaryEmbedding(a["head_dim"], max_position_embeddings, a["rope_theta"], a["rope_scaling"]),
            )
        )
        self.lm_head = nn.Linear(hidden_size, vocab_size, bias=False)
        # DistributedDataParallel broadcasts every buffer from rank 0 before each forward; the RoPE
        # tables are the same on every rank and can be large (128 MiB for Llama 3.1): it skips these.
        self._ddp_params_and_buffers_to_ignore = [name for name, _ in self.named_buffers()]
        self.apply(self._init_weights)
        if tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight  # one Parameter, two names

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        """transformers' init for training from scratch: normal(0, 0.02) weights, zero biases, norms of ones."""
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=INIT_STD)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, RMSNorm):
            nn.init.ones_(module.weight)

    def forward(self, idx: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """(B, T) int64 token ids -> (B, T, vocab_size) logits.

        Without `cache` idx holds positions 0 .. T - 1 (T <= block_size). With one, idx holds the
        T positions after the cache's `length` ones, which it then also holds.
        """
        return self.lm_head(self._hidden(idx, cache))  # (B, T, V)

    def _hidden(self, idx: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """(B, T) token ids -> (B, T, C) final-norm hidden states; advances `cache` by T positions."""
        T = idx.size(1)
        start = 0 if cache is None else cache.length
        limit = self.block_size if cache is None else min(self.block_size, cache.capacity)
        if start + T > limit:
            raise ValueError(
                f"Llama got {start + T} positions, more than {'its cache holds' if cache else 'its block_size'} ({limit}); "
                f"crop the input to the last {limit - start} tokens or build the model with a larger max_position_embeddings"
            )
        x = self.model.embed_tokens(idx)  # (B, T, C)
        cos, sin = self.model.rotary_emb(start, T, x.dtype)  # (T, hs) each
        recompute = self.activation_checkpointing and cache is None and torch.is_grad_enabled()
        for layer, block in enumerate(self.model.layers):
            if recompute:  # keep only the block's input; its activations are recomputed in the backward
                x = checkpoint(block, x, cos, sin, None, layer, use_reentrant=False)  # (B, T, C)
            else:
                x = block(x, cos, sin, cache, layer)  # (B, T, C)
        if cache is not None:
            cache.advance(T)
        return self.model.norm(x)  # (B, T, C)

    def num_params(self, non_embedding: bool = True) -> int:
        """Parameters counted once (a tied head is the embedding); with `non_embedding`, minus an
        untied input embedding, a lookup that costs no FLOPs (a tied one is the head's matmul)."""
        total = sum(parameter.numel() for parameter in self.parameters())  # parameters() yields a tied one once
        return total - self.model.embed_tokens.weight.numel() if non_embedding and not self.tied else total

    def flops_per_token(self, seq_len: int | None = None) -> float:
        """Training FLOPs (forward + backward) per token, 6N + 12 L H Q T as GPT's (nanoGPT's estimate_mfu).

        N = num_params() (the weights every token multiplies with), L = num_hidden_layers,
        H = num_attention_heads, Q = head_dim, T = seq_len (default max_position_embeddings).
        """
        T = self.block_size if seq_len is None else seq_len
        return float(6 * self.num_params() + 12 * self.n_layer * self.n_head * self.head_dim * T)

    def check_data(self, dataset: Any, key: str = "data.train") -> None:
        """InputError when `dataset` (at config key `key`) has more tokens or longer windows than the model takes."""
        check_vocabulary(
            dataset, key, self.vocab_size, f"model: vocab_size {self.vocab_size}",
            "use the model's own tokenizer or a model with vocab_size at least {vocab}",
        )  # fmt: skip
        check_length(dataset, key, self.block_size, "the model's max_position_embeddings")

    @torch.no_grad()
    def generate(
        self,
        idx: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        generator: torch.Generator | None = None,
        use_cache: bool = True,
    ) -> Iterator[torch.Tensor]:
        """Sample `max_new_tokens` tokens after the (B, T) prompt `idx`, yielding each new (B, 1) id as it comes.

        Sampling as GPT.generate (models/sampling.py: temperature 0 is greedy, top_k, a seeded
        `generator` repeats). use_cache runs the prompt once into a KVCache sized for the whole
        sequence (at most block_size) and then one position per token; use_cache=False runs the
        whole context for every token (the reference). Past block_size tokens both crop the
        context to the last block_size, as GPT does; RoPE positions then restart at 0, so the
        cached path recomputes the window for every token too and the two stay the same.
        Call model.eval() first to switch dropout off.
        """
        check_sampling(temperature, top_k)
        capacity = min(idx.size(1) + max_new_tokens - 1, self.block_size)  # the last new token is never fed back
        cache = KVCache(self.n_layer, capacity) if use_cache and idx.size(1) <= self.block_size else None
        for _ in range(max_new_tokens):
            if cache is not None and idx.size(1) > capacity:
                cache = None  # past block_size: the window is recomputed for every token; free the cache
            if cache is not None:
                new = idx if cache.length == 0 else idx[:, -1:]  # the prompt once, then the one new token
                hidden = self._hidden(new, cache)
            else:
                hidden = self._hidden(idx[:, -self.block_size :])  # (B, <= block_size, C)
            logits = self.lm_head(hidden[:, -1, :])  # only the last position's logits: (B, V)
            next_id = sample_next(logits, temperature, top_k, generator)  # (B, 1)
            idx = torch.cat((idx, next_id), dim=1)  # (B, T + 1)
            yield next_id

    # --- Hugging Face config.json ---------------------------------------------------------------

    @classmethod
    def hf_arguments(cls, config: dict[str, Any], source: str) -> dict[str, Any]:
        """The constructor arguments a llama / mistral / qwen2 / qwen3 config.json describes (either RoPE layout).

        Keys the file leaves out take transformers' defaults for its model_type. Sliding-window
        attention (mistral, qwen2/3 with use_sliding_window), an activation other than SiLU and a
        rope_type other than default / linear / llama3 are InputErrors: Kiln does not implement them.
        """
        model_type = config.get("model_type")
        if model_type not in ARCHITECTURES:
            raise InputError(f"{source}: model_type {model_type!r} is not one of Llama's {', '.join(ARCHITECTURES)}")
        defaults = HF_DEFAULTS[model_type]
        sizes = {
            key: require(config, key, int, source)
            for key in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
        }
        optional = {key: _optional(config, key, int, default, source) for key, default in defaults.items()}
        _check_activation(config, source)
        _check_sliding_window(config, model_type, optional["max_position_embeddings"], source)
        theta, scaling = _hf_rope(config, optional["max_position_embeddings"], source)
        arguments = {
            **sizes,
            **optional,
            "rms_norm_eps": _optional(config, "rms_norm_eps", (int, float), 1e-6, source),
            "rope_theta": theta,
            "rope_scaling": scaling,
            **_hf_switches(config, model_type, source),
            "tie_word_embeddings": _optional(config, "tie_word_embeddings", bool, False, source),
            "model_type": model_type,
            "dropout": 0.0,
            "attention_dropout": _optional(config, "attention_dropout", (int, float), 0.0, source),
        }
        try:
            return _checked_arguments(arguments)
        except ValueError as error:
            raise InputError(f"{source}: config.json {error}") from None

    def hf_config(self) -> dict[str, Any]:
        """The config.json of this model for transformers (RoPE as transformers 5 writes it, `rope_parameters`);
        InputError when the switches are not ones this model_type's transformers class has."""
        a, model_type = self.arguments, self.arguments["model_type"]
        for key, required in _fixed_switches(model_type, a["attention_bias"]).items():
            if a[key] != required:
                raise InputError(
                    f"config key model: model_type {model_type} has {key} {a[key]}, but transformers' "
                    f"{ARCHITECTURES[model_type]} always has {required}; set model.{key}: {required}, or the model_type "
                    f"of a transformers class with {key} {a[key]}"
                )
        rope = {"rope_type": "default", "rope_theta": a["rope_theta"], **(a["rope_scaling"] or {})}
        config = {
            "architectures": [ARCHITECTURES[model_type]],
            "model_type": model_type,
            **{key: a[key] for key in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers")},
            **{key: a[key] for key in ("num_attention_heads", "num_key_value_heads", "head_dim", "max_position_embeddings")},
            "hidden_act": "silu",
            "rms_norm_eps": a["rms_norm_eps"],
            "rope_parameters": rope,
            "tie_word_embeddings": a["tie_word_embeddings"],
            "attention_dropout": a["attention_dropout"],
            "initializer_range": INIT_STD,
        }
        if model_type in ("llama", "qwen3"):
            config["attention_bias"] = a["attention_bias"]
        if model_type == "llama":
            config["mlp_bias"] = a["mlp_bias"]
        if model_type in ("qwen2", "qwen3"):
            config["use_sliding_window"] = False
        if model_type != "llama":
            config["sliding_window"] = None  # full attention everywhere
        return config

    def hf_import(self, name: str, tensor: torch.Tensor) -> tuple[str, torch.Tensor] | None:
        """The identity, but None for the RoPE `inv_freq` buffers old files kept (Kiln computes its tables)."""
        return None if name.endswith("rotary_emb.inv_freq") else (name, tensor)

    def hf_export(self, name: str, tensor: torch.Tensor) -> tuple[str, torch.Tensor] | None:
        """The identity, but None for a tied `lm_head.weight` (save_pretrained stores only the embedding)."""
        return None if self.tied and name == "lm_head.weight" else (name, tensor)


def _checked_arguments(given: dict[str, Any]) -> dict[str, Any]:
    """The constructor's arguments with None defaults resolved (num_key_value_heads, head_dim,
    o_proj_bias) and rope_scaling normalised; ValueError naming the first bad one and its fix."""
    a = {key: value for key, value in given.items() if key not in ("self", "__class__")}
    sizes = (
        "vocab_size",
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "max_position_embeddings",
    )
    for name in sizes:
        _positive_int(name, a[name])
    heads = a["num_attention_heads"]
    if a["num_key_value_heads"] is None:
        a["num_key_value_heads"] = heads
    _positive_int("num_key_value_heads", a["num_key_value_heads"])
    if heads % a["num_key_value_heads"] != 0:
        raise ValueError(
            f"num_attention_heads ({heads}) must be a multiple of num_key_value_heads ({a['num_key_value_heads']}); "
            "each key/value head serves an equal group of query heads"
        )
    if a["head_dim"] is None:
        if a["hidden_size"] % heads != 0:
            raise ValueError(
                f"hidden_size ({a['hidden_size']}) must be a multiple of num_attention_heads ({heads}), or set head_dim"
            )
        a["head_dim"] = a["hidden_size"] // heads
    _positive_int("head_dim", a["head_dim"])
    if a["head_dim"] % 2 != 0:
        raise ValueError(f"head_dim ({a['head_dim']}) must be even: RoPE rotates pairs of channels")
    if a["o_proj_bias"] is None:
        a["o_proj_bias"] = a["attention_bias"]
    if a["model_type"] not in ARCHITECTURES:
        raise ValueError(f"model_type {a['model_type']!r} is not one of {', '.join(ARCHITECTURES)}")
    for name in ("rms_norm_eps", "rope_theta"):
        if isinstance(a[name], bool) or not isinstance(a[name], (int, float)) or a[name] <= 0:
            raise ValueError(f"{name} must be a positive number, got {a[name]!r}")
    a["rms_norm_eps"], a["rope_theta"] = float(a["rms_norm_eps"]), float(a["rope_theta"])
    for name in ("dropout", "attention_dropout"):
        if isinstance(a[name], bool) or not isinstance(a[name], (int, float)) or not 0 <= a[name] < 1:
            raise ValueError(f"{name} must be a number in [0, 1), got {a[name]!r}")
    a["rope_scaling"] = _rope_scaling(a["rope_scaling"])
    return a


def _positive_int(name: str, value: Any) -> None:
    """ValueError unless `value` is an int >= 1."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _rope_scaling(scaling: dict[str, Any] | None) -> dict[str, Any] | None:
    """A RoPE scaling dict as {"rope_type", and that type's keys} (None for plain RoPE); ValueError for an
    unsupported rope_type or a missing key. The older key `type` is read as rope_type."""
    if scaling is None:
        return None
    if not isinstance(scaling, dict):
        raise ValueError(f"rope_scaling must be a dict with a rope_type, or null, got {scaling!r}")
    rope_type = scaling.get("rope_type", scaling.get("type", "default"))
    if rope_type not in ROPE_KEYS:
        raise ValueError(
            f"rope_type {rope_type!r} is not supported; Kiln implements {', '.join(ROPE_KEYS)} (set rope_scaling to one of them)"
        )
    if rope_type == "default":
        return None
    missing = [key for key in ROPE_KEYS[rope_type] if key not in scaling]
    if missing:
        raise ValueError(f"rope_scaling of rope_type {rope_type} has no {', '.join(missing)}; add it")
    normal: dict[str, Any] = {"rope_type": rope_type}
    for key in ROPE_KEYS[rope_type]:
        value = scaling[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            raise ValueError(f"rope_scaling {key} must be a positive number, got {value!r}")
        normal[key] = int(value) if key == "original_max_position_embeddings" else float(value)
    if rope_type == "llama3" and normal["high_freq_factor"] <= normal["low_freq_factor"]:
        raise ValueError("rope_scaling high_freq_factor must be larger than low_freq_factor (Llama 3.1: 4 and 1)")
    return normal


def _optional(config: dict[str, Any], key: str, kind: type | tuple[type, ...], default: Any, source: str) -> Any:
    """`config[key]` checked as require() does, or `default` where the key is absent or null."""
    return default if config.get(key) is None else require(config, key, kind, source)


def _check_activation(config: dict[str, Any], source: str) -> None:
    """InputError for a hidden_act other than SiLU (swish is transformers' other name for it)."""
    act = config.get("hidden_act", "silu")
    if act not in ("silu", "swish"):
        raise InputError(
            f"{source}: config.json hidden_act {act!r} is not supported; Kiln's Llama implements the SwiGLU MLP (silu) only"
        )


def _check_sliding_window(config: dict[str, Any], model_type: str, max_positions: int, source: str) -> None:
    """InputError when some layer attends through a window shorter than the context (not implemented).

    Mistral applies `sliding_window` (when not null) to every layer; Qwen2/3 only with
    use_sliding_window, to the layers layer_types marks (default: from max_window_layers on). A
    window of at least max_position_embeddings never hides a position: full attention.
    """
    window = config.get("sliding_window")
    if model_type in ("qwen2", "qwen3"):
        if not config.get("use_sliding_window", False):
            return
        layers = config.get("num_hidden_layers", 0)
        types = config.get("layer_types") or [
            "sliding_attention" if i >= config.get("max_window_layers", 28) else "full_attention" for i in range(layers)
        ]
        if "sliding_attention" not in types:
            return
    elif model_type != "mistral":
        return
    if window is not None and window < max_positions:
        raise InputError(
            f"{source}: config.json sliding_window {window} is shorter than max_position_embeddings {max_positions}, and Kiln "
            f"does not implement sliding-window attention; set sliding_window to null (or use_sliding_window false) or "
            f"max_position_embeddings to at most {window}"
        )


def _hf_rope(config: dict[str, Any], max_positions: int, source: str) -> tuple[float, dict[str, Any] | None]:
    """(rope_theta, normalised rope_scaling) from either layout, read as transformers reads it:
    `rope_scaling` (older files; rope_type or `type`) wins over `rope_parameters` (transformers 5),
    and rope_theta comes from the dict, else the top-level key, else 10000."""
    rope = config.get("rope_scaling") or config.get("rope_parameters") or {}
    if not isinstance(rope, dict) or any(isinstance(value, dict) for value in rope.values()):
        raise InputError(f"{source}: config.json RoPE parameters {rope!r} are not one flat dict; per-layer RoPE is not supported")
    rope = dict(rope)
    theta = rope.pop("rope_theta", config.get("rope_theta", DEFAULT_ROPE_THETA))
    partial = rope.get("partial_rotary_factor", config.get("partial_rotary_factor", 1.0))
    if partial != 1.0:
        raise InputError(f"{source}: config.json partial_rotary_factor {partial} is not supported; Kiln rotates whole heads")
    if rope.get("rope_type", rope.get("type")) == "llama3":
        # transformers: a top-level original_max_position_embeddings wins; else the context length
        rope["original_max_position_embeddings"] = config.get(
            "original_max_position_embeddings", rope.get("original_max_position_embeddings", max_positions)
        )
    try:
        return theta, _rope_scaling(rope)
    except ValueError as error:
        raise InputError(f"{source}: config.json {error}") from None


def _hf_switches(config: dict[str, Any], model_type: str, source: str) -> dict[str, bool]:
    """attention_bias, o_proj_bias, mlp_bias and qk_norm of a model_type: fixed by its transformers
    class, or (llama; qwen3's attention_bias) read from config.json."""
    attention_bias = _optional(config, "attention_bias", bool, False, source) if model_type in ("llama", "qwen3") else False
    mlp_bias = _optional(config, "mlp_bias", bool, False, source) if model_type == "llama" else False
    switches = {"attention_bias": attention_bias, "o_proj_bias": attention_bias, "mlp_bias": mlp_bias, "qk_norm": False}
    return {**switches, **_fixed_switches(model_type, attention_bias)}


def _fixed_switches(model_type: str, attention_bias: bool) -> dict[str, bool]:
    """The switches transformers' class of `model_type` does not let a config.json choose."""
    return {
        "llama": {"o_proj_bias": attention_bias, "qk_norm": False},
        "mistral": {"attention_bias": False, "o_proj_bias": False, "mlp_bias": False, "qk_norm": False},
        "qwen2": {"attention_bias": True, "o_proj_bias": False, "mlp_bias": False, "qk_norm": False},
        "qwen3": {"o_proj_bias": attention_bias, "mlp_bias": False, "qk_norm": True},
    }[model_type]
