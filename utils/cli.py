"""Command-line pieces shared by the tools."""

from __future__ import annotations

import argparse
import atexit
import contextlib
import os
import sys
from typing import NoReturn


class OneLineErrorParser(argparse.ArgumentParser):
    """argparse whose mistakes are one `error:` line and exit 2, like every other Kiln error."""

    def error(self, message: str) -> NoReturn:
        """Print one line and exit 2 (argparse would add its usage block)."""
        self.exit(2, f"error: {message}; see {self.prog} --help\n")


def exit_process(code: int) -> NoReturn:
    """Exit with `code`; a torchrun worker (WORLD_SIZE > 1) skips interpreter finalization.

    Why: torch.distributed's worker threads (gloo's run loop, NCCL's watchdog) outlive
    destroy_process_group while a DDP or FSDP model still holds the group, and they drop the
    tensors of the last collective on their own thread, which takes the GIL. If that happens
    while Python finalizes, Python ends the thread inside a C++ destructor and the rank aborts
    ("terminate called without an active exception", SIGABRT) after a run that succeeded: seen
    about once in 30 FSDP runs on a loaded 2-core machine (torch 2.14). So a torchrun worker runs
    the atexit handlers itself (logging, multiprocessing, torch's own), flushes its streams and
    leaves with os._exit. Everything Kiln writes is already closed by then (Trainer.close).
    """
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        atexit._run_exitfuncs()
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError):  # a closed pipe must not change the code
                stream.flush()
        os._exit(code)
    sys.exit(code)
