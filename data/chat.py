"""ChatJSONL: conversations for supervised fine-tuning, rendered with the tokenizer's chat template.

Input. `path` is a `.jsonl` file or a list of them (relative paths start from the working
directory; a file named twice is read once). Each non-blank line is one JSON object
`{"messages": [{"role": "system" | "user" | "assistant", "content": "..."}, ...]}`, the format
transformers, TRL and OpenAI use; other keys of the line are ignored, other keys of a message are
passed to the template as they are (a None value dropped, as transformers does). A line that is
not such an object, an unknown role, a missing role or content, an empty or missing file: a
CorpusError (exit 2) naming the file and line, before anything trains; nothing is written.

Tokens. `tokenizer: {type: hf, path: DIR}`; its `chat_template` renders each conversation as
`transformers.AutoTokenizer.apply_chat_template(messages, tokenize=True)` does, the same ids
(data/chat_template.py). A tokenizer without a chat template is exit 2 naming the fix.

Loss. `loss_on: assistant` (default) trains the tokens of every assistant turn: the reply and the
end-of-turn token the template writes after it (`<|eot_id|>`, `<|im_end|>`), never the role
headers, the system or user turns, or the newline ChatML writes after `<|im_end|>`. `loss_on:
all` trains every token. Items are `(inputs, targets)`, int64 of length `max_length`: the ids and
the next ids, with every target outside the trained tokens, and every padded one, set to -100.

Examples never see each other: each conversation is its own row, right-padded to `max_length`
(pad id: the tokenizer's pad, else its EOS, else 0); causal attention keeps a real token from
seeing the padding after it, and padded targets are -100. The mask is by position, so a pad id
equal to the EOS id never hides a real EOS. Rows have one length (max_length), so shapes stay
fixed (a compiled model does not recompile) and the first step shows the peak memory.

Skipped, counted in the log (`notes`), never cut: a conversation longer than `max_length` + 1
tokens (the last token is only a target; cutting would drop the end of an answer and its
end-of-turn token), one with nothing to train (no assistant turn under loss_on: assistant), and
one whose assistant turn the tokenizer merges with the text around it (no clean boundary). Exit 2
before training: no conversation left to train; every token trained under loss_on: assistant (the
template writes no headers, so the mask could not tell the assistant from the rest); an assistant
turn ending with no end-of-turn token inside it (the model would never learn to stop); a template
that renders a turn differently depending on what follows (nothing to diff).

Identity. `identity()`: the files (sha256 of their bytes in order, count, bytes), the tokenizer
(type hf, vocab_size, fingerprint), the chat template's sha256, max_length and loss_on; the
Trainer records it in every checkpoint (trainer/guards/data_identity.py).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import Dataset

from data.chat_template import ROLES, ChatTemplate, TokenBoundary
from data.hf_tokenizer import HFTokenizer
from data.text_tokenizers import CorpusError, parse_tokenizer_spec
from trainer.errors import first_line
from trainer.registry import DATASETS

IGNORE_INDEX = -100  # an untrained target (torch's cross_entropy default, TokenCrossEntropy's ignore_index)
LOSS_ON = ("assistant", "all")
FORMAT = (
    'write one JSON object a line: {"messages": [{"role": "user", "content": "..."}, {"role": "assistant", "content": "..."}]}'
)
_SKIP_REASONS = {
    "empty": "with no token to train (no assistant turn under loss_on: assistant)",
    "long": "longer than max_length + 1 tokens (raise max_length to keep them; they are never cut)",
    "boundary": (
        "whose assistant turn the tokenizer merges with the text around it (no clean first or last token, e.g. a reply "
        "starting with spaces)"
    ),
}


@dataclass
class _Examples:
    """The kept conversations' ids and labels (one array each), and where conversations were skipped, by reason."""

    tokens: list[np.ndarray] = field(default_factory=list)
    labels: list[np.ndarray] = field(default_factory=list)
    skipped: dict[str, list[str]] = field(default_factory=lambda: {reason: [] for reason in _SKIP_REASONS})
    read: int = 0
    trained: int = 0  # targets trained, over the kept conversations
    untrained: int = 0  # real (not padding) targets not trained

    def add(self, ids: list[int], trained: list[bool]) -> None:
        """Keep one conversation: its ids and labels (the id where trained, IGNORE_INDEX elsewhere)."""
        tokens = np.asarray(ids, dtype=np.int32)  # half of int64's memory; a batch is widened to int64
        self.tokens.append(tokens)
        self.labels.append(np.where(np.asarray(trained, dtype=bool), tokens, IGNORE_INDEX).astype(np.int32))
        targets = sum(trained[1:])  # the first token is never a target
        self.trained += targets
        self.untrained += len(ids) - 1 - targets


