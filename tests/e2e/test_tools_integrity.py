"""The tools never call damaged data good nor overwrite what a user has (issue 23, points 8 and 9).

- tools/show_checkpoint.py: a .dcp is `complete` only when every file its .metadata names is
  there with the size it implies and every recorded CRC-32 matches, else `damaged: <file, what>`;
  a `.partial` directory is an incomplete save, not a missing path; a .pt whose bytes changed is
  exit 2; a tied weight counts once, as the run's log counts it.
- tools/checkpoints.py push/pull: a DST file whose content differs is moved into
  `<name>_archived_<stamp>/` before it is replaced (a .dcp folder whole); `--force` replaces it.
  The remote side is fsspec's in-memory filesystem (`memory://`), through the same RemoteStorage
  an S3 bucket goes through (tests/trainer/checkpoint/test_storage.py runs push/pull on S3).
"""

from __future__ import annotations

import re
import shutil
import uuid
from pathlib import Path

import pytest
import torch

from tests.helpers import call, load_tool, tiny_config, train_in_dir
from tests.trainer.checkpoint.test_checksums import flip_in_shard, flip_in_tensor
from trainer.checkpoint import dcp

show_tool, export_tool, checkpoints_tool = load_tool("show_checkpoint"), load_tool("export"), load_tool("checkpoints")

LOGGING = {"interval": 5, "progress": False, "tensorboard": False}
SHARDED = tiny_config(
    train={"total_iters": 10, "val_interval": 5}, checkpoint={"interval": 5, "format": "sharded"}, logging=LOGGING
)
# A tied-embedding GPT small enough to train 2 iterations in a blink, on a corpus the test writes.
GPT = tiny_config(
    name="gpt",
    model={"type": "GPT", "vocab_size": 256, "block_size": 16, "n_layer": 1, "n_head": 2, "n_embd": 16},
    loss={"type": "TokenCrossEntropy"},
    metrics=["bpb"],
    data={
        "batch_size": 4,
        "train": {"type": "TextTokens", "split": "train", "block_size": 16, "root": "corpus"},
        "val": {"type": "TextTokens", "split": "val", "block_size": 16, "root": "corpus"},
    },
    optimizer={"type": "AdamW", "lr": 1.0e-3},
    scheduler=None,
    train={"total_iters": 2, "val_interval": 2},
    val={"metric": "bpb", "mode": "min"},
    checkpoint={"interval": 2},
    logging=LOGGING,
)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, one_thread) -> Path:
    """A directory with a tiny sharded CNN run (`tiny_*.dcp`) and the GPT in both formats (`gpt_*`, `gpts_*`)."""
    directory = tmp_path_factory.mktemp("integrity_runs")
    (directory / "corpus").mkdir()
    words = " ".join(f"word{i % 97} and line {i};" for i in range(4000))
    (directory / "corpus" / "a.txt").write_text(words, encoding="utf-8")
    assert train_in_dir(directory, SHARDED) == 0
    assert train_in_dir(directory, GPT) == 0
    assert train_in_dir(directory, GPT, "name=gpts", "checkpoint.format=sharded") == 0
    return directory


def shown(path: Path) -> dict[str, str]:
    """show_checkpoint's rows of `path` as {label: text} (exit 0 required)."""
    code, out, err = call(show_tool, str(path))
    assert (code, err) == (0, ""), err
    rows = [line for line in out.splitlines() if not line.startswith((" ", "config:"))]  # not the config's YAML
    return dict(re.match(r"^([a-z -]+): +(.*)$", line).groups() for line in rows)


# -- show_checkpoint ---------------------------------------------------------------------------


def test_show_checkpoint_calls_an_intact_sharded_checkpoint_complete_and_says_what_it_checked(runs):
    rows = shown(runs / "weights" / "tiny_iter_10.dcp")
    assert rows["format"] == "sharded checkpoint (torch.distributed.checkpoint), complete"
    assert rows["checksums"] == "CRC-32 of 3 files match what was written"


