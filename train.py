"""Kiln's command line: python train.py -c CONFIG [--print-config] [KEY=VALUE ...]."""

from __future__ import annotations

import argparse
import sys


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """-c CONFIG, --print-config, and dotted KEY=VALUE overrides (VALUE is parsed as YAML)."""
    parser = argparse.ArgumentParser(
        description="Train the experiment one YAML config describes.",
        epilog="example: python train.py -c configs/digits_cnn.yaml train.total_iters=500 optimizer.lr=3e-4",
    )
    parser.add_argument("-c", "--config", required=True, help="the experiment's YAML file")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted config key = YAML value")
    # intermixed: overrides may stand on both sides of --print-config
    return parser.parse_intermixed_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Parse, load the config, train; exit 2 with one line on a bad input."""
    args = parse_args(argv)  # before importing torch, so --help stays fast
    from trainer import run
    from trainer.config import dump_config, load_config
    from trainer.errors import REPORTED_ERRORS, report_error
    from utils import console
    from utils.cli import EXIT_READER_GONE

    try:
        config = load_config(args.config, args.overrides)
        if args.print_config:
            return 0 if console.write(sys.stdout, dump_config(config)) else EXIT_READER_GONE  # as the tools do
        return run(config)
    except REPORTED_ERRORS as error:  # one `error:` line on stderr; exit 2 for an InputError, 1 for a TrainingError
        return report_error(error)


if __name__ == "__main__":
    from utils.cli import exit_with

    exit_with(main)
