"""data/chat.py and data/chat_template.py: ChatJSONL renders conversations with the tokenizer's chat template
to transformers' ids, trains exactly the assistant's turns and their end-of-turn tokens (exact label
vectors), refuses every mask that would fail silently, and gives one error line for a bad input."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from data.chat import IGNORE_INDEX, ChatJSONL
from data.chat_template import ChatTemplate
from data.hf_tokenizer import HFTokenizer
from data.text_tokenizers import CorpusError
from tests.helpers import error_of, load_params, tiny_config, train_in_dir, train_in_process
from tests.hf_tokenizers import save_byte_level_bpe, save_chatml_style, save_llama3_style
from trainer.config import Component
from trainer.errors import InputError
from trainer.registry import DATASETS, build

transformers = pytest.importorskip("transformers")

PAIR = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}]
MULTI = [
    {"role": "system", "content": "S"},
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Yo"},
    {"role": "user", "content": "Ok?"},
    {"role": "assistant", "content": "No"},
]
CONVERSATIONS = {
    "pair": PAIR,
    "system": [{"role": "system", "content": "Be brief."}, *PAIR],
    "multi-turn": MULTI,
    "spaces and lines": [
        {"role": "user", "content": "  two\nlines "},
        {"role": "assistant", "content": "def f(x):\n    return x  "},
        {"role": "user", "content": "ünïcödé 日本"},
        {"role": "assistant", "content": "ok."},
    ],
    "user last": PAIR + [{"role": "user", "content": "And then?"}],
}


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A Llama 3 style and a ChatML style tokenizer folder, each with its chat template."""
    root = tmp_path_factory.mktemp("chat_tokenizers")
    return {"llama3": save_llama3_style(root / "llama3"), "chatml": save_chatml_style(root / "chatml")}


def write_jsonl(path: Path, conversations: list[list[dict]]) -> Path:
    """One {"messages": ...} object a line."""
    path.write_text("".join(json.dumps({"messages": messages}) + "\n" for messages in conversations))
    return path


def build_chat(path: Path | list, folder: Path, max_length: int = 64, **kwargs) -> ChatJSONL:
    """ChatJSONL as the Trainer builds it (errors prefixed with the config key)."""
    spec = {"path": path if isinstance(path, list) else str(path), "tokenizer": {"type": "hf", "path": str(folder)}}
    return build(DATASETS, Component("ChatJSONL", {**spec, "max_length": max_length, **kwargs}), key="data.train")


def with_template(folder: Path, destination: Path, template: str, **config) -> Path:
    """A copy of a tokenizer folder with another chat template (and tokenizer_config.json changes)."""
    destination.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (destination / name).write_bytes((folder / name).read_bytes())
    (destination / "chat_template.jinja").write_text(template)
    settings = json.loads((destination / "tokenizer_config.json").read_text())
    (destination / "tokenizer_config.json").write_text(json.dumps({**settings, **config}))
    return destination


# -- rendering: transformers' ids ------------------------------------------------------------------


@pytest.mark.parametrize("style", ["llama3", "chatml"])
@pytest.mark.parametrize("name", sorted(CONVERSATIONS))
@pytest.mark.parametrize("generation_prompt", [False, True])
def test_the_ids_are_transformers_apply_chat_template(folders, style, name, generation_prompt):
    reference = transformers.AutoTokenizer.from_pretrained(folders[style])
    messages = CONVERSATIONS[name]
    expected = reference.apply_chat_template(messages, tokenize=True, add_generation_prompt=generation_prompt)
    expected = expected["input_ids"] if hasattr(expected, "keys") else expected  # transformers 5: a BatchEncoding
    chat = ChatTemplate(HFTokenizer(folders[style]))
    text = reference.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
    assert chat.render(messages, generation_prompt) == text
    assert chat.encode(messages, generation_prompt) == expected


def test_generation_markers_render_as_their_body_and_mask_as_without(folders, tmp_path):
    marked = (
        "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' }}{% if m['role'] == 'assistant' %}"
        "{% generation %}{{ m['content'] + '<|im_end|>' }}{% endgeneration %}{% else %}{{ m['content'] + '<|im_end|>' }}"
        "{% endif %}{{ '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
    )
    folder = with_template(folders["chatml"], tmp_path / "marked", marked)
    reference = transformers.AutoTokenizer.from_pretrained(folder)
    chat, plain = ChatTemplate(HFTokenizer(folder)), ChatTemplate(HFTokenizer(folders["chatml"]))
    assert chat.render(MULTI) == reference.apply_chat_template(MULTI, tokenize=False) == plain.render(MULTI)
    assert chat.mask(MULTI) == plain.mask(MULTI)


