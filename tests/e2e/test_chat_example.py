"""tools/chat_example.py (issue 25): the worked example's tokenizer, pretraining text and chat data.

The tool is run as a user runs it (a subprocess, small sizes). What the example relies on: the
folder is a tokenizer transformers reads as it is, with the same ids and chat template as Kiln's;
the pretraining text trains the ChatML specials; validation is held out by operand pair; the same
arguments give the same bytes; an earlier run's files are replaced only with --force.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from data.chat_template import ChatTemplate
from data.hf_tokenizer import HFTokenizer
from tests.helpers import REPO

transformers = pytest.importorskip("transformers")

TOOL = REPO / "tools" / "chat_example.py"
SMALL = ["--train", "400", "--val", "60", "--max-operand", "20", "--vocab-size", "600", "--bpe-bytes", "200000"]
FILES = ("tokenizer/tokenizer.json", "tokenizer/tokenizer_config.json", "tokenizer/special_tokens_map.json")
DATA = ("pretrain.txt", "train.jsonl", "val.jsonl")


def run_tool(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """python tools/chat_example.py ARGS, its output captured."""
    return subprocess.run([sys.executable, str(TOOL), *args], cwd=cwd, capture_output=True, text=True, timeout=240)


@pytest.fixture(scope="module")
def example(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example's folder, written once with small sizes."""
    out = tmp_path_factory.mktemp("chat_example") / "out"
    result = run_tool("--out", str(out), *SMALL, cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert f"train: {out / 'train.jsonl'} (400 conversations), val: {out / 'val.jsonl'} (60, held-out pairs)" in result.stdout
    return out


def read_jsonl(path: Path) -> list[dict]:
    """One conversation a line."""
    return [json.loads(line) for line in path.read_text().splitlines()]


def operands(conversation: dict) -> list[int]:
    """The two numbers the question adds, in the order it asks them."""
    question = conversation["messages"][0]["content"]
    numbers = [int(word) for word in question.replace("?", " ").replace(".", " ").split() if word.isdigit()]
    assert len(numbers) == 2, question
    return numbers


def operand_pair(conversation: dict) -> frozenset[int]:
    """The two numbers a question adds, unordered (7 + 7 is a one-element set)."""
    return frozenset(operands(conversation))


def test_every_file_is_written_and_the_answers_are_the_sums(example):
    for name in (*FILES, *DATA):
        assert (example / name).stat().st_size > 0, name
    for conversation in read_jsonl(example / "train.jsonl") + read_jsonl(example / "val.jsonl"):
        user, assistant = conversation["messages"]
        assert (user["role"], assistant["role"]) == ("user", "assistant")
        assert assistant["content"] == str(sum(operands(conversation)))


def test_validation_pairs_never_occur_in_training_in_either_order(example):
    train = {operand_pair(conversation) for conversation in read_jsonl(example / "train.jsonl")}
    val = [operand_pair(conversation) for conversation in read_jsonl(example / "val.jsonl")]
    assert len(set(val)) == len(val) == 60  # one question per held-out pair
    assert train.isdisjoint(val)
    assert max(max(pair) for pair in train | set(val)) <= 20


def test_transformers_reads_the_tokenizer_with_the_same_ids_and_chat_template(example):
    ours = HFTokenizer(example / "tokenizer")
    theirs = transformers.AutoTokenizer.from_pretrained(str(example / "tokenizer"))
    assert [ours.encode(token) for token in ("<|endoftext|>", "<|im_start|>", "<|im_end|>")] == [[0], [1], [2]]
    assert (theirs.eos_token_id, theirs.pad_token_id, theirs.bos_token_id) == (2, 0, None)
    messages = read_jsonl(example / "val.jsonl")[0]["messages"]
    template = ChatTemplate(ours)
    text = template.render(messages)
    assert text == theirs.apply_chat_template(messages, tokenize=False)
    assert template.encode(messages) == theirs(text, add_special_tokens=False)["input_ids"] == ours.encode(text)
    prompt = template.render(messages[:1], add_generation_prompt=True)
    assert prompt == theirs.apply_chat_template(messages[:1], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|im_start|>assistant\n")
    assert ours.encode("12345") == [ours.encode(digit)[0] for digit in "12345"]  # one token per digit


def test_the_pretraining_text_is_the_standard_library_as_chatml_conversations(example):
    text = (example / "pretrain.txt").read_text()
    ours = HFTokenizer(example / "tokenizer")
    head = "<|im_start|>user\nShow the source of "
    assert text.startswith(head)
    conversations = text.split("<|endoftext|>")
    assert conversations[-1] == "" and len(conversations) > 50  # every module ends with the pad token
    first = conversations[0]
    assert first.count("<|im_start|>") == 2 and first.endswith("<|im_end|>\n")
    assert ours.encode(first)[:2] == [1, ours.encode("user")[0]]  # the special is one token, as in the chat data
    assert re.fullmatch(
        r"<\|im_start\|>user\nShow the source of \w+\.py\.<\|im_end\|>", first.split("\n<|im_start|>assistant")[0]
    )


def test_the_same_arguments_give_the_same_bytes_and_an_earlier_run_needs_force(example, tmp_path):
    again = tmp_path / "again"
    assert run_tool("--out", str(again), *SMALL, cwd=REPO).returncode == 0
    for name in (*FILES, *DATA):
        assert (again / name).read_bytes() == (example / name).read_bytes(), name
    before = (again / "train.jsonl").read_bytes()
    refused = run_tool("--out", str(again), *SMALL, "--seed", "1", cwd=REPO)
    assert refused.returncode == 2 and refused.stdout == ""
    assert refused.stderr.strip() == (
        f"error: --out {str(again)!r} already holds tokenizer/tokenizer.json (an earlier run); add --force to replace its files"
    )
    assert (again / "train.jsonl").read_bytes() == before
    assert run_tool("--out", str(again), *SMALL, "--seed", "1", "--force", cwd=REPO).returncode == 0
    assert (again / "train.jsonl").read_bytes() != before


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--val", "200", "--max-operand", "20"],
            "--val 200 holds out more than half of the 231 operand pairs of --max-operand 20",
        ),
        (["--vocab-size", "100"], "--vocab-size 100 is below 259 (256 bytes and 3 special tokens); give e.g. 4096"),
    ],
)
def test_bad_arguments_are_one_line_and_exit_2_with_nothing_written(tmp_path, args, message):
    result = run_tool("--out", str(tmp_path / "out"), *args, cwd=REPO)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and message in result.stderr
    assert not (tmp_path / "out").exists()
