"""tools/generate.py: deterministic streamed samples from a .pth or .pt, one error line for a bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from models.gpt import GPT
from tests.helpers import REPO, call, load_tool, write_config

generate_tool = load_tool("generate")
MODEL = {"vocab_size": 256, "block_size": 16, "n_layer": 1, "n_head": 2, "n_embd": 16}


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_thread):
    """Every test here on one thread (tests/conftest.py)."""


@pytest.fixture(scope="module")
def lm_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A byte-level GPT config over a small text, with untrained weights as a .pth and a .pt."""
    directory = tmp_path_factory.mktemp("generate")
    (directory / "corpus.txt").write_text("the quick brown fox jumps over the lazy dog\n" * 20)
    write_config(
        directory / "lm.yaml",
        {
            "name": "lm",
            "device": "cpu",
            "model": {"type": "GPT", **MODEL},
            "loss": {"type": "CrossEntropyLoss"},
            "data": {
                "batch_size": 4,
                "train": {
                    "type": "TextTokens",
                    "root": str(directory / "corpus.txt"),
                    "block_size": 16,
                    "cache_dir": str(directory / "cache"),
                },
            },
            "optimizer": {"type": "AdamW", "lr": 1e-3},
            "train": {"total_iters": 1},
        },
    )
    torch.manual_seed(0)
    state = GPT(**MODEL).state_dict()
    torch.save({"params": state}, directory / "lm.pth")
    torch.save({"model": state, "optimizer": {}, "iteration": 1}, directory / "lm.pt")
    return directory


def sample(run: Path, *argv: str) -> tuple[int, str, str]:
    return call(generate_tool, "-c", str(run / "lm.yaml"), "--weights", str(run / "lm.pth"), *argv)


def test_generate_is_deterministic_for_a_seed(lm_run: Path):
    first = sample(lm_run, "--prompt", "the ", "--max-new-tokens", "40", "--seed", "3")
    assert first == sample(lm_run, "--prompt", "the ", "--max-new-tokens", "40", "--seed", "3")
    code, out, err = first
    assert code == 0 and err == "" and out.startswith("the ")
    assert sample(lm_run, "--prompt", "the ", "--max-new-tokens", "40", "--seed", "4")[1] != out


def test_a_pt_samples_what_the_pth_of_the_same_weights_samples(lm_run: Path):
    argv = ["--max-new-tokens", "20", "--top-k", "5", "--temperature", "0.8"]
    from_pt = call(generate_tool, "-c", str(lm_run / "lm.yaml"), "--weights", str(lm_run / "lm.pt"), *argv)
    assert from_pt == sample(lm_run, *argv) and from_pt[0] == 0


def test_greedy_sampling_streams_the_models_argmax_continuation(lm_run: Path):
    code, out, _ = sample(lm_run, "--prompt", "fox", "--max-new-tokens", "5", "--temperature", "0")
    torch.manual_seed(0)
    model = GPT(**MODEL).eval()
    ids = [int(t) for t in model.generate(torch.tensor([list(b"fox")]), 5, temperature=0)]
    assert code == 0 and out == "fox" + bytes(ids).decode("utf-8", "replace") + "\n"


def test_an_empty_prompt_is_one_error_line(lm_run: Path):
    code, out, err = sample(lm_run, "--prompt", "")
    assert code == 2 and out == "" and err.startswith("error: --prompt is empty;") and err.count("\n") == 1