def test_the_template_sees_the_special_tokens_tojson_and_raise_exception(folders, tmp_path):
    template = (
        "{{ bos_token }}{% for m in messages %}{% if m['role'] not in ['user', 'assistant'] %}"
        "{{ raise_exception('only user and assistant') }}{% endif %}{{ m | tojson }}{{ eos_token }}{% endfor %}"
        "{{ pad_token }}{% if tools is none and documents is none %}<none>{% endif %}"
        "{% set ns = namespace(n=0) %}{% for m in messages %}{% set ns.n = ns.n + 1 %}{% endfor %}{{ ns.n }}"
        "{{ strftime_now('%Y') }}{% for i in range(3) %}{% if i == 1 %}{% break %}{% endif %}{{ i }}{% endfor %}"
        "{{ dict(a=1) | tojson }}"
    )
    folder = with_template(folders["llama3"], tmp_path / "json", template)
    reference = transformers.AutoTokenizer.from_pretrained(folder)
    messages = [{"role": "user", "content": '<a> & "é"'}]
    chat = ChatTemplate(HFTokenizer(folder))
    assert chat.render(messages) == reference.apply_chat_template(messages, tokenize=False)
    assert '"<a> & \\"é\\""' in chat.render(messages)  # no HTML escaping, no ASCII escaping
    with pytest.raises(CorpusError, match=r"^the chat template refuses the conversation \(only user and assistant\); give"):
        chat.render([{"role": "system", "content": "x"}])


def test_a_template_dict_renders_its_default_and_without_one_is_exit_2(folders, tmp_path):
    folder = tmp_path / "named"
    folder.mkdir()
    (folder / "tokenizer.json").write_bytes((folders["chatml"] / "tokenizer.json").read_bytes())
    config = json.loads((folders["chatml"] / "tokenizer_config.json").read_text())
    default = (folders["chatml"] / "chat_template.jinja").read_text()
    templates = [{"name": "tool_use", "template": "tools"}, {"name": "default", "template": default}]
    (folder / "tokenizer_config.json").write_text(json.dumps({**config, "chat_template": templates}))
    assert ChatTemplate(HFTokenizer(folder)).encode(MULTI) == ChatTemplate(HFTokenizer(folders["chatml"])).encode(MULTI)
    (folder / "tokenizer_config.json").write_text(json.dumps({**config, "chat_template": templates[:1]}))
    with pytest.raises(CorpusError, match=r"has chat templates named \['tool_use'\] and none named default; name one"):
        ChatTemplate(HFTokenizer(folder))


# -- the mask: exact label vectors -------------------------------------------------------------------


def test_llama3_labels_are_the_reply_and_its_eot_id(folders, tmp_path):
    tokenizer = HFTokenizer(folders["llama3"])
    enc, token = tokenizer.encode, tokenizer.hf.token_to_id
    bos, start, end, eot = (token(t) for t in ("<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"))
    head = [bos, start, *enc("user"), end, *enc("\n\n"), *enc("Hi"), eot, start, *enc("assistant"), end, *enc("\n\n")]
    reply = [*enc("Yo"), eot]
    reference = transformers.AutoTokenizer.from_pretrained(folders["llama3"]).apply_chat_template(PAIR)["input_ids"]
    assert head + reply == reference  # the pieces are the conversation's tokens

    inputs, targets = build_chat(write_jsonl(tmp_path / "a.jsonl", [PAIR]), folders["llama3"], max_length=40)[0]
    ids = head + reply
    pad = [tokenizer.pad_id] * (40 - len(ids) + 1)
    assert inputs.tolist() == ids[:-1] + pad and inputs.dtype == targets.dtype == torch.int64
    assert targets.tolist() == [IGNORE_INDEX] * (len(head) - 1) + reply + [IGNORE_INDEX] * len(pad)


