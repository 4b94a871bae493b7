"""A tokenizer's chat template: conversations rendered and tokenized as transformers does, and the loss mask.

Rendering. `ChatTemplate(tokenizer)` renders a conversation with the tokenizer's own Jinja
`chat_template` exactly as `transformers.AutoTokenizer.apply_chat_template` does (transformers
5, utils/chat_template_utils.py): an ImmutableSandboxedEnvironment with trim_blocks and
lstrip_blocks, the `loopcontrols` extension, a `{% generation %}` tag (rendered as its body:
markers change no text), the `tojson` filter without HTML escaping, the globals
`raise_exception`, `strftime_now`, `dict` and `namespace`, and the variables `messages`,
`tools` and `documents` (None), `add_generation_prompt` and the named special tokens as strings
(`bos_token`, `eos_token`, `pad_token`, `unk_token` where the tokenizer sets them). The text is
then encoded with `encode(text, add_special_tokens=False)`: apply_chat_template(tokenize=True)
adds no BOS of its own, the template writes it. A template dict picks `default`, as transformers
does without tools.

The mask (`loss_on: assistant`). The tokens of assistant message k are found by diffing renders:
the conversation up to message k with the generation prompt (`<|im_start|>assistant\\n`) ends
where the turn's trained tokens start, and the conversation up to and including message k ends
where they stop. Both renders must be the start of the whole conversation's text and their ids
the start of its ids (a template that rewrites earlier turns, Qwen3's dropping of reasoning for
one, cannot be diffed: TemplateMismatch). This needs no `{% generation %}` markers and keeps the
end-of-turn token, which the template writes right after the content, inside the turn. What the
turn ends with after its last special token (ChatML's newline after `<|im_end|>`) is not trained:
the model learns to stop at the end-of-turn token, and what follows it is the next turn's layout.
A turn whose trained tokens end with no special token has no end-of-turn token the model could
learn to stop at: MissingEndOfTurn. Masks are positions, never ids, so a pad id equal to the EOS
id never masks a real EOS.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Any

from data.text_tokenizers import CorpusError
from trainer.errors import first_line

ROLES = ("system", "user", "assistant")
_TEMPLATE_FILE = "chat_template.jinja"
_MIN_JINJA = (3, 1, 6)  # older Jinja sandboxes have known escapes; templates from the Hub are untrusted code


class TemplateMismatch(CorpusError):
    """The template renders a conversation's start otherwise than the whole conversation (no diff possible)."""


class TokenBoundary(Exception):
    """The tokenizer merges text across an assistant turn's boundary: the turn has no clean first or last token."""


class MissingEndOfTurn(CorpusError):
    """An assistant turn whose trained tokens end with no special (end-of-turn) token."""


@dataclass(frozen=True)
class Masked:
    """A rendered conversation: its token ids and, per token, whether the loss trains it."""

    ids: list[int]
    trained: list[bool]


