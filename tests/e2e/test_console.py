"""A closed output stream never stops training or loses work (utils/console.py, StopSignals).

End to end, as users meet it: a `| head`-like reader that leaves early, Ctrl-C under `| tee` in
a terminal (tee dies of the same SIGINT), a terminal that goes away (SIGHUP, then EIO on every
write), and a tool piped into a reader that is already gone. The terminals are real
pseudo-terminals (the pty module), so the kernel, not the test, delivers SIGINT and SIGHUP.
"""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import shutil
import signal
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

import train
from tests.helpers import REPO, TRAIN_PY, tiny_config, write_config
from utils import console
from utils.cli import EXIT_READER_GONE, run_tool

pytestmark = pytest.mark.slow

# Imports alone take ~20 s on a loaded 2-core machine; these bound a hang, not the speed.
STARTUP_S = 240
FINISH_S = 240
ITERATION_LINE = b"| iter "


def _config(tmp_path: Path, total_iters: int, progress: bool = False) -> Path:
    """A tiny digits run without validation or periodic saves: only the final or stop checkpoint."""
    document = tiny_config(
        train={"total_iters": total_iters, "val_interval": 10**6},
        checkpoint={"interval": 10**6},
        logging={"interval": 2, "progress": progress, "tensorboard": False},
    )
    del document["data"]["val"]
    return write_config(tmp_path / "cfg.yaml", document)


@contextmanager
def _closed_pipe() -> Iterator[int]:
    """The write end of a pipe whose reader has already gone (every write fails with EPIPE)."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        yield write_end
    finally:
        os.close(write_end)


def _stop_iteration(log: str, signum: int) -> int:
    """The iteration train.log says the run stopped at after `signum`."""
    found = re.search(rf"stopped by signal {signum} at iteration (\d+); checkpoint saved \({signal.Signals(signum).name}\)", log)
    assert found, f"no stop line for signal {signum} in train.log:\n{log[-2000:]}"
    return int(found.group(1))


# -- in a terminal ---------------------------------------------------------------------------


def _start_in_terminal(argv: list[str], cwd: Path) -> tuple[int, int]:
    """Run argv as the session leader of a new pseudo-terminal (its controlling terminal): (pid, master)."""
    pid, master = pty.fork()
    if pid == 0:  # the child: exec at once, touching nothing of the test process
        try:
            os.chdir(cwd)
            # 24 x 100, like a terminal window (a new pty has 0 columns, where tqdm draws no bar)
            fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
            # as a shell in a new window starts it: a suite run under nohup (SIGHUP ignored, which
            # exec passes on and Kiln then respects) must not turn the hang-up into a no-op
            signal.signal(signal.SIGHUP, signal.SIG_DFL)
            os.execv(argv[0], argv)
        finally:
            os._exit(127)
    return pid, master


def _read_until(master: int, marker: bytes | None, seconds: float) -> bytes:
    """What the terminal shows until `marker` appears (None: until it closes), at most `seconds`."""
    seen, deadline = b"", time.monotonic() + seconds
    while time.monotonic() < deadline and not (marker and marker in seen):
        if select.select([master], [], [], 0.2)[0]:
            try:
                chunk = os.read(master, 4096)
            except OSError:  # EIO: every process holding the terminal has gone
                break
            if not chunk:
                break
            seen += chunk
    return seen


def _wait(pid: int, seconds: float) -> int:
    """The exit code of child `pid` (negative: killed by that signal), waiting at most `seconds`."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.1)
    raise AssertionError(f"process {pid} still ran after {seconds} s")


def _kill_if_running(pid: int) -> None:
    """SIGKILL the process group `pid` leads if it is still there: a failed test leaves no run behind."""
    try:
        if os.waitpid(pid, os.WNOHANG)[0] == 0:
            os.killpg(pid, signal.SIGKILL)  # the session leader leads the group: train.py and tee too
            os.waitpid(pid, 0)
    except ChildProcessError:  # already reaped by _wait
        pass


# -- the tests ---------------------------------------------------------------------------------