@DATASETS.register
class ChatJSONL(Dataset):
    """(inputs, targets) rows of `max_length` token ids, one conversation each (see the module docstring).

    Attributes: tokenizer (the HFTokenizer), vocab_size, max_length, tokens_per_sample, loss_on,
    pad_id, files, conversations (lines read), trained_tokens (targets trained, over all rows),
    notes (what the run's log says: conversations skipped), token_bytes; `identity()`.
    """

    def __init__(
        self,
        path: str | list[str],
        tokenizer: dict[str, Any],
        max_length: int,
        loss_on: Literal["assistant", "all"] = "assistant",
    ) -> None:
        _check_arguments(max_length, loss_on)
        self.files = _files(path)
        self.tokenizer = _hf_tokenizer(tokenizer)
        chat = ChatTemplate(self.tokenizer)  # no template: exit 2 before the files are read
        self.max_length, self.tokens_per_sample, self.loss_on = max_length, max_length, loss_on
        self.vocab_size = self.tokenizer.vocab_size
        self.pad_id = next((i for i in (self.tokenizer.pad_id, self.tokenizer.eos_id) if i is not None), 0)
        digest, size = hashlib.sha256(), 0
        examples = _Examples()
        for file in self.files:
            size += _read_file(file, digest, lambda messages, where: _add(examples, chat, messages, where, max_length, loss_on))
        _check_examples(examples, loss_on, self.files)
        self.conversations, self.trained_tokens = examples.read, examples.trained
        self._tokens, self._labels, self._offsets = _flatten(examples)
        self.notes = _notes(examples)
        self._identity = {
            "corpus": {"sha256": digest.hexdigest(), "files": len(self.files), "bytes": size},
            "tokenizer": {"type": "hf", "vocab_size": self.vocab_size, "sha256": self.tokenizer.fingerprint()},
            "chat_template": hashlib.sha256(chat.source.encode("utf-8")).hexdigest(),
            "max_length": max_length,
            "loss_on": loss_on,
        }

    def identity(self) -> dict[str, Any]:
        """What this dataset is (module docstring); plain values, so a checkpoint records it as it is."""
        return {key: dict(value) if isinstance(value, dict) else value for key, value in self._identity.items()}

    @property
    def token_bytes(self) -> torch.Tensor:
        """(vocab_size,) int64 UTF-8 byte length of each token (for the bpb metric), computed when first asked."""
        return self.tokenizer.token_bytes()

    def __len__(self) -> int:
        """Number of conversations kept (one row each)."""
        return len(self._offsets) - 1

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Row `index`: ((max_length,) inputs, (max_length,) targets), int64."""
        if not -len(self) <= index < len(self):
            raise IndexError(f"conversation {index} is out of range for {len(self)} conversations")
        inputs, targets = self.get_batch(torch.tensor([index % len(self)]), lambda: torch.zeros(1, dtype=torch.int64))
        return inputs[0], targets[0]

    def get_batch(self, indices: torch.Tensor, seeds: Callable[[], torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows `indices` ((B,) int64): ((B, max_length) inputs, (B, max_length) targets), right-padded."""
        rows = indices.tolist()
        inputs = np.full((len(rows), self.max_length), self.pad_id, dtype=np.int64)
        targets = np.full((len(rows), self.max_length), IGNORE_INDEX, dtype=np.int64)
        for row, index in enumerate(rows):
            start, end = self._offsets[index], self._offsets[index + 1]
            n = end - start - 1  # the last token is only a target
            inputs[row, :n] = self._tokens[start : end - 1]
            targets[row, :n] = self._labels[start + 1 : end]
        return torch.from_numpy(inputs), torch.from_numpy(targets)