class ChatTemplate:
    """The chat template of an HFTokenizer (data/hf_tokenizer.py): render, tokenize, mask (module docstring).

    CorpusError (exit 2) when the tokenizer has no usable template, naming the fix. Attributes:
    `source` (the Jinja text), `variables` (the special tokens as the template sees them).
    """

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.source = template_source(tokenizer)
        self.compiled = compile_template(self.source)
        self.variables = {f"{name}_token": token for name, token in getattr(tokenizer, "special_tokens", {}).items()}
        added = tokenizer.hf.get_added_tokens_decoder()  # {id: AddedToken}
        self.special_ids = frozenset(index for index, token in added.items() if token.special)
        self._blank: dict[int, bool] = {}

    def render(self, messages: list[dict[str, Any]], add_generation_prompt: bool = False) -> str:
        """The conversation's text as apply_chat_template(tokenize=False) gives it; CorpusError if the template raises."""
        import jinja2

        # raise_exception(...) in the template, the sandbox's refusals, an undefined attribute, Python's own errors
        refusals = (jinja2.TemplateError, TypeError, KeyError, IndexError, AttributeError)
        try:
            return self.compiled.render(
                messages=messages, tools=None, documents=None, add_generation_prompt=add_generation_prompt, **self.variables
            )
        except refusals as error:
            raise CorpusError(
                f"the chat template refuses the conversation ({first_line(error, strip=True)}); give conversations it "
                "accepts (many templates want user and assistant turns to alternate, a system message only first)"
            ) from None

    def encode(self, messages: list[dict[str, Any]], add_generation_prompt: bool = False) -> list[int]:
        """The ids apply_chat_template(messages, tokenize=True) gives: the rendered text, no specials added."""
        return self.tokenizer.encode(self.render(messages, add_generation_prompt), add_special_tokens=False)

    def mask(self, messages: list[dict[str, Any]], loss_on: str = "assistant") -> Masked:
        """The whole conversation's ids and which tokens train: all of them (`all`), or each assistant
        turn's content and end-of-turn token (`assistant`); TemplateMismatch, TokenBoundary or MissingEndOfTurn."""
        text = self.render(messages)
        ids = self.tokenizer.encode(text, add_special_tokens=False)
        if loss_on == "all":
            return Masked(ids, [True] * len(ids))
        trained = [False] * len(ids)
        for k, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            start = self._prefix_length(messages[:k], True, text, ids, k, "start")
            end = self._prefix_length(messages[: k + 1], False, text, ids, k, "end")
            if end < start:
                raise TemplateMismatch(
                    f"the chat template's generation prompt renders past the end of assistant message {k}, so its "
                    "tokens cannot be located; use a template whose generation prompt is the start of an assistant turn, "
                    "or loss_on: all"
                )
            stop = start + self._trained_length(ids[start:end], k)
            trained[start:stop] = [True] * (stop - start)
        return Masked(ids, trained)

    def end_of_turn(self) -> int | None:
        """The id the template ends an assistant turn with (`<|eot_id|>`, `<|im_end|>`): the last special
        token of a probe reply's turn; None when it cannot be told (the probe is refused, no special token)."""
        probe = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
        try:
            masked = self.mask(probe)
        except (CorpusError, TokenBoundary):
            return None
        trained = [token for token, keep in zip(masked.ids, masked.trained, strict=True) if keep]
        return trained[-1] if trained else None

    def _prefix_length(self, head: list[dict[str, Any]], prompt: bool, text: str, ids: list[int], k: int, edge: str) -> int:
        """How many of the conversation's ids the render of `head` (with the generation prompt or not) covers."""
        head_text = self.render(head, add_generation_prompt=prompt)
        if not text.startswith(head_text):
            what = f"messages 0-{k - 1} with the generation prompt" if prompt else f"messages 0-{k}"
            what = "the generation prompt before any message" if prompt and k == 0 else what
            raise TemplateMismatch(
                f"the chat template renders {what} as text that does not begin the whole conversation (it renders a turn "
                "differently depending on what follows, e.g. drops reasoning or moves the system prompt), so assistant "
                f"message {k}'s tokens cannot be located; use a template whose turns render the same whatever follows, "
                "or loss_on: all"
            )
        head_ids = self.tokenizer.encode(head_text, add_special_tokens=False)
        if ids[: len(head_ids)] != head_ids:
            raise TokenBoundary(f"the tokenizer merges text across the {edge} of assistant message {k}")
        return len(head_ids)

    def _trained_length(self, span: list[int], k: int) -> int:
        """How many tokens of an assistant turn's span train: through its last special token, the whitespace
        after it (ChatML's newline) left out; MissingEndOfTurn when the turn ends without one."""
        end = len(span)
        while end and span[end - 1] not in self.special_ids and self._is_blank(span[end - 1]):
            end -= 1
        if end and span[end - 1] in self.special_ids:
            return end
        after = self.tokenizer.decode(span[-3:]) if span else ""
        eos = getattr(self.tokenizer, "special_tokens", {}).get("eos")
        raise MissingEndOfTurn(
            f"assistant message {k} ends with no end-of-turn token inside its turn (the turn ends with {after!r}, no "
            "special token), so the model would never learn to stop; use a chat template that ends each assistant "
            f"turn with a special token (e.g. {eos or 'the EOS token'}), or loss_on: all"
        )

    def _is_blank(self, token: int) -> bool:
        """Whether a token's text is whitespace only (cached: asked once per id)."""
        if token not in self._blank:
            self._blank[token] = not self.tokenizer.decode([token]).strip()
        return self._blank[token]


