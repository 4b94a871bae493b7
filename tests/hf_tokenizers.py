"""Tiny tokenizers in the Hugging Face layout, built locally with `tokenizers` + transformers (tests only).

Each `save_*` trains a small BPE on the source of a stdlib module, wraps it in transformers'
`PreTrainedTokenizerFast` with its special tokens (and chat template), writes it with
`save_pretrained(folder)` (tokenizer.json, tokenizer_config.json, chat_template.jinja) and
returns the folder. Vocabularies of a few hundred ids keep the models of the tests tiny.

- `save_byte_level_bpe`: GPT-2 style (byte-level, `<|endoftext|>` as BOS, EOS and unknown; no BOS added)
- `save_llama3_style`: byte-level with `<|begin_of_text|>`, `<|end_of_text|>`, `<|eot_id|>`,
  `<|start_header_id|>`, `<|end_header_id|>`, a post-processor that adds the BOS, a Llama 3 chat template
- `save_chatml_style`: byte-level with `<|endoftext|>`, `<|im_start|>`, `<|im_end|>` (EOS), a Qwen-like chat template
- `save_sentencepiece_style`: Llama 2 style, not byte-level (Metaspace, byte fallback, `<s>` added in front)

transformers is imported inside the functions: a test module that uses them calls
`pytest.importorskip("transformers")` first.
"""

from __future__ import annotations

import inspect
import textwrap
from pathlib import Path
from typing import Any

# A few kilobytes of ordinary English and Python, the same on every machine with this Python.
DEFAULT_TEXT = inspect.getsource(textwrap)

LLAMA3_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
CHATML_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def _byte_level_bpe(vocab_size: int, text: str, special_tokens: list[str]) -> Any:
    """A `tokenizers.Tokenizer`: byte-level BPE (GPT-2's scheme) trained on `text`; the specials get ids 0, 1, ..."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=special_tokens,
        show_progress=False,
    )
    tokenizer.train_from_iterator([text], trainer=trainer)
    return tokenizer


def _save(tokenizer: Any, folder: Path, chat_template: str | None = None, **specials: str) -> Path:
    """Wrap in PreTrainedTokenizerFast with the named specials (bos_token=...), set the chat template, save."""
    from transformers import PreTrainedTokenizerFast

    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, **specials)
    if chat_template is not None:
        fast.chat_template = chat_template
    fast.save_pretrained(folder)
    return Path(folder)


def save_byte_level_bpe(folder: Path, vocab_size: int = 300, text: str = DEFAULT_TEXT) -> Path:
    """GPT-2 style: byte-level BPE, `<|endoftext|>` (id 0) as BOS, EOS and unknown, nothing added to a text."""
    tokenizer = _byte_level_bpe(vocab_size, text, ["<|endoftext|>"])
    return _save(tokenizer, folder, bos_token="<|endoftext|>", eos_token="<|endoftext|>", unk_token="<|endoftext|>")


def save_llama3_style(
    folder: Path, vocab_size: int = 300, text: str = DEFAULT_TEXT, eos_token: str = "<|eot_id|>", chat_template: str | None = None
) -> Path:
    """Llama 3 style: byte-level BPE whose post-processor puts `<|begin_of_text|>` in front of a text,
    EOS `<|eot_id|>` (an instruct model's; pass `<|end_of_text|>` for a base model's), pad
    `<|end_of_text|>`, and a Llama 3 chat template (or `chat_template`)."""
    from tokenizers import processors

    specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>", "<|start_header_id|>", "<|end_header_id|>"]
    tokenizer = _byte_level_bpe(vocab_size, text, specials)
    bos = "<|begin_of_text|>"
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{bos}:0 $A:0", pair=f"{bos}:0 $A:0 {bos}:1 $B:1", special_tokens=[(bos, tokenizer.token_to_id(bos))]
    )
    template = LLAMA3_CHAT_TEMPLATE if chat_template is None else chat_template
    return _save(tokenizer, folder, template, bos_token=bos, eos_token=eos_token, pad_token="<|end_of_text|>")


def save_chatml_style(folder: Path, vocab_size: int = 300, text: str = DEFAULT_TEXT) -> Path:
    """Qwen style: byte-level BPE, `<|endoftext|>` (pad), `<|im_start|>`, `<|im_end|>` (EOS), no BOS, a ChatML template."""
    tokenizer = _byte_level_bpe(vocab_size, text, ["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    return _save(tokenizer, folder, CHATML_CHAT_TEMPLATE, eos_token="<|im_end|>", pad_token="<|endoftext|>")


def save_sentencepiece_style(folder: Path, vocab_size: int = 300, text: str = DEFAULT_TEXT) -> Path:
    """Llama 2 style, not byte-level: `▁` marks a word start (Metaspace), a character outside the
    vocabulary falls back to its `<0xNN>` byte tokens, `<unk>` `<s>` `</s>` are ids 0-2, the 256 byte
    tokens 3-258 (all in the model's vocabulary, as in Llama 2's tokenizer.json), and `<s>` goes in front."""
    import json

    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    def metaspace(tokenizer: Any) -> Any:
        tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
        return tokenizer

    learner = metaspace(Tokenizer(models.BPE()))
    learner.train_from_iterator([text], trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False))
    learned = json.loads(learner.to_str())["model"]
    pieces = ["<unk>", "<s>", "</s>", *(f"<0x{byte:02X}>" for byte in range(256))]
    pieces += sorted(learned["vocab"], key=learned["vocab"].get)
    merges = [tuple(pair) if isinstance(pair, list) else tuple(pair.split(" ")) for pair in learned["merges"]]
    model = models.BPE({piece: index for index, piece in enumerate(pieces)}, merges, unk_token="<unk>", byte_fallback=True)
    tokenizer = metaspace(Tokenizer(model))
    tokenizer.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    tokenizer.add_special_tokens([AddedToken(token, special=True, normalized=False) for token in ("<unk>", "<s>", "</s>")])
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s>:0 $A:0", pair="<s>:0 $A:0 <s>:1 $B:1", special_tokens=[("<s>", 1)]
    )
    return _save(tokenizer, folder, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