def _check_arguments(max_length: Any, loss_on: Any) -> None:
    """CorpusError for a max_length or loss_on ChatJSONL cannot take."""
    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1:
        raise CorpusError(
            f"max_length {max_length!r} is not a positive integer; set it to the longest sequence to train, e.g. 512"
        )
    if loss_on not in LOSS_ON:
        raise CorpusError(
            f"loss_on {loss_on!r} is not one of {', '.join(LOSS_ON)}; "
            "train the assistant's turns (assistant) or every token (all)"
        )


def _files(path: Any) -> list[Path]:
    """The .jsonl files of `path` (a path or a list of them), in order, each once; CorpusError for a missing one."""
    entries = [path] if isinstance(path, (str, Path)) else path
    if not isinstance(entries, list) or not entries or not all(isinstance(entry, (str, Path)) for entry in entries):
        raise CorpusError(f"path {path!r} is not a .jsonl file or a list of them; give e.g. path: data/chat.jsonl")
    files: dict[Path, None] = {}
    for entry in entries:
        file = Path(entry).expanduser()
        if file.is_dir():
            raise CorpusError(f"path {str(entry)!r} is a folder; give the .jsonl files in it (path: [a.jsonl, b.jsonl])")
        if not file.is_file():
            raise CorpusError(
                f"path {str(entry)!r} does not exist (relative to {Path.cwd()}); give a .jsonl file of conversations"
            )
        files.setdefault(file, None)
    return list(files)


def _hf_tokenizer(spec: Any) -> HFTokenizer:
    """The HFTokenizer `spec` names; CorpusError for another kind (bytes and bpe have no chat template)."""
    parsed = parse_tokenizer_spec(spec)
    if parsed["type"] != "hf":
        raise CorpusError(
            f"tokenizer {spec!r} has no chat template; ChatJSONL needs tokenizer: {{type: hf, path: DIR}}, a folder with "
            "tokenizer.json and a chat template"
        )
    return HFTokenizer(parsed["path"])


def _read_file(file: Path, digest: Any, each: Callable[[list[dict[str, Any]], str], None]) -> int:
    """Call `each(messages, "file:line")` for every conversation of `file`, adding its bytes to `digest`;
    its byte count. CorpusError naming the file and line for a bad line, or for a file with none."""
    data = file.read_bytes()
    digest.update(data)
    found = 0
    for number, line in enumerate(data.split(b"\n"), start=1):
        where = f"{file}:{number}"
        try:
            text = line.decode("utf-8-sig" if number == 1 else "utf-8")  # a byte-order mark some editors write
        except UnicodeDecodeError as error:
            raise CorpusError(f"{where}: not UTF-8 (byte 0x{line[error.start]:02x}); convert the file to UTF-8") from None
        if text.strip():
            each(parse_line(text, where), where)
            found += 1
    if not found:
        raise CorpusError(f"{file} is empty (no conversation); {FORMAT}")
    return len(data)


