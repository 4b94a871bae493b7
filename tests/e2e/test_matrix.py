"""Every supported parallel strategy x checkpoint format x model x resume world size works: each
run goes through validations that save a best, and each case resumes, on another combination, a
checkpoint one of the writing runs wrote, and trains to the end.

Axes: strategy single (1 process), ddp, fsdp (2 processes, gloo); format file, sharded, sharded
with checkpoint.async; model a CNN (every parameter inside a child unit) and the tied GPT (its
embedding is its head, which FSDP keeps in the root unit, left gathered after a validation
forward: the crash of issue 23); resume world size 1 and 2. The product would be 36 writing runs
and as many resumes; the cases keep what is distinct, and share 5 writing runs (3 under torchrun):

- Writing, every strategy writes every format here (the writing runs and the resumed runs
  together): single file and sharded, ddp file and sharded async, fsdp file, sharded and
  sharded async. Sync and async sharded saves write the same tensors (only when and on which
  thread differ), so each strategy needs one of them; file saves with checkpoint.async are
  tests/trainer/checkpoint/test_manager.py's.
- Loading, what differs is how the optimizer state gets in. A .dcp loads through DCP on any
  strategy and world size (fsdp to single and to fsdp, ddp to single; one process to ddp and
  fsdp 4 to 2 are tests/trainer/checkpoint/test_sharded.py's). A .pt keyed by parameter index
  loads under FSDP (index to name); one keyed by name (FSDP's, or a sharded checkpoint exported
  with tools/export.py --format pt) on one process and under DDP (name to index).
- The model matters where FSDP shards it (the GPT's root unit) and where parameters are named
  (a tied weight once); DDP and one process never look inside it, so the GPT runs under FSDP
  and the CNN covers DDP. A strategy resuming its own .pt on its own world size is bitwise in
  tests/trainer/distributed/test_process.py and tests/e2e/test_lm_e2e.py.

Neither model has dropout, so a resume on another world size or strategy ends close to the
one-process reference (the same math, summed in another order); on its own strategy and world
size it ends bitwise equal to the run that wrote the checkpoint. A fresh optimizer, or moments
handed to the wrong parameters, ends far from either. Cost: about 70 s of CPU (6 torchrun jobs).
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from tests.helpers import (
    assert_bitwise_equal,
    error_of,
    load_params,
    load_tool,
    tiny_config,
    torchrun,
    train_in_dir,
    write_config,
)
from trainer.distributed.process import Distributed
from trainer.distributed.strategy import build_strategy

pytestmark = pytest.mark.slow

BLOCK = 16
# Six steps, a validation (saving a best) and a checkpoint every two.
SCHEDULE = {
    "train": {"total_iters": 6, "val_interval": 2},
    "checkpoint": {"interval": 2},
    "logging": {"interval": 2, "progress": False},
    "scheduler": {"type": "CosineAnnealingLR", "T_max": 6},
}
CNN = tiny_config(name="cnn", model={"type": "SimpleCNN", "num_classes": 10, "width": 8, "dropout": 0.0}, **SCHEDULE)


def gpt_config(corpus: Path, cache: Path) -> dict:
    """A 1-layer GPT of width 16 (tied head) on `corpus`, the parameter groups of configs/lm_gpt_bytes.yaml."""
    text = {"type": "TextTokens", "root": str(corpus), "block_size": BLOCK, "cache_dir": str(cache)}
    return tiny_config(
        name="gpt",
        model={"type": "GPT", "vocab_size": 256, "block_size": BLOCK, "n_layer": 1, "n_head": 2, "n_embd": 16, "dropout": 0.0},
        loss={"type": "TokenCrossEntropy"},
        metrics=["bpb"],
        data={"batch_size": 8, "val_batch_size": 64, "train": {**text, "split": "train"}, "val": {**text, "split": "val"}},
        optimizer={
            "type": "AdamW",
            "lr": 1.0e-2,
            "weight_decay": 0.1,
            "param_groups": [{"max_ndim": 1, "weight_decay": 0.0}, {"params": r"\.(wte|wpe)\.", "weight_decay": 0.0}],
        },
        val={"metric": "bpb", "mode": "min"},
        **SCHEDULE,
    )


STRATEGY = {"single": (), "ddp": ("train.strategy=ddp",), "fsdp": ("train.strategy=fsdp",)}
FORMAT = {
    "file": ("checkpoint.format=file",),
    "sharded": ("checkpoint.format=sharded",),
    "async": ("checkpoint.format=sharded", "checkpoint.async=true"),
}
# (model, strategy, format) of each writing run; single-process ones are the references.
WRITERS = {
    "gpt_single_file": ("gpt", "single", "file"),
    "gpt_fsdp_async": ("gpt", "fsdp", "async"),
    "cnn_single_file": ("cnn", "single", "file"),
    "cnn_fsdp_file": ("cnn", "fsdp", "file"),
    "cnn_ddp_async": ("cnn", "ddp", "async"),
}
# id: (writer, the checkpoint it wrote, strategy, format, processes of the resumed run)
CASES = {
    "gpt fsdp.async -> single.sharded": ("gpt_fsdp_async", "gpt_iter_2.dcp", "single", "sharded", 1),
    "gpt fsdp.async -> fsdp.sharded": ("gpt_fsdp_async", "gpt_iter_2.dcp", "fsdp", "sharded", 2),
    "gpt single.file -> fsdp.file": ("gpt_single_file", "gpt_iter_2.pt", "fsdp", "file", 2),
    "gpt fsdp.async exported .pt -> single.file": ("gpt_fsdp_async", "exported.pt", "single", "file", 1),
    "cnn fsdp.file -> ddp.file": ("cnn_fsdp_file", "cnn_iter_2.pt", "ddp", "file", 2),
    "cnn fsdp.file -> single.sharded": ("cnn_fsdp_file", "cnn_iter_2.pt", "single", "sharded", 1),
    "cnn ddp.async -> single.file": ("cnn_ddp_async", "cnn_iter_2.dcp", "single", "file", 1),
}


@pytest.fixture(scope="module")
def configs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The two experiments' config files (the GPT's on about 6 KB of Python source)."""
    folder = tmp_path_factory.mktemp("configs")
    corpus = folder / "corpus.txt"
    corpus.write_text(Path(json.__file__).read_text()[:6000])
    return {
        "gpt": write_config(folder / "gpt.yaml", gpt_config(corpus, folder / "cache")),
        "cnn": write_config(folder / "cnn.yaml", CNN),
    }


