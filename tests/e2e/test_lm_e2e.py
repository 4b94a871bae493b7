"""Language modelling end to end: a tiny GPT on a small text trains, resumes bitwise mid-epoch
(one process, 2-process DDP and FSDP on gloo) and refuses data it cannot take with one line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from tests.helpers import (
    assert_bitwise_equal,
    load_params,
    run_train,
    tiny_config,
    torchrun,
    train_in_dir,
    train_in_process,
    write_config,
)
from trainer.errors import InputError

BLOCK = 16


def lm_config(corpus: Path, cache: Path, **changes) -> dict:
    """A 2-layer GPT of width 16 on `corpus`, 30 iterations of 8 windows, dropout on (RNG matters)."""
    text = {"type": "TextTokens", "root": str(corpus), "block_size": BLOCK, "cache_dir": str(cache)}
    document = tiny_config(
        name="lm",
        model={"type": "GPT", "vocab_size": 256, "block_size": BLOCK, "n_layer": 2, "n_head": 2, "n_embd": 16, "dropout": 0.1},
        loss={"type": "TokenCrossEntropy"},
        metrics=["bpb", "nll", "perplexity"],
        data={"batch_size": 8, "val_batch_size": 32, "train": {**text, "split": "train"}, "val": {**text, "split": "val"}},
        optimizer={"type": "AdamW", "lr": 3.0e-3, "weight_decay": 0.1, "param_groups": [{"max_ndim": 1, "weight_decay": 0.0}]},
        scheduler={"type": "CosineAnnealingLR", "T_max": 30},
        train={"total_iters": 30, "val_interval": 15, "accumulate": 2},
        val={"metric": "bpb", "mode": "min"},
        checkpoint={"interval": 15},
    )
    document.update(changes)
    return document


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    """About 6 KB of Python source: json's own module (ships with every Python)."""
    path = tmp_path / "corpus.txt"
    path.write_text(Path(json.__file__).read_text()[:6000])
    return path


def test_an_lm_run_resumed_mid_epoch_ends_bitwise_equal(workdir, corpus):
    document = lm_config(corpus, workdir / "cache")
    assert train_in_process(workdir, document) == 0
    reference = load_params(workdir / "weights" / "lm_iter_30.pth")
    best = torch.load(workdir / "weights" / "lm_iter_30.pt", weights_only=True)["best_metrics"]
    assert set(best) == {"bpb", "nll", "perplexity", "iteration"}
    assert best["bpb"] == pytest.approx(best["nll"] / torch.log(torch.tensor(2.0)).item())  # bytes: 1 token = 1 byte
    resumed = workdir / "resumed"
    (resumed / "weights").mkdir(parents=True)
    shutil.copy(workdir / "weights" / "lm_iter_15.pt", resumed / "weights")
    checkpoint = torch.load(resumed / "weights" / "lm_iter_15.pt", weights_only=True)
    assert checkpoint["epoch"] == 0 and checkpoint["position"] == 30  # mid-epoch: 15 steps of 2 micro-batches
    assert train_in_dir(resumed, document, "resume_path=weights/lm_iter_15.pt") == 0
    assert_bitwise_equal(load_params(resumed / "weights" / "lm_iter_30.pth"), reference)


def test_a_vocab_smaller_than_the_tokenizers_is_exit_2_before_any_file(workdir, corpus):
    write_config(workdir / "lm.yaml", lm_config(corpus, workdir / "cache"))
    result = run_train(workdir, "-c", "lm.yaml", "model.vocab_size=100")
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert last == (
        "error: config key model.vocab_size: 100 is smaller than the tokenizer's 256 tokens of data.train; "
        "set model.vocab_size to at least 256"
    )
    assert "Traceback" not in result.stderr
    assert not (workdir / "experiments").exists()


def test_windows_longer_than_the_models_context_are_refused(workdir, corpus):
    document = lm_config(corpus, workdir / "cache")
    with pytest.raises(InputError, match=r"config key data.train.block_size: 32 is larger than model.block_size 16"):
        train_in_process(workdir, document, "data.train.block_size=32")


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_a_two_process_lm_run_resumes_bitwise_mid_epoch(workdir, corpus, strategy):
    config = write_config(workdir / "lm.yaml", lm_config(corpus, workdir / "cache", seed=1))
    uninterrupted = torchrun(workdir, "-c", str(config), f"train.strategy={strategy}")
    assert uninterrupted.returncode == 0, uninterrupted.stderr[-3000:]
    reference = load_params(workdir / "weights" / "lm_iter_30.pth")
    resumed = workdir / "resumed"
    (resumed / "weights").mkdir(parents=True)
    shutil.copy(workdir / "weights" / "lm_iter_15.pt", resumed / "weights")
    result = torchrun(resumed, "-c", str(config), f"train.strategy={strategy}", "resume_path=weights/lm_iter_15.pt")
    assert result.returncode == 0, result.stderr[-3000:]
    assert_bitwise_equal(load_params(resumed / "weights" / "lm_iter_30.pth"), reference)


LEFT_GRADIENTS = """
import json, sys
from trainer.config import load_config
from trainer.trainer import Trainer

trainer = Trainer(load_config(sys.argv[1], ["train.strategy=fsdp"]))
try:
    trainer.model.state_dict()  # FSDP2 puts its sharded parameters back in the modules
    left = [name for name, parameter in trainer.model.named_parameters() if parameter.grad is not None]
    with open(f"left_{trainer.dist.rank}.json", "w") as file:
        json.dump(left, file)
finally:
    trainer.close()
"""


@pytest.mark.slow
def test_the_preflight_leaves_no_gradient_on_an_fsdp_gpts_tied_embedding(workdir, corpus):
    """Under FSDP2 the tied embedding sits in the root unit, whose parameters stay unsharded after
    the preflight's validation forward: the check must clear the sharded gradient the first
    training step would otherwise add to its own."""
    config = write_config(workdir / "lm.yaml", lm_config(corpus, workdir / "cache"))
    (workdir / "left_gradients.py").write_text(LEFT_GRADIENTS)
    result = torchrun(workdir, str(config), script="left_gradients.py")
    assert result.returncode == 0, result.stderr[-3000:]
    assert [json.loads((workdir / f"left_{rank}.json").read_text()) for rank in (0, 1)] == [[], []]
