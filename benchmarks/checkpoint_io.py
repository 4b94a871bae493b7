"""Kiln's CheckpointManager against bare torch.save/torch.load, on a ~10M-parameter model.

The state is an MLP of Linear layers after one optimizer step (so AdamW's exp_avg and
exp_avg_sq exist), packed by `make_checkpoint` as the Trainer packs it. Five comparisons:

- SAVE: (a) bare torch.save of the .pt and the .pth; (b) the same plus flush + fsync of each
  file, the floor for a write that survives a crash; (c) CheckpointManager.save (temporary
  file, fsync, rename, directory fsync). Target: c/b <= 1.05.
- LOAD: torch.load(weights_only=True) of the .pt against CheckpointManager.load_checkpoint.
- ASYNC: how long a background save() keeps the loop waiting, against the copy to host memory
  it must make before it returns. Target: stall/copy <= ~1.0 (the thread starts after the copy).
- SIZES: .pt/.pth of the files CheckpointManager wrote, for AdamW (target ~3x) and SGD with
  momentum 0.9 (target ~2x).
- CHECKSUMS: what recording and verifying them costs (docs/checkpoints.md, "Integrity"). .pt/.pth:
  torch.save + fsync with the CRC-32 of every record (its default, which Kiln keeps on) against
  the same without; torch.load against load_checkpoint, which checks every record first, and
  the check alone. Sharded .dcp (one process, the same tensors): DCP's save against the CRC-32
  manifest rank 0 writes after it; DCP's load against the check on resume (sizes + CRC-32).

Files go to a scratch directory in weights/ (the repository's filesystem, where checkpoints
really go: /tmp may be a RAM disk, where fsync costs nothing) and are deleted afterwards.
Before each timed save the side's previous files are deleted and os.sync() runs, untimed:
every save writes new files, as iteration checkpoints do, and no side pays for another's
dirty pages or freed blocks.

    python benchmarks/checkpoint_io.py [--repeats 5]
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from _common import REPO, alternate, median, parse_repeats
from torch import nn

from trainer.checkpoint import CheckpointManager, dcp, make_checkpoint, to_host
from trainer.checkpoint.files import check_records

WIDTH, LAYERS = 1600, 4  # 4 x (1600 x 1600 + 1600) = 10.2M parameters
NAME = "bench"
TRAINER_STATE = {"iteration": 1, "epoch": 0, "best_metrics": {}}
OPTIMIZERS = {
    "AdamW": lambda params: torch.optim.AdamW(params, lr=1e-3),
    "SGD momentum 0.9": lambda params: torch.optim.SGD(params, lr=1e-2, momentum=0.9),
}


def alternate_timed(sides: dict[str, Callable[[], float]], repeats: int) -> dict[str, list[float]]:
    """Like _common.alternate, for sides that time themselves (so set-up stays out of the figure)."""
    times: dict[str, list[float]] = {name: [] for name in sides}
    for _ in range(repeats):
        for name, run in sides.items():
            times[name].append(run())
    return times


def make_state(optimizer: str) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The full checkpoint and the weights of the MLP after one step of `optimizer`."""
    torch.manual_seed(0)
    model = nn.Sequential(*[nn.Linear(WIDTH, WIDTH) for _ in range(LAYERS)])
    optim = OPTIMIZERS[optimizer](model.parameters())
    model(torch.randn(8, WIDTH)).square().mean().backward()
    optim.step()
    optim.zero_grad(set_to_none=True)
    checkpoint = make_checkpoint(
        model_state=model.state_dict(),
        optimizer_state=optim.state_dict(),
        scheduler_state=None,
        trainer_state=dict(TRAINER_STATE),
        config={"name": NAME, "optimizer": {"type": optimizer.split()[0]}},
    )
    return checkpoint, model.state_dict()


def clean_slate(*paths: Path) -> None:
    """Delete `paths` (a previous repeat's files) and flush every write to disk."""
    for path in paths:
        path.unlink(missing_ok=True)
    os.sync()


