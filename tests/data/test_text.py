"""data/text.py: TextTokens windows, the split, the token cache (rebuild, reuse, concurrency), BPE and bad inputs."""

from __future__ import annotations

import glob
import multiprocessing
import os
import pickle
import sys
import sysconfig
import time
from pathlib import Path

import pytest
import torch

import data.text as text_module
from data.text import IGNORE_INDEX, TextTokens, corpus_files
from trainer.config import Component
from trainer.errors import InputError
from trainer.registry import DATASETS, build

# 1,260 bytes with two-byte characters, so the split and BPE meet multi-byte UTF-8.
TEXT = "".join(f"def f{i}(x):\n    return x * {i}  # héllo wörld\n" for i in range(30))


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    path = tmp_path / "corpus.txt"
    path.write_text(TEXT, encoding="utf-8")
    return path


def tokens(corpus: Path, split: str = "train", block_size: int = 8, **kwargs) -> TextTokens:
    kwargs.setdefault("cache_dir", str(corpus.parent / "cache"))
    return TextTokens(root=str(corpus), split=split, block_size=block_size, **kwargs)


def count_tokenisations(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    real = text_module.tokenise_corpus

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(text_module, "tokenise_corpus", counting)
    return calls


def test_training_sample_i_is_the_window_at_offset_i_with_targets_shifted_by_one(corpus: Path):
    data = TEXT.encode("utf-8")
    train = tokens(corpus)
    assert train.vocab_size == 256 and train.tokens_per_sample == 8
    assert len(train) == train.num_tokens - 8
    assert train.num_tokens == round(len(data) * 0.9)
    inputs, targets = train[37]
    assert inputs.dtype == targets.dtype == torch.int64 and inputs.shape == targets.shape == (8,)
    assert inputs.tolist() == list(data[37:45]) and targets.tolist() == list(data[38:46])


def test_get_batch_equals_stacking_getitem(corpus: Path):
    for split in ("train", "val"):
        dataset = tokens(corpus, split)
        indices = torch.tensor([len(dataset) - 1, 0, 3, 3])
        inputs, targets = dataset.get_batch(indices, lambda: torch.zeros(4, dtype=torch.int64))
        assert inputs.shape == targets.shape == (4, 8)
        assert torch.equal(inputs, torch.stack([dataset[i][0] for i in indices.tolist()]))
        assert torch.equal(targets, torch.stack([dataset[i][1] for i in indices.tolist()]))


def test_val_windows_score_every_val_token_after_the_first_exactly_once(corpus: Path):
    val = tokens(corpus, "val", block_size=10)
    inputs, targets = val.get_batch(torch.arange(len(val)), lambda: None)
    n_val = val.num_tokens
    assert len(val) == -(-(n_val - 1) // 10)
    assert int((targets != IGNORE_INDEX).sum()) == n_val - 1
    stream = list(TEXT.encode("utf-8")[-n_val:])
    assert targets[targets != IGNORE_INDEX].tolist() == stream[1:]
    assert inputs.flatten()[: n_val - 1].tolist() == stream[:-1]
    assert val.num_bytes == n_val


def test_the_split_cuts_at_a_character_boundary_and_the_splits_add_up_to_the_corpus(corpus: Path):
    train, val = tokens(corpus), tokens(corpus, "val")
    size = len(TEXT.encode("utf-8"))
    assert train.num_bytes + val.num_bytes == size
    assert val.tokenizer.decode(val.tokens[train.num_tokens :].tolist())[0] != "\ufffd"


def test_the_cache_is_reused_while_the_corpus_is_unchanged_and_rebuilt_when_it_changes(corpus, monkeypatch):
    calls = count_tokenisations(monkeypatch)
    first = tokens(corpus)
    tokens(corpus, "val")  # the other split: the same cache
    tokens(corpus, block_size=4)  # another window size: the same tokens
    assert len(calls) == 1
    corpus.write_text(TEXT + "one more line\n", encoding="utf-8")
    changed = tokens(corpus)
    assert len(calls) == 2 and changed.cache_path != first.cache_path
    assert changed.num_tokens > first.num_tokens
    tokens(corpus, val_fraction=0.2)  # another split point: tokenised again
    assert len(calls) == 3


def build_in_child(root: str, cache: str, marker: Path, wait_for: Path | None, out: Path) -> None:
    """Build TextTokens in a forked process, tokenising slowly; write what it read to `out`."""
    while wait_for is not None and not wait_for.exists():  # the second process asks once the first builds
        time.sleep(0.01)
    real = text_module.tokenise_corpus

    def slow(*args):
        marker.touch()  # this process holds the lock and is building
        time.sleep(1.0)
        return real(*args)

    text_module.tokenise_corpus = slow
    dataset = TextTokens(root=root, block_size=8, cache_dir=cache)
    out.write_text(f"{dataset.num_tokens} {int(dataset.tokens.astype('int64').sum())}")


def test_a_concurrent_second_process_waits_for_the_cache_and_reuses_it(corpus: Path, tmp_path: Path):
    # Forked, like DataLoader workers: two processes with their own lock file handles, no torch import to wait for.
    context = multiprocessing.get_context("fork")
    cache, built, outs = str(tmp_path / "cache"), [tmp_path / "first_built", tmp_path / "second_built"], []
    processes = []
    for k, wait_for in enumerate((None, built[0])):
        outs.append(tmp_path / f"out{k}")
        processes.append(context.Process(target=build_in_child, args=(str(corpus), cache, built[k], wait_for, outs[k])))
        processes[-1].start()
    for process in processes:
        process.join(timeout=60)
    assert [process.exitcode for process in processes] == [0, 0]
    assert built[0].exists() and not built[1].exists()  # the second never tokenised: it waited, then read the cache
    data = TEXT.encode("utf-8")
    assert outs[0].read_text() == outs[1].read_text() == f"{round(len(data) * 0.9)} {sum(data)}"  # the whole stream


def test_bpe_round_trips_text_and_its_token_bytes_add_up_to_num_bytes(corpus: Path):
    spec = {"type": "bpe", "vocab_size": 300}
    train, val = tokens(corpus, tokenizer=spec), tokens(corpus, "val", tokenizer=spec)
    assert 256 < train.vocab_size <= 300 and train.token_bytes.shape == (train.vocab_size,)
    assert train.num_tokens < train.num_bytes  # merges happened
    sample = "def f7(x):\n    return 'wörld' + ünïcode"
    assert train.tokenizer.decode(train.tokenizer.encode(sample)) == sample
    for split in (train, val):
        stream = torch.from_numpy(split.tokens.astype("int64"))[split._start : split._start + split.num_tokens]
        assert int(split.token_bytes[stream].sum()) == split.num_bytes
    assert train.num_bytes + val.num_bytes == len(TEXT.encode("utf-8"))
    assert train.cache_path.with_name(train.cache_path.stem + ".tokenizer.json").is_file()  # beside the cache


def test_bpe_is_loaded_from_its_saved_file_when_the_cache_is_reused(corpus, monkeypatch):
    spec = {"type": "bpe", "vocab_size": 300}
    first = tokens(corpus, tokenizer=spec)
    calls = count_tokenisations(monkeypatch)
    again = tokens(corpus, "val", tokenizer=spec)
    assert not calls and again.tokenizer.encode(TEXT[:200]) == first.tokenizer.encode(TEXT[:200])


def test_the_dataset_pickles_without_its_memory_map(corpus: Path):
    dataset = tokens(corpus, tokenizer={"type": "bpe", "vocab_size": 280})
    copy = pickle.loads(pickle.dumps(dataset))
    indices = torch.tensor([0, 5])
    assert all(torch.equal(a, b) for a, b in zip(dataset.get_batch(indices, None), copy.get_batch(indices, None), strict=True))


def test_default_root_is_the_running_pythons_top_level_stdlib_py_files_sorted_by_name():
    expected = sorted(glob.glob(os.path.join(sysconfig.get_paths()["stdlib"], "*.py")))
    files = corpus_files(None)
    assert [str(path) for path in files] == expected and len(files) > 100
    assert [path.name for path in files] == sorted(path.name for path in files)


def test_a_folder_root_is_every_file_under_it_sorted_by_path_without_hidden_ones(tmp_path: Path):
    for name in ("b.txt", "a/z.py", "a/y/x.md", ".git/config", "a/.hidden"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(name)
    assert [p.relative_to(tmp_path).as_posix() for p in corpus_files(str(tmp_path))] == ["a/y/x.md", "a/z.py", "b.txt"]
    listed = corpus_files([str(tmp_path / "b.txt"), str(tmp_path / "**" / "*.py"), str(tmp_path / "b.txt")])
    assert [p.name for p in listed] == ["b.txt", "z.py"]  # in the order given, each file once


def build_error(**kwargs) -> str:
    with pytest.raises(InputError) as error:
        build(DATASETS, Component("TextTokens", kwargs), key="data.train")
    return str(error.value)


def test_an_empty_corpus_is_one_line_naming_the_key(tmp_path: Path):
    (tmp_path / "empty.txt").write_bytes(b"")
    root = str(tmp_path / "empty.txt")
    assert build_error(root=root, cache_dir=str(tmp_path)) == (
        f"config key data.train: dataset TextTokens: root {root!r} is an empty corpus (1 files, 0 bytes); point it at text"
    )


def test_a_root_that_matches_nothing_is_one_line(tmp_path: Path):
    pattern = str(tmp_path / "*.txt")
    assert build_error(root=pattern) == (
        f"config key data.train: dataset TextTokens: root {pattern!r} matches no files; "
        "give a file, a folder with files, or a glob pattern that matches"
    )
    missing = str(tmp_path / "nope.txt")
    assert f"root {missing!r} does not exist" in build_error(root=missing)


def test_a_corpus_shorter_than_one_window_says_how_long_it_is_and_must_be(corpus: Path):
    message = build_error(root=str(corpus), block_size=2000, cache_dir=str(corpus.parent / "cache"))
    size = len(TEXT.encode("utf-8"))
    assert message == (
        f"config key data.train: dataset TextTokens: root {str(corpus)!r} is too short: its training split is "
        f"{round(size * 0.9)} tokens ({size} bytes in the whole corpus), shorter than one window, which needs 2001 tokens; "
        "add text to root or lower block_size"
    )


def test_a_bad_tokenizer_spec_is_one_line(corpus: Path):
    assert build_error(root=str(corpus), tokenizer="words") == (
        "config key data.train: dataset TextTokens: tokenizer 'words' is not a tokenizer spec; "
        "use tokenizer: bytes, tokenizer: {type: bpe, vocab_size: N} with N >= 256, or tokenizer: {type: hf, path: DIR} "
        "(a folder with tokenizer.json)"
    )
    small = {"type": "bpe", "vocab_size": 100}
    assert "vocab_size 100 is not an integer >= 256" in build_error(root=str(corpus), tokenizer=small)


def test_a_vocabulary_larger_than_the_models_is_caught_by_check_data(corpus: Path):
    from models.gpt import GPT

    dataset = tokens(corpus)
    with pytest.raises(InputError, match="model.vocab_size: 200 is smaller than the tokenizer's 256 tokens of data.train"):
        GPT(vocab_size=200, block_size=8, n_layer=1, n_head=1, n_embd=8).check_data(dataset)


def test_missing_tokenizers_package_names_the_pip_command(corpus, monkeypatch):
    monkeypatch.setitem(sys.modules, "tokenizers", None)  # makes `import tokenizers` raise ImportError
    with pytest.raises(InputError, match=r"run `pip install tokenizers`"):
        tokens(corpus, tokenizer={"type": "bpe", "vocab_size": 300}, cache_dir=str(corpus.parent / "other"))


def test_the_resumable_loader_fetches_whole_batches_through_get_batch(corpus: Path):
    from data.loader import build_loader

    dataset = tokens(corpus)
    loader = build_loader(dataset, batch_size=4, seed=0, train=True, num_workers=0, pin_memory=False)
    inputs, targets = next(iter(loader))
    assert inputs.shape == targets.shape == (4, 8) and torch.equal(inputs[:, 1:], targets[:, :-1])