def test_chatml_labels_train_each_reply_and_im_end_not_the_newline_after(folders, tmp_path):
    tokenizer = HFTokenizer(folders["chatml"])
    enc, token = tokenizer.encode, tokenizer.hf.token_to_id
    im_start, im_end, nl = token("<|im_start|>"), token("<|im_end|>"), enc("\n")

    def turn(role: str, content: str) -> list[int]:
        return [im_start, *enc(role), *nl, *enc(content), im_end, *nl]

    assistant = [im_start, *enc("assistant"), *nl]
    head = turn("system", "S") + turn("user", "Hi") + assistant
    first, middle = [*enc("Yo"), im_end], nl + turn("user", "Ok?") + assistant
    second, tail = [*enc("No"), im_end], nl
    ids = head + first + middle + second + tail
    assert ids == transformers.AutoTokenizer.from_pretrained(folders["chatml"]).apply_chat_template(MULTI)["input_ids"]

    inputs, targets = build_chat(write_jsonl(tmp_path / "a.jsonl", [MULTI]), folders["chatml"], max_length=len(ids) - 1)[0]
    assert inputs.tolist() == ids[:-1]  # exactly max_length + 1 tokens: kept, nothing padded
    ignored = [IGNORE_INDEX]
    assert targets.tolist() == ignored * (len(head) - 1) + first + ignored * len(middle) + second + ignored * len(tail)


def test_an_assistant_first_conversation_and_a_byte_order_mark(folders, tmp_path):
    path = tmp_path / "a.jsonl"
    first = [{"role": "assistant", "content": "Yo"}, {"role": "user", "content": "Hi"}]
    path.write_bytes(b"\xef\xbb\xbf" + (json.dumps({"messages": first}) + "\n").encode())
    tokenizer = HFTokenizer(folders["chatml"])
    inputs, targets = build_chat(path, folders["chatml"])[0]
    header = [tokenizer.hf.token_to_id("<|im_start|>"), *tokenizer.encode("assistant\n")]
    expected = [IGNORE_INDEX] * (len(header) - 1) + tokenizer.encode("Yo") + [tokenizer.eos_id]
    assert targets[: len(expected)].tolist() == expected and (targets[len(expected) :] == IGNORE_INDEX).all()


def test_loss_on_all_trains_every_token_but_the_padding(folders, tmp_path):
    ids = ChatTemplate(HFTokenizer(folders["chatml"])).encode(MULTI)
    inputs, targets = build_chat(write_jsonl(tmp_path / "a.jsonl", [MULTI]), folders["chatml"], loss_on="all")[0]
    assert targets.tolist() == ids[1:] + [IGNORE_INDEX] * (64 - len(ids) + 1)


def test_a_pad_equal_to_eos_never_masks_a_real_eos(folders, tmp_path):
    folder = with_template(folders["chatml"], tmp_path / "pad_is_eos", (folders["chatml"] / "chat_template.jinja").read_text())
    config = json.loads((folder / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(json.dumps({**config, "pad_token": "<|im_end|>"}))
    dataset = build_chat(write_jsonl(tmp_path / "a.jsonl", [PAIR]), folder, max_length=32)
    im_end = dataset.tokenizer.eos_id
    assert dataset.pad_id == dataset.tokenizer.pad_id == im_end
    inputs, targets = dataset[0]
    real = len(ChatTemplate(dataset.tokenizer).encode(PAIR)) - 1
    trained = targets[targets != IGNORE_INDEX].tolist()
    assert trained[-1] == im_end and trained.count(im_end) == 1  # the reply's <|im_end|> trains
    assert (inputs[real:] == im_end).all() and (targets[real:] == IGNORE_INDEX).all()  # padding never does


# -- masks that cannot fail silently -------------------------------------------------------------------


def test_skipped_conversations_are_counted_in_the_notes_never_cut(folders, tmp_path):
    long = [{"role": "user", "content": "x " * 40}, {"role": "assistant", "content": "y " * 40}]
    no_reply = [{"role": "user", "content": "Hi"}]
    indented = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "    def"}]  # "\n   " merges
    path = write_jsonl(tmp_path / "a.jsonl", [PAIR, long, no_reply, indented, MULTI])
    dataset = build_chat(path, folders["chatml"], max_length=64)
    assert len(dataset) == 2 and dataset.conversations == 5
    assert dataset.notes == [
        f"ChatJSONL: 1 skipped with no token to train (no assistant turn under loss_on: assistant), e.g. {path}:3 (2 of 5 kept)",
        f"ChatJSONL: 1 skipped longer than max_length + 1 tokens (raise max_length to keep them; they are never cut), e.g. "
        f"{path}:2 ({len(ChatTemplate(dataset.tokenizer).encode(long))} tokens) (2 of 5 kept)",
        "ChatJSONL: 1 skipped whose assistant turn the tokenizer merges with the text around it (no clean first or last "
        f"token, e.g. a reply starting with spaces), e.g. {path}:4 (2 of 5 kept)",
    ]


