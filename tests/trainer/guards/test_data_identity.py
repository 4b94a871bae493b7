"""trainer/guards/data_identity.py: a run trains and validates on what it says, and a resume or
tools/generate.py on the same data and tokenizer, or it is exit 2 naming what changed.

One tiny BPE GPT run (4 iterations, a checkpoint and a best at 2 and 4) is shared; each test
works on its own copy.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from data.loader import build_loader
from data.text import TextTokens
from tests.helpers import call, load_tool, tiny_config, train_in_dir, train_in_process
from trainer.errors import InputError
from trainer.guards.data_identity import RunData

BPE = {"type": "bpe", "vocab_size": 300}
generate_tool = load_tool("generate")


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_thread):
    """Every test here on one thread (tests/conftest.py)."""


def lm_config(**val_changes) -> dict:
    """A 1-layer BPE GPT on the folder `corpus/` (relative: each copy of the run has its own)."""
    text = {"type": "TextTokens", "root": "corpus", "block_size": 16, "tokenizer": BPE, "cache_dir": "cache"}
    return tiny_config(
        name="lm",
        model={"type": "GPT", "vocab_size": 300, "block_size": 16, "n_layer": 1, "n_head": 2, "n_embd": 16},
        loss={"type": "TokenCrossEntropy"},
        metrics=["bpb", "nll"],
        data={
            "batch_size": 8,
            "val_batch_size": 64,
            "train": {**text, "split": "train"},
            "val": {**text, "split": "val", **val_changes},
        },
        optimizer={"type": "AdamW", "lr": 1.0e-3},
        scheduler=None,
        train={"total_iters": 4, "val_interval": 2},
        val={"metric": "bpb", "mode": "min"},
        checkpoint={"interval": 2},
        logging={"interval": 2, "progress": False, "tensorboard": False},
    )


def write_corpus(folder: Path) -> None:
    """Two Python sources, about 6 KB (json's own, shipped with every Python)."""
    folder.mkdir(parents=True)
    source = Path(json.__file__).read_text()
    (folder / "a.py").write_text(source[:3000])
    (folder / "b.py").write_text(source[3000:6000])


@pytest.fixture(scope="module")
def lm_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("lm_run")
    write_corpus(directory / "corpus")
    assert train_in_dir(directory, lm_config()) == 0
    return directory


@pytest.fixture
def run(lm_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of the shared run, as the working directory."""
    copy = tmp_path / "run"
    shutil.copytree(lm_run, copy)
    monkeypatch.chdir(copy)
    return copy


def snapshot(*folders: Path) -> dict[str, tuple[int, int]]:
    """Every file under `folders`: (size, mtime in ns)."""
    return {
        str(path): (path.stat().st_size, path.stat().st_mtime_ns)
        for folder in folders
        for path in folder.rglob("*")
        if path.is_file()
    }


def add_file(run: Path) -> None:
    (run / "corpus" / "c.py").write_text("def added(x):\n    return [x] * 3  # one more file\n" * 4)


def test_every_checkpoint_records_the_data_and_an_unchanged_corpus_resumes(run: Path):
    recorded = torch.load(run / "weights" / "lm_iter_2.pt", weights_only=True)["data"]
    train = TextTokens(root="corpus", block_size=16, tokenizer=BPE, cache_dir="cache").identity()
    assert recorded["train"] == train and recorded["val"] == {**train, "split": "val"}
    assert recorded["train"]["corpus"]["files"] == 2 and recorded["train"]["tokenizer"]["type"] == "bpe"
    assert train_in_process(run, lm_config(), "resume_path=weights/lm_iter_2.pt") == 0
    assert "the data changed" not in (run / "experiments" / "lm" / "train.log").read_text()


def test_a_file_added_to_the_corpus_refuses_the_resume_naming_the_change_and_writes_nothing(run: Path):
    before = snapshot(run / "weights", run / "experiments")
    add_file(run)
    with pytest.raises(InputError) as error:
        train_in_process(run, lm_config(), "resume_path=weights/lm_iter_2.pt")
    message = str(error.value)
    assert message.startswith(
        "resume_path weights/lm_iter_2.pt: the data changed since the checkpoint (data.train: corpus 2 file(s), "
    )
    assert " -> 3 file(s), " in message and ", tokenizer bpe with " in message and "; data.val: the same)" in message
    assert message.endswith("or set resume_data=accept to go on with the new data from iteration 2")
    assert "\n" not in message
    assert snapshot(run / "weights", run / "experiments") == before


def test_resume_data_accept_goes_on_with_the_new_data_and_the_log_says_so(run: Path):
    add_file(run)
    assert train_in_process(run, lm_config(), "resume_path=weights/lm_iter_2.pt", "resume_data=accept") == 0
    log = (run / "experiments" / "lm" / "train.log").read_text()
    assert "resume_data accept: the data changed since the checkpoint, the new data are used from iteration 2 (" in log
    assert "the tokenizer changed: the token ids the weights learned now stand for other text" in log
    assert "config changed since the checkpoint" not in log  # resume_data is how the run resumes, not what it runs
    recorded = torch.load(run / "weights" / "lm_iter_4.pt", weights_only=True)["data"]
    assert recorded["train"]["corpus"]["files"] == 3  # the next resume checks against the data accepted


def test_generate_refuses_weights_whose_tokenizer_was_retrained(run: Path):
    config = str(run / "config.yaml")
    for weights in ("weights/lm_best.pth", "weights/lm_best.pt"):
        code, out, err = call(generate_tool, "-c", config, "--weights", weights, "--max-new-tokens", "3", "device=cpu")
        assert code == 0, err
    add_file(run)
    for weights in ("weights/lm_best.pth", "weights/lm_best.pt"):  # a .pth is checked against the .pt beside it
        code, out, err = call(generate_tool, "-c", config, "--weights", weights, "--max-new-tokens", "3", "device=cpu")
        assert code == 2 and out == ""
        assert err.startswith(f"error: --weights {weights} was trained with the tokenizer bpe with ")
        assert "; its corpus changed: 2 file(s), " in err and err.endswith("the weights were trained with\n")


@pytest.mark.parametrize(
    "val_changes, expected",
    [
        ({"tokenizer": "bytes"}, "config keys data.train and data.val tokenize differently (bpe with "),
        (
            {"val_fraction": 0.05},
            "config keys data.train.val_fraction (0.1) and data.val.val_fraction (0.05) differ for one corpus",
        ),
        ({"split": "train"}, "config keys data.train and data.val: both are the train split of one corpus"),
    ],
)
def test_train_and_val_of_one_corpus_that_disagree_are_exit_2_before_anything_is_written(workdir, val_changes, expected):
    write_corpus(workdir / "corpus")
    with pytest.raises(InputError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        train_in_process(workdir, lm_config(**val_changes))
    assert not (workdir / "weights").exists() and not (workdir / "experiments").exists()


def test_a_val_corpus_of_its_own_needs_the_same_tokenizer(workdir):
    write_corpus(workdir / "corpus")
    (workdir / "other").mkdir()
    (workdir / "other" / "v.py").write_text(Path(json.__file__).read_text()[6000:9000])
    bytes_config = lm_config(root="other")
    for split in ("train", "val"):
        bytes_config["data"][split]["tokenizer"] = "bytes"
    bytes_config["model"]["vocab_size"] = 256
    assert train_in_process(workdir, bytes_config, "train.total_iters=2", "checkpoint.interval=2") == 0  # bytes: one tokenizer
    with pytest.raises(InputError, match=r"give data.val the same tokenizer, root and val_fraction \(a BPE is trained on"):
        train_in_process(workdir, lm_config(root="other"))


def test_a_position_the_accepted_data_no_longer_have_moves_to_the_next_epoch(tmp_path: Path):
    write_corpus(tmp_path / "corpus")
    datasets = [
        TextTokens(root=str(tmp_path / "corpus"), split=s, block_size=16, cache_dir=str(tmp_path)) for s in ("train", "val")
    ]
    loaders = [build_loader(d, batch_size=8, seed=0, train=d.split == "train", num_workers=0, pin_memory=False) for d in datasets]
    run_data = RunData(*loaders)
    saved = run_data.state()
    saved["train"] = {**saved["train"], "block_size": 8}
    checkpoint = {"iteration": 900, "epoch": 3, "position": run_data.batches_per_epoch + 5, "data": saved}
    with pytest.raises(InputError, match=r"\(data.train: block_size 8 -> 16\); point data.train"):
        run_data.check_start(dict(checkpoint), "x.pt", "check")
    notes = run_data.check_start(checkpoint, "x.pt", "accept")
    assert (checkpoint["epoch"], checkpoint["position"]) == (4, 0)
    assert notes[-1].endswith("training goes on at the start of epoch 4")
    assert run_data.check_start({"iteration": 1, "epoch": 0, "position": 0}, "old.pt", "check") == [
        "resume_path old.pt records no data identity (saved before Kiln did): the data were not checked"
    ]


def test_a_whole_file_dataset_validated_on_its_own_training_files_is_refused():
    from trainer.guards.data_identity import check_pair

    corpus = {"sha256": "ab" * 32, "files": 1, "bytes": 1200}
    chat = {"corpus": corpus, "tokenizer": {"type": "hf", "vocab_size": 300, "sha256": "cd" * 32}, "loss_on": "assistant"}
    with pytest.raises(InputError) as caught:
        check_pair(chat, dict(chat))
    assert str(caught.value) == (
        "config keys data.train and data.val read the same files (1 file(s), 1,200 bytes, sha256 abababababab), so the "
        "model would be validated on what it trains on; give data.val held-out examples"
    )


def test_a_change_of_a_datasets_own_field_is_named():
    from trainer.guards.data_identity import data_changes

    before = {"corpus": {"sha256": "ab" * 32, "files": 1, "bytes": 1200}, "loss_on": "assistant", "max_length": 64}
    after = {**before, "loss_on": "all"}
    assert data_changes({"train": before, "val": None}, {"train": after, "val": None}) == ["data.train: loss_on assistant -> all"]
