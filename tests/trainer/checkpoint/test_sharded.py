"""checkpoint.format: sharded: torch.distributed.checkpoint directories, complete only with their
.metadata, resumed bitwise, resharded onto other world sizes, exported, shown and pretrained from."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.helpers import (
    REPO,
    assert_bitwise_equal,
    load_params,
    load_tool,
    run_train,
    tiny_config,
    torchrun,
    train_in_dir,
    train_in_process,
    write_config,
)
from trainer.checkpoint import dcp
from trainer.errors import InputError

# No dropout and no batch norm: runs on any number of processes do the same math per sample.
MLP_SHARDED = tiny_config(
    name="mlp",
    model={"type": "MLP", "hidden": 32},
    train={"total_iters": 20, "val_interval": 10},
    checkpoint={"interval": 5, "format": "sharded"},
)
TINY_SHARDED = tiny_config(train={"total_iters": 20, "val_interval": 10}, checkpoint={"interval": 5, "format": "sharded"})


def test_a_sharded_run_writes_dcp_directories_and_the_pth_only_at_best_and_the_end(workdir):
    assert train_in_process(workdir, TINY_SHARDED) == 0
    weights = workdir / "weights"
    assert sorted(path.name for path in weights.iterdir() if not path.name.startswith(".")) == [
        "tiny_best.dcp",
        "tiny_best.pth",
        "tiny_iter_10.dcp",
        "tiny_iter_15.dcp",
        "tiny_iter_20.dcp",
        "tiny_iter_20.pth",
        "tiny_iter_5.dcp",
    ]
    for directory in weights.glob("*.dcp"):
        assert dcp.is_complete(directory)
    state = torch.load(weights / "tiny_iter_20.dcp" / dcp.STATE_FILE, weights_only=True)
    assert (state["iteration"], state["world_size"], state["model"]) == (20, 1, {})
    assert (workdir / "experiments" / "tiny" / "tiny_best.pth").is_file()  # the Logger's archived copy
    tensors = dcp.load_all_tensors(weights / "tiny_iter_20.dcp")
    assert_bitwise_equal(tensors["model"], load_params(weights / "tiny_iter_20.pth"))
    assert {"exp_avg", "exp_avg_sq", "step"} <= set(next(iter(tensors["optimizer"].values())))


def test_a_sharded_run_resumed_mid_epoch_ends_bitwise_equal(workdir):
    assert train_in_process(workdir, TINY_SHARDED) == 0
    reference = load_params(workdir / "weights" / "tiny_iter_20.pth")
    resumed = workdir / "resumed"
    (resumed / "weights").mkdir(parents=True)
    shutil.copytree(workdir / "weights" / "tiny_iter_5.dcp", resumed / "weights" / "tiny_iter_5.dcp")
    assert train_in_dir(resumed, TINY_SHARDED, "resume_path=weights/tiny_iter_5.dcp") == 0
    assert_bitwise_equal(load_params(resumed / "weights" / "tiny_iter_20.pth"), reference)
    log = (resumed / "experiments" / "tiny" / "train.log").read_text()
    assert "resumed from weights/tiny_iter_5.dcp at iteration 5" in log


def test_resuming_a_sharded_checkpoint_into_another_model_is_one_line_naming_the_tensors(workdir):
    assert train_in_process(workdir, TINY_SHARDED, "train.total_iters=5") == 0
    with pytest.raises(InputError) as refused:
        train_in_process(workdir, TINY_SHARDED, "model.width=16", "resume_path=weights/tiny_iter_5.dcp")
    message = str(refused.value)
    # the one key-comparison report of every resume and pretrain (trainer/checkpoint/loading.LoadReport)
    assert message.startswith("resume_path weights/tiny_iter_5.dcp does not match the model (")
    assert re.search(r"\(\d+ shape-mismatched: \S+ \(\d+(, \d+)*\) vs \(\d+(, \d+)*\)", message)
    assert message.endswith(
        "resume with the model config the run was started with (pretrain_path takes weights into another model)"
    )


def test_a_directory_without_metadata_is_never_resumed_nor_counted_by_keep_last(workdir):
    document = tiny_config(
        train={"total_iters": 10, "val_interval": 10}, checkpoint={"interval": 5, "format": "sharded", "keep_last": 1}
    )
    assert train_in_process(workdir, document, "train.total_iters=5") == 0
    weights = workdir / "weights"
    cut_short = weights / "tiny_iter_8.dcp"  # a save a crash interrupted, copied in by hand: no .metadata
    shutil.copytree(weights / "tiny_iter_5.dcp", cut_short)
    (cut_short / ".metadata").unlink()
    with pytest.raises(InputError, match=r"resume_path weights/tiny_iter_8.dcp is an incomplete sharded checkpoint"):
        train_in_process(workdir, document, "resume_path=weights/tiny_iter_8.dcp")
    assert train_in_process(workdir, document, "resume_path=auto") == 0
    log = (workdir / "experiments" / "tiny" / "train.log").read_text()
    assert "resumed from weights/tiny_iter_5.dcp at iteration 5" in log
    assert "skipped" not in log  # an incomplete directory is not a damaged checkpoint
    # keep_last 1 kept the newest complete one; the incomplete one was neither counted nor deleted
    assert sorted(path.name for path in weights.glob("tiny_iter_*")) == [
        "tiny_iter_10.dcp",
        "tiny_iter_10.pth",
        "tiny_iter_8.dcp",
    ]


def test_a_sharded_checkpoint_exports_to_every_format_and_shows_and_pretrains(workdir, capsys):
    export_tool, show_tool = load_tool("export"), load_tool("show_checkpoint")

    assert train_in_process(workdir, TINY_SHARDED) == 0
    dcp_dir = workdir / "weights" / "tiny_iter_20.dcp"
    for fmt, out in (("pt", "full.pt"), ("pth", "w.pth"), ("safetensors", "w.safetensors")):
        assert export_tool.main([str(dcp_dir), "--format", fmt, "-o", str(workdir / out)]) == 0
    reference = load_params(workdir / "weights" / "tiny_iter_20.pth")
    full = torch.load(workdir / "full.pt", weights_only=True)
    assert full["iteration"] == 20 and full["optimizer"]["param_groups"]
    assert_bitwise_equal(full["model"], reference)
    assert_bitwise_equal(load_params(workdir / "w.pth"), reference)
    from safetensors.torch import load_file

    assert_bitwise_equal(load_file(workdir / "w.safetensors"), reference)
    capsys.readouterr()
    assert show_tool.main([str(dcp_dir)]) == 0
    shown = capsys.readouterr().out
    assert "sharded checkpoint (torch.distributed.checkpoint), complete" in shown
    assert re.search(r"^saved by: +1 process \(resumes on any number\)$", shown, re.M)
    assert re.search(r"^iteration: +20$", shown, re.M)
    (dcp_dir / ".metadata").unlink()
    assert show_tool.main([str(dcp_dir)]) == 0
    assert "incomplete (no .metadata: its save did not finish; never resumed from)" in capsys.readouterr().out
    finetune = tiny_config(name="finetune", pretrain_path="weights/tiny_iter_15.dcp", train={"total_iters": 1, "val_interval": 1})
    assert train_in_process(workdir, finetune) == 0
    assert (
        "loaded pretrained weights from weights/tiny_iter_15.dcp"
        in (workdir / "experiments" / "finetune" / "train.log").read_text()
    )


def test_a_non_tensor_entry_in_a_sharded_checkpoint_is_refused_not_unpickled(workdir):
    import torch.distributed.checkpoint as torch_dcp

    evil = workdir / "evil.dcp"
    torch_dcp.save({"model": {"weight": torch.ones(2)}, "payload": {"note": "a pickled object"}}, checkpoint_id=evil)
    with pytest.raises(InputError, match=r"holds a non-tensor entry payload.note"):
        dcp.load_all_tensors(evil)
    (evil / ".metadata").write_bytes(b"\x80\x04cos\nsystem\n.")  # a pickle that names os.system
    with pytest.raises(InputError, match=r"unreadable .metadata \(GLOBAL os.system is not allowed"):
        dcp.read_metadata(evil)


# -- several processes (gloo) -------------------------------------------------------------------

DUMP_RESUMED_STATE = """
import json, sys
import torch
from trainer.config import load_config
from trainer.trainer import Trainer