def test_a_dataset_where_nothing_trains_is_exit_2_with_the_reasons(folders, tmp_path):
    path = write_jsonl(tmp_path / "a.jsonl", [[{"role": "user", "content": "Hi"}]] * 2)
    message = error_of(lambda: build_chat(path, folders["llama3"]))
    assert message == (
        f"config key data.train: dataset ChatJSONL: none of the 2 conversations of {path} has a token to train: 2 skipped "
        f"with no token to train (no assistant turn under loss_on: assistant), e.g. {path}:1; give conversations with an "
        "assistant turn that fit max_length"
    )


def test_a_template_without_headers_trains_everything_and_is_exit_2(folders, tmp_path):
    only_replies = "{% for m in messages %}{% if m['role'] == 'assistant' %}{{ m['content'] + eos_token }}{% endif %}{% endfor %}"
    folder = with_template(folders["chatml"], tmp_path / "bare", only_replies)
    message = error_of(lambda: build_chat(write_jsonl(tmp_path / "a.jsonl", [PAIR]), folder))
    assert "loss_on: assistant trains every token of" in message and message.endswith("or set loss_on: all")


@pytest.mark.parametrize(
    "template",
    [
        # the end of turn written when the next message starts: the last reply never gets one
        "{% for m in messages %}{% if not loop.first %}<|im_end|>{% endif %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}"
        "{% endfor %}{% if add_generation_prompt %}<|im_end|><|im_start|>assistant\n{% endif %}",
        # no end-of-turn token at all
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}",
    ],
)
def test_a_template_whose_turns_leave_the_end_of_turn_out_is_exit_2(folders, tmp_path, template):
    folder = with_template(folders["chatml"], tmp_path / "no_eot", template)
    path = write_jsonl(tmp_path / "a.jsonl", [PAIR])
    message = error_of(lambda: build_chat(path, folder))
    assert message.startswith(f"config key data.train: dataset ChatJSONL: {path}:1: assistant message 1 ends with no end-of-turn")
    assert "the model would never learn to stop" in message
    assert ChatTemplate(HFTokenizer(folder)).end_of_turn() is None


def test_a_template_that_rewrites_earlier_turns_is_exit_2(folders, tmp_path):
    rewrites = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% if loop.last %}[last] {% endif %}{{ m['content'] }}<|im_end|>\n"
        "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    folder = with_template(folders["chatml"], tmp_path / "rewrites", rewrites)
    message = error_of(lambda: build_chat(write_jsonl(tmp_path / "a.jsonl", [MULTI]), folder))
    assert "renders messages 0-1 with the generation prompt as text that does not begin the whole conversation" in message


def test_a_tokenizer_without_a_chat_template_is_exit_2_naming_the_fix(tmp_path):
    folder = save_byte_level_bpe(tmp_path / "plain")
    message = error_of(lambda: build_chat(write_jsonl(tmp_path / "a.jsonl", [PAIR]), folder))
    assert message == (
        f"config key data.train: dataset ChatJSONL: the tokenizer at {folder.resolve()} has no chat_template; add a "
        "chat_template.jinja to the folder (e.g. the instruct model's, or tokenizer.chat_template = ...; "
        "tokenizer.save_pretrained(DIR) with transformers)"
    )
    assert "has no chat template" in error_of(lambda: build_chat(tmp_path / "a.jsonl", folder, tokenizer="bytes"))


def test_the_end_of_turn_of_each_template(folders):
    for style, token in (("llama3", "<|eot_id|>"), ("chatml", "<|im_end|>")):
        tokenizer = HFTokenizer(folders[style])
        assert ChatTemplate(tokenizer).end_of_turn() == tokenizer.hf.token_to_id(token)


# -- bad inputs: one line with file and line, exit 2 -----------------------------------------------------