@pytest.mark.parametrize("fault", ["deleted", "truncated", "flipped", "truncated, no checksums"])
def test_show_checkpoint_calls_a_sharded_checkpoint_with_a_damaged_shard_damaged_and_export_refuses_it(runs, tmp_path, fault):
    damaged = tmp_path / "tiny_iter_10.dcp"
    shutil.copytree(runs / "weights" / "tiny_iter_10.dcp", damaged)
    shard = damaged / "__0_0.distcp"
    size = shard.stat().st_size
    if fault == "deleted":
        shard.unlink()
        what = "its file __0_0.distcp is missing"
    elif fault == "flipped":
        flip_in_shard(damaged)
        what = "its file __0_0.distcp does not match the CRC-32 recorded when it was written, so its bytes changed since"
    else:
        if fault == "truncated, no checksums":  # a .dcp of another tool or an older Kiln: .metadata decides
            (damaged / dcp.CHECKSUMS_FILE).unlink()
        with open(shard, "r+b") as file:
            file.truncate(size // 2)
        source = ".metadata implies" if "no checksums" in fault else "were written"
        what = f"its file __0_0.distcp has {size // 2:,} bytes where {size:,} {source} (truncated)"
    rows = shown(damaged)
    assert rows["format"] == (
        f"sharded checkpoint (torch.distributed.checkpoint), damaged: {what} "
        "(resume_path and pretrain_path refuse it; resume_path=auto skips it)"
    )
    assert "parameters" not in rows and "checksums" not in rows
    code, out, err = call(export_tool, str(damaged), "-o", str(tmp_path / "w.pth"))
    assert (code, out) == (2, "")
    assert err == f"error: checkpoint {damaged} is damaged: {what}; use an intact copy or another checkpoint\n"
    assert not (tmp_path / "w.pth").exists()


def test_show_checkpoint_of_a_partial_directory_says_it_is_an_unfinished_save(runs, tmp_path):
    partial = tmp_path / ".tiny_iter_15.dcp.partial"  # what a save leaves until it is renamed into place
    shutil.copytree(runs / "weights" / "tiny_iter_10.dcp", partial)
    rows = shown(partial)
    assert rows["format"] == (
        "sharded checkpoint (torch.distributed.checkpoint), incomplete (a .partial directory: a save in progress or "
        "cut short, not yet renamed into place; never resumed from)"
    )


def test_show_checkpoint_of_a_pt_with_a_flipped_byte_is_exit_2_and_an_intact_one_lists_its_checksums(runs, tmp_path):
    rows = shown(runs / "weights" / "gpt_iter_2.pt")
    assert re.fullmatch(r"CRC-32 of \d+ records match what was written", rows["checksums"])
    damaged = tmp_path / "gpt_iter_2.pt"
    shutil.copy(runs / "weights" / "gpt_iter_2.pt", damaged)
    record = flip_in_tensor(damaged)
    code, out, err = call(show_tool, str(damaged))
    assert (code, out) == (2, "")
    assert err == (
        f"error: checkpoint {damaged} is damaged: its record {record} does not match the CRC-32 saved with it, so its "
        "bytes changed after it was written; use an intact copy or another checkpoint\n"
    )


def test_show_checkpoint_counts_a_tied_weight_once_as_the_runs_log_does(runs):
    logged = {}
    for name in ("gpt", "gpts"):
        log = (runs / "experiments" / name / "train.log").read_text()
        logged[name] = re.search(r"iterations 0 -> 2, ([\d,]+) parameters", log).group(1)
    assert logged["gpt"] == logged["gpts"]
    tied = "; lm_head.weight is transformer.wte.weight (tied, counted once)"
    for path in ("gpt_iter_2.pt", "gpt_iter_2.pth", "gpts_iter_2.pth", "gpts_iter_2.dcp"):
        parameters = shown(runs / "weights" / path)["parameters"]
        assert parameters.startswith(f"{logged['gpt']} in 9 tensors") and parameters.endswith(tied), (path, parameters)


# -- checkpoints.py push/pull: what DST holds is never lost --------------------------------------


def _pair(folder: Path, stem: str, value: float) -> None:
    """A .pt/.pth pair whose content depends on `value` (same sizes for any value)."""
    folder.mkdir(exist_ok=True)
    torch.save({"iteration": 1, "model": {"w": torch.full((64,), value)}}, folder / f"{stem}.pt")
    torch.save({"params": {"w": torch.full((64,), value)}}, folder / f"{stem}.pth")


def test_push_moves_a_differing_remote_file_aside_and_force_replaces_it(tmp_path):
    source, url = tmp_path / "weights", f"memory://kiln/{uuid.uuid4().hex[:8]}/weights"
    _pair(source, "tiny_best", 1.0)
    assert call(checkpoints_tool, "push", str(source), url)[0] == 0
    old = (source / "tiny_best.pt").read_bytes()
    _pair(source, "tiny_best", 2.0)  # a new best; the pushed one differs in content, not in size

    code, out, err = call(checkpoints_tool, "push", str(source), url)
    lines = out.splitlines()
    assert (code, err) == (0, "")
    assert lines[:2] == ["copied tiny_best.pth (0.00 MB, content differs)", "copied tiny_best.pt (0.00 MB, content differs)"]
    archived = re.fullmatch(
        rf"moved the replaced tiny_best\.pt, tiny_best\.pth aside to ({re.escape(url)}/tiny_archived_\d{{8}}_\d{{6}}) "
        r"\(--force replaces without keeping\)",
        lines[2],
    ).group(1)
    assert lines[3].startswith("push: 2 copied (")
    import fsspec

    memory = fsspec.filesystem("memory")
    assert memory.cat_file(f"{archived.removeprefix('memory://')}/tiny_best.pt") == old
    assert memory.cat_file(f"{url.removeprefix('memory://')}/tiny_best.pt") == (source / "tiny_best.pt").read_bytes()

    _pair(source, "tiny_best", 3.0)
    code, out, _ = call(checkpoints_tool, "push", str(source), url, "--force")
    assert code == 0 and "moved" not in out and out.splitlines()[-1].startswith("push: 2 copied (")
    assert memory.cat_file(f"{url.removeprefix('memory://')}/tiny_best.pt") == (source / "tiny_best.pt").read_bytes()
    assert len(memory.ls(url.removeprefix("memory://"))) == 3  # the pair and the one archive: --force kept nothing


def test_pull_moves_differing_local_files_aside_a_dcp_whole_and_force_replaces_them(runs, tmp_path):
    source, url = tmp_path / "source", f"memory://kiln/{uuid.uuid4().hex[:8]}/weights"
    _pair(source, "tiny_iter_5", 1.0)
    shutil.copytree(runs / "weights" / "tiny_iter_10.dcp", source / "tiny_iter_10.dcp")
    assert call(checkpoints_tool, "push", str(source), url)[0] == 0
    target = tmp_path / "weights"
    _pair(target, "tiny_iter_5", 7.0)  # the user's own file under the same name: other content
    shutil.copytree(runs / "weights" / "tiny_iter_5.dcp", target / "tiny_iter_10.dcp")  # another save of that tag
    users_pt = (target / "tiny_iter_5.pt").read_bytes()

    code, out, err = call(checkpoints_tool, "pull", url, str(target))
    assert (code, err) == (0, ""), err
    archived = list(target.glob("tiny_archived_*"))
    assert len(archived) == 1
    assert sorted(path.name for path in archived[0].iterdir()) == ["tiny_iter_10.dcp", "tiny_iter_5.pt", "tiny_iter_5.pth"]
    assert (archived[0] / "tiny_iter_5.pt").read_bytes() == users_pt
    assert dcp.check_intact(archived[0] / "tiny_iter_10.dcp", "checkpoint") == 3  # moved whole: still a checkpoint
    assert dcp.check_intact(target / "tiny_iter_10.dcp", "checkpoint") == 3  # the pulled one, whole
    assert f"aside to {archived[0]} (--force replaces without keeping)" in out
    for name in ("tiny_iter_5.pt", "tiny_iter_5.pth"):
        assert (target / name).read_bytes() == (source / name).read_bytes()

    _pair(target, "tiny_iter_5", 9.0)
    code, out, _ = call(checkpoints_tool, "pull", url, str(target), "--force")
    assert code == 0 and out.splitlines()[-1].startswith("pull: 2 copied (")
    assert len(list(target.glob("tiny_archived_*"))) == 1
    assert (target / "tiny_iter_5.pt").read_bytes() == (source / "tiny_iter_5.pt").read_bytes()
