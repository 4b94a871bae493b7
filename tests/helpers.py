"""What the tests share besides fixtures (those, and pytest hooks, are in tests/conftest.py).

- the tiny digits config and config files: `REPO`, `TRAIN_PY`, `TINY_CONFIG`, `tiny_config`, `CNN_RUN`,
  `write_config`, `write_config_text`, `error_of`
- running Kiln: `run_train` (train.py as a process), `torchrun`, `run_two_ranks`, `SCRIPTS`, `free_port`,
  `train_in_process` and `train_in_dir` (faster: no interpreter start-up), `load_tool` and `call`
  (a tool's main in-process)
- reading results back: `load_params`, `assert_bitwise_equal`, `iterations_reading_the_device`,
  `metric_value`
- weights as other tools publish them: `published_weights`, `save_sharded`, `loaded_through_pretrain`
- the toy LM of the token-mean accumulation tests (trainer/test_losses.py, scripts/lm_accumulation_ddp.py)
- `Proxy`: a TCP proxy between a test's runs and the server the test started (S3, MLflow)

Kiln's own modules are imported inside the functions that use them: importing this module (as
the scripts under tests/scripts/ do in their processes) stays light, and a trainer/ that does not
import fails only the tests that need it.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import re
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from io import StringIO
from pathlib import Path
from types import ModuleType

import torch
import yaml
from torch import nn

REPO = Path(__file__).resolve().parents[1]
TRAIN_PY = REPO / "train.py"
SCRIPTS = REPO / "tests" / "scripts"  # what a test starts as a process (torchrun or python), not test modules

# -- the tiny config ------------------------------------------------------------------------------

# Small enough that 30 iterations take about a second on 2 cores.
TINY_CONFIG = {
    "name": "tiny",
    "seed": 0,
    "device": "cpu",
    "model": {"type": "SimpleCNN", "num_classes": 10, "width": 8},
    "loss": {"type": "CrossEntropyLoss"},
    "metrics": ["accuracy"],
    "data": {
        "batch_size": 32,
        "val_batch_size": 128,
        "train": {"type": "Digits", "split": "train", "augment": True},
        "val": {"type": "Digits", "split": "val"},
    },
    "optimizer": {"type": "AdamW", "lr": 3.0e-3, "weight_decay": 0.01},
    "scheduler": {"type": "CosineAnnealingLR", "T_max": 30},
    "train": {"total_iters": 30, "val_interval": 10},
    "checkpoint": {"interval": 10},
    "logging": {"interval": 5, "progress": False},
}


def tiny_config(**changes) -> dict:
    """TINY_CONFIG with top-level keys replaced (deep copy)."""
    document = copy.deepcopy(TINY_CONFIG)
    document.update(copy.deepcopy(changes))
    return document


# Dropout and augmentation: per-rank RNG streams must be saved and restored for exact resume.
# The reference run of the torchrun tests (trainer/distributed/test_process.py, test_multinode.py).
CNN_RUN = tiny_config(train={"total_iters": 60, "val_interval": 30}, checkpoint={"interval": 25})


def write_config(path: Path, document: dict) -> Path:
    """Write a config document as YAML and return its path."""
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def write_config_text(path: Path, text: str) -> Path:
    """Write YAML text as is and return its path."""
    path.write_text(text)
    return path


def error_of(call) -> str:
    """Run `call`, require an InputError with a one-line message, and return that message."""
    import pytest

    from trainer.errors import InputError

    with pytest.raises(InputError) as caught:
        call()
    assert type(caught.value) is InputError
    message = str(caught.value)
    assert message, "an InputError needs a message"
    assert "\n" not in message, f"the message must be one line: {message!r}"
    return message


# -- running Kiln ---------------------------------------------------------------------------------


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now (for the servers the tests start)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def moto_server(log_dir: Path, **env: str) -> Iterator[tuple[subprocess.Popen, int]]:
    """(moto's S3 server on 127.0.0.1 at a free port, the port), its output in `log_dir`/server.log and
    `env` added to its environment; killed (it may be SIGSTOPped by then) and waited for at the end."""
    port = free_port()
    with (log_dir / "server.log").open("w") as log:
        server = subprocess.Popen(
            [str(Path(sys.executable).with_name("moto_server")), "-H", "127.0.0.1", "-p", str(port)],
            env={**os.environ, **env},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            yield server, port
        finally:
            server.kill()
            server.wait(timeout=30)


def run_train(cwd: Path, *args: str, timeout: float = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run `python train.py ARGS` in `cwd` (outputs land there) and capture its output."""
    return subprocess.run(
        [sys.executable, str(TRAIN_PY), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        stdin=subprocess.DEVNULL,
    )


def torchrun(
    workdir: Path, *args: str, nproc: int = 2, extra: tuple[str, ...] = (), timeout: float = 240, script: str | Path = TRAIN_PY
):
    """`torchrun --nproc_per_node=N SCRIPT ARGS` in `workdir` (SCRIPT: train.py, or a test's own script there)."""
    # --standalone: a free port of its own, so parallel test workers never collide on 29500
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        *extra,
        str(script),
        *args,
    ]
    # workdir: the test's own modules; the repo: what a test script there imports (trainer, models)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(workdir), str(REPO)]), "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, cwd=workdir, capture_output=True, text=True, timeout=timeout, env=env)


def run_two_ranks(script: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """Rank 0 of `python script ARGS` beside a rank 1, over gloo on a free local port."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "WORLD_SIZE": "2", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, str(script), *args]
    peer = subprocess.Popen(command, env={**env, "RANK": "1"}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        return subprocess.run(command, env={**env, "RANK": "0"}, capture_output=True, text=True, timeout=timeout)
    finally:
        peer.kill()
        peer.wait()


def train_in_process(workdir: Path, document: dict, *overrides: str) -> int:
    """Write `document` to workdir/config.yaml and train it with `overrides`; return the exit code."""
    from trainer import run
    from trainer.config import load_config

    path = write_config(workdir / "config.yaml", document)
    return run(load_config(path, list(overrides)))


def train_in_dir(workdir: Path, document: dict, *overrides: str) -> int:
    """train_in_process with workdir as the working directory (for module-scoped fixtures,
    which cannot use the function-scoped `workdir` fixture); the old one is restored."""
    previous = os.getcwd()
    os.chdir(workdir)
    try:
        return train_in_process(workdir, document, *overrides)
    finally:
        os.chdir(previous)


def load_tool(name: str) -> ModuleType:
    """Import tools/<name>.py as a module (tools/ is a folder of scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(f"kiln_tool_{name}", REPO / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def call(tool: ModuleType, *argv: str) -> tuple[int, str, str]:
    """Run a tool's main(argv); return (exit code, stdout, stderr)."""
    out, err = StringIO(), StringIO()
    old = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = out, err
    try:
        code = tool.main(list(argv))
    except SystemExit as stop:  # argparse's exit on a bad argument
        code = stop.code
    finally:
        sys.stdout, sys.stderr = old
    return code, out.getvalue(), err.getvalue()


# -- reading results back -------------------------------------------------------------------------


def child_pids(pid: int) -> list[int]:
    """The pids whose parent is `pid` (from /proc): a launcher's workers, a run's DataLoader workers."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


def load_params(path: Path) -> dict[str, torch.Tensor]:
    """The state dict of a weight-only .pth."""
    return torch.load(path, weights_only=True)["params"]


def assert_bitwise_equal(left: dict[str, torch.Tensor], right: dict[str, torch.Tensor]) -> None:
    """Same keys, and every tensor equal bit for bit."""
    assert left.keys() == right.keys()
    different = [key for key in left if not torch.equal(left[key], right[key])]
    assert not different, f"tensors differ: {different}"


def iterations_reading_the_device(trainer, monkeypatch) -> list[int]:
    """Train `trainer` to the end (then close it); return the iteration of every read of a tensor's
    value back to the host (.item(), .tolist(), float(), bool(), .cpu()) made by Kiln's own code."""
    reads_at: list[int] = []

    def counting(method):
        def wrapper(self, *args, **kwargs):
            caller = sys._getframe(1).f_code.co_filename
            if caller.startswith(str(REPO)) and "/tests/" not in caller and "/.venv/" not in caller:
                reads_at.append(trainer.iteration)
            return method(self, *args, **kwargs)

        return wrapper

    for name in ("item", "tolist", "__float__", "__bool__", "cpu"):
        monkeypatch.setattr(torch.Tensor, name, counting(getattr(torch.Tensor, name)))
    try:
        assert trainer.fit() == 0
    finally:
        trainer.close()
    return reads_at


def metric_value(metric, output, target) -> float:
    """A (total, count) metric's mean over one batch."""
    total, count = metric(output, target)
    return (total / count).item()


# -- weights as other tools publish them (trainer/checkpoint/test_weight_files.py, test_storage.py) --

CNN = {"type": "SimpleCNN", "num_classes": 10, "width": 8}  # tiny_config's model


def published_weights(seed: int = 123) -> dict[str, torch.Tensor]:
    """A SimpleCNN state dict unlike any fresh initialisation (another seed, every value shifted)."""
    from models.simple_cnn import SimpleCNN

    torch.manual_seed(seed)
    return {key: value + 1.0 for key, value in SimpleCNN(num_classes=10, width=8).state_dict().items()}


def loaded_through_pretrain(pretrain_path: Path, model_spec: dict = CNN, **settings) -> dict[str, torch.Tensor]:
    """Build the config's model and load pretrain_path into it as the Trainer does; its weights."""
    import models  # noqa: F401  (registers Kiln's models)
    from trainer.checkpoint.restore import load_pretrained
    from trainer.config import Component, config_from_dict
    from trainer.registry import MODELS, build

    config = config_from_dict(tiny_config(model=model_spec, pretrain_path=str(pretrain_path), **settings))
    model = build(MODELS, Component(model_spec["type"], {k: v for k, v in model_spec.items() if k != "type"}))
    notes = load_pretrained(model, config)
    assert notes == [f"loaded pretrained weights from {pretrain_path}"]  # nothing left out
    return model.state_dict()


def save_sharded(state: dict[str, torch.Tensor], folder: Path, shards: int = 3) -> Path:
    """Write `state` as save_pretrained does: model-0000i-of-0000n.safetensors plus the index."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    keys = list(state)
    weight_map = {}
    for i in range(shards):
        name = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        part = {key: state[key].contiguous() for key in keys[i::shards]}
        save_file(part, folder / name, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(part, name))
    total = sum(t.numel() * t.element_size() for t in state.values())
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    return folder / "model.safetensors.index.json"


# -- a toy LM for token-mean gradient accumulation (trainer/test_losses.py, scripts/lm_accumulation_ddp.py)

VOCAB, WIDTH, BATCH, BLOCK = 11, 5, 8, 6
# Valid targets per row (the rest -100): micro-batches of 1, 2 or 4 rows hold different counts,
# and one row has none at all.
VALID_PER_ROW = (6, 6, 5, 4, 3, 1, 0, 6)
TOLERANCE = 1e-6


class ToyLM(nn.Module):
    """Embedding + linear: (B, T) token ids -> (B, T, V) logits, float64."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, WIDTH, dtype=torch.float64)
        self.head = nn.Linear(WIDTH, VOCAB, dtype=torch.float64)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.embed(tokens)))  # (B, T, V)


class RecordingSGD(torch.optim.SGD):
    """SGD that keeps a copy of every gradient it steps with (OptimizerStep clears them after)."""

    def step(self, closure=None):
        self.seen = [p.grad.detach().clone() for group in self.param_groups for p in group["params"]]
        return super().step(closure)


def toy_batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(BATCH, BLOCK) inputs and targets; row i has VALID_PER_ROW[i] valid targets, then -100."""
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randint(VOCAB, (BATCH, BLOCK), generator=generator)
    targets = torch.randint(VOCAB, (BATCH, BLOCK), generator=generator)
    for row, valid in enumerate(VALID_PER_ROW):
        targets[row, valid:] = -100
    return inputs, targets


def split(inputs: torch.Tensor, targets: torch.Tensor, parts: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """`parts` micro-batches of consecutive rows."""
    return list(zip(inputs.chunk(parts), targets.chunk(parts), strict=True))


def relative_error(value: torch.Tensor, reference: torch.Tensor) -> float:
    """|value - reference| / |reference| (L2 over the whole tensor)."""
    value, reference = value.detach(), reference.detach()
    return float((value - reference).norm() / reference.norm())


def make_step(model: nn.Module, raw_model: nn.Module, loss_fn, optimizer, accumulate: int, dist=None, **train):
    """An OptimizerStep for one toy step on CPU."""
    from trainer.config import TrainConfig
    from trainer.numerics import NonFiniteGuard
    from trainer.step import OptimizerStep

    cpu = torch.device("cpu")
    return OptimizerStep(
        model=model,
        raw_model=raw_model,
        loss_fn=loss_fn,
        optimizer=optimizer,
        scheduler=None,
        ema=None,
        guard=NonFiniteGuard(train.get("nan_policy", "stop"), 10, cpu),
        config=TrainConfig(total_iters=1, accumulate=accumulate, **train),
        device=cpu,
        dist=dist,
    )


def one_step(model: nn.Module, micro_batches, accumulate: int, dist=None, ddp: nn.Module | None = None, **train):
    """(returned loss, gradients the optimizer saw) of one OptimizerStep with TokenCrossEntropy."""
    from trainer.losses import TokenCrossEntropy

    optimizer = RecordingSGD(model.parameters(), lr=0.1, fused=train.get("nan_policy") == "skip")
    step = make_step(ddp or model, model, TokenCrossEntropy(), optimizer, accumulate, dist, **train)
    loss = step(iter(micro_batches))
    return loss, optimizer.seen


# -- a TCP proxy between a test's runs and the server it started -----------------------------------


class Proxy:
    """A TCP proxy on 127.0.0.1 to the server on port `target` (S3, MLflow).

    It forwards everything, records the `METHOD /path` of every HTTP request in order, can hold
    the one request `hold` names (forwarding only half the bytes it arrived with: an upload cut
    short, for a kill during it), and `stop()` cuts every connection and refuses new ones (a server
    that goes away mid-run). Nothing of the server or its client is mocked.
    """

    REQUEST_LINE = re.compile(rb"(GET|PUT|POST|DELETE|HEAD) (/[^ ?]*)(\?\S*)? HTTP/1\.1\r\n")

    def __init__(self, target: int) -> None:
        self.target = target
        self.requests: list[str] = []
        self.hold: str | None = None
        self.held = threading.Event()
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = self._server.getsockname()[1]
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target))
            self._sockets += [client, upstream]
            threading.Thread(target=self._requests, args=(client, upstream), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(1 << 16):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for end in (source, sink):
                end.close()

    def _requests(self, client: socket.socket, upstream: socket.socket) -> None:
        tail, holding = b"", False
        try:
            while data := client.recv(1 << 16):
                if holding:
                    continue  # the held request never reaches the server whole
                seen = tail + data
                for match in self.REQUEST_LINE.finditer(seen):
                    if match.end() <= len(tail):
                        continue  # recorded with the previous chunk
                    request = f"{match.group(1).decode()} {match.group(2).decode()}"
                    self.requests.append(request)
                    holding = holding or request == self.hold
                upstream.sendall(data[: len(data) // 2] if holding else data)
                if holding:
                    self.held.set()
                tail = seen[-300:]
        except OSError:
            pass
        finally:
            client.close()
            upstream.close()

    def close(self) -> None:
        """Refuse new connections (the open ones end with their peers)."""
        self._server.close()

    def stop(self) -> None:
        """Refuse new connections and cut the open ones."""
        for connection in [self._server, *self._sockets]:  # shutdown first: close alone leaves accept() listening
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            connection.close()
