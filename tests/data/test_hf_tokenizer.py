"""data/hf_tokenizer.py: `tokenizer: {type: hf, path: DIR}` gives transformers' ids, specials and
chat template, serves TextTokens (cache keyed by its fingerprint) and is one error line for a bad folder."""

from __future__ import annotations

import json
import pickle
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

import data.text as text_module
from data.hf_tokenizer import HFTokenizer
from data.text import TextTokens
from data.text_tokenizers import CorpusError, parse_tokenizer_spec
from tests.helpers import error_of, tiny_config, train_in_process
from tests.hf_tokenizers import (
    CHATML_CHAT_TEMPLATE,
    DEFAULT_TEXT,
    LLAMA3_CHAT_TEMPLATE,
    save_byte_level_bpe,
    save_chatml_style,
    save_llama3_style,
    save_sentencepiece_style,
)
from trainer.config import Component
from trainer.registry import DATASETS, build

transformers = pytest.importorskip("transformers")

STYLES = {
    "gpt2": save_byte_level_bpe,
    "llama3": save_llama3_style,
    "chatml": save_chatml_style,
    "sentencepiece": save_sentencepiece_style,
}
TEXTS = [
    "hello world",
    "héllo wörld, 日本語 and 🎉!",
    "  two  spaces\n\n\tand a tab \n",
    "a <|eot_id|> b <|endoftext|> c <s> </s> <|im_start|>user",  # special-token strings inside text
    "def f(x):\n    return x * 2  # ça\n",
    "",
]
CORPUS = DEFAULT_TEXT[:3000] + "\n# ça va très bien 日本\n" * 3


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One saved tokenizer folder per style."""
    root = tmp_path_factory.mktemp("tokenizers")
    return {name: save(root / name) for name, save in STYLES.items()}


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    path = tmp_path / "corpus.txt"
    path.write_text(CORPUS, encoding="utf-8")
    return path


def copy_of(folder: Path, tmp_path: Path, name: str = "copy") -> Path:
    """A copy of a tokenizer folder that a test may edit."""
    return Path(shutil.copytree(folder, tmp_path / name))


def edit_config(folder: Path, **changes) -> None:
    """Set (or, with None, remove) keys of the folder's tokenizer_config.json."""
    path = folder / "tokenizer_config.json"
    config = json.loads(path.read_text())
    for key, value in changes.items():
        if value is None:
            config.pop(key, None)
        else:
            config[key] = value
    path.write_text(json.dumps(config))


def assert_same_as_transformers(folder: Path) -> None:
    """encode (with and without specials) and decode (with and without skipping them) equal AutoTokenizer's."""
    ours, theirs = HFTokenizer(folder), transformers.AutoTokenizer.from_pretrained(folder)
    assert ours.vocab_size == len(theirs)
    for text in TEXTS:
        for add in (True, False):
            ids = ours.encode(text, add_special_tokens=add)
            assert ids == theirs(text, add_special_tokens=add)["input_ids"], (text, add)
            for skip in (True, False):
                assert ours.decode(ids, skip_special_tokens=skip) == theirs.decode(ids, skip_special_tokens=skip), (text, skip)


@pytest.mark.parametrize("style", list(STYLES))
def test_ids_and_text_are_transformers_ones(folders: dict[str, Path], style: str):
    assert_same_as_transformers(folders[style])


def test_llama3_adds_its_bos_only_with_special_tokens(folders: dict[str, Path]):
    tokenizer = HFTokenizer(folders["llama3"])
    plain = tokenizer.encode("hello")
    assert tokenizer.encode("hello", add_special_tokens=True) == [tokenizer.bos_id, *plain]
    assert tokenizer.decode([tokenizer.bos_id, *plain], skip_special_tokens=True) == "hello"
    gpt2 = HFTokenizer(folders["gpt2"])  # GPT-2 adds nothing
    assert gpt2.encode("hello", add_special_tokens=True) == gpt2.encode("hello")