def test_training_goes_on_to_the_end_when_its_stdout_reader_goes_away(tmp_path):
    """`python train.py | head -1`: the reader leaves after one line; the run must not notice."""
    proc = subprocess.Popen(
        [sys.executable, str(TRAIN_PY), "-c", str(_config(tmp_path, total_iters=20))],
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        first = proc.stdout.readline()
        proc.stdout.close()  # what head does after its line: every later write gets EPIPE
        _, stderr = proc.communicate(timeout=STARTUP_S + FINISH_S)
    finally:
        proc.kill()  # a no-op once it has exited
    log = (tmp_path / "experiments" / "tiny" / "train.log").read_text()
    assert proc.returncode == 0, stderr[-3000:]
    assert "Traceback" not in stderr and "Broken pipe" not in stderr, stderr[-3000:]
    assert first.strip() and first.strip() in log
    assert "done: tiny at iteration 20" in log, log[-2000:]
    assert len(log.splitlines()) > 2  # train.log kept the lines the console dropped
    assert (tmp_path / "weights" / "tiny_iter_20.pt").is_file()


@pytest.mark.skipif(shutil.which("bash") is None, reason="the pipeline runs in bash (for PIPESTATUS)")
def test_ctrl_c_under_tee_in_a_terminal_saves_and_exits_130(tmp_path):
    """^C in a terminal reaches train.py and tee alike; tee dies, train.py must still save and exit 130."""
    config = _config(tmp_path, total_iters=100_000)
    # An interactive shell survives ^C and can report the status; `trap :` gives bash that (its
    # children still get the default SIGINT). PIPESTATUS[0] is train.py's own status.
    script = f'trap : INT; "{sys.executable}" "{TRAIN_PY}" -c "{config}" | tee out.log; echo "${{PIPESTATUS[0]}}" > status'
    pid, master = _start_in_terminal([shutil.which("bash"), "-c", script], tmp_path)
    try:
        shown = _read_until(master, ITERATION_LINE, STARTUP_S)
        assert ITERATION_LINE in shown, shown.decode(errors="replace")[-3000:]
        os.write(master, b"\x03")  # the terminal's ^C: SIGINT to its foreground process group
        shown += _read_until(master, None, FINISH_S)
        assert _wait(pid, FINISH_S) == 0
    finally:
        os.close(master)
        _kill_if_running(pid)
    log = (tmp_path / "experiments" / "tiny" / "train.log").read_text()
    everything = shown.decode(errors="replace") + (tmp_path / "out.log").read_text() + log
    assert (tmp_path / "status").read_text().strip() == "130", everything[-3000:]
    assert "Traceback" not in everything and "Broken pipe" not in everything, everything[-3000:]
    stopped_at = _stop_iteration(log, signal.SIGINT)
    assert (tmp_path / "weights" / f"tiny_iter_{stopped_at}.pt").is_file()


def test_a_lost_terminal_stops_at_the_next_iteration_with_a_checkpoint_and_exits_129(tmp_path):
    """Closing the terminal (its master side) sends SIGHUP and makes every write fail with EIO."""
    config = _config(tmp_path, total_iters=100_000, progress=True)  # the tqdm bar too: stdout is a tty
    pid, master = _start_in_terminal([sys.executable, str(TRAIN_PY), "-c", str(config)], tmp_path)
    try:
        shown = _read_until(master, ITERATION_LINE, STARTUP_S)
        os.close(master)  # the window closes: the kernel hangs the terminal up (SIGHUP, then EIO)
        assert ITERATION_LINE in shown, shown.decode(errors="replace")[-3000:]
        code = _wait(pid, FINISH_S)
    finally:
        _kill_if_running(pid)
    log = (tmp_path / "experiments" / "tiny" / "train.log").read_text()
    assert code == 128 + signal.SIGHUP, log[-2000:]
    stopped_at = _stop_iteration(log, signal.SIGHUP)
    assert (tmp_path / "weights" / f"tiny_iter_{stopped_at}.pt").is_file()


def test_a_tool_whose_reader_went_away_exits_141_without_a_traceback(tmp_path):
    """`python tools/show_checkpoint.py X | head -1`, with head already gone: quiet, exit 141 (128 + SIGPIPE)."""
    weights = tmp_path / "w.pth"
    torch.save({"params": {"weight": torch.zeros(3)}}, weights)
    with _closed_pipe() as stdout:
        done = subprocess.run(
            [sys.executable, str(REPO / "tools" / "show_checkpoint.py"), str(weights)],
            stdout=stdout,
            stderr=subprocess.PIPE,
            text=True,
            timeout=STARTUP_S,
        )
    assert (done.returncode, done.stderr) == (EXIT_READER_GONE, "")


def test_the_error_line_of_train_py_on_a_closed_stderr_is_dropped_and_the_exit_stays_2(tmp_path, monkeypatch):
    """A bad input still exits 2 when stderr's reader is gone (the print used to raise BrokenPipeError)."""
    with _closed_pipe() as fd, open(fd, "w", closefd=False) as stderr:
        monkeypatch.setattr(sys, "stderr", stderr)
        assert train.main(["-c", str(tmp_path / "missing.yaml")]) == 2
        assert console.lost(stderr)  # and stays dropped: the next write does not even try
        assert not console.write(stderr, "later\n")


def test_a_broken_pipe_that_is_not_the_console_is_not_hidden():
    """run_tool turns only the console's BrokenPipeError into a quiet exit: another pipe's is a real failure."""

    def main() -> int:
        raise BrokenPipeError(32, "Broken pipe (a worker's)")

    with pytest.raises(BrokenPipeError):
        run_tool(main)
