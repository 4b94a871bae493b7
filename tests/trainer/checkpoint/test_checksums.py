"""Checksums (issue 23, point 8): a checkpoint whose bytes changed after it was written is refused
(exit 2, naming the file and saying it is damaged), never loaded into a run.

- `.pt` and `.pth`: the CRC-32 torch.save records for every zip record (data.pkl, each tensor's
  storage), checked by trainer/checkpoint/files.check_records on every read; the .pth stays
  exactly `{"params": state_dict}`.
- `.dcp`: kiln_checksums.json, the size and CRC-32 of every file, written by rank 0 before the
  directory is renamed into place and checked by dcp.check_intact on resume and pretrain.

The damage is a flipped byte in the middle of a tensor's stored bytes: torch.load and DCP load
such a file without a word, a tensor off by a little or a lot.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import struct
import zipfile
import zlib
from pathlib import Path
from types import ModuleType

import pytest
import torch

from tests.helpers import (
    TRAIN_PY,
    assert_bitwise_equal,
    call,
    error_of,
    load_params,
    tiny_config,
    train_in_dir,
    train_in_process,
    write_config,
)
from trainer.checkpoint import CheckpointManager, dcp, make_checkpoint
from trainer.checkpoint.files import check_records

# 20 iterations: tiny_iter_10/20 and best, in either format.
LOGGING = {"interval": 10, "progress": False, "tensorboard": False}
RUN = tiny_config(train={"total_iters": 20, "val_interval": 10}, logging=LOGGING)
SHARDED = tiny_config(
    name="tinys", train={"total_iters": 20, "val_interval": 10}, logging=LOGGING, checkpoint={"interval": 10, "format": "sharded"}
)


def module_of(path: Path) -> ModuleType:
    """Import the script `path` as a module (train.py is a script, not a package module)."""
    spec = importlib.util.spec_from_file_location(f"kiln_script_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


train_py = module_of(TRAIN_PY)  # its main(argv), in this process: no interpreter start-up per run


def flip_in_tensor(path: Path) -> str:
    """Flip one bit in the middle of the largest tensor storage of the torch zip file `path`; its record's name."""
    with zipfile.ZipFile(path) as archive:
        info = max((i for i in archive.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    with open(path, "r+b") as file:
        file.seek(info.header_offset + 26)
        name_length, extra_length = struct.unpack("<HH", file.read(4))
        _flip(file, info.header_offset + 30 + name_length + extra_length + info.file_size // 2)
    return info.filename


def flip_in_shard(directory: Path) -> str:
    """Flip one bit in the middle of the largest item .metadata places in a shard file; that file's name."""
    items = dcp.read_metadata(directory).storage_data.values()
    item = max(items, key=lambda info: info.length)
    with open(directory / item.relative_path, "r+b") as file:
        _flip(file, item.offset + item.length // 2)
    return item.relative_path


def _flip(file, offset: int) -> None:
    file.seek(offset)
    byte = file.read(1)[0]
    file.seek(offset)
    file.write(bytes([byte ^ 0x10]))


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, one_thread) -> Path:
    """One directory holding the files of RUN (`tiny_*.pt`, `.pth`) and of SHARDED (`tinys_*.dcp`)."""
    directory = tmp_path_factory.mktemp("checksum_runs")
    assert train_in_dir(directory, RUN) == 0
    assert train_in_dir(directory, SHARDED) == 0
    write_config(directory / "run.yaml", RUN)
    return directory


def test_a_byte_flipped_in_a_tensor_of_a_pt_is_exit_2_on_resume_naming_the_file(runs, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    weights = tmp_path / "weights"
    weights.mkdir()
    damaged = weights / "tiny_iter_10.pt"
    shutil.copy(runs / "weights" / "tiny_iter_10.pt", damaged)
    record = flip_in_tensor(damaged)
    intact = torch.load(runs / "weights" / "tiny_iter_10.pt", weights_only=True)["model"]
    silently = torch.load(damaged, weights_only=True)["model"]  # what a plain torch.load makes of it
    assert any(not torch.equal(intact[key], silently[key]) for key in intact)

    code, out, err = call(train_py, "-c", str(runs / "run.yaml"), "resume_path=weights/tiny_iter_10.pt")  # as `python train.py`
    assert (code, out) == (2, ""), err[-2000:]
    assert err.splitlines() == [
        f"error: resume_path weights/tiny_iter_10.pt is damaged: its record {record} does not match the CRC-32 saved "
        "with it, so its bytes changed after it was written; use an intact copy or another checkpoint"
    ]
    assert sorted(path.name for path in tmp_path.iterdir()) == ["weights"]  # nothing written, nothing moved
    assert [path.name for path in weights.iterdir()] == ["tiny_iter_10.pt"]


def test_a_damaged_pth_is_refused_as_pretrain_path_and_an_intact_one_is_plain_params(runs, workdir):
    intact = runs / "weights" / "tiny_best.pth"
    assert set(torch.load(intact, weights_only=True)) == {"params"}  # nothing added to the .pth
    assert check_records(intact, "pretrain_path") > 0  # yet every record has its CRC-32
    shutil.copy(intact, workdir / "w.pth")
    flip_in_tensor(workdir / "w.pth")
    message = error_of(lambda: train_in_process(workdir, tiny_config(name="ft", pretrain_path="w.pth")))
    assert message.startswith("pretrain_path w.pth is damaged: its record ")
    assert not (workdir / "experiments").exists() and not (workdir / "weights").exists()


def test_resume_auto_skips_a_newest_pt_with_a_flipped_byte_and_resumes_the_one_before(runs, workdir):
    weights = workdir / "weights"
    weights.mkdir()
    for name in ("tiny_iter_10.pt", "tiny_iter_20.pt"):
        shutil.copy(runs / "weights" / name, weights)
    flip_in_tensor(weights / "tiny_iter_20.pt")
    assert train_in_process(workdir, RUN, "resume_path=auto") == 0
    log = (workdir / "experiments" / "tiny" / "train.log").read_text()
    assert "resume_path auto skipped resume_path weights/tiny_iter_20.pt is damaged: its record " in log
    assert "resumed from weights/tiny_iter_10.pt at iteration 10" in log
    assert_bitwise_equal(load_params(weights / "tiny_iter_20.pth"), load_params(runs / "weights" / "tiny_iter_20.pth"))


def test_every_sharded_checkpoint_records_the_size_and_crc32_of_each_of_its_files(runs):
    for directory in (runs / "weights").glob("tinys_*.dcp"):
        recorded = json.loads((directory / dcp.CHECKSUMS_FILE).read_text())
        assert recorded["algorithm"] == "crc32"
        names = sorted(path.name for path in directory.iterdir() if path.name != dcp.CHECKSUMS_FILE)
        assert sorted(recorded["files"]) == names == sorted([".metadata", "__0_0.distcp", dcp.STATE_FILE])
        for name, entry in recorded["files"].items():
            data = (directory / name).read_bytes()
            assert entry == {"bytes": len(data), "crc32": f"{zlib.crc32(data):08x}"}
        assert dcp.check_intact(directory, "checkpoint") == 3


def test_a_byte_flipped_in_a_shard_is_refused_on_resume_and_pretrain_naming_the_file(runs, workdir):
    damaged = workdir / "weights" / "tinys_iter_10.dcp"
    shutil.copytree(runs / "weights" / "tinys_iter_10.dcp", damaged)
    shard = flip_in_shard(damaged)
    fix = "; use an intact copy or another checkpoint"
    changed = f"its file {shard} does not match the CRC-32 recorded when it was written, so its bytes changed since"
    message = error_of(lambda: train_in_process(workdir, SHARDED, "resume_path=weights/tinys_iter_10.dcp"))
    assert message == f"resume_path weights/tinys_iter_10.dcp is damaged: {changed}{fix}"
    message = error_of(lambda: train_in_process(workdir, tiny_config(name="ft", pretrain_path=str(damaged))))
    assert message == f"pretrain_path {damaged} is damaged: {changed}{fix}"
    assert not (workdir / "experiments").exists()


def test_a_sharded_checkpoint_without_checksums_still_loads_and_its_sizes_are_checked(runs, workdir):
    """A .dcp from another tool or an older Kiln has no kiln_checksums.json: what .metadata says is checked."""
    old = workdir / "weights" / "tinys_iter_10.dcp"
    shutil.copytree(runs / "weights" / "tinys_iter_10.dcp", old)
    (old / dcp.CHECKSUMS_FILE).unlink()
    assert dcp.check_intact(old, "resume_path") == 0
    assert train_in_process(workdir, SHARDED, "resume_path=weights/tinys_iter_10.dcp", "train.total_iters=11") == 0
    shard = old / "__0_0.distcp"
    expected = shard.stat().st_size
    with open(shard, "r+b") as file:
        file.truncate(expected - 100)
    message = error_of(lambda: dcp.check_intact(old, "resume_path"))
    assert message == (
        f"resume_path {old} is damaged: its file __0_0.distcp has {expected - 100:,} bytes where {expected:,} "
        ".metadata implies (truncated); use an intact copy or another checkpoint"
    )


def test_the_writer_records_crc32_even_when_the_process_switched_it_off(tmp_path):
    from torch.utils.serialization import config

    model = torch.nn.Linear(4, 2)
    checkpoint = make_checkpoint(
        model_state=model.state_dict(), optimizer_state={}, scheduler_state=None, trainer_state={}, config={}
    )
    config.save.compute_crc32 = False
    try:
        torch.save(model.state_dict(), tmp_path / "plain.pth")  # another tool's file: no CRC-32 recorded
        pt, pth = CheckpointManager(tmp_path, "w").save("iter_1", checkpoint, model.state_dict())
    finally:
        config.save.compute_crc32 = True
    assert check_records(tmp_path / "plain.pth", "pretrain_path") == 0  # nothing recorded is not damage: it loads
    assert check_records(pt, "resume_path") > 0 and check_records(pth, "pretrain_path") > 0