trainer = Trainer(load_config(sys.argv[1], sys.argv[2:]))
try:
    model = trainer.strategy.model_state(trainer.model)
    optimizer = trainer.strategy.optimizer_state(trainer.model, trainer.optimizer)
    sampler = trainer.train_loader.sampler
    if trainer.dist.is_main:
        if not trainer.strategy.keys_optimizer_by_name:  # numbered by parameter: name them as FSDP does
            names = [name for name, _ in trainer.model.named_parameters()]
            optimizer = {"state": {names[index]: value for index, value in optimizer["state"].items()}}
        torch.save({"model": model, "optimizer": optimizer["state"]}, "resumed_state.pt")
        json.dump({"iteration": trainer.iteration, "position": trainer.position, "epoch": sampler.epoch}, open("where.json", "w"))
finally:
    trainer.close()
"""


def _consolidated(dcp_dir: Path) -> dict:
    tensors = dcp.load_all_tensors(dcp_dir)
    return {"model": tensors["model"], "optimizer": tensors["optimizer"]}


def _assert_loaded_as_saved(workdir: Path, saved: Path) -> None:
    resumed = torch.load(workdir / "resumed_state.pt", weights_only=True)
    expected = _consolidated(saved)
    assert_bitwise_equal(resumed["model"], expected["model"])
    assert resumed["optimizer"].keys() == expected["optimizer"].keys()
    for name, entries in expected["optimizer"].items():
        assert_bitwise_equal(resumed["optimizer"][name], entries)


@pytest.mark.slow
def test_a_sharded_checkpoint_of_4_fsdp_processes_resumes_on_2_and_on_1_loading_what_was_saved(workdir):
    config = write_config(workdir / "mlp.yaml", MLP_SHARDED)
    written = torchrun(workdir, "-c", str(config), "train.strategy=fsdp", "train.total_iters=5", nproc=4)
    assert written.returncode == 0, written.stderr[-3000:]
    saved = workdir / "weights" / "mlp_iter_5.dcp"
    assert len(list(saved.glob("*.distcp"))) == 4  # every rank wrote its own shards
    (workdir / "dump.py").write_text(DUMP_RESUMED_STATE)
    on_two = torchrun(workdir, str(config), "train.strategy=fsdp", f"resume_path={saved}", script="dump.py")
    assert on_two.returncode == 0, on_two.stderr[-3000:]
    _assert_loaded_as_saved(workdir, saved)
    # 5 steps of the global batch of 32 on 1078 digits: the sampler continues at sample 160 of epoch 0
    assert json.loads((workdir / "where.json").read_text()) == {"iteration": 5, "position": 5, "epoch": 0}
    log = (workdir / "experiments" / "mlp" / "train.log").read_text()
    assert "world size changed: the checkpoint was saved by 4 processes, this run has 2" in log
    on_one = subprocess.run(
        [sys.executable, "dump.py", str(config), f"resume_path={saved}"],
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"},
    )
    assert on_one.returncode == 0, on_one.stderr[-3000:]
    _assert_loaded_as_saved(workdir, saved)


@pytest.mark.slow
def test_a_one_process_sharded_checkpoint_resumes_on_2_ddp_processes_and_a_2_process_fsdp_run_resumes_bitwise(workdir):
    config = write_config(workdir / "mlp.yaml", MLP_SHARDED)
    assert train_in_process(workdir, MLP_SHARDED, "train.total_iters=5") == 0
    (workdir / "dump.py").write_text(DUMP_RESUMED_STATE)
    saved = workdir / "weights" / "mlp_iter_5.dcp"
    on_two = torchrun(workdir, str(config), f"resume_path={saved}", script="dump.py")
    assert on_two.returncode == 0, on_two.stderr[-3000:]
    _assert_loaded_as_saved(workdir, saved)
    # FSDP on 2 processes, resumed mid-epoch from its own sharded checkpoint: bitwise the uninterrupted run
    fsdp = workdir / "fsdp"
    fsdp.mkdir()
    short = ("train.strategy=fsdp", "train.total_iters=10")
    uninterrupted = torchrun(fsdp, "-c", str(config), *short)
    assert uninterrupted.returncode == 0, uninterrupted.stderr[-3000:]
    resumed = fsdp / "resumed"
    (resumed / "weights").mkdir(parents=True)
    shutil.copytree(fsdp / "weights" / "mlp_iter_5.dcp", resumed / "weights" / "mlp_iter_5.dcp")
    result = torchrun(resumed, "-c", str(config), *short, "resume_path=auto")
    assert result.returncode == 0, result.stderr[-3000:]
    assert_bitwise_equal(load_params(resumed / "weights" / "mlp_iter_10.pth"), load_params(fsdp / "weights" / "mlp_iter_10.pth"))


# -- async saves ----------------------------------------------------------------------------------

FAILING_STORAGE = """
import os
import signal
from pathlib import Path

