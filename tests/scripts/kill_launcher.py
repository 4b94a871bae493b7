"""SIGKILL a torchrun launcher mid-training and report how its orphaned workers ended.

Run by tests/trainer/distributed/test_launcher_death.py as
`python kill_launcher.py LOG TEXT -- TORCHRUN COMMAND...` in the run's working directory. It
makes itself the child subreaper (PR_SET_CHILD_SUBREAPER), so that the workers, orphaned by the
launcher's death, become its children and their exit codes can be read; starts the command;
waits until LOG contains TEXT (training is under way); SIGKILLs the launcher; waits up to
WAIT_S for every orphan; prints {"workers": {pid: exit code or null}} as JSON. Whatever still
runs after WAIT_S is SIGKILLed (exit code null).
"""

import ctypes
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # run as a script: the repo root is not on sys.path

from tests.helpers import child_pids  # noqa: E402

PR_SET_CHILD_SUBREAPER = 36  # linux/prctl.h
WAIT_S = 120  # for the launcher to show TEXT, and again for the workers to end


def wait_for_text(log: Path, text: str, launcher: subprocess.Popen) -> None:
    """Until `log` contains `text`; exit 3 if the launcher ends first or it takes over WAIT_S."""
    deadline = time.monotonic() + WAIT_S
    while not (log.is_file() and text in log.read_text()):
        if launcher.poll() is not None or time.monotonic() > deadline:
            print(json.dumps({"error": f"launcher ended with {launcher.returncode} before {text!r}"}))
            sys.exit(3)
        time.sleep(0.05)


def reap(workers: list[int]) -> dict[int, int | None]:
    """Wait for every child (the orphans came to this process); the exit codes of `workers`."""
    codes: dict[int, int | None] = dict.fromkeys(workers)
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:  # none left
            return codes
        if pid == 0:
            time.sleep(0.05)
        elif pid in codes:
            codes[pid] = os.waitstatus_to_exitcode(status)
    for pid in child_pids(os.getpid()):
        os.kill(pid, signal.SIGKILL)
    return codes


def main() -> None:
    """Start, wait, kill the launcher, report."""
    log, text, separator, *command = sys.argv[1:]
    assert separator == "--"
    if ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1) != 0:
        print(json.dumps({"error": "prctl(PR_SET_CHILD_SUBREAPER) failed"}))
        sys.exit(3)
    launcher = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for_text(Path(log), text, launcher)
    workers = child_pids(launcher.pid)
    launcher.send_signal(signal.SIGKILL)
    launcher.wait()
    print(json.dumps({"workers": reap(workers)}), flush=True)


if __name__ == "__main__":
    main()
