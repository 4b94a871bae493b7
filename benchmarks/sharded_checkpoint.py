"""Host memory and wall time of `checkpoint.format: file` against `sharded` under FSDP2 (issue 15, point 2).

The model is Kiln's GPT (default GPT-2 small: 12 layers, 12 heads, width 768, vocabulary 50304,
block 256: 124M parameters), built from the same seed on every rank, sharded with Kiln's own
`trainer.distributed.shard_model` (FSDP2) on N CPU processes (default 4, gloo), with
torch.optim.AdamW after one step (one forward/backward of a 1 x 16 batch), so exp_avg and
exp_avg_sq exist: about 1.5 GB of model + optimizer state in fp32. The script launches itself
with `python -m torch.distributed.run --standalone --nproc_per_node=N` (OMP_NUM_THREADS=1 per
rank unless set) into a scratch directory it deletes afterwards.

Every save goes through Kiln's CheckpointManager.save_state with the TrainingState the Trainer
hands it (the live model and optimizer, the FSDP strategy object, a loop state laid out as
Trainer.state_dict's), and is followed by a barrier, as Trainer._save does. An iteration checkpoint is saved: `file` writes
the .pt and the .pth (rank 0 alone, after every rank took part in gathering the whole state
onto rank 0's host memory); `sharded` writes the .dcp directory (every rank its own shards, no
.pth at iterations). Measured, per format:

- SAVE MEMORY: every rank's resident memory (VmRSS) just before the save (after gc and
  malloc_trim, so memory a previous step freed does not hide the increase) and its peak during
  the save, sampled by a thread reading /proc/self/status every 5 ms; the kernel's own peak
  (VmHWM, reset through /proc/self/clear_refs before the save) is read too, and the larger of
  the two is the peak. Beside it, each rank's own shard of model + optimizer (bytes of its local
  tensors, each storage counted once: the tied embedding/head is one tensor).
- SAVE TIME: barrier, then the wall time of save_state + barrier (the time the training loop
  waits); beside it, measured alone, the time spent building the state (file: the gather onto
  rank 0).
- LOAD TIME: the model and optimizer are zeroed first, then loaded back into the live FSDP
  model and optimizer along Kiln's resume path: file = CheckpointManager.load_checkpoint (a
  plain torch.load, weights_only=True, on every rank) + the file format's load_model (strict) and
  load_optimizer (the FSDP strategy's set_*_state_dict); also the variant torch.load(mmap=True).
  sharded = load_checkpoint (kiln_state.pt) + the sharded format's load_optimizer (DCP load into
  the live shards, then set_model_state_dict / set_optimizer_state_dict). The loaded state is checked bit for bit
  against the saved one (per-rank float64 sums of every local tensor). Peak memory is sampled
  during loads too.
- ASYNC: `sharded` with checkpoint.async (CheckpointManager(background=True)): the time the
  caller is blocked (save_state + barrier: staging to host memory) against the total until
  wait() returns on every rank, and the memory peak over the whole save.

Before the timed runs every code path runs once untimed on a tiny GPT (imports, thread pools).
One save and one load of each; after each, rank 0 deletes the files and runs os.sync(),
untimed. Files go to a scratch directory in weights/ (the repository's filesystem: /tmp may be
a RAM disk) unless --dir says otherwise.

    python benchmarks/sharded_checkpoint.py [--size gpt2|small] [--layers N] [--width C] [--nproc 4] [--dir PATH]
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import gc
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from _common import REPO, machine

from models.gpt import GPT
from trainer.checkpoint import CheckpointManager, TrainingState, dcp
from trainer.checkpoint.formats import FileFormat, ShardedFormat
from trainer.checkpoint.formats.file import full_checkpoint
from trainer.checkpoint.formats.sharded import sharded_parts
from trainer.distributed import process as distributed
from trainer.distributed.strategy import build_strategy
from utils.seed import get_rng_state

NAME = "bench"
TAG = "iter_1"
SIZES = {  # n_layer, n_embd, vocab_size, block_size (n_head = n_embd // 64)
    "gpt2": (12, 768, 50304, 256),
    "small": (2, 128, 4096, 64),
}
MB = 1e6


# -- memory ---------------------------------------------------------------------------------------


def _status_kb(field: str) -> int:
    """A `kB` field of /proc/self/status (VmRSS, VmHWM), in bytes."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


