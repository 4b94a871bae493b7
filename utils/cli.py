"""Command-line pieces shared by the tools."""

from __future__ import annotations

import argparse
from typing import NoReturn


class OneLineErrorParser(argparse.ArgumentParser):
    """argparse whose mistakes are one `error:` line and exit 2, like every other Kiln error."""

    def error(self, message: str) -> NoReturn:
        """Print one line and exit 2 (argparse would add its usage block)."""
        self.exit(2, f"error: {message}; see {self.prog} --help\n")
