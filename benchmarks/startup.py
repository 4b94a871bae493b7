"""Start-up cost of Kiln's command line against importing torch, each in a fresh interpreter.

Three commands run as subprocesses, alternating, and are timed whole (interpreter start to
exit): `python -c "import torch"`, `python train.py --help` (which parses its arguments before
importing torch, so it should cost no more than the import), and `python train.py -c tiny.yaml
train.total_iters=1`, the time to a finished first iteration: configs/digits_cnn.yaml without
validation or TensorBoard, including its one checkpoint. Targets: --help / import torch <= 1.25.

    python benchmarks/startup.py [--repeats 5]
"""

from __future__ import annotations

import itertools
import subprocess
import sys
from pathlib import Path

import yaml
from _common import REPO, alternate, median, parse_repeats, scratch_dir

TRAIN_PY = str(REPO / "train.py")
IMPORT_TORCH = 'python -c "import torch"'


def tiny_config(directory: Path) -> Path:
    """configs/digits_cnn.yaml without validation or TensorBoard, written to `directory`."""
    document = yaml.safe_load((REPO / "configs" / "digits_cnn.yaml").read_text(encoding="utf-8"))
    del document["data"]["val"], document["data"]["val_batch_size"]
    document["logging"]["tensorboard"] = False
    path = directory / "tiny.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
    return path


def run(*args: str) -> None:
    """Run `python *args` to completion; a failure stops the benchmark with its stderr."""
    result = subprocess.run([sys.executable, *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(args)} exited {result.returncode}:\n{result.stderr}")


def main() -> None:
    """Time the three commands alternately and print the medians and ratios."""
    repeats = parse_repeats(__doc__)
    with scratch_dir() as directory:
        config = str(tiny_config(directory))
        runs = itertools.count()  # a new experiment name each time: every run is a fresh one, nothing to archive
        times = alternate(
            {
                IMPORT_TORCH: lambda: run("-c", "import torch"),
                "python train.py --help": lambda: run(TRAIN_PY, "--help"),
                "python train.py -c tiny.yaml (1 iteration)": lambda: run(
                    TRAIN_PY, "-c", config, "train.total_iters=1", f"name=startup_{next(runs)}"
                ),
            },
            repeats,
        )
    medians = {command: median(values) for command, values in times.items()}
    torch_import = medians[IMPORT_TORCH]
    targets = {"python train.py --help": " (target <= 1.25)"}
    for command, seconds in medians.items():
        ratio = (
            f", ratio to import torch {seconds / torch_import:.3f}{targets.get(command, '')}" if command != IMPORT_TORCH else ""
        )
        print(f"{command:44s} {seconds:.3f} s{ratio}")
    print(f"(wall time of the whole process; medians of {repeats} alternating runs)")


if __name__ == "__main__":
    main()