FORMAT = (
    'write one JSON object a line: {"messages": [{"role": "user", "content": "..."}, {"role": "assistant", "content": "..."}]}'
)
BAD_LINES = {
    "not json": (
        "{messages: []}",
        "not JSON (Expecting property name enclosed in double quotes: line 1 column 2 (char 1)); " + FORMAT,
    ),
    "a list": ("[1, 2]", "a JSON list, not an object; " + FORMAT),
    "no messages": ('{"text": "hi"}', "no \"messages\" key (the keys are ['text']); " + FORMAT),
    "empty messages": ('{"messages": []}', '"messages" is [], not a non-empty list of messages; ' + FORMAT),
    "no role": ('{"messages": [{"content": "hi"}]}', "message 0 has no 'role'; " + FORMAT),
    "no content": ('{"messages": [{"role": "user", "content": null}]}', "message 0 has no 'content'; " + FORMAT),
    "unknown role": (
        '{"messages": [{"role": "user", "content": "a"}, {"role": "tool", "content": "b"}]}',
        "message 1 has role 'tool', not one of system, user, assistant; use one of those",
    ),
    "content parts": (
        '{"messages": [{"role": "user", "content": [{"type": "text"}]}]}',
        "message 0 has a list as content, not a string; write the content as one string",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_LINES))
def test_a_bad_line_is_one_error_naming_the_file_and_line(folders, tmp_path, case):
    line, reason = BAD_LINES[case]
    path = tmp_path / "a.jsonl"
    path.write_text(json.dumps({"messages": PAIR}) + "\n\n" + line + "\n")
    message = error_of(lambda: build_chat(path, folders["chatml"]))
    assert message == f"config key data.train: dataset ChatJSONL: {path}:3: {reason}"


def test_missing_empty_and_undecodable_files_are_one_error_line(folders, tmp_path):
    prefix = "config key data.train: dataset ChatJSONL: "
    missing = tmp_path / "missing.jsonl"
    assert error_of(lambda: build_chat(missing, folders["chatml"])).startswith(f"{prefix}path {str(missing)!r} does not exist")
    (tmp_path / "empty.jsonl").write_text("\n  \n")
    assert error_of(lambda: build_chat(tmp_path / "empty.jsonl", folders["chatml"])) == (
        f"{prefix}{tmp_path / 'empty.jsonl'} is empty (no conversation); {FORMAT}"
    )
    (tmp_path / "latin1.jsonl").write_bytes(json.dumps({"messages": PAIR}).encode() + b'\n{"x": "caf\xe9"}\n')
    assert error_of(lambda: build_chat(tmp_path / "latin1.jsonl", folders["chatml"])) == (
        f"{prefix}{tmp_path / 'latin1.jsonl'}:2: not UTF-8 (byte 0xe9); convert the file to UTF-8"
    )
    assert "is a folder" in error_of(lambda: build_chat(tmp_path, folders["chatml"]))
    assert "max_length 0 is not a positive integer" in error_of(lambda: build_chat(missing, folders["chatml"], max_length=0))
    assert "loss_on 'every' is not one of assistant, all" in error_of(
        lambda: build_chat(missing, folders["chatml"], loss_on="every")
    )


def test_a_bad_file_is_exit_2_before_anything_is_written(workdir, folders):
    (workdir / "train.jsonl").write_text(json.dumps({"messages": PAIR}) + "\nnot json\n")
    spec = {"type": "ChatJSONL", "path": "train.jsonl", "tokenizer": {"type": "hf", "path": str(folders["chatml"])}}
    document = tiny_config(
        name="chat", model={"type": "GPT", "vocab_size": 300, "block_size": 64, "n_layer": 1, "n_head": 2, "n_embd": 16}
    )
    document.update(loss={"type": "TokenCrossEntropy"}, metrics=["exact_match"], val={"metric": "exact_match", "mode": "max"})
    document["data"] = {"batch_size": 2, "train": {**spec, "max_length": 64}}
    before = sorted(path.name for path in workdir.iterdir())
    with pytest.raises(InputError, match=r"^config key data.train: dataset ChatJSONL: train.jsonl:2: not JSON"):
        train_in_process(workdir, document)  # train.py reports it as one line, exit 2
    assert sorted(path.name for path in workdir.iterdir()) == sorted([*before, "config.yaml"])  # the test wrote that one


# -- what the Trainer and checkpoints read -----------------------------------------------------------------


