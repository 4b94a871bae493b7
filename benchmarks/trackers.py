"""What the experiment trackers cost the training loop: the same run with and without them.

One digits SimpleCNN run (batch 64, 1,000 iterations, a log line every 10 iterations, a
validation and a checkpoint every 250, `log_checkpoints: all`) is trained in this process with
`logging.trackers` empty, with `csv`, with `mlflow` against a real `mlflow server` (sqlite
store) on 127.0.0.1, and with `wandb` offline. Only `Trainer.fit()` is timed, the loop itself:
building the trainer (importing mlflow or wandb, opening their runs) and closing it (the bounded
wait for the last uploads) are outside it, as they are outside the hot loop. Sides alternate;
the ratio is each side's time over the no-tracker side's, paired per repeat.

    python benchmarks/trackers.py [--repeats 5]
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from _common import alternate, benchmark_parser, machine, median, paired_ratios, scratch_dir

from trainer.config import config_from_dict
from trainer.trainer import Trainer

ITERATIONS = 1000


def _free_port() -> int:
    """A TCP port nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def mlflow_server(directory: Path):
    """A real `mlflow server` with a sqlite store on a free port; yields its URI, stops it after."""
    port = _free_port()
    command = [
        sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
        "--backend-store-uri", f"sqlite:///{directory / 'mlflow.db'}", "--artifacts-destination", str(directory / "artifacts"),
    ]  # fmt: skip
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"{uri}/health", timeout=2).read()
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise SystemExit("mlflow server did not start") from None
                time.sleep(0.5)
        yield uri
    finally:
        os.killpg(server.pid, 15)
        server.wait()


def train(name: str, trackers: list) -> float:
    """Build the digits run with `trackers`, time its fit() alone, close it; return the seconds."""
    config = config_from_dict(
        {
            "name": name,
            "device": "cpu",
            "model": {"type": "SimpleCNN", "num_classes": 10},
            "loss": {"type": "CrossEntropyLoss"},
            "metrics": ["accuracy"],
            "data": {"batch_size": 64, "train": {"type": "Digits", "split": "train"}, "val": {"type": "Digits", "split": "val"}},
            "optimizer": {"type": "AdamW", "lr": 1e-3},
            "train": {"total_iters": ITERATIONS, "val_interval": 250},
            "val": {"metric": "accuracy", "mode": "max"},
            "checkpoint": {"interval": 250},
            "logging": {"interval": 10, "progress": False, "trackers": trackers, "log_checkpoints": "all"},
        }
    )
    trainer = Trainer(config)
    try:
        start = time.perf_counter()
        trainer.fit()
        return time.perf_counter() - start
    finally:
        trainer.close()


def main() -> None:
    """Alternate the sides, print each one's median fit() time and its ratio to no trackers."""
    args = benchmark_parser(__doc__, repeats=5).parse_args()
    print(f"machine: {machine()}")
    with scratch_dir() as directory, mlflow_server(directory) as uri, open(os.devnull, "w") as devnull:
        os.environ.update(WANDB_MODE="offline", WANDB_DIR=str(directory), WANDB_SILENT="true")
        sides_trackers = {
            "no trackers": [],
            "csv": ["csv"],
            "mlflow (server)": [{"type": "mlflow", "tracking_uri": uri, "experiment": "bench"}],
            "wandb (offline)": [{"type": "wandb", "project": "bench", "mode": "offline"}],
        }
        fit_times: dict[str, list[float]] = {side: [] for side in sides_trackers}

        def side(name: str, trackers: list):
            return lambda: fit_times[name].append(train(name.split()[0], trackers))

        with contextlib.redirect_stdout(devnull):
            alternate({name: side(name, trackers) for name, trackers in sides_trackers.items()}, args.repeats, warmup=True)
    base = fit_times["no trackers"][1:]  # the first entry of every side is its warm-up run
    print(f"digits SimpleCNN, {ITERATIONS} iterations, a log every 10, fit() only, medians of {len(base)} alternating runs:")
    for name, times in fit_times.items():
        middle, lower, upper = paired_ratios(times[1:], base)
        print(f"  {name:18s} {median(times[1:]):6.3f} s  ratio {middle:.3f} (quartiles {lower:.3f}-{upper:.3f})")


if __name__ == "__main__":
    main()
