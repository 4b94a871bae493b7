"""A gloo rank whose last collective completes while the process exits.

Run by tests/trainer/distributed/test_process.py as
`python late_collective.py sys.exit|exit_process` with RANK, WORLD_SIZE=2, MASTER_ADDR and
MASTER_PORT set. Rank 0 starts an all_reduce, drops its references and exits; rank 1 joins the
all_reduce late, so rank 0's gloo worker thread releases the tensor (and needs the GIL) during
rank 0's exit. An atexit handler holds the GIL until then and an object freed at teardown lets it
go, which turns torch's rare exit race into a certain one. Plain sys.exit then aborts (SIGABRT);
utils.cli.exit_process must exit with 0.
"""

import atexit
import datetime
import os
import sys
import time
from pathlib import Path

PEER_DELAY_S = 0.3  # rank 1 joins the all_reduce this long after rank 0
HOLD_S = 1.5  # rank 0's last atexit handler keeps the GIL this long


def hold_the_gil() -> None:
    """Busy-wait in Python without letting the GIL go, while the gloo worker finishes."""
    sys.setswitchinterval(100)
    deadline = time.perf_counter() + HOLD_S
    while time.perf_counter() < deadline:
        pass


class ReleasesTheGilAtTeardown:
    """Freed during finalization: sleeping there hands the GIL to whoever waits for it."""

    def __del__(self) -> None:
        time.sleep(0.2)


rank = int(os.environ["RANK"])
if rank == 0:
    atexit.register(hold_the_gil)  # registered before torch's handlers: runs after them

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from utils.cli import exit_process  # noqa: E402

dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=20))
if rank == 1:
    time.sleep(PEER_DELAY_S)
tensor = torch.ones(4)
work = dist.all_reduce(tensor, async_op=True)
if rank == 1:
    work.wait()
    os._exit(0)
del work, tensor  # the gloo worker now holds the last reference
teardown = ReleasesTheGilAtTeardown()
if sys.argv[1] == "exit_process":
    exit_process(0)
sys.exit(0)