def test_specials_and_chat_template_are_read_from_the_folder(folders: dict[str, Path]):
    llama3 = HFTokenizer(folders["llama3"])
    ids = {token: llama3.hf.token_to_id(token) for token in ("<|begin_of_text|>", "<|eot_id|>", "<|end_of_text|>")}
    assert (llama3.bos_id, llama3.eos_id, llama3.pad_id, llama3.unk_id) == (
        ids["<|begin_of_text|>"],
        ids["<|eot_id|>"],
        ids["<|end_of_text|>"],
        None,
    )
    assert llama3.special_tokens == {"bos": "<|begin_of_text|>", "eos": "<|eot_id|>", "pad": "<|end_of_text|>"}
    assert llama3.chat_template == LLAMA3_CHAT_TEMPLATE  # from chat_template.jinja, as save_pretrained writes it
    assert llama3.files == ["tokenizer.json", "tokenizer_config.json", "chat_template.jinja"]
    assert llama3.path == str(folders["llama3"].resolve())
    chatml = HFTokenizer(folders["chatml"])
    assert chatml.bos_id is None and chatml.eos_id == chatml.hf.token_to_id("<|im_end|>")
    assert chatml.chat_template == CHATML_CHAT_TEMPLATE
    assert HFTokenizer(folders["gpt2"]).chat_template is None


def test_a_chat_template_in_tokenizer_config_json_is_read_and_the_jinja_file_wins(folders, tmp_path: Path):
    folder = copy_of(folders["chatml"], tmp_path)
    (folder / "chat_template.jinja").unlink()
    edit_config(folder, chat_template="{{ messages[0]['content'] }}")
    assert HFTokenizer(folder).chat_template == "{{ messages[0]['content'] }}"
    edit_config(folder, chat_template=[{"name": "default", "template": "A"}, {"name": "tool_use", "template": "B"}])
    assert HFTokenizer(folder).chat_template == {"default": "A", "tool_use": "B"}
    (folder / "chat_template.jinja").write_text("C")
    assert HFTokenizer(folder).chat_template == "C"


def test_special_tokens_map_json_and_token_dicts_are_read_as_transformers_reads_them(folders, tmp_path: Path):
    folder = copy_of(folders["llama3"], tmp_path)
    edit_config(folder, eos_token=None, bos_token={"content": "<|begin_of_text|>", "lstrip": False, "__type": "AddedToken"})
    (folder / "special_tokens_map.json").write_text(json.dumps({"eos_token": {"content": "<|end_of_text|>"}}))
    tokenizer = HFTokenizer(folder)
    assert tokenizer.special_tokens["bos"] == "<|begin_of_text|>"
    assert tokenizer.eos_id == tokenizer.hf.token_to_id("<|end_of_text|>")
    assert tokenizer.files == ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja"]
    assert transformers.AutoTokenizer.from_pretrained(folder).eos_token_id == tokenizer.eos_id


def test_a_named_special_token_the_vocabulary_lacks_is_added_as_transformers_adds_it(folders, tmp_path: Path):
    folder = copy_of(folders["gpt2"], tmp_path)
    edit_config(folder, pad_token="<pad>")
    tokenizer = HFTokenizer(folder)
    assert tokenizer.vocab_size == 301 and tokenizer.pad_id == 300
    assert tokenizer.encode("a <pad> b") == tokenizer.encode("a ") + [300] + tokenizer.encode(" b")
    assert_same_as_transformers(folder)


@pytest.mark.parametrize("flags", [{"add_bos_token": True, "add_eos_token": True}, {"add_bos_token": False}])
def test_add_bos_token_in_the_config_does_not_override_tokenizer_json_as_in_transformers_5(folders, tmp_path, flags):
    folder = copy_of(folders["llama3" if flags == {"add_bos_token": False} else "gpt2"], tmp_path)
    before = HFTokenizer(folder).encode("x", add_special_tokens=True)
    edit_config(folder, **flags)
    assert HFTokenizer(folder).encode("x", add_special_tokens=True) == before
    assert_same_as_transformers(folder)


def test_split_special_tokens_in_the_config_encodes_their_strings_as_text(folders, tmp_path: Path):
    folder = copy_of(folders["llama3"], tmp_path)
    edit_config(folder, split_special_tokens=True)
    tokenizer = HFTokenizer(folder)
    assert tokenizer.eos_id not in tokenizer.encode("a <|eot_id|> b")
    assert tokenizer.fingerprint() != HFTokenizer(folders["llama3"]).fingerprint()
    assert_same_as_transformers(folder)


def test_truncation_and_padding_saved_in_tokenizer_json_do_not_cut_a_text(folders, tmp_path: Path):
    folder = copy_of(folders["gpt2"], tmp_path)
    path = folder / "tokenizer.json"
    document = json.loads(path.read_text())
    document["truncation"] = {"direction": "Right", "max_length": 4, "strategy": "LongestFirst", "stride": 0}
    path.write_text(json.dumps(document))
    assert len(HFTokenizer(folder).encode(DEFAULT_TEXT[:500])) > 4