def bare_save(checkpoint: dict, weights: dict, stem: Path, fsync: bool) -> float:
    """Seconds for torch.save of the .pt and the .pth, optionally with flush + fsync of each."""
    clean_slate(stem.with_suffix(".pt"), stem.with_suffix(".pth"))
    start = time.perf_counter()
    for obj, path in ((checkpoint, stem.with_suffix(".pt")), ({"params": weights}, stem.with_suffix(".pth"))):
        with open(path, "wb") as file:
            torch.save(obj, file)
            if fsync:
                file.flush()
                os.fsync(file.fileno())
    return time.perf_counter() - start


def manager_save(manager: CheckpointManager, checkpoint: dict, weights: dict) -> float:
    """Seconds for CheckpointManager.save of both files (synchronous)."""
    clean_slate(manager.path("iter_1", ".pt"), manager.path("iter_1", ".pth"))
    start = time.perf_counter()
    manager.save("iter_1", checkpoint, weights)
    return time.perf_counter() - start


def background_stall(manager: CheckpointManager, checkpoint: dict, weights: dict) -> float:
    """Seconds a background save() keeps the caller waiting; the write is then waited for, untimed."""
    clean_slate(manager.path("iter_1", ".pt"), manager.path("iter_1", ".pth"))
    start = time.perf_counter()
    manager.save("iter_1", checkpoint, weights)
    stall = time.perf_counter() - start
    manager.wait()
    return stall


def host_copy(checkpoint: dict, weights: dict) -> float:
    """Seconds for the copy to host memory a background save must make before it returns."""
    clean_slate()
    start = time.perf_counter()
    snapshot = to_host((checkpoint, {"params": weights}), copy=True)
    elapsed = time.perf_counter() - start
    del snapshot  # freed outside the clock, as the background save frees it in its thread
    return elapsed


def crc_save(checkpoint: dict, weights: dict, stem: Path, crc: bool) -> float:
    """Seconds for torch.save + fsync of the .pt and the .pth with or without the records' CRC-32."""
    from torch.utils.serialization import config

    config.save.compute_crc32 = crc
    try:
        return bare_save(checkpoint, weights, stem, fsync=True)
    finally:
        config.save.compute_crc32 = True


def sharded_save(tensors: dict, directory: Path) -> tuple[float, float]:
    """(seconds of DCP's save of `tensors` into a new `directory`, seconds of the CRC-32 manifest after it)."""
    shutil.rmtree(directory, ignore_errors=True)
    os.sync()
    start = time.perf_counter()
    dcp.api().save(tensors, checkpoint_id=directory, no_dist=True)
    saved = time.perf_counter()
    dcp.write_checksums(directory)
    return saved - start, time.perf_counter() - saved


def checksum_costs(directory: Path, checkpoint: dict, weights: dict, pt: Path, repeats: int) -> None:
    """Print what recording and verifying checksums costs, for the .pt/.pth pair and for a .dcp."""
    runs = f"(medians of {repeats} alternating runs)"
    stem = directory / "bare" / f"{NAME}_iter_1"
    times = alternate_timed({crc: lambda crc=crc: crc_save(checkpoint, weights, stem, crc) for crc in (True, False)}, repeats)
    with_crc, without = median(times[True]), median(times[False])
    print(
        f"crc    torch.save + fsync of .pt + .pth: with the CRC-32 of every record {with_crc:.3f} s, without "
        f"{without:.3f} s; recording costs {(with_crc / without - 1) * 100:+.1f}% {runs}"
    )
    manager = CheckpointManager(directory / "kiln", NAME)
    times = alternate(
        {
            "torch.load": lambda: torch.load(pt, weights_only=True),
            "load_checkpoint": lambda: manager.load_checkpoint(pt),
            "check": lambda: check_records(pt, "resume_path"),
        },
        repeats,
    )
    bare, kiln, check = (median(times[side]) for side in ("torch.load", "load_checkpoint", "check"))
    print(
        f"crc    .pt: torch.load {bare:.3f} s, load_checkpoint (records checked first) {kiln:.3f} s, the check alone "
        f"{check:.3f} s; verification costs {(kiln / bare - 1) * 100:+.1f}% {runs}"
    )
    tensors = {"model": checkpoint["model"], "optimizer": checkpoint["optimizer"]["state"]}
    sharded = directory / f"{NAME}_iter_1.dcp"
    saves = [sharded_save(tensors, sharded) for _ in range(repeats)]
    save, manifest = median([s for s, _ in saves]), median([m for _, m in saves])
    times = alternate(
        {"load": lambda: dcp.load_all_tensors(sharded), "check": lambda: dcp.check_intact(sharded, "resume_path")}, repeats
    )
    load, check = median(times["load"]), median(times["check"])
    print(
        f"crc    .dcp ({dcp.describe_size(sharded) / 1e6:.0f} MB): DCP save {save:.3f} s + manifest {manifest:.3f} s "
        f"({manifest / save * 100:+.1f}%); DCP load {load:.3f} s + check {check:.3f} s ({check / load * 100:+.1f}%) {runs}"
    )