_LIBC = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")


def settle() -> int:
    """Free what can be freed (gc, glibc's malloc_trim), then return VmRSS in bytes."""
    gc.collect()
    _LIBC.malloc_trim(0)
    return _status_kb("VmRSS")


class PeakRSS:
    """Context manager: VmRSS before (settled), and the peak inside (5 ms sampling thread and VmHWM)."""

    def __init__(self, interval: float = 0.005) -> None:
        self.interval = interval
        self.before = self.sampled = self.hwm = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.sampled = max(self.sampled, _status_kb("VmRSS"))
            time.sleep(self.interval)

    def __enter__(self) -> PeakRSS:
        self.before = self.sampled = settle()
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")  # resets VmHWM to the current VmRSS
        self._thread = threading.Thread(target=self._sample, name="rss-sampler", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.hwm = _status_kb("VmHWM")
        self._stop.set()
        assert self._thread is not None
        self._thread.join()

    @property
    def peak(self) -> int:
        """The higher of the sampled peak and the kernel's."""
        return max(self.sampled, self.hwm)

    def figures(self) -> dict[str, int]:
        """{before, sampled, hwm, peak, increase} in bytes."""
        peak = self.peak
        return {"before": self.before, "sampled": self.sampled, "hwm": self.hwm, "peak": peak, "increase": peak - self.before}


# -- the state ------------------------------------------------------------------------------------


def _local(tensor: torch.Tensor) -> torch.Tensor:
    """The rank's own part of a DTensor, or the tensor itself."""
    return tensor.to_local() if hasattr(tensor, "to_local") else tensor


def _tensors(obj: Any) -> list[torch.Tensor]:
    """Every tensor in a nested dict/list."""
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, dict):
        return [tensor for value in obj.values() for tensor in _tensors(value)]
    if isinstance(obj, (list, tuple)):
        return [tensor for value in obj for tensor in _tensors(value)]
    return []