def test_identity_vocab_size_and_pickling(folders, tmp_path):
    path = write_jsonl(tmp_path / "a.jsonl", [PAIR, MULTI])
    dataset = build_chat([str(path), str(path)], folders["chatml"])  # named twice, read once
    tokenizer = dataset.tokenizer
    identity = dataset.identity()
    assert identity["corpus"] == {"sha256": identity["corpus"]["sha256"], "files": 1, "bytes": path.stat().st_size}
    assert identity["tokenizer"] == {"type": "hf", "vocab_size": tokenizer.vocab_size, "sha256": tokenizer.fingerprint()}
    assert (identity["max_length"], identity["loss_on"]) == (64, "assistant") and dataset.vocab_size == tokenizer.vocab_size
    assert dataset.identity() != build_chat(path, folders["chatml"], loss_on="all").identity()
    marked = with_template(folders["chatml"], tmp_path / "other", "{{ messages[0]['content'] }}<|im_end|>")
    assert build_chat(path, marked, loss_on="all").identity()["chat_template"] != identity["chat_template"]
    copy = pickle.loads(pickle.dumps(dataset))  # a DataLoader worker under spawn
    assert all(torch.equal(a, b) for a, b in zip(copy[1], dataset[1], strict=True))
    assert dataset.token_bytes.shape == (tokenizer.vocab_size,) and dataset.tokens_per_sample == 64


def test_a_batch_is_the_rows_of_its_conversations(folders, tmp_path):
    dataset = build_chat(write_jsonl(tmp_path / "a.jsonl", [PAIR, MULTI, PAIR]), folders["llama3"], max_length=80)
    inputs, targets = dataset.get_batch(torch.tensor([2, 0, 1]), lambda: None)
    assert inputs.shape == targets.shape == (3, 80)
    for row, index in enumerate([2, 0, 1]):
        assert torch.equal(inputs[row], dataset[index][0]) and torch.equal(targets[row], dataset[index][1])


# -- examples never attend to each other; token-exact accumulation -------------------------------------------


def test_one_step_of_4_micro_batches_equals_one_batch_of_all(tmp_path, folders):
    from tests.hf_models import save_tiny

    tokenizer = HFTokenizer(folders["llama3"])
    save_tiny("llama", tmp_path / "llama", vocab_size=tokenizer.vocab_size)
    replies = ["4", "The answer is 12.", "7", "no", "It is 100", "x", "Twenty", "0"]  # different trained counts per row
    rows = [
        [{"role": "user", "content": f"What is {i}+{i}?"}, {"role": "assistant", "content": r}] for i, r in enumerate(replies)
    ]
    chat = {"type": "ChatJSONL", "tokenizer": {"type": "hf", "path": str(folders["llama3"])}, "max_length": 56}
    train = {**chat, "path": str(write_jsonl(tmp_path / "train.jsonl", rows))}
    val = {**chat, "path": str(write_jsonl(tmp_path / "val.jsonl", rows[:3]))}
    document = tiny_config(
        name="chat",
        model={"type": "hf", "path": str(tmp_path / "llama")},
        pretrain_path=str(tmp_path / "llama"),
        loss={"type": "TokenCrossEntropy"},
        metrics=["exact_match", "nll"],
        data={"batch_size": 8, "val_batch_size": 2, "train": train, "val": val},
        optimizer={"type": "SGD", "lr": 0.5},
        train={"total_iters": 1, "val_interval": 1},
        val={"metric": "exact_match", "mode": "max"},
        checkpoint={"interval": 1},
    )
    document.pop("scheduler")
    runs = {"whole": [], "micro": ["data.batch_size=2", "train.accumulate=4"]}
    params = {}
    for name, overrides in runs.items():
        (tmp_path / name).mkdir()
        assert train_in_dir(tmp_path / name, document, *overrides) == 0
        params[name] = load_params(tmp_path / name / "weights" / "chat_iter_1.pth")
    start = load_file(tmp_path / "llama" / "model.safetensors")
    assert sum(not torch.equal(start[key], value) for key, value in params["whole"].items() if key in start) > 10  # it stepped
    for key, value in params["whole"].items():
        torch.testing.assert_close(params["micro"][key], value, rtol=0, atol=1e-6)
    best = torch.load(tmp_path / "whole" / "weights" / "chat_best.pt", weights_only=True)["best_metrics"]
    assert 0 <= best["exact_match"] <= 1