def test_token_bytes_are_exact_for_byte_level_bpe_and_zero_for_specials(folders: dict[str, Path]):
    for style in ("gpt2", "llama3", "chatml"):
        tokenizer = HFTokenizer(folders[style])
        sizes = tokenizer.token_bytes()
        assert sizes.shape == (tokenizer.vocab_size,) and str(sizes.dtype) == "torch.int64"
        for text in TEXTS[:3] + TEXTS[4:] + [CORPUS]:
            assert int(sizes[tokenizer.encode(text)].sum()) == len(text.encode("utf-8")), (style, text)
        specials = [index for index, token in tokenizer.hf.get_added_tokens_decoder().items() if token.special]
        assert specials and all(sizes[index] == 0 for index in specials)


def test_token_bytes_of_a_sentencepiece_tokenizer_count_word_start_spaces_and_fallback_bytes(folders):
    tokenizer = HFTokenizer(folders["sentencepiece"])
    sizes = tokenizer.token_bytes()
    assert not tokenizer.byte_level
    assert sizes[tokenizer.hf.token_to_id("<0xE6>")] == 1 and sizes[tokenizer.bos_id] == 0
    words = [piece for piece in tokenizer.hf.get_vocab() if piece.startswith("▁") and len(piece) > 2]
    assert words and all(sizes[tokenizer.hf.token_to_id(word)] == len(word) for word in words)  # "▁the": " the", 4 bytes
    for text in TEXTS[:3] + [CORPUS]:  # the one approximation: the word-start space put before the first word
        gap = int(sizes[tokenizer.encode(text)].sum()) - len(text.encode("utf-8"))
        assert gap == (0 if text[0] == " " else 1), text


def test_the_fingerprint_follows_what_decides_the_ids_not_the_folder(folders, tmp_path: Path):
    original = HFTokenizer(folders["llama3"]).fingerprint()
    moved = copy_of(folders["llama3"], tmp_path, "moved")
    assert HFTokenizer(moved).fingerprint() == original
    edit_config(moved, eos_token="<|end_of_text|>")
    assert HFTokenizer(moved).fingerprint() != original
    retrained = save_llama3_style(tmp_path / "retrained", vocab_size=290)
    assert HFTokenizer(retrained).fingerprint() != original


def test_the_tokenizer_pickles(folders: dict[str, Path]):
    tokenizer = HFTokenizer(folders["llama3"])
    tokenizer.token_bytes()
    again = pickle.loads(pickle.dumps(tokenizer))
    assert again.encode(TEXTS[1], add_special_tokens=True) == tokenizer.encode(TEXTS[1], add_special_tokens=True)
    assert again.fingerprint() == tokenizer.fingerprint() and again.eos_id == tokenizer.eos_id


# -- the spec and TextTokens ------------------------------------------------------------------------


def test_the_spec_takes_type_hf_with_a_path_only():
    assert parse_tokenizer_spec({"type": "hf", "path": "tok"}) == {"type": "hf", "path": "tok"}
    with pytest.raises(CorpusError, match=r"tokenizer hf needs a path; use tokenizer: bytes, .* or tokenizer: \{type: hf"):
        parse_tokenizer_spec("hf")
    with pytest.raises(CorpusError, match="tokenizer type hf needs path: a folder with tokenizer.json, got None"):
        parse_tokenizer_spec({"type": "hf"})
    with pytest.raises(CorpusError, match=r"has unknown keys \['vocab_size'\]"):
        parse_tokenizer_spec({"type": "hf", "path": "tok", "vocab_size": 300})


def hf_tokens(corpus: Path, folder: Path, split: str = "train", **kwargs) -> TextTokens:
    kwargs.setdefault("cache_dir", str(corpus.parent / "cache"))
    return TextTokens(root=str(corpus), split=split, block_size=8, tokenizer={"type": "hf", "path": str(folder)}, **kwargs)


