"""Instructions per training step, Kiln against the plain loop, counted by valgrind: no timing noise.

On a shared machine the wall time of one and the same run moves by 5-10% between repeats,
more than the 1% a loop's overhead is allowed. Instruction counts do not move: each side of
an overhead.py case runs in its own process under `valgrind --tool=callgrind`, single-threaded,
once with N and once with 2N iterations, and the difference is what N iterations cost, with
imports, start-up, building and the final save cancelled out. The ratio kiln/plain of those
counts is the loop's cost ratio in instructions (memory stalls are not counted).

Needs valgrind (Debian: `apt install valgrind`); a run takes a few minutes per side.

    python benchmarks/instructions.py [--case CNN] [--iterations 20]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from _common import REPO, machine

OVERHEAD = REPO / "benchmarks" / "overhead.py"
SIDES = ("plain", "kiln", "kiln, fused: false")


def count_instructions(side: str, case: str, iterations: int) -> int:
    """Instructions executed by one run of `side` (whole process) under callgrind."""
    with tempfile.TemporaryDirectory(prefix="kiln-callgrind-") as scratch:
        command = [
            "valgrind",
            "--tool=callgrind",
            f"--callgrind-out-file={Path(scratch) / 'out'}",
            sys.executable,
            str(OVERHEAD),
            "--once",
            side,
            "--case",
            case,
            "--iterations",
            str(iterations),
        ]
        # One thread and a fixed hash seed: the count is then the same on every repeat.
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}
        result = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    match = re.search(r"Collected : (\d+)", result.stderr)
    if result.returncode != 0 or match is None:
        raise SystemExit(f"valgrind run of {side!r} failed:\n{result.stderr[-2000:]}")
    return int(match.group(1))


def main() -> None:
    """Count each side at N and 2N iterations (two runs at a time) and print per-step figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", default="CNN", help="an overhead.py case, by part of its name")
    parser.add_argument("--iterations", type=int, default=20, help="N: the runs do N and 2N iterations")
    args = parser.parse_args()
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed here; install it (apt install valgrind) to count instructions")
    print(f"machine: {machine()}")
    runs = [(side, n) for side in SIDES for n in (args.iterations, 2 * args.iterations)]
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        counts = dict(zip(runs, pool.map(lambda run: count_instructions(run[0], args.case, run[1]), runs), strict=True))
    per_step = {side: (counts[side, 2 * args.iterations] - counts[side, args.iterations]) / args.iterations for side in SIDES}
    print(f"case {args.case!r}: instructions per training step (runs of {args.iterations} and {2 * args.iterations} iterations)")
    for side in SIDES:
        print(f"  {side:20s} {per_step[side] / 1e6:8.2f} M/step  ratio to plain {per_step[side] / per_step['plain']:.3f}")


if __name__ == "__main__":
    main()
