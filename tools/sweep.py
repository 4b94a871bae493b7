"""Search hyperparameters with Optuna: python tools/sweep.py -c SWEEP.yaml [--jobs N] [--report] [KEY=VALUE ...].

Every trial is an ordinary Kiln run of the sweep's base config plus the trial's parameters,
named <sweep>_t<k>. The study lives in <logging.dir>/<sweep>/study.db: run the same command
again to continue a stopped or killed sweep. At the end (and with --report) the trials table is
printed and written to trials.csv, with best_config.yaml and TensorBoard HParams beside it.
Exit 0 when the sweep is done, 1 when no trial completed, 2 with one `error: ...` line on a bad
input, 128+signal when stopped (run it again to continue). The sweep file is described in
docs/sweeps.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

# Run as `python tools/sweep.py` from the repo root: the script's own folder is on sys.path,
# the repo root (where trainer/, data/ and models/ live) is not.
REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from utils.cli import OneLineErrorParser, run_tool  # noqa: E402  (needs the repo root on sys.path)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """-c SWEEP, --jobs N, --report and KEY=VALUE overrides of every trial's base config."""
    parser = OneLineErrorParser(
        prog="tools/sweep.py",
        description="Search hyperparameters over a Kiln config with Optuna; every trial is a normal run.",
        epilog="example: python tools/sweep.py -c configs/sweeps/digits_lr.yaml device=cpu",
    )
    parser.add_argument("-c", "--config", required=True, help="the sweep's YAML file (docs/sweeps.md)")
    parser.add_argument("--jobs", type=_positive, default=1, help="trials run at once, each its own process (default 1)")
    parser.add_argument("--report", action="store_true", help="only print the table and write the result files")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="applied to every trial's base config, e.g. device=cpu")
    return parser.parse_intermixed_args(argv)


def _positive(text: str) -> int:
    """An integer >= 1, for argparse."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not >= 1")
    return value


def main(argv: list[str] | None = None) -> int:
    """Parse, validate the sweep, run or report it; exit 2 with one line on a bad input."""
    args = parse_args(argv)
    from trainer.errors import REPORTED_ERRORS, report_error
    from trainer.sweep.runner import report_sweep, run_sweep
    from trainer.sweep.spec import load_sweep
    from trainer.sweep.study import check_options, import_optuna

    try:
        import_optuna()  # first: without it nothing else can be checked usefully
        spec = load_sweep(args.config, args.overrides)
        check_options(spec)  # options Optuna refuses: before anything is written
        return report_sweep(spec) if args.report else run_sweep(spec, args.jobs)
    except REPORTED_ERRORS as error:
        return report_error(error)


if __name__ == "__main__":
    run_tool(main)  # exits 141, without a traceback, when the reader of the output went away