import torch.distributed.checkpoint.filesystem as filesystem
from models.simple_cnn import MLP

original = filesystem.FileSystemWriter.write_data
saves = {"count": 0}


def write_data(self, plan, planner):
    saves["count"] += 1
    if saves["count"] == int(os.environ["FAIL_AT_SAVE"]):
        if os.environ.get("FAIL_WITH") == "kill":
            os.kill(os.getpid(), signal.SIGKILL)  # the machine goes away mid-save
        raise OSError(28, "No space left on device")
    return original(self, plan, planner)


filesystem.FileSystemWriter.write_data = write_data


class StorageFaultMLP(MLP):
    \"\"\"The MLP, imported with a storage layer that fails the FAIL_AT_SAVE-th sharded save.\"\"\"
"""


def _storage_fault_run(workdir: Path, fail_at: int, how: str, *extra: str) -> subprocess.CompletedProcess:
    (workdir / "storage_fault.py").write_text(FAILING_STORAGE)
    document = dict(MLP_SHARDED, model={"type": "storage_fault.StorageFaultMLP", "hidden": 32})
    write_config(workdir / "faulty.yaml", document)
    env = {**os.environ, "PYTHONPATH": str(workdir), "FAIL_AT_SAVE": str(fail_at), "FAIL_WITH": how}
    return run_train(workdir, "-c", "faulty.yaml", *extra, env=env)


def test_an_async_sharded_run_ends_with_its_last_checkpoint_complete_and_resumes_bitwise(workdir):
    assert train_in_process(workdir, MLP_SHARDED, "checkpoint.async=true") == 0
    weights = workdir / "weights"
    assert dcp.is_complete(weights / "mlp_iter_20.dcp")  # the trainer waited for the last save
    assert not list(weights.glob(".*.partial"))
    reference = load_params(weights / "mlp_iter_20.pth")
    synchronous = workdir / "sync"
    synchronous.mkdir()
    assert train_in_dir(synchronous, MLP_SHARDED) == 0
    assert_bitwise_equal(load_params(synchronous / "weights" / "mlp_iter_20.pth"), reference)
    for tag in ("iter_10", "best"):
        assert_bitwise_equal(
            dcp.load_all_tensors(weights / f"mlp_{tag}.dcp")["model"],
            dcp.load_all_tensors(synchronous / "weights" / f"mlp_{tag}.dcp")["model"],
        )


def test_a_failed_background_save_stops_the_run_and_leaves_the_previous_checkpoint(workdir):
    result = _storage_fault_run(workdir, 3, "oserror", "checkpoint.async=true")
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: could not write sharded checkpoint weights/mlp_iter_10.dcp (")
    assert last.endswith("earlier checkpoints are intact: free disk space or fix permissions, then resume with resume_path=auto")
    weights = workdir / "weights"
    assert dcp.is_complete(weights / "mlp_iter_5.dcp")
    assert not (weights / "mlp_iter_10.dcp").exists()
    assert not (weights / "mlp_iter_15.dcp").exists()  # the run stopped at the next save, at the latest


def test_a_sigkill_during_a_sharded_save_leaves_the_previous_checkpoint_for_auto(workdir):
    killed = _storage_fault_run(workdir, 3, "kill")
    assert killed.returncode == -9
    weights = workdir / "weights"
    assert [path.name for path in weights.glob("mlp_iter_*")] == ["mlp_iter_5.dcp"]
    assert (weights / ".mlp_iter_10.dcp.partial").is_dir()  # what the kill left: never a checkpoint
    resumed = _storage_fault_run(workdir, 0, "none", "resume_path=auto")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resumed from weights/mlp_iter_5.dcp at iteration 5" in (workdir / "experiments" / "mlp" / "train.log").read_text()
    assert not list(weights.glob(".*.partial"))