def count_tokenisations(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    real = text_module.tokenise_corpus
    monkeypatch.setattr(text_module, "tokenise_corpus", lambda *args, **kwargs: calls.append(1) or real(*args, **kwargs))
    return calls


def test_text_tokens_encode_the_corpus_as_one_stream_without_added_specials(folders, corpus: Path):
    train, val = hf_tokens(corpus, folders["llama3"]), hf_tokens(corpus, folders["llama3"], "val")
    tokenizer = train.tokenizer
    assert isinstance(tokenizer, HFTokenizer) and train.vocab_size == tokenizer.vocab_size == 300
    data = CORPUS.encode("utf-8")
    cut = text_module.split_point(data, 0.1)
    expected = tokenizer.encode(data[:cut].decode()) + tokenizer.encode(data[cut:].decode())  # no BOS
    assert train.tokens.tolist() == expected and train.tokens.dtype == np.uint16
    assert train.num_bytes + val.num_bytes == len(data) == int(train.token_bytes[train.tokens.astype(np.int64)].sum())
    assert not list(train.cache_path.parent.glob("*.tokenizer.json"))  # read from its folder, not saved beside the cache
    assert train.identity()["tokenizer"] == {
        "type": "hf",
        "vocab_size": 300,
        "sha256": tokenizer.fingerprint(),
    }  # not the folder: the same files elsewhere are the same tokenizer
    assert train.identity()["tokenizer"] == val.identity()["tokenizer"]


def test_the_cache_is_keyed_by_the_tokenizers_fingerprint(folders, corpus: Path, tmp_path: Path, monkeypatch):
    calls = count_tokenisations(monkeypatch)
    folder = copy_of(folders["gpt2"], tmp_path, "tok")
    first = hf_tokens(corpus, folder)
    hf_tokens(corpus, folder, "val")
    moved = hf_tokens(corpus, copy_of(folder, tmp_path, "moved"))  # the same tokenizer elsewhere: the same cache
    assert len(calls) == 1 and moved.cache_path == first.cache_path
    save_byte_level_bpe(folder, vocab_size=280)  # tokenizer.json edited in place
    again = hf_tokens(corpus, folder)
    assert len(calls) == 2 and again.cache_path != first.cache_path and again.vocab_size == 280
    assert int(again.tokens.max()) < 280


def test_a_special_token_written_in_the_corpus_is_its_id_and_counts_no_bytes(folders, tmp_path: Path):
    corpus = tmp_path / "documents.txt"
    corpus.write_text("first document\n<|endoftext|>second one\n" * 20, encoding="utf-8")
    dataset = hf_tokens(corpus, folders["gpt2"], val_fraction=0.5)
    train = dataset.tokens[: dataset.num_tokens].astype(np.int64)
    assert int((train == dataset.tokenizer.eos_id).sum()) == 10  # the training half's separators
    assert dataset.num_bytes == corpus.stat().st_size // 2
    assert int(dataset.token_bytes[train].sum()) == dataset.num_bytes - 10 * len("<|endoftext|>")


def test_a_sentencepiece_tokenizer_serves_text_tokens(folders, corpus: Path):
    dataset = hf_tokens(corpus, folders["sentencepiece"])
    assert dataset.vocab_size == 559 and dataset.num_bytes == text_module.split_point(CORPUS.encode(), 0.1)
    assert CORPUS.startswith(dataset.tokenizer.decode(dataset.tokens[:40].tolist()))


def test_a_vocabulary_over_65536_ids_is_stored_as_uint32(folders, tmp_path: Path):
    from tokenizers import AddedToken, Tokenizer

    folder = copy_of(folders["gpt2"], tmp_path)
    big = Tokenizer.from_file(str(folder / "tokenizer.json"))
    big.add_tokens([AddedToken(f"w{i:05d}x", normalized=False) for i in range(65_300)])
    big.save(str(folder / "tokenizer.json"))
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("one w65299x two " * 30, encoding="utf-8")
    dataset = hf_tokens(corpus, folder)
    assert dataset.vocab_size == 65_600 and dataset.tokens.dtype == np.uint32 and int(dataset.tokens.max()) == 65_599


def lm_run(corpus: Path, folder: Path, cache: Path, vocab_size: int) -> dict:
    """A tiny GPT run over `corpus` with the hf tokenizer in `folder`: 4 iterations, bpb validated."""
    text = {"type": "TextTokens", "root": str(corpus), "block_size": 8, "cache_dir": str(cache)}
    text["tokenizer"] = {"type": "hf", "path": str(folder)}
    return tiny_config(
        name="lm",
        model={"type": "GPT", "vocab_size": vocab_size, "block_size": 8, "n_layer": 1, "n_head": 2, "n_embd": 16},
        loss={"type": "TokenCrossEntropy"},
        metrics=["bpb"],
        data={"batch_size": 4, "val_batch_size": 16, "train": text, "val": {**text, "split": "val"}},
        scheduler=None,
        train={"total_iters": 4, "val_interval": 4},
        val={"metric": "bpb", "mode": "min"},
        checkpoint={"interval": 4},
    )


def test_a_gpt_trains_on_an_hf_tokenizers_tokens_and_records_its_identity(folders, corpus: Path, workdir: Path):
    import torch

    assert train_in_process(workdir, lm_run(corpus, folders["llama3"], workdir / "cache", 300)) == 0
    saved = torch.load(workdir / "weights" / "lm_iter_4.pt", weights_only=True)
    assert saved["data"]["train"]["tokenizer"]["type"] == "hf"
    assert saved["data"]["train"]["tokenizer"]["sha256"] == HFTokenizer(folders["llama3"]).fingerprint()


def test_a_vocabulary_larger_than_the_models_embedding_is_exit_2(folders, corpus: Path, workdir: Path):
    document = lm_run(corpus, folders["llama3"], workdir / "cache", 256)
    assert error_of(lambda: train_in_process(workdir, document)) == (
        "config key model.vocab_size: 256 is smaller than the tokenizer's 300 tokens of data.train; "
        "set model.vocab_size to at least 300"
    )


# -- bad folders ------------------------------------------------------------------------------------


def build_error(corpus: Path, path: Path | str) -> str:
    """The one-line error of building TextTokens over `corpus` with `tokenizer: {type: hf, path: path}`."""
    component = Component(
        "TextTokens",
        {
            "root": str(corpus),
            "block_size": 8,
            "cache_dir": str(corpus.parent / "cache"),
            "tokenizer": {"type": "hf", "path": str(path)},
        },
    )
    return error_of(lambda: build(DATASETS, component, key="data.train"))


PREFIX = "config key data.train: dataset TextTokens: "


def test_a_missing_folder_or_a_file_is_one_line(corpus: Path, tmp_path: Path):
    missing = tmp_path / "nope"
    assert build_error(corpus, missing) == (
        f"{PREFIX}tokenizer path {str(missing)!r} is not a directory; give tokenizer: {{type: hf, path: DIR}} with DIR a "
        "model folder holding tokenizer.json (e.g. one saved by transformers' save_pretrained)"
    )
    assert (
        build_error(corpus, corpus)
        == f"{PREFIX}tokenizer path {str(corpus)!r} is a file; give the folder that holds tokenizer.json"
    )


def test_a_folder_without_tokenizer_json_says_how_to_convert_a_slow_tokenizer(corpus: Path, tmp_path: Path):
    folder = tmp_path / "slow"
    folder.mkdir()
    (folder / "tokenizer_config.json").write_text("{}")
    message = build_error(corpus, folder)
    assert message.startswith(f"{PREFIX}tokenizer path {str(folder)!r} is a tokenizer directory without tokenizer.json; ")
    assert "AutoTokenizer.from_pretrained('DIR').save_pretrained('DIR')" in message
    (folder / "tokenizer.model").write_bytes(b"\x0a\x05sentencepiece")
    assert build_error(corpus, folder) == (
        f"{PREFIX}tokenizer path {str(folder)!r} has tokenizer.model (a slow SentencePiece tokenizer) but no tokenizer.json; "
        f'convert it once with transformers: python -c "from transformers import AutoTokenizer; '
        f"AutoTokenizer.from_pretrained('{folder}').save_pretrained('{folder}')\""
    )


def test_a_corrupt_tokenizer_json_or_config_is_one_line(folders, corpus: Path, tmp_path: Path):
    folder = copy_of(folders["gpt2"], tmp_path)
    (folder / "tokenizer.json").write_text('{"version": "1.0", "model": {"type": "Nonsense"}}')
    message = build_error(corpus, folder)
    assert message.startswith(f"{PREFIX}{folder / 'tokenizer.json'} cannot be read by tokenizers ")
    assert message.endswith(
        "; replace it with the model's original tokenizer.json (a newer format needs pip install -U tokenizers)"
    )
    (folder / "tokenizer.json").write_bytes(b"\x00\xff not json")
    assert "tokenizer.json cannot be read by tokenizers" in build_error(corpus, folder)
    shutil.copy(folders["gpt2"] / "tokenizer.json", folder / "tokenizer.json")
    (folder / "tokenizer_config.json").write_text("{not json")
    assert build_error(corpus, folder).startswith(f"{PREFIX}{folder / 'tokenizer_config.json'} is not valid JSON (")


def test_missing_tokenizers_package_names_the_pip_command(folders, corpus: Path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tokenizers", None)  # makes `import tokenizers` raise ImportError
    assert build_error(corpus, folders["gpt2"]) == (
        f"{PREFIX}tokenizer type hf needs the `tokenizers` package, which is not installed; "
        "run `pip install tokenizers` (or use tokenizer: bytes)"
    )