def state_sizes(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> tuple[int, int]:
    """(bytes of this rank's own shards of model + optimizer, bytes of the whole state), each tensor counted
    once (the tied embedding/head is one parameter: the same local storage under two names)."""
    parts, _ = build_strategy("fsdp", distributed.Distributed()).sharded_state(model, optimizer, None)
    seen, own, whole = set(), 0, 0
    for tensor in _tensors(parts):
        local = _local(tensor)
        key = (local.untyped_storage().data_ptr(), local.storage_offset(), local.numel())
        if key in seen:
            continue
        seen.add(key)
        own += local.numel() * local.element_size()
        whole += tensor.numel() * tensor.element_size()  # a DTensor's numel is the global one
    return own, whole


def checksum(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> torch.Tensor:
    """float64 sums of every local tensor of model and optimizer, in a fixed order."""
    tensors = [_local(p) for p in model.parameters()]
    for parameter in model.parameters():
        tensors += [_local(v) for _, v in sorted(optimizer.state[parameter].items()) if isinstance(v, torch.Tensor)]
    return torch.stack([tensor.detach().double().sum() for tensor in tensors])


@torch.no_grad()
def scramble(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Zero the parameters and the optimizer state, so a load has to restore every value."""
    for parameter in model.parameters():
        parameter.zero_()
        for value in optimizer.state[parameter].values():
            if isinstance(value, torch.Tensor):
                value.zero_()


class LoopState:
    """The Trainer's loop state after iteration 1, as Trainer.state_dict lays it out (RNG of every rank gathered)."""

    def __init__(self, dist: distributed.Distributed) -> None:
        self.dist = dist

    def state_dict(self) -> dict[str, Any]:
        """Trainer.state_dict's layout."""
        return {
            "iteration": 1,
            "epoch": 0,
            "position": 1,
            "best_metrics": {},
            "rng": self.dist.gather_objects(get_rng_state()),
            "scaler": {},
            "ema": None,
            "run_id": "bench",
            "pending_losses": self.dist.gather_objects(torch.zeros(1)),
        }


def training_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer, dist: distributed.Distributed) -> TrainingState:
    """What the Trainer hands the CheckpointManager: the live objects, FSDP's strategy (under torchrun)."""
    strategy = build_strategy("fsdp", dist)
    config = {"name": NAME, "optimizer": {"type": "AdamW"}}
    return TrainingState(model, optimizer, None, None, strategy, loop=LoopState(dist), config=config)


def build(layers: int, width: int, vocab: int, block: int, dist: distributed.Distributed) -> tuple[GPT, torch.optim.Optimizer]:
    """The GPT sharded with Kiln's shard_model and AdamW after one step (moments exist, grads freed)."""
    torch.manual_seed(0)  # the same initial weights on every rank, as the Trainer seeds
    model = GPT(vocab_size=vocab, block_size=block, n_layer=layers, n_head=max(1, width // 64), n_embd=width)
    build_strategy("fsdp", dist).prepare(model)  # FSDP2 under torchrun, as the Trainer shards it
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    torch.manual_seed(1 + dist.rank)
    idx = torch.randint(vocab, (1, 16))
    logits = model(idx)
    F.cross_entropy(logits.view(-1, vocab), torch.randint(vocab, (16,))).backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return model, optimizer


# -- one save, one load ---------------------------------------------------------------------------


def timed_save(manager: CheckpointManager, state: TrainingState, dist: distributed.Distributed) -> dict[str, Any]:
    """Memory and time of one save_state + barrier (as Trainer._save): how long the caller is
    blocked, and the total until wait() returns (a background save's write; ~the same when synchronous).

    Beside it, untimed for the save, the time building the state takes alone (file: the gather
    onto rank 0; sharded: this rank's shards and the small part).
    """
    build_state = full_checkpoint if isinstance(manager.format, FileFormat) else sharded_parts
    dist.barrier()
    start = time.perf_counter()
    build_state(state)
    build_time = time.perf_counter() - start
    dist.barrier()
    with PeakRSS() as memory:
        start = time.perf_counter()
        manager.save_state(TAG, state)
        dist.barrier()
        blocked = time.perf_counter() - start
        manager.wait()
        dist.barrier()
        total = time.perf_counter() - start
    figures = {"blocked_s": blocked, "total_s": total, "build_s": build_time, "save_mem": memory.figures()}
    return {**figures, "save_s": blocked} if not manager.background else figures


def load_file_checkpoint(manager: CheckpointManager, path: Path, state: TrainingState, mmap: bool) -> None:
    """Kiln's resume of a .pt under FSDP: load_checkpoint (or torch.load mmap=True), then the format loads model and optimizer."""
    if mmap:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    else:
        checkpoint = manager.load_checkpoint(path)
    FileFormat.load_model(checkpoint, path, state)
    FileFormat.load_optimizer(checkpoint, path, state)


def load_sharded_checkpoint(manager: CheckpointManager, path: Path, state: TrainingState) -> None:
    """Kiln's resume of a .dcp: load_checkpoint (kiln_state.pt), then the DCP load into the live shards."""
    checkpoint = manager.load_checkpoint(path)
    ShardedFormat.load_model(checkpoint, path, state)
    ShardedFormat.load_optimizer(checkpoint, path, state)


def timed_load(load: Any, model: Any, optimizer: Any, expected: torch.Tensor, dist: distributed.Distributed) -> dict[str, Any]:
    """Zero the state, then time `load()` + barrier; check the state is back bit for bit."""
    scramble(model, optimizer)
    dist.barrier()
    with PeakRSS() as memory:
        start = time.perf_counter()
        load()
        dist.barrier()
        elapsed = time.perf_counter() - start
    return {"load_s": elapsed, "load_mem": memory.figures(), "load_ok": bool(torch.equal(checksum(model, optimizer), expected))}


def clean(path: Path, dist: distributed.Distributed) -> None:
    """Rank 0 deletes the experiment's files under `path` and syncs the disk; every rank waits."""
    if dist.is_main:
        for item in sorted(path.glob(f"{NAME}_*")):
            shutil.rmtree(item) if item.is_dir() else item.unlink()
        os.sync()
    dist.barrier()


def run_formats(model: Any, optimizer: Any, dist: distributed.Distributed, scratch: Path) -> dict[str, dict[str, Any]]:
    """Every measurement for this rank: {format: figures}."""
    state = training_state(model, optimizer, dist)
    expected = checksum(model, optimizer)
    results: dict[str, dict[str, Any]] = {}

    directory = scratch / "file"
    manager = CheckpointManager(directory, NAME, fmt="file", dist=dist)
    results["file"] = timed_save(manager, state, dist)
    pt = manager.path(TAG, ".pt")
    results["file"]["bytes"] = pt.stat().st_size + manager.path(TAG, ".pth").stat().st_size if dist.is_main else 0
    # The mmap variant first: after it the optimizer's `step` tensors (not DTensors, so kept as loaded) are slices
    # of the memory-mapped file and keep the whole mapping, with every page a rank touched, resident until the
    # next load replaces them; Kiln's own load (plain torch.load) comes last and drops it.
    mmap = timed_load(lambda: load_file_checkpoint(manager, pt, state, True), model, optimizer, expected, dist)
    plain = timed_load(lambda: load_file_checkpoint(manager, pt, state, False), model, optimizer, expected, dist)
    results["file"].update(plain)
    results["file (mmap load)"] = {"load_s": mmap["load_s"], "load_mem": mmap["load_mem"], "load_ok": mmap["load_ok"]}
    clean(directory, dist)

    directory = scratch / "sharded"
    manager = CheckpointManager(directory, NAME, fmt="sharded", dist=dist)
    results["sharded"] = timed_save(manager, state, dist)
    dcp_path = manager.path(TAG, dcp.SUFFIX)
    results["sharded"]["bytes"] = dcp.describe_size(dcp_path) if dist.is_main else 0
    results["sharded"].update(
        timed_load(lambda: load_sharded_checkpoint(manager, dcp_path, state), model, optimizer, expected, dist)
    )
    clean(directory, dist)

    directory = scratch / "async"
    manager = CheckpointManager(directory, NAME, background=True, fmt="sharded", dist=dist)  # its gloo group: not timed
    results["sharded async"] = timed_save(manager, state, dist)
    dcp_path = manager.path(TAG, dcp.SUFFIX)
    results["sharded async"].update(
        timed_load(lambda: load_sharded_checkpoint(manager, dcp_path, state), model, optimizer, expected, dist)
    )
    clean(directory, dist)
    return results


# -- the report -----------------------------------------------------------------------------------


def _mb(value: float) -> str:
    return f"{value / MB:,.0f}"


def report(gathered: list[dict[str, Any]], whole: int, parameters: int, world: int) -> None:
    """Print the per-rank tables and the ratios (rank 0)."""
    print(f"\nmodel: {parameters / 1e6:.1f}M parameters; whole model + AdamW state {_mb(whole)} MB; {world} ranks")
    for fmt in ("file", "sharded", "sharded async"):
        first = gathered[0][fmt]
        extra = f", load {first['load_s']:.2f} s" if "load_s" in first else ""
        if "save_s" in first:
            print(f"\n{fmt}: save {first['save_s']:.2f} s (state built in {first['build_s']:.2f} s on rank 0){extra}, "
                  f"{_mb(first['bytes'])} MB on disk")
        else:
            print(f"\n{fmt}: caller blocked {first['blocked_s']:.2f} s, total until wait() {first['total_s']:.2f} s{extra}")
        print("| rank | RSS before save (MB) | peak during save (MB) [sampled / VmHWM] | increase (MB) | own shard (MB) "
              "| increase / own shard | peak increase during load (MB) |")
        print("|---|---|---|---|---|---|---|")
        for rank, figures in enumerate(gathered):
            row, memory = figures[fmt], figures[fmt]["save_mem"]
            print(f"| {rank} | {_mb(memory['before'])} | {_mb(memory['peak'])} [{_mb(memory['sampled'])} / {_mb(memory['hwm'])}] "
                  f"| {_mb(memory['increase'])} | {_mb(figures['own'])} | {memory['increase'] / figures['own']:.2f} "
                  f"| {_mb(row['load_mem']['increase'])} |")
    mmap = [figures["file (mmap load)"] for figures in gathered]
    print(f"\nfile load with torch.load(mmap=True) instead: {mmap[0]['load_s']:.2f} s; peak increase during load (MB, "
          f"file pages included) per rank: {', '.join(_mb(row['load_mem']['increase']) for row in mmap)}")
    ok = all(figures[fmt]["load_ok"] for figures in gathered for fmt in ("file", "file (mmap load)", "sharded", "sharded async"))
    print(f"every load restored the saved model and optimizer bit for bit on every rank: {ok}")

    file, shard, background = gathered[0]["file"], gathered[0]["sharded"], gathered[0]["sharded async"]
    staged = background["save_mem"]["increase"]
    own = gathered[0]["own"]
    increase = shard["save_mem"]["increase"]
    print("\nratios sharded/file:")
    print(f"  save time {shard['save_s'] / file['save_s']:.3f} ({shard['save_s']:.2f} s / {file['save_s']:.2f} s; target <= 1.0)")
    print(f"  load time {shard['load_s'] / file['load_s']:.3f} ({shard['load_s']:.2f} s / {file['load_s']:.2f} s)")
    print(f"  rank 0 peak increase during save {increase / file['save_mem']['increase']:.3f} "
          f"({_mb(increase)} MB / {_mb(file['save_mem']['increase'])} MB)")
    buffer = increase - 1.3 * own
    print(f"target: rank 0 sharded increase {_mb(increase)} MB <= 1.3 x own shard {_mb(own)} MB = {_mb(1.3 * own)} MB "
          f"+ buffer: buffer needed {_mb(max(0.0, buffer))} MB (increase - own shard = {_mb(increase - own)} MB)")
    print(f"file: rank 0 increase {_mb(file['save_mem']['increase'])} MB vs whole state {_mb(whole)} MB "
          f"({file['save_mem']['increase'] / whole:.2f}x)")
    print(f"async sharded: caller blocked {background['blocked_s']:.2f} s of {background['total_s']:.2f} s "
          f"({background['blocked_s'] / background['total_s']:.2f}); "
          f"rank 0 peak increase {_mb(staged)} MB ({staged / own:.2f}x own shard)")


def worker(args: argparse.Namespace) -> None:
    """One rank: warm up on a tiny GPT, then measure every format on the requested one."""
    dist = distributed.from_environment(use_cuda=False)
    scratch = Path(args.scratch)
    warm_model, warm_optimizer = build(*SIZES["small"][:2], 512, 32, dist)
    run_formats(warm_model, warm_optimizer, dist, scratch / "warmup")
    del warm_model, warm_optimizer

    layers, width, vocab, block = SIZES[args.size]
    layers, width = args.layers or layers, args.width or width
    start = time.perf_counter()
    model, optimizer = build(layers, width, vocab, block, dist)
    if dist.is_main:
        print(f"built, sharded and stepped the GPT ({layers} layers, width {width}) in {time.perf_counter() - start:.1f} s")
    own, whole = state_sizes(model, optimizer)
    results = run_formats(model, optimizer, dist, scratch / "run")
    results["own"] = own
    gathered = dist.gather_objects(results)
    if dist.is_main:
        parameters = sum(p.numel() for p in model.parameters())
        report(gathered, whole, parameters, dist.world_size)
        print(f"\nload average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    dist.close()


def main() -> None:
    """Parse the options; launch the ranks under torch.distributed.run, or be one of them."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="gpt2", help="gpt2: 124M parameters (default); small: quick")
    parser.add_argument("--layers", type=int, default=None, help="override the number of transformer blocks")
    parser.add_argument("--width", type=int, default=None, help="override n_embd (n_head = width // 64)")
    parser.add_argument("--nproc", type=int, default=4, help="CPU processes (ranks)")
    parser.add_argument("--dir", default=str(REPO / "weights"), help="where the scratch directory goes")
    parser.add_argument("--scratch", default=None, help=argparse.SUPPRESS)  # set by the launcher for the ranks
    args = parser.parse_args()
    if "LOCAL_RANK" in os.environ:
        worker(args)
        return
    print(f"machine: {machine()}; load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    Path(args.dir).mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    with tempfile.TemporaryDirectory(prefix="kiln-bench-sharded-", dir=args.dir) as scratch:
        # The ranks get their options spelled out: torchrun's own parser would read `--nproc` after
        # the script as an abbreviation of its --nproc-per-node and refuse it as ambiguous.
        sizes = [f"--{name}={value}" for name, value in (("layers", args.layers), ("width", args.width)) if value is not None]
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={args.nproc}",
                   str(Path(__file__).resolve()), f"--size={args.size}", f"--dir={args.dir}", *sizes, "--scratch", scratch]
        code = subprocess.call(command, env=env)
    sys.exit(code)


if __name__ == "__main__":
    main()