def test_a_bad_weights_file_is_exit_2_with_one_line(lm_run: Path):
    (lm_run / "bad.pth").write_bytes(b"not a checkpoint")
    argv = [sys.executable, "tools/generate.py", "-c", str(lm_run / "lm.yaml"), "--weights", str(lm_run / "bad.pth")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.splitlines() == [
        f"error: --weights {lm_run / 'bad.pth'} is corrupt, truncated or not a PyTorch file (unreadable pickle); use another file"
    ]


# -- a Hugging Face tokenizer (tokenizer: {type: hf, path: DIR}) -------------------------------------

HF_MODEL = {"vocab_size": 300, "block_size": 32, "n_layer": 1, "n_head": 2, "n_embd": 16}
PROMPT = "def wrap("


@pytest.fixture(scope="module")
def hf_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Llama 3 style tokenizer (BOS added, EOS <|eot_id|>), a config whose data.train uses it, and
    random GPT weights relabelled so that greedy sampling after PROMPT emits EOS at step `stop`.

    Swapping two ids' rows of every vocabulary-sized parameter relabels the model: it computes the
    same, with the two ids' meanings exchanged. Swapping EOS with the greedy token at a step where
    neither occurred before makes the model emit EOS exactly there (run.json: the ids and the step).
    """
    pytest.importorskip("transformers")
    from data.hf_tokenizer import HFTokenizer
    from tests.hf_tokenizers import DEFAULT_TEXT, save_llama3_style

    directory = tmp_path_factory.mktemp("generate_hf")
    folder = save_llama3_style(directory / "tokenizer")
    (directory / "corpus.txt").write_text(DEFAULT_TEXT[:4000])
    text = {"type": "TextTokens", "root": str(directory / "corpus.txt"), "block_size": 16, "cache_dir": str(directory / "cache")}
    text["tokenizer"] = {"type": "hf", "path": str(folder)}
    write_config(
        directory / "lm.yaml",
        {
            "name": "lm",
            "device": "cpu",
            "model": {"type": "GPT", **HF_MODEL},
            "loss": {"type": "CrossEntropyLoss"},
            "data": {"batch_size": 4, "train": text},
            "optimizer": {"type": "AdamW", "lr": 1e-3},
            "train": {"total_iters": 1},
        },
    )
    tokenizer = HFTokenizer(folder)
    prompt = tokenizer.encode(PROMPT, add_special_tokens=True)
    torch.manual_seed(0)
    model = GPT(**HF_MODEL).eval()
    greedy = [int(t) for t in model.generate(torch.tensor([prompt]), 20, temperature=0)]
    stop = next(k for k in range(3, 20) if greedy[k] not in prompt + greedy[:k])
    assert tokenizer.eos_id not in prompt + greedy[:stop]  # else choose another seed
    swap = [greedy[stop], tokenizer.eos_id]
    with torch.no_grad():
        for parameter in model.parameters():  # tied embedding and head: one tensor, swapped once
            if parameter.shape[0] == HF_MODEL["vocab_size"]:
                parameter[swap] = parameter[swap[::-1]].clone()
    torch.save({"params": model.state_dict()}, directory / "lm.pth")
    (directory / "run.json").write_text(json.dumps({"prompt": prompt, "greedy": greedy, "stop": stop}))
    return directory


def test_an_hf_tokenizer_streams_its_decoded_text_and_stops_at_eos(hf_run: Path):
    from data.hf_tokenizer import HFTokenizer

    run = json.loads((hf_run / "run.json").read_text())
    tokenizer = HFTokenizer(hf_run / "tokenizer")
    assert run["prompt"][0] == tokenizer.bos_id  # the prompt is encoded with its BOS, as transformers does
    code, out, err = sample(hf_run, "--prompt", PROMPT, "--max-new-tokens", "20", "--temperature", "0")
    ids = run["prompt"] + run["greedy"][: run["stop"]]
    expected = tokenizer.decode(ids)[len(tokenizer.decode(run["prompt"])) :]  # the continuation, EOS not printed
    assert code == 0 and err == "" and out == PROMPT + expected + "\n"
    assert run["stop"] < 20 and "<|eot_id|>" not in out


def test_the_hf_stream_prints_whole_characters_and_word_start_spaces(tmp_path: Path):
    pytest.importorskip("transformers")
    from data.hf_tokenizer import HFTokenizer
    from tests.hf_tokenizers import save_byte_level_bpe, save_sentencepiece_style

    text = " héllo wörld, 日本語 🎉 and more words\n  indented"
    for save in (save_byte_level_bpe, save_sentencepiece_style):
        tokenizer = HFTokenizer(save(tmp_path / save.__name__))
        prompt, continuation = tokenizer.encode("say:", add_special_tokens=True), tokenizer.encode(text)
        stream = generate_tool.text_stream(tokenizer, prompt)
        pieces = [stream.add(token) for token in continuation] + [stream.finish()]
        whole = tokenizer.decode(prompt + continuation)[len(tokenizer.decode(prompt)) :]
        assert "".join(pieces) == whole and "\ufffd" not in "".join(pieces), save.__name__
        assert sum(1 for piece in pieces if piece) > 5  # streamed, not held to the end


def test_generate_passes_use_cache_to_a_model_that_takes_it(lm_run: Path, monkeypatch):
    seen = []

    def with_cache(self, idx, max_new_tokens, temperature=1.0, top_k=None, generator=None, use_cache=False):
        seen.append(use_cache)
        yield from ()

    def without(self, idx, max_new_tokens, temperature=1.0, top_k=None, generator=None):
        seen.append("none")
        yield from ()

    for method in (with_cache, without):
        monkeypatch.setattr(GPT, "generate", method)
        assert sample(lm_run, "--max-new-tokens", "3")[0] == 0
    assert seen == [True, "none"]


def test_a_bad_hf_tokenizer_folder_is_one_error_line(hf_run: Path, tmp_path: Path):
    config = yaml.safe_load((hf_run / "lm.yaml").read_text())
    config["data"]["train"]["tokenizer"]["path"] = str(tmp_path)  # a folder without tokenizer.json
    write_config(tmp_path / "bad.yaml", config)
    code, out, err = call(generate_tool, "-c", str(tmp_path / "bad.yaml"), "--weights", str(hf_run / "lm.pth"))
    assert code == 2 and out == "" and err.count("\n") == 1
    assert err.startswith(
        f"error: config key data.train: dataset TextTokens: tokenizer path {str(tmp_path)!r} is a tokenizer directory "
        "without tokenizer.json; "
    )


# -- --chat: the prompt as a user turn of the chat template, stopping at end-of-turn ---------------------

CHAT_PROMPT = "What is 2+3?"
CHAT_MODEL = {**HF_MODEL, "block_size": 64}  # the rendered prompt is 34 tokens
# Llama 3's layout, but <|eot_id|> only after an assistant's reply: the prompt holds neither it nor the EOS
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n{{ m['content'] }}"
    "{% if m['role'] == 'assistant' %}<|eot_id|>{% else %}\n\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)


@pytest.fixture(scope="module")
def chat_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Llama 3 style tokenizer whose EOS (<|end_of_text|>) is not its end-of-turn token (<|eot_id|>), a
    ChatJSONL config, and random GPT weights relabelled (as hf_run's) so that greedy sampling after the
    rendered prompt emits <|eot_id|> at step `stop` (run.json: the prompt's ids, the greedy ids, `stop`)."""
    pytest.importorskip("transformers")
    from data.chat_template import ChatTemplate
    from data.hf_tokenizer import HFTokenizer
    from tests.hf_tokenizers import save_llama3_style

    directory = tmp_path_factory.mktemp("generate_chat")
    folder = save_llama3_style(directory / "tokenizer", eos_token="<|end_of_text|>", chat_template=CHAT_TEMPLATE)
    conversation = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}
    (directory / "chat.jsonl").write_text(json.dumps(conversation) + "\n")
    chat = {"type": "ChatJSONL", "path": str(directory / "chat.jsonl"), "tokenizer": {"type": "hf", "path": str(folder)}}
    write_config(
        directory / "chat.yaml",
        {
            "name": "chat",
            "device": "cpu",
            "model": {"type": "GPT", **CHAT_MODEL},
            "loss": {"type": "TokenCrossEntropy"},
            "data": {"batch_size": 1, "train": {**chat, "max_length": 32}},
            "optimizer": {"type": "AdamW", "lr": 1e-3},
            "train": {"total_iters": 1},
        },
    )
    tokenizer = HFTokenizer(folder)
    eot = tokenizer.hf.token_to_id("<|eot_id|>")
    prompt = ChatTemplate(tokenizer).encode([{"role": "user", "content": CHAT_PROMPT}], add_generation_prompt=True)
    torch.manual_seed(0)
    model = GPT(**CHAT_MODEL).eval()
    greedy = [int(t) for t in model.generate(torch.tensor([prompt]), 20, temperature=0)]
    stop = next(k for k in range(3, 20) if greedy[k] not in prompt + greedy[:k])
    assert not {eot, tokenizer.eos_id} & set(prompt + greedy[:stop])  # else choose another seed
    swap = [greedy[stop], eot]
    with torch.no_grad():
        for parameter in model.parameters():  # tied embedding and head: one tensor, swapped once
            if parameter.shape[0] == CHAT_MODEL["vocab_size"]:
                parameter[swap] = parameter[swap[::-1]].clone()
    torch.save({"params": model.state_dict()}, directory / "chat.pth")
    (directory / "run.json").write_text(json.dumps({"prompt": prompt, "greedy": greedy, "stop": stop}))
    return directory


