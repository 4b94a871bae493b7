"""A decoder-only transformer language model, written to read like nanoGPT's model.py.

Learned token and position embeddings, pre-norm blocks (LayerNorm, causal self-attention, a
GELU MLP 4x as wide by default), a final LayerNorm and a language-model head tied to the token
embedding. Attention goes through torch's scaled_dot_product_attention, so flash or
memory-efficient kernels run where the device has them. Module names follow nanoGPT and GPT-2
(`transformer.wte`, `transformer.h.0.attn.c_attn`, `lm_head`, ...), so nanoGPT checkpoints
load as they are and GPT-2 checkpoints in the Hugging Face layout load through `hf_import`
(GPT-2 stores its projections as Conv1D weights, (in, out): they are transposed). With
`bias: true, activation: gelu_tanh` the model is GPT-2 (`model_type: gpt2`), numerically.

Generation keeps a KV cache (`KVCache`): the prompt runs once and each new token costs one
position, until the sequence passes block_size (see `GPT.generate`).

Shapes: B batch, T sequence length (<= block_size), C = n_embd, nh = n_head, hs = C / nh,
V = vocab_size, F = the MLP's width (n_inner, default 4C), P = positions already in the cache.
"""

from __future__ import annotations

import json
import math
import re
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

ACTIVATIONS = ("gelu", "gelu_tanh")  # exact erf GELU; the tanh approximation (GPT-2's gelu_new)


class KVCache:
    """Keys and values of the positions a GPT has processed, one pair of buffers per layer, so
    that generation feeds each new token alone instead of the whole sequence again.

    Each layer's buffers are (B, nh, capacity, hs), allocated at its first `append` with the
    device and dtype of the keys it gets (so autocast's dtype is kept); the first `length`
    positions are filled. GPT.forward advances `length` once every layer has appended.
    """

    def __init__(self, n_layer: int, capacity: int) -> None:
        self.capacity = capacity  # the model's block_size: positions are learned, the cache cannot slide
        self.length = 0  # P: positions held by every layer
        self.keys: list[torch.Tensor | None] = [None] * n_layer
        self.values: list[torch.Tensor | None] = [None] * n_layer

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store layer `layer`'s (B, nh, T, hs) keys and values after the P held; return all P + T of each."""
        B, nh, T, hs = k.shape
        end = self.length + T
        if self.keys[layer] is None:
            self.keys[layer] = k.new_empty(B, nh, self.capacity, hs)  # (B, nh, capacity, hs)
            self.values[layer] = v.new_empty(B, nh, self.capacity, hs)
        keys, values = self.keys[layer], self.values[layer]
        keys[:, :, self.length : end] = k
        values[:, :, self.length : end] = v
        return keys[:, :, :end], values[:, :, :end]  # 2 x (B, nh, P + T, hs)


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention in which position t attends only to positions <= t."""

    def __init__(self, n_embd: int, n_head: int, dropout: float, bias: bool) -> None:
        super().__init__()
        self.c_attn = nn.Linear(n_embd, 3 * n_embd, bias=bias)  # q, k, v for all heads in one matmul
        self.c_proj = nn.Linear(n_embd, n_embd, bias=bias)  # a residual projection: scaled init (GPT._init_weights)
        self.resid_dropout = nn.Dropout(dropout)
        self.n_head = n_head
        self.dropout = dropout

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0) -> torch.Tensor:
        """(B, T, C) -> (B, T, C); with a `cache`, x are the T positions after the P it holds for `layer`."""
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)  # 3 x (B, T, C)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        past = 0
        if cache is not None:
            past = cache.length
            k, v = cache.append(layer, k, v)  # 2 x (B, nh, P + T, hs)
        y = self._attend(q, k, v, past)  # (B, nh, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # re-assemble the heads side by side: (B, T, C)
        return self.resid_dropout(self.c_proj(y))

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, past: int) -> torch.Tensor:
        """Causal attention of (B, nh, T, hs) queries at positions P..P+T-1 over (B, nh, P + T, hs) keys and values."""
        dropout = self.dropout if self.training else 0.0
        T = q.size(2)
        if past == 0:  # training, and a cache's first call: is_causal's top-left aligned mask is the causal one
            return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=True)
        if T == 1:  # one new token sees every position held: no mask
            return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout)
        # several new tokens after P held: query i sees keys 0..P+i (is_causal would align the mask to key 0)
        mask = torch.ones(T, past + T, dtype=torch.bool, device=q.device).tril(diagonal=past)  # (T, P + T)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)


class MLP(nn.Module):
    """The position-wise feed-forward network: C -> F -> GELU -> C (F = 4C unless n_inner says otherwise)."""

    def __init__(self, n_embd: int, n_inner: int, dropout: float, bias: bool, activation: str = "gelu") -> None:
        super().__init__()
        self.c_fc = nn.Linear(n_embd, n_inner, bias=bias)
        self.gelu = nn.GELU(approximate="tanh" if activation == "gelu_tanh" else "none")
        self.c_proj = nn.Linear(n_inner, n_embd, bias=bias)  # a residual projection: scaled init
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, C) -> (B, T, C)."""
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))  # (B, T, F) in between