def template_source(tokenizer: Any) -> str:
    """The tokenizer's chat template text; CorpusError naming the fix when it has none (or only named ones)."""
    template = getattr(tokenizer, "chat_template", None)
    where = getattr(tokenizer, "path", "the tokenizer folder")
    if isinstance(template, dict):
        if "default" in template:
            return template["default"]
        raise CorpusError(
            f"the tokenizer at {where} has chat templates named {sorted(template)} and none named default; name one "
            "default in its tokenizer_config.json, or write the one to use to chat_template.jinja in the folder"
        )
    if not isinstance(template, str) or not template:
        raise CorpusError(
            f"the tokenizer at {where} has no chat_template; add a {_TEMPLATE_FILE} to the folder (e.g. the instruct "
            "model's, or tokenizer.chat_template = ...; tokenizer.save_pretrained(DIR) with transformers)"
        )
    return template


def compile_template(source: str) -> Any:
    """The compiled Jinja template of `source` (cached); CorpusError when Jinja is missing or too old, or it does not parse."""
    jinja2 = _import_jinja()
    try:
        return _compile(source)
    except jinja2.TemplateSyntaxError as error:
        raise CorpusError(
            f"the chat template does not parse (line {error.lineno}: {first_line(error, strip=True)}); fix the "
            f"tokenizer's {_TEMPLATE_FILE} or its tokenizer_config.json chat_template"
        ) from None


def _import_jinja() -> Any:
    """jinja2, or CorpusError saying how to install it."""
    try:
        import jinja2
    except ImportError:
        raise CorpusError(
            "chat templates need the jinja2 package, which is not installed; run pip install 'jinja2>=3.1.6'"
        ) from None
    version = tuple(int(part) for part in jinja2.__version__.split(".")[:3] if part.isdigit())
    if version < _MIN_JINJA:
        raise CorpusError(
            f"jinja2 {jinja2.__version__} is too old for chat templates (its sandbox has known escapes); "
            "run pip install -U 'jinja2>=3.1.6'"
        )
    return jinja2


@lru_cache(maxsize=8)
def _compile(source: str) -> Any:
    """transformers' environment (module docstring), compiled once per template text."""
    import jinja2
    from jinja2.ext import Extension, loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class Generation(Extension):
        """`{% generation %}...{% endgeneration %}`: transformers marks assistant text with it; the text is the body."""

        tags = {"generation"}

        def parse(self, parser: Any) -> Any:
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

        def _body(self, caller: Callable[[], str]) -> str:
            return caller()

    environment = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[Generation, loopcontrols])
    environment.filters["tojson"] = _tojson
    environment.globals.update(
        raise_exception=_raise_exception, strftime_now=_strftime_now, dict=_TemplateDict(), namespace=_namespace_class(jinja2)
    )
    return environment.from_string(source)


def _raise_exception(message: str) -> None:
    """The template's own refusal (`raise_exception('Conversation roles must alternate')`)."""
    import jinja2

    raise jinja2.exceptions.TemplateError(message)


def _tojson(
    value: Any, ensure_ascii: bool = False, indent: int | None = None, separators: Any = None, sort_keys: bool = False
) -> str:
    """transformers' tojson: json.dumps without Jinja's HTML escaping."""
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(format: str) -> str:  # noqa: A002 - the name templates call it with
    """The current local time, formatted (Llama 3.1's "Today Date")."""
    return datetime.now().strftime(format)


class _TemplateDict:
    """`dict(...)` and `dict.fromkeys(...)` in a template, without the type itself (transformers' TemplateDict)."""

    def __call__(self, *args: Any, **kwargs: Any) -> dict:
        return dict(*args, **kwargs)

    def fromkeys(self, *args: Any, **kwargs: Any) -> dict:
        """dict.fromkeys."""
        return dict.fromkeys(*args, **kwargs)


def _namespace_class(jinja2: Any) -> type:
    """Jinja's namespace refusing underscore attributes (transformers' TemplateNamespace: no way to CPython's internals)."""

    def check(name: Any) -> None:
        if isinstance(name, str) and name.startswith("_"):
            raise jinja2.exceptions.SecurityError(
                f"chat templates cannot store underscore-prefixed attributes on a namespace ({name!r})"
            )

    class TemplateNamespace(jinja2.utils.Namespace):
        def __init__(*args: Any, **kwargs: Any) -> None:  # Jinja's signature trick: namespace(self=...) still works
            self, args = args[0], args[1:]
            attributes = dict(*args, **kwargs)
            for name in attributes:
                check(name)
            jinja2.utils.Namespace.__init__(self, attributes)

        def __setitem__(self, name: str, value: Any) -> None:
            check(name)
            jinja2.utils.Namespace.__setitem__(self, name, value)

    return TemplateNamespace