def test_chat_prompts_with_the_template_and_prints_the_reply_up_to_end_of_turn(chat_run: Path):
    from data.hf_tokenizer import HFTokenizer

    transformers = pytest.importorskip("transformers")
    run = json.loads((chat_run / "run.json").read_text())
    reference = transformers.AutoTokenizer.from_pretrained(chat_run / "tokenizer")
    messages = [{"role": "user", "content": CHAT_PROMPT}]
    assert run["prompt"] == reference.apply_chat_template(messages, add_generation_prompt=True)["input_ids"]
    argv = ["-c", str(chat_run / "chat.yaml"), "--weights", str(chat_run / "chat.pth"), "--chat", "--prompt", CHAT_PROMPT]
    code, out, err = call(generate_tool, *argv, "--temperature", "0", "--max-new-tokens", "20")
    tokenizer = HFTokenizer(chat_run / "tokenizer")
    ids = run["prompt"] + run["greedy"][: run["stop"]]
    reply = tokenizer.decode(ids)[len(tokenizer.decode(run["prompt"])) :]
    assert code == 0 and err == "" and out == reply + "\n"
    assert CHAT_PROMPT not in out and "<|eot_id|>" not in out and 3 <= run["stop"] < 20
    code, out, err = call(generate_tool, *argv, "--temperature", "0", "--max-new-tokens", str(run["stop"] - 1))
    assert code == 0 and out == tokenizer.decode(ids[:-1])[len(tokenizer.decode(run["prompt"])) :] + "\n"  # cut short