def parse_line(text: str, where: str) -> list[dict[str, Any]]:
    """The messages of one JSONL line, checked; CorpusError starting with `where` (file:line) otherwise."""
    try:
        document = json.loads(text)
    except ValueError as error:
        raise CorpusError(f"{where}: not JSON ({first_line(error)}); {FORMAT}") from None
    if not isinstance(document, dict):
        raise CorpusError(f"{where}: a JSON {type(document).__name__}, not an object; {FORMAT}")
    if "messages" not in document:
        raise CorpusError(f'{where}: no "messages" key (the keys are {sorted(document)}); {FORMAT}')
    messages = document["messages"]
    if not isinstance(messages, list) or not messages:
        raise CorpusError(f'{where}: "messages" is {json.dumps(messages)[:40]}, not a non-empty list of messages; {FORMAT}')
    return [_message(message, index, where) for index, message in enumerate(messages)]


def _message(message: Any, index: int, where: str) -> dict[str, Any]:
    """One message checked (role known, content a string), its None values dropped as transformers drops them."""
    if not isinstance(message, dict):
        raise CorpusError(f"{where}: message {index} is a JSON {type(message).__name__}, not an object; {FORMAT}")
    message = {key: value for key, value in message.items() if value is not None}
    for key in ("role", "content"):
        if key not in message:
            raise CorpusError(f"{where}: message {index} has no {key!r}; {FORMAT}")
    if message["role"] not in ROLES:
        raise CorpusError(
            f"{where}: message {index} has role {message['role']!r}, not one of {', '.join(ROLES)}; use one of those"
        )
    if not isinstance(message["content"], str):
        kind = type(message["content"]).__name__
        raise CorpusError(f"{where}: message {index} has a {kind} as content, not a string; write the content as one string")
    return message


def _add(
    examples: _Examples, chat: ChatTemplate, messages: list[dict[str, Any]], where: str, max_length: int, loss_on: str
) -> None:
    """Render and mask one conversation; keep it, or count it under the reason it is skipped."""
    examples.read += 1
    try:
        masked = chat.mask(messages, loss_on)
    except TokenBoundary:
        examples.skipped["boundary"].append(where)
        return
    except CorpusError as error:  # the template refuses it, cannot be diffed, writes no end-of-turn token
        raise CorpusError(f"{where}: {error}") from None
    if len(masked.ids) - 1 > max_length:
        examples.skipped["long"].append(f"{where} ({len(masked.ids)} tokens)")
    elif not any(masked.trained[1:]):
        examples.skipped["empty"].append(where)
    else:
        examples.add(masked.ids, masked.trained)


def _check_examples(examples: _Examples, loss_on: str, files: list[Path]) -> None:
    """CorpusError when nothing trains, or when loss_on: assistant trains every token (the mask tells nothing apart)."""
    names = ", ".join(str(file) for file in files)
    if not examples.tokens:
        reasons = "; ".join(_skip_line(reason, places) for reason, places in examples.skipped.items() if places)
        raise CorpusError(
            f"none of the {examples.read} conversations of {names} has a token to train: {reasons}; give conversations with "
            "an assistant turn that fit max_length"
        )
    if loss_on == "assistant" and examples.untrained == 0:
        raise CorpusError(
            f"loss_on: assistant trains every token of {names}: the chat template writes no role headers or prompts, "
            "so the assistant's turns cannot be told from the rest; use a template that marks the roles, or set loss_on: all"
        )


def _skip_line(reason: str, places: list[str]) -> str:
    """'3 skipped <reason>, e.g. a.jsonl:4'."""
    return f"{len(places)} skipped {_SKIP_REASONS[reason]}, e.g. {places[0]}"


def _notes(examples: _Examples) -> list[str]:
    """What the run's log says about the data: the conversations skipped, by reason."""
    kept = len(examples.tokens)
    return [
        f"ChatJSONL: {_skip_line(reason, places)} ({kept} of {examples.read} kept)"
        for reason, places in examples.skipped.items()
        if places
    ]


def _flatten(examples: _Examples) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(tokens, labels, offsets): every kept row's ids and labels end to end, and where each row starts (n + 1,)."""
    lengths = [len(tokens) for tokens in examples.tokens]
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return np.concatenate(examples.tokens), np.concatenate(examples.labels), offsets
