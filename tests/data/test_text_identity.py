"""data/text.py: what a TextTokens corpus is made of and says about itself.

Binary files are left out and counted, text that is not UTF-8 is one error line naming the file,
a rejected corpus leaves the disk as it found it, a BPE smaller than asked says so, and
`identity()` tells a changed corpus or a retrained tokenizer from the same ones.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import data.text as text_module
from data.text import TextTokens, read_corpus
from trainer.config import Component
from trainer.errors import InputError
from trainer.registry import DATASETS, build

# 1,500 bytes of UTF-8 with two-byte characters (the tokenizers and the split meet them).
TEXT = "".join(f"def g{i}(y):\n    return y + {i}  # ça va très bien\n" for i in range(30))
PYC = b"\xa7\r\r\n\x00\x00\x00\x00" + bytes(range(256))  # a .pyc header: NUL bytes up front
BPE = {"type": "bpe", "vocab_size": 300}


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """A project folder: two sources, their __pycache__ and an image."""
    root = tmp_path / "project"
    (root / "__pycache__").mkdir(parents=True)
    (root / "a.py").write_text(TEXT[:900], encoding="utf-8")
    (root / "b.py").write_text(TEXT[900:], encoding="utf-8")
    (root / "__pycache__" / "a.cpython-311.pyc").write_bytes(PYC)
    (root / "logo.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(64))
    return root


def build_error(**kwargs) -> str:
    with pytest.raises(InputError) as error:
        build(DATASETS, Component("TextTokens", kwargs), key="data.train")
    return str(error.value)


def test_binary_files_are_left_out_and_counted_and_the_rest_is_the_corpus(folder: Path, tmp_path: Path):
    dataset = TextTokens(root=str(folder), block_size=8, cache_dir=str(tmp_path / "cache"))
    assert [path.name for path in dataset.files] == ["a.py", "b.py"]
    assert sorted(path.name for path in dataset.skipped) == ["a.cpython-311.pyc", "logo.png"]
    pyc, png = folder / "__pycache__" / "a.cpython-311.pyc", folder / "logo.png"
    assert dataset.notes == [f"left out 2 binary file(s) of root (a NUL byte in the first 8,000 bytes): {pyc}, {png}"]
    val = TextTokens(root=str(folder), split="val", block_size=8, cache_dir=str(tmp_path / "cache"))
    assert dataset.identity()["corpus"]["bytes"] == len(TEXT.encode("utf-8")) == dataset.num_bytes + val.num_bytes


def test_a_root_of_binary_files_only_is_one_line(folder: Path):
    pattern = str(folder / "**" / "*.pyc")
    assert build_error(root=pattern) == (
        f"config key data.train: dataset TextTokens: root {pattern!r} has no text files: its 1 files are binary "
        f"(a NUL byte in the first 8,000 bytes), e.g. {folder / '__pycache__' / 'a.cpython-311.pyc'}; point root at text files"
    )


@pytest.mark.parametrize("tokenizer", ["bytes", BPE])
def test_a_latin1_file_is_one_line_naming_it_and_nothing_is_written(folder: Path, tmp_path: Path, tokenizer):
    (folder / "c.txt").write_bytes("# ça\n".encode("latin-1"))
    cache = tmp_path / "cache"
    assert build_error(root=str(folder), tokenizer=tokenizer, cache_dir=str(cache)) == (
        f"config key data.train: dataset TextTokens: {folder / 'c.txt'} is not UTF-8 text (byte 0xe7 at offset 2); "
        "convert it to UTF-8 (e.g. iconv -f latin1 -t utf-8) or leave it out of root"
    )
    assert not cache.exists()


def test_the_offset_of_a_bad_byte_counts_across_chunks_and_a_character_across_two_chunks_is_fine(tmp_path, monkeypatch):
    monkeypatch.setattr(text_module, "_CHUNK", 7)  # "é" (2 bytes) at offsets 6-7 straddles the first chunk's end
    good = tmp_path / "good.txt"
    good.write_bytes("abcdefé and more text\n".encode())
    assert read_corpus(str(good)).size == good.stat().st_size
    prefix = "abcdefé and more ".encode()
    for name, content, byte, offset in (
        ("late.txt", prefix + b"\xff\n", "0xff", len(prefix)),  # 0xff is never UTF-8, in the third chunk
        ("cut.txt", b"abcdef\xc3(rest\n", "0xc3", 6),  # a lead byte ending chunk one, no continuation after it
    ):
        (tmp_path / name).write_bytes(content)
        with pytest.raises(InputError, match=rf"{name} is not UTF-8 text \(byte {byte} at offset {offset}\)"):
            read_corpus(str(tmp_path / name))


@pytest.mark.parametrize("tokenizer", ["bytes", BPE])
def test_a_corpus_too_short_for_a_window_writes_no_cache_and_leaves_an_existing_folder_as_it_was(folder, tmp_path, tokenizer):
    new = tmp_path / "kiln" / "text"  # two folders mkdir -p would create
    assert "is too short" in build_error(root=str(folder), block_size=5000, tokenizer=tokenizer, cache_dir=str(new))
    assert not (tmp_path / "kiln").exists()
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "other.npy").write_bytes(b"someone else's")
    assert "is too short" in build_error(root=str(folder), block_size=5000, tokenizer=tokenizer, cache_dir=str(existing))
    assert [path.name for path in existing.iterdir()] == ["other.npy"]


def test_a_bpe_vocab_size_beyond_what_the_text_gives_is_said(folder: Path, tmp_path: Path):
    big = {"type": "bpe", "vocab_size": 5000}
    dataset = TextTokens(root=str(folder / "a.py"), block_size=8, tokenizer=big, cache_dir=str(tmp_path))
    assert 256 < dataset.vocab_size < 5000
    assert dataset.notes == [
        f"tokenizer bpe: vocab_size 5000 asked, but the training text gives only {dataset.vocab_size} tokens (no pair left "
        f"to merge); set vocab_size and model.vocab_size to {dataset.vocab_size}, or add text"
    ]
    assert TextTokens(root=str(folder / "a.py"), block_size=8, tokenizer=BPE, cache_dir=str(tmp_path)).notes == []


def test_the_identity_tells_a_changed_corpus_and_a_retrained_tokenizer(folder: Path, tmp_path: Path):
    def identity(**kwargs) -> dict:
        return TextTokens(root=str(folder), block_size=8, cache_dir=str(tmp_path / "cache"), **kwargs).identity()

    before = identity(tokenizer=BPE)
    assert before["tokenizer"]["type"] == "bpe" and before["split"] == "train" and before["val_fraction"] == 0.1
    assert before["corpus"]["files"] == 2 and before["block_size"] == 8
    assert identity(tokenizer=BPE) == before  # from the cache: the reloaded tokenizer has the same fingerprint
    assert identity()["tokenizer"] == identity(val_fraction=0.3)["tokenizer"]  # bytes: one tokenizer for every corpus
    (folder / "c.py").write_text("def h(z):\n    return z * 2  # encore\n" * 3)
    after = identity(tokenizer=BPE)
    assert after["corpus"]["files"] == 3 and after["corpus"]["sha256"] != before["corpus"]["sha256"]
    assert after["tokenizer"]["sha256"] != before["tokenizer"]["sha256"]  # retrained on other text