def test_chat_with_a_lora_runs_adapters_puts_them_on_the_configs_base(chat_run: Path):
    """A LoRA run's .pth holds its adapters only: the tool rebuilds the run's model (train.lora on
    the config's pretrain_path) and samples what that model, adapters unmerged, samples."""
    from data.chat_template import ChatTemplate
    from data.hf_tokenizer import HFTokenizer
    from trainer.config.schema import LoraConfig
    from trainer.lora import adapter_keys, apply_lora

    config = yaml.safe_load((chat_run / "chat.yaml").read_text())
    config["pretrain_path"] = str(chat_run / "chat.pth")
    config["train"]["lora"] = {"rank": 2, "alpha": 4, "targets": ["c_attn", "c_fc"]}
    write_config(chat_run / "chat_lora.yaml", config)
    model = GPT(**CHAT_MODEL)
    model.load_state_dict(torch.load(chat_run / "chat.pth", weights_only=True)["params"])
    apply_lora(model, LoraConfig(**config["train"]["lora"]))
    torch.manual_seed(1)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:  # zero at initialisation: the adapters would change nothing
                parameter.normal_(std=0.5)
    adapters = {key: value for key, value in model.state_dict().items() if key in adapter_keys(model)}
    torch.save({"params": adapters}, chat_run / "adapters.pth")
    tokenizer = HFTokenizer(chat_run / "tokenizer")
    prompt = ChatTemplate(tokenizer).encode([{"role": "user", "content": CHAT_PROMPT}], add_generation_prompt=True)
    new = 8
    greedy = [int(t) for t in model.eval().generate(torch.tensor([prompt]), new, temperature=0)]
    stops = {tokenizer.hf.token_to_id("<|eot_id|>"), tokenizer.eos_id}
    reply_ids = greedy[: next((k for k, token in enumerate(greedy) if token in stops), new)]
    run = json.loads((chat_run / "run.json").read_text())
    assert reply_ids != run["greedy"][: len(reply_ids)]  # the adapters change what is sampled
    argv = ["-c", str(chat_run / "chat_lora.yaml"), "--weights", str(chat_run / "adapters.pth"), "--chat"]
    code, out, err = call(generate_tool, *argv, "--prompt", CHAT_PROMPT, "--temperature", "0", "--max-new-tokens", str(new))
    assert (code, err) == (0, "")
    assert out == tokenizer.decode(prompt + reply_ids)[len(tokenizer.decode(prompt)) :] + "\n"


def test_chat_without_a_chat_template_is_one_error_line(lm_run: Path, tmp_path: Path):
    code, out, err = sample(lm_run, "--chat", "--prompt", "Hi")  # tokenizer: bytes
    assert code == 2 and out == "" and err.count("\n") == 1
    assert err.startswith("error: --chat needs a chat template, and data.train's tokenizer (ByteTokenizer) has none; ")
    pytest.importorskip("transformers")
    from tests.hf_tokenizers import DEFAULT_TEXT, save_byte_level_bpe

    folder = save_byte_level_bpe(tmp_path / "tokenizer")  # no chat_template
    config = yaml.safe_load((lm_run / "lm.yaml").read_text())
    (tmp_path / "corpus.txt").write_text(DEFAULT_TEXT[:3000])
    text = {"type": "TextTokens", "root": str(tmp_path / "corpus.txt"), "block_size": 16, "cache_dir": str(tmp_path / "cache")}
    config["data"]["train"] = {**text, "tokenizer": {"type": "hf", "path": str(folder)}}
    config["model"] = {"type": "GPT", **HF_MODEL}
    write_config(tmp_path / "plain.yaml", config)
    torch.save({"params": GPT(**HF_MODEL).state_dict()}, tmp_path / "plain.pth")
    code, out, err = call(generate_tool, "-c", str(tmp_path / "plain.yaml"), "--weights", str(tmp_path / "plain.pth"), "--chat")
    assert (
        code == 2
        and out == ""
        and err
        == (
            f"error: --chat: the tokenizer at {folder.resolve()} has no chat_template; add a chat_template.jinja to the folder "
            "(e.g. the instruct model's, or tokenizer.chat_template = ...; tokenizer.save_pretrained(DIR) with transformers)\n"
        )
    )
