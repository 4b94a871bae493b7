"""tools/generate.py: deterministic streamed samples from a .pth or .pt, one error line for a bad input."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

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