def file_sizes(directory: Path, optimizer: str) -> tuple[int, int]:
    """Bytes of the .pt and .pth CheckpointManager writes for the MLP after one `optimizer` step."""
    manager = CheckpointManager(directory / "sizes", NAME)
    pt, pth = manager.save("iter_1", *make_state(optimizer))
    sizes = pt.stat().st_size, pth.stat().st_size
    pt.unlink()
    pth.unlink()
    return sizes


def main() -> None:
    """Run each comparison with its sides alternating and print the medians and ratios."""
    repeats = parse_repeats(__doc__)
    runs = f"(medians of {repeats} alternating runs)"
    checkpoint, weights = make_state("AdamW")
    parameters = sum(tensor.numel() for tensor in weights.values())
    (REPO / "weights").mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="kiln-bench-ckpt-", dir=REPO / "weights") as scratch:
        directory = Path(scratch)
        manager = CheckpointManager(directory / "kiln", NAME)
        (directory / "bare").mkdir()
        stem = directory / "bare" / f"{NAME}_iter_1"
        times = alternate_timed(
            {
                "a": lambda: bare_save(checkpoint, weights, stem, fsync=False),
                "b": lambda: bare_save(checkpoint, weights, stem, fsync=True),
                "c": lambda: manager_save(manager, checkpoint, weights),
            },
            repeats,
        )
        a, b, c = (median(times[side]) for side in "abc")
        pt, pth = manager.path("iter_1", ".pt"), manager.path("iter_1", ".pth")
        megabytes = (pt.stat().st_size + pth.stat().st_size) / 1e6
        print(
            f"save   {parameters / 1e6:.1f}M parameters + AdamW ({megabytes:.0f} MB in .pt + .pth): "
            f"(a) torch.save {a:.3f} s, (b) + fsync {b:.3f} s, (c) CheckpointManager.save {c:.3f} s; "
            f"ratio c/a {c / a:.3f}, c/b {c / b:.3f} (target c/b <= 1.05) {runs}"
        )

        times = alternate(
            {
                "torch.load": lambda: torch.load(pt, weights_only=True),
                "load_checkpoint": lambda: manager.load_checkpoint(pt),
            },
            repeats,
        )
        bare, kiln = median(times["torch.load"]), median(times["load_checkpoint"])
        print(
            f"load   .pt: torch.load(weights_only=True) {bare:.3f} s, CheckpointManager.load_checkpoint {kiln:.3f} s; "
            f"ratio {kiln / bare:.3f} {runs}"
        )

        background = CheckpointManager(directory / "async", NAME, background=True)
        times = alternate_timed(
            {
                "copy": lambda: host_copy(checkpoint, weights),
                "stall": lambda: background_stall(background, checkpoint, weights),
            },
            repeats,
        )
        copy, stall = median(times["copy"]), median(times["stall"])
        print(
            f"async  save() returns after {stall * 1e3:.1f} ms; the host copy alone takes {copy * 1e3:.1f} ms; "
            f"ratio stall/copy {stall / copy:.3f} (target <= ~1.0; the write thread starts after the copy) {runs}"
        )

        checksum_costs(directory, checkpoint, weights, pt, repeats)

        for optimizer, target in (("AdamW", "~3x"), ("SGD momentum 0.9", "~2x")):
            pt_bytes, pth_bytes = file_sizes(directory, optimizer)
            print(
                f"sizes  {optimizer}: .pt {pt_bytes / 1e6:.1f} MB, .pth {pth_bytes / 1e6:.1f} MB, "
                f"ratio .pt/.pth {pt_bytes / pth_bytes:.2f} (target {target})"
            )


if __name__ == "__main__":
    main()