def train(workdir: Path, config: Path, strategy: str, fmt: str, processes: int, *extra: str) -> None:
    """Run train.py in `workdir` as `strategy` on `processes` processes, writing `fmt`; require exit 0."""
    overrides = (*STRATEGY[strategy], *FORMAT[fmt], *extra)
    workdir.mkdir(parents=True, exist_ok=True)
    if processes == 1:
        document = yaml.safe_load(config.read_text())
        assert train_in_dir(workdir, document, *overrides) == 0
        return
    result = torchrun(workdir, "-c", str(config), *overrides, nproc=processes)
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.fixture(scope="module")
def written(configs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every writing run's directory, each run on first use (module-scoped: shared by the cases)."""
    root = tmp_path_factory.mktemp("written")

    class Runs(dict):
        def __missing__(self, key: str) -> Path:
            model, strategy, fmt = WRITERS[key]
            self[key] = root / key
            train(self[key], configs[model], strategy, fmt, 1 if strategy == "single" else 2)
            return self[key]

    return Runs()


def final_weights(workdir: Path, model: str) -> dict[str, torch.Tensor]:
    """The .pth of the last iteration (6)."""
    return load_params(workdir / "weights" / f"{model}_iter_6.pth")


@pytest.mark.parametrize("case", list(CASES))
def test_a_checkpoint_resumes_under_every_strategy_format_and_world_size(case, configs, written, tmp_path):
    source_run, checkpoint, strategy, fmt, processes = CASES[case]
    model, source_strategy, _ = WRITERS[source_run]
    source = written[source_run]
    weights = source / "weights"
    for path in (weights / f"{model}_best.pth", weights / f"{model}_iter_6.pth"):
        assert path.is_file(), f"{source_run} wrote no {path.name}"
    resumed = tmp_path / "resumed"
    (resumed / "weights").mkdir(parents=True)
    if checkpoint == "exported.pt":  # a sharded checkpoint consolidated into one .pt (keyed by name)
        exported = resumed / "weights" / checkpoint
        assert load_tool("export").main([str(weights / f"{model}_iter_2.dcp"), "--format", "pt", "-o", str(exported)]) == 0
    elif checkpoint.endswith(".dcp"):
        shutil.copytree(weights / checkpoint, resumed / "weights" / checkpoint)
    else:
        shutil.copy(weights / checkpoint, resumed / "weights" / checkpoint)

    train(resumed, configs[model], strategy, fmt, processes, f"resume_path=weights/{checkpoint}")

    log = (resumed / "experiments" / model / "train.log").read_text()
    assert f"resumed from weights/{checkpoint} at iteration 2" in log
    # a validation of this run found a new best and saved it (the directory held no best before)
    assert re.search(r"\| best \w+ [\d.]+ @ iter [46]\b", log.split("resumed from", 1)[1])
    assert (resumed / "weights" / f"{model}_best.pth").is_file()
    ended = final_weights(resumed, model)
    if (strategy, processes) == (source_strategy, 2):  # the same strategy and world size: bitwise
        assert_bitwise_equal(ended, final_weights(source, model))
    else:  # the same math in another order: close to the one-process run
        reference = final_weights(written[f"{model}_single_file"], model)
        assert ended.keys() == reference.keys()
        for key in reference:
            # measured: at most 1.4e-7 apart; the GPT resumed with a fresh optimizer ends 2.6e-2 away
            torch.testing.assert_close(ended[key], reference[key], rtol=1e-5, atol=1e-6, msg=f"{case}: {key}")


# (writer, checkpoint resumed, format of the resumed run, what stays, what is moved aside)
FORMAT_CHANGES = {
    "file -> sharded": (
        "cnn_single_file",
        "cnn_iter_2.pt",
        "sharded",
        # cnn_iter_2: not saved again, so it stays (the checkpoint this run resumed from)
        ["cnn_best.dcp", "cnn_best.pth", "cnn_iter_2.pt", "cnn_iter_2.pth", "cnn_iter_4.dcp", "cnn_iter_6.dcp", "cnn_iter_6.pth"],
        ["cnn_best.pt", "cnn_iter_4.pt", "cnn_iter_4.pth", "cnn_iter_6.pt"],  # each .pth unless written anew
    ),
    "sharded -> file": (
        "cnn_ddp_async",
        "cnn_iter_2.dcp",
        "file",
        ["cnn_best.pt", "cnn_best.pth", "cnn_iter_2.dcp", "cnn_iter_4.pt", "cnn_iter_4.pth", "cnn_iter_6.pt", "cnn_iter_6.pth"],
        ["cnn_best.dcp", "cnn_iter_4.dcp", "cnn_iter_6.dcp"],
    ),
}


@pytest.mark.parametrize("change", list(FORMAT_CHANGES))
def test_a_format_change_archives_the_other_formats_checkpoint_of_a_tag_once_it_is_saved_anew(change, configs, written, tmp_path):
    """Resuming with another checkpoint.format in the same directory: every tag saved again (iteration
    4, 6, best) moves what the other format holds under it into <name>_archived_<stamp>/, and the log
    says where: never two formats of one tag (a stale best.dcp beside the new best.pt)."""
    source_run, checkpoint, fmt, staying, moved = FORMAT_CHANGES[change]
    resumed = tmp_path / "resumed"
    shutil.copytree(written[source_run] / "weights", resumed / "weights")
    train(resumed, configs["cnn"], "single", fmt, 1, f"resume_path=weights/{checkpoint}")
    weights = resumed / "weights"
    names = sorted(path.name for path in weights.iterdir() if not path.name.startswith("."))
    archives = [name for name in names if name.startswith("cnn_archived_")]
    assert [name for name in names if name not in archives] == staying
    assert sorted(path.name for archive in archives for path in (weights / archive).iterdir()) == moved
    log = (resumed / "experiments" / "cnn" / "train.log").read_text()
    stale = next(name for name in moved if name.startswith("cnn_best."))
    new = "cnn_best.dcp" if fmt == "sharded" else "cnn_best.pt"
    note = f"{stale}: an older best checkpoint in another format (checkpoint.format changed), superseded by {new}; moved to "
    assert note in log


def test_what_is_not_supported_is_refused_when_the_strategy_is_built_before_any_file():
    """FSDP with train.ema: one line naming the key and the fix (the Trainer builds the strategy
    before it locks, moves or writes anything: exit 2)."""
    message = error_of(lambda: build_strategy("fsdp", Distributed(world_size=2), ema=0.999))
    assert message == "config key train.ema: EMA is not supported with strategy fsdp yet; use ddp or drop ema"
    assert build_strategy("ddp", Distributed(world_size=2), ema=0.999).name == "ddp"
    assert build_strategy("fsdp", Distributed(), ema=0.999).name == "single"  # one process: EMA and any format
