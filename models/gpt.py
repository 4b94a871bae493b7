"""A decoder-only transformer language model, written to read like nanoGPT's model.py.

Learned token and position embeddings, pre-norm blocks (LayerNorm, causal self-attention, a
4x GELU MLP), a final LayerNorm and a language-model head tied to the token embedding.
Attention goes through torch's scaled_dot_product_attention, so flash or memory-efficient
kernels run where the device has them. Module names follow nanoGPT (`transformer.wte`,
`transformer.h.0.attn.c_attn`, `lm_head`, ...), so nanoGPT checkpoints load as they are.

Shapes: B batch, T sequence length (<= block_size), C = n_embd, nh = n_head, hs = C / nh,
V = vocab_size.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from trainer.errors import InputError
from trainer.registry import MODELS


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention in which position t attends only to positions <= t."""

    def __init__(self, n_embd: int, n_head: int, dropout: float, bias: bool) -> None:
        super().__init__()
        self.c_attn = nn.Linear(n_embd, 3 * n_embd, bias=bias)  # q, k, v for all heads in one matmul
        self.c_proj = nn.Linear(n_embd, n_embd, bias=bias)  # a residual projection: scaled init (GPT._init_weights)
        self.resid_dropout = nn.Dropout(dropout)
        self.n_head = n_head
        self.dropout = dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, C) -> (B, T, C)."""
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)  # 3 x (B, T, C)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        y = F.scaled_dot_product_attention(
            q, k, v, dropout_p=self.dropout if self.training else 0.0, is_causal=True
        )  # (B, nh, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # re-assemble the heads side by side: (B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    """The position-wise feed-forward network: C -> 4C -> GELU -> C."""

    def __init__(self, n_embd: int, dropout: float, bias: bool) -> None:
        super().__init__()
        self.c_fc = nn.Linear(n_embd, 4 * n_embd, bias=bias)
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(4 * n_embd, n_embd, bias=bias)  # a residual projection: scaled init
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, C) -> (B, T, C)."""
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))  # (B, T, 4C) in between


class Block(nn.Module):
    """One pre-norm transformer block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, n_embd: int, n_head: int, dropout: float, bias: bool) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(n_embd, bias=bias)
        self.attn = CausalSelfAttention(n_embd, n_head, dropout, bias)
        self.ln_2 = nn.LayerNorm(n_embd, bias=bias)
        self.mlp = MLP(n_embd, dropout, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, C) -> (B, T, C)."""
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


@MODELS.register
class GPT(nn.Module):
    """GPT-2-style language model: (B, T) token ids -> (B, T, vocab_size) next-token logits.

    `lm_head.weight` is `transformer.wte.weight` (one Parameter, Press & Wolf 2017): both keys
    appear in the state dict and loading either restores both.
    """

    def __init__(
        self, vocab_size: int, block_size: int, n_layer: int, n_head: int, n_embd: int, dropout: float = 0.0, bias: bool = False
    ) -> None:
        super().__init__()
        sizes = {"vocab_size": vocab_size, "block_size": block_size, "n_layer": n_layer, "n_head": n_head, "n_embd": n_embd}
        for name, value in sizes.items():
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if n_embd % n_head != 0:
            raise ValueError(f"n_embd ({n_embd}) must be a multiple of n_head ({n_head}); each head gets n_embd / n_head")
        self.vocab_size, self.block_size = vocab_size, block_size
        self.n_layer, self.n_head, self.n_embd = n_layer, n_head, n_embd
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(vocab_size, n_embd),  # token embedding
                wpe=nn.Embedding(block_size, n_embd),  # learned position embedding
                drop=nn.Dropout(dropout),
                h=nn.ModuleList(Block(n_embd, n_head, dropout, bias) for _ in range(n_layer)),
                ln_f=nn.LayerNorm(n_embd, bias=bias),
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

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """(B, T) int64 token ids -> (B, T, vocab_size) logits; T must be <= block_size."""
        B, T = idx.shape
        if T > self.block_size:
            raise ValueError(
                f"GPT got a sequence of {T} tokens, longer than its block_size {self.block_size}; "
                f"crop the input to the last {self.block_size} tokens or build the model with a larger block_size"
            )
        pos = torch.arange(T, dtype=torch.long, device=idx.device)  # (T,)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))  # (B, T, C) + (T, C)
        for block in self.transformer.h:
            x = block(x)  # (B, T, C)
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
        vocab = getattr(dataset, "vocab_size", None)
        if vocab is not None and vocab > self.vocab_size:
            raise InputError(
                f"config key model.vocab_size: {self.vocab_size} is smaller than the tokenizer's {vocab} tokens of {key}; "
                f"set model.vocab_size to at least {vocab}"
            )
        block = getattr(dataset, "block_size", None)
        if block is not None and block > self.block_size:
            raise InputError(
                f"config key {key}.block_size: {block} is larger than model.block_size {self.block_size}, the longest "
                f"sequence the model has positions for; set {key}.block_size to at most {self.block_size} "
                f"or model.block_size to at least {block}"
            )

    @torch.no_grad()
    def generate(
        self,
        idx: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        generator: torch.Generator | None = None,
    ) -> Iterator[torch.Tensor]:
        """Sample `max_new_tokens` tokens after the (B, T) prompt `idx`, yielding each new (B, 1) id as it comes.

        The context is cropped to the last block_size tokens. temperature 0 is greedy (argmax);
        otherwise logits / temperature, restricted to the top_k most likely when given, are
        sampled with torch.multinomial from `generator` (on the model's device), so a seeded
        generator gives the same text every time. Call model.eval() first to switch dropout off.
        """
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature}")
        if top_k is not None and top_k < 1:
            raise ValueError(f"top_k must be a positive integer or None, got {top_k}")
        for _ in range(max_new_tokens):
            context = idx[:, -self.block_size :]  # (B, <= block_size)
            logits = self(context)[:, -1, :]  # the last position's logits: (B, V)
            if temperature == 0:
                next_id = logits.argmax(dim=-1, keepdim=True)  # (B, 1)
            else:
                logits = logits / temperature
                if top_k is not None:
                    kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, [-1]]  # (B, 1)
                    logits = logits.masked_fill(logits < kth, float("-inf"))
                probs = F.softmax(logits, dim=-1)  # (B, V)
                next_id = torch.multinomial(probs, num_samples=1, generator=generator)  # (B, 1)
            idx = torch.cat((idx, next_id), dim=1)  # (B, T + 1)
            yield next_id