class Block(nn.Module):
    """One pre-norm transformer block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(
        self,
        n_embd: int,
        n_head: int,
        dropout: float,
        bias: bool,
        activation: str = "gelu",
        layer_norm_epsilon: float = 1e-5,
        n_inner: int | None = None,
    ) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(n_embd, eps=layer_norm_epsilon, bias=bias)
        self.attn = CausalSelfAttention(n_embd, n_head, dropout, bias)
        self.ln_2 = nn.LayerNorm(n_embd, eps=layer_norm_epsilon, bias=bias)
        self.mlp = MLP(n_embd, n_inner or 4 * n_embd, dropout, bias, activation)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0) -> torch.Tensor:
        """(B, T, C) -> (B, T, C); `cache` and `layer` as CausalSelfAttention.forward takes them."""
        x = x + self.attn(self.ln_1(x), cache, layer)
        return x + self.mlp(self.ln_2(x))


# GPT-2's Conv1D layers store their weights as (in, out), nn.Linear as (out, in): these are transposed.
_CONV1D_WEIGHT = re.compile(r"transformer\.h\.\d+\.(attn\.c_attn|attn\.c_proj|mlp\.c_fc|mlp\.c_proj)\.weight")
# The causal mask buffers old GPT-2 files kept (`attn.bias`, `attn.masked_bias`); not `attn.c_attn.bias`, a weight.
_MASK_BUFFER = re.compile(r"transformer\.h\.\d+\.attn\.(bias|masked_bias)")
# GPT-2's activation_function values -> GPT's activation: gelu_new and gelu_pytorch_tanh are both the tanh approximation.
_HF_ACTIVATIONS = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu"}
# GPT-2 options GPT does not implement: (key, the only value GPT implements, what another value would ask for).
_HF_FIXED = (
    ("scale_attn_weights", True, "attention scores left unscaled by 1/sqrt(head size)"),
    ("scale_attn_by_inverse_layer_idx", False, "attention scores scaled by 1/(layer index + 1)"),
    ("reorder_and_upcast_attn", False, "attention computed with keys scaled first and upcast to float32"),
    ("add_cross_attention", False, "cross-attention layers to an encoder"),
    ("tie_word_embeddings", True, "an lm_head separate from the token embedding, which GPT always ties to it"),
)


@MODELS.register
class GPT(HFCompatible, nn.Module):
    """GPT-2-style language model: (B, T) token ids -> (B, T, vocab_size) next-token logits.

    `lm_head.weight` is `transformer.wte.weight` (one Parameter, Press & Wolf 2017): both keys
    appear in the state dict and loading either restores both. `activation` is `gelu` (exact,
    erf) or `gelu_tanh` (the tanh approximation, GPT-2's `gelu_new`); `n_inner` is the MLP's
    width (None: 4 * n_embd, which `arguments` also records as None). GPT-2 is
    `bias=True, activation="gelu_tanh"`.
    """

    hf_model_types = ("gpt2",)
    hf_architectures = {"gpt2": "GPT2LMHeadModel"}

    def __init__(
        self,
        vocab_size: int,
        block_size: int,
        n_layer: int,
        n_head: int,
        n_embd: int,
        dropout: float = 0.0,
        bias: bool = False,
        activation: str = "gelu",
        layer_norm_epsilon: float = 1e-5,
        n_inner: int | None = None,
    ) -> None:
        super().__init__()
        sizes = {"vocab_size": vocab_size, "block_size": block_size, "n_layer": n_layer, "n_head": n_head, "n_embd": n_embd}
        _check_arguments(sizes, activation, layer_norm_epsilon, n_inner)
        if n_embd % n_head != 0:
            raise ValueError(f"n_embd ({n_embd}) must be a multiple of n_head ({n_head}); each head gets n_embd / n_head")
        n_inner = None if n_inner == 4 * n_embd else n_inner  # the default width, spelt either way, is one model
        self.arguments = {
            **sizes,
            "dropout": dropout,
            "bias": bias,
            "activation": activation,
            "layer_norm_epsilon": layer_norm_epsilon,
            "n_inner": n_inner,
        }
        self.vocab_size, self.block_size = vocab_size, block_size
        # train.activation_checkpointing sets it (trainer/activation_checkpointing.py)
        self.activation_checkpointing = False
        self.n_layer, self.n_head, self.n_embd = n_layer, n_head, n_embd
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(vocab_size, n_embd),  # token embedding
                wpe=nn.Embedding(block_size, n_embd),  # learned position embedding
                drop=nn.Dropout(dropout),
                h=nn.ModuleList(
                    Block(n_embd, n_head, dropout, bias, activation, layer_norm_epsilon, n_inner) for _ in range(n_layer)
                ),
                ln_f=nn.LayerNorm(n_embd, eps=layer_norm_epsilon, bias=bias),
            )
        )
        self.lm_head = nn.Linear(n_embd, vocab_size, bias=False)
        self.lm_head.weight = self.transformer.wte.weight  # weight tying: one Parameter, two names
        self.apply(self._init_weights)
        # GPT-2 scales the init of each residual projection by 1/sqrt(2 * n_layer): every block adds
        # two of them to the residual stream, whose variance would otherwise grow with depth.
        for name, parameter in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(parameter, mean=0.0, std=0.02 / math.sqrt(2 * n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        """GPT-2 initialisation: normal(0, 0.02) weights, zero biases (LayerNorm keeps 1 / 0)."""
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def forward(self, idx: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """(B, T) int64 token ids -> (B, T, vocab_size) logits; T must be <= block_size.

        With a `cache` (generation), idx are the T tokens after the P the cache holds: they take
        positions P..P+T-1, attend to the cached keys and values, and are appended to them.
        """
        B, T = idx.shape
        start = 0 if cache is None else cache.length
        if start + T > self.block_size:
            if cache is None:
                raise ValueError(
                    f"GPT got a sequence of {T} tokens, longer than its block_size {self.block_size}; "
                    f"crop the input to the last {self.block_size} tokens or build the model with a larger block_size"
                )
            raise ValueError(
                f"GPT got {T} tokens after the {start} its KV cache holds, more than its block_size {self.block_size} "
                "positions; recompute the cropped context without the cache"
            )
        pos = torch.arange(start, start + T, dtype=torch.long, device=idx.device)  # (T,)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))  # (B, T, C) + (T, C)
        recompute = self.activation_checkpointing and cache is None and torch.is_grad_enabled()
        for layer, block in enumerate(self.transformer.h):
            if recompute:  # keep only the block's input; its activations are recomputed in the backward
                x = checkpoint(block, x, None, layer, use_reentrant=False)  # (B, T, C)
            else:
                x = block(x, cache, layer)  # (B, T, C)
        if cache is not None:
            cache.length += T  # every layer has appended its T keys and values
        x = self.transformer.ln_f(x)  # (B, T, C)
        return self.lm_head(x)  # (B, T, V)

    def num_params(self, non_embedding: bool = True) -> int:
        """Parameters counted once (the tied head is the token embedding); minus wpe when `non_embedding`."""
        total = sum(parameter.numel() for parameter in self.parameters())  # parameters() yields a tied one once
        return total - self.transformer.wpe.weight.numel() if non_embedding else total

    def flops_per_token(self, seq_len: int | None = None) -> float:
        """Training FLOPs (forward + backward) per token: nanoGPT's estimate_mfu, 6N + 12 L H Q T.

        N = num_params() (nanoGPT's get_num_params: all parameters except the position
        embedding; the tied head counts once), L = n_layer, H = n_head, Q = n_embd / n_head,
        T = seq_len (default block_size). 6N covers the weight matmuls (2 forward, 4 backward
        per parameter), 12LHQT the attention scores and their weighting (PaLM, appendix B).
        Multiply by tokens per second and divide by the device's peak FLOP/s for MFU.
        """
        T = self.block_size if seq_len is None else seq_len
        return float(6 * self.num_params() + 12 * self.n_layer * self.n_head * (self.n_embd // self.n_head) * T)

    def check_data(self, dataset: Any, key: str = "data.train") -> None:
        """InputError when `dataset` (at config key `key`) has more tokens or longer windows than the model takes."""
        check_vocabulary(
            dataset, key, self.vocab_size, f"model.vocab_size: {self.vocab_size}", "set model.vocab_size to at least {vocab}"
        )
        check_length(dataset, key, self.block_size, "model.block_size", " or model.block_size to at least {length}")

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

        The context is cropped to the last block_size tokens. temperature 0 is greedy (argmax);
        otherwise models.sampling.sample_next draws from `generator` (on the model's device), so
        a seeded generator gives the same text every time. Call model.eval() first to switch
        dropout off.

        use_cache (default): the prompt runs once into a KVCache and each new token costs one
        position. Positions are learned absolute embeddings, so once the sequence passes
        block_size the cache cannot slide: from then on every token recomputes the cropped
        context, as use_cache=False does from the start (the reference; same tokens).
        """
        check_sampling(temperature, top_k)
        cache = KVCache(self.n_layer, self.block_size) if use_cache else None
        for _ in range(max_new_tokens):
            logits, cache = self._next_logits(idx, cache)  # (B, V)
            next_id = sample_next(logits, temperature, top_k, generator)  # (B, 1)
            idx = torch.cat((idx, next_id), dim=1)  # (B, T + 1)
            yield next_id

    def _next_logits(self, idx: torch.Tensor, cache: KVCache | None) -> tuple[torch.Tensor, KVCache | None]:
        """(B, V) logits of the token after (B, T) `idx`, and the cache for the next token (None from then on: no cache)."""
        if cache is None or idx.size(1) > self.block_size:  # no cache, or past block_size: the cropped context
            return self(idx[:, -self.block_size :])[:, -1, :], None
        return self(idx[:, cache.length :], cache)[:, -1, :], cache  # only the tokens the cache has not seen

    # --- the Hugging Face layout (GPT-2) ---

    @classmethod
    def hf_arguments(cls, config: dict[str, Any], source: str) -> dict[str, Any]:
        """GPT's constructor arguments for a GPT-2 config.json; InputError naming a key GPT does not implement."""
        if config.get("model_type", "gpt2") not in cls.hf_model_types:
            raise InputError(f"{source}: config.json model_type is {config['model_type']!r}; GPT implements gpt2")
        for key, value, meaning in _HF_FIXED:
            if config.get(key, value) != value:
                raise InputError(
                    f"{source}: config.json {key} is {json.dumps(config[key])} ({meaning}), which Kiln's GPT does not "
                    f"implement; only GPT-2 models with {key}: {json.dumps(value)} load"
                )
        n_embd = require(config, "n_embd", int, source)
        n_inner = config.get("n_inner")
        if n_inner is not None and (not isinstance(n_inner, int) or isinstance(n_inner, bool)):
            raise InputError(f"{source}: config.json n_inner is {n_inner!r}, not an int or null (4 * n_embd)")
        return {
            "vocab_size": require(config, "vocab_size", int, source),
            "block_size": require(config, "n_positions", int, source),
            "n_layer": require(config, "n_layer", int, source),
            "n_head": require(config, "n_head", int, source),
            "n_embd": n_embd,
            "dropout": float(_optional(config, "resid_pdrop", (int, float), 0.1, source)),
            "bias": True,
            "activation": _hf_activation(config, source),
            "layer_norm_epsilon": float(_optional(config, "layer_norm_epsilon", (int, float), 1e-5, source)),
            "n_inner": None if n_inner == 4 * n_embd else n_inner,
        }

    def hf_config(self) -> dict[str, Any]:
        """The GPT-2 config.json (GPT2LMHeadModel) of this model; InputError for bias: false, which GPT-2 lacks."""
        arguments = self.arguments
        if not arguments["bias"]:
            raise InputError(
                "model GPT with bias: false has no GPT-2 equivalent (GPT-2 has a bias in every linear layer and "
                "LayerNorm); export to the Hugging Face layout needs a model trained with bias: true"
            )
        dropout = arguments["dropout"]
        return {
            "architectures": [self.hf_architectures["gpt2"]],
            "model_type": "gpt2",
            "vocab_size": arguments["vocab_size"],
            "n_positions": arguments["block_size"],
            "n_embd": arguments["n_embd"],
            "n_layer": arguments["n_layer"],
            "n_head": arguments["n_head"],
            "n_inner": arguments["n_inner"],
            "activation_function": "gelu_new" if arguments["activation"] == "gelu_tanh" else "gelu",
            "layer_norm_epsilon": arguments["layer_norm_epsilon"],
            "resid_pdrop": dropout,
            "embd_pdrop": dropout,
            "attn_pdrop": dropout,
            **{key: value for key, value, _ in _HF_FIXED},
        }

    def hf_import(self, name: str, tensor: torch.Tensor) -> tuple[str, torch.Tensor] | None:
        """GPT-2's tensor -> GPT's: Conv1D weights transposed, the mask buffers of old files dropped (None).

        Files saved from a bare GPT2Model (the original `gpt2` upload) name tensors without the
        `transformer.` prefix; it is added.
        """
        if not name.startswith(("transformer.", "lm_head.")):
            name = f"transformer.{name}"
        if _MASK_BUFFER.fullmatch(name):
            return None
        if _CONV1D_WEIGHT.fullmatch(name):
            return name, tensor.t().contiguous()  # (in, out) -> (out, in)
        return name, tensor

    def hf_export(self, name: str, tensor: torch.Tensor) -> tuple[str, torch.Tensor] | None:
        """GPT's state-dict entry -> GPT-2's: Conv1D weights transposed back; the tied lm_head left out (None)."""
        if name == "lm_head.weight":
            return None  # save_pretrained stores the tied head once, as transformer.wte.weight
        if _CONV1D_WEIGHT.fullmatch(name):
            return name, tensor.t().contiguous()  # (out, in) -> (in, out); safetensors needs contiguous tensors
        return name, tensor


def _check_arguments(sizes: dict[str, Any], activation: str, layer_norm_epsilon: float, n_inner: int | None) -> None:
    """ValueError naming the first of GPT's arguments that is out of range."""
    for name, value in {**sizes, "n_inner": 1 if n_inner is None else n_inner}.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if activation not in ACTIVATIONS:
        raise ValueError(
            f"activation must be 'gelu' (exact) or 'gelu_tanh' (the tanh approximation, GPT-2's), got {activation!r}"
        )
    if isinstance(layer_norm_epsilon, bool) or not isinstance(layer_norm_epsilon, int | float) or layer_norm_epsilon <= 0:
        raise ValueError(f"layer_norm_epsilon must be a positive number, got {layer_norm_epsilon!r}")


def _optional(config: dict[str, Any], key: str, kind: type | tuple[type, ...], default: Any, source: str) -> Any:
    """`config[key]` checked to be of `kind`, or `default` when config.json leaves the key out (GPT2Config's default)."""
    return require(config, key, kind, source) if key in config else default


def _hf_activation(config: dict[str, Any], source: str) -> str:
    """GPT's activation for config.json's activation_function (GPT2Config's default: gelu_new)."""
    name = config.get("activation_function", "gelu_new")
    if name not in _HF_ACTIVATIONS:
        raise InputError(
            f"{source}: config.json activation_function is {name!r}, which Kiln's GPT does not implement; "
            f"only GPT-2 models with activation_function {', '.join(_HF_ACTIVATIONS)} load"
        )
    return _HF_ACTIVATIONS[name]
