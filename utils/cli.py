"""Command-line pieces shared by the tools."""

from __future__ import annotations

import argparse
import atexit
import os
import sys
from collections.abc import Callable
from typing import NoReturn

from utils import console

# A tool whose reader went away (`tools/show_checkpoint.py X | head -1`) exits with 141 = 128 +
# SIGPIPE: what a shell reports for cat, grep or yes in the same spot, so a `set -o pipefail`
# script sees a Kiln tool as it sees any Unix tool (and 0 would claim output nobody received).
EXIT_READER_GONE = 141


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
        _flush_console()
        os._exit(code)
    _flush_console()
    sys.exit(code)


def exit_with(main: Callable[[], int]) -> NoReturn:
    """exit_process(main()); an uncaught error prints its traceback and exits 1 the same way.

    Python would exit 1 too, but through interpreter finalization, where a torchrun worker whose
    peer died can hang in garbage collection until the agent kills it (seen with gloo: 30 s per
    restart), for the reason `exit_process` gives.
    """
    try:
        code = main()
    except Exception:  # noqa: BLE001 - reported as Python reports it; KeyboardInterrupt and SystemExit pass
        sys.excepthook(*sys.exc_info())  # torch's, under torchrun: each line prefixed [rankN]:
        code = 1
    exit_process(code)


def _flush_console() -> None:
    """Flush stdout and stderr; a closed pipe or terminal is dropped (utils.console), never raised."""
    for stream in (sys.stdout, sys.stderr):
        # Never raises: a closed pipe must not change the exit code, nor fail the interpreter's
        # own flush at exit ("Exception ignored ... BrokenPipeError" and exit 120).
        console.flush(stream)


def run_tool(main: Callable[[], int]) -> NoReturn:
    """Exit with `main()`'s code, or quietly with EXIT_READER_GONE (141) when the tool's reader went away."""
    try:
        code = main()
    except BrokenPipeError:
        if not (console.gone(sys.stdout) or console.gone(sys.stderr)):
            raise  # another pipe broke (a worker's, a socket's): a real failure, shown with its traceback
        code = EXIT_READER_GONE
    finally:  # also when argparse exits from inside main (--help into a closed pipe)
        delivered = console.flush(sys.stdout)  # a pipe's stdout is block-buffered: most output leaves here
        console.flush(sys.stderr)
    exit_process(code if delivered or code else EXIT_READER_GONE)
