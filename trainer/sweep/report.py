"""A sweep's results, in its directory: the trials table (printed, and `trials.csv`), the best
trial's config as `best_config.yaml`, and TensorBoard HParams entries under `hparams/` (when
the base config has logging.tensorboard on, as it has by default).

`trials.csv` has a header row and one row per trial: number, state (Optuna's), value (the best
objective value the trial's validations reached), one column per space key, iteration (the
last one validated), seconds (the wall time of all its processes).

`best_config.yaml` is the resolved config of the best COMPLETE trial (the `config.yaml` its run
wrote) renamed `<sweep>_best` and with resume_path null: `train.py -c best_config.yaml` trains
that trial again, from scratch, into files of its own name, so the trial's files are never
archived or overwritten, and on the same machine and thread count the final weights are the
trial's bit for bit.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

from trainer.config.schema import dump_config, load_config, run_log_dir
from trainer.sweep.space import override
from trainer.sweep.spec import SweepSpec
from trainer.sweep.study import ATTR_ERROR, ATTR_SECONDS, best_value, last_iteration
from utils.io import atomic_write_text

CSV_FILE = "trials.csv"
BEST_CONFIG_FILE = "best_config.yaml"
HPARAMS_DIR = "hparams"


def write_report(spec: SweepSpec, study: Any, emit: Callable[[str], None]) -> Any | None:
    """Print the trials table with `emit`, write trials.csv, best_config.yaml and the HParams of
    finished trials; return the best trial (None while none is COMPLETE)."""
    trials = sorted(study.get_trials(deepcopy=False), key=lambda trial: trial.number)
    rows = trial_rows(spec, trials)
    for line in table(rows).splitlines():
        emit(line)
    for trial in trials:
        if ATTR_ERROR in trial.user_attrs:
            emit(f"trial {trial.number} {trial.state.name}: {trial.user_attrs[ATTR_ERROR]}")
    atomic_write_text(spec.directory / CSV_FILE, csv_text(rows))
    if spec.base.logging.tensorboard:  # the trials' own switch: no TensorBoard there, no HParams here
        write_hparams(spec, trials)
    best = study.best_trial if any(trial.state.name == "COMPLETE" for trial in trials) else None
    counts = ", ".join(f"{sum(row['state'] == state for row in rows)} {state}" for state in ("COMPLETE", "PRUNED", "FAIL"))
    summary = f"sweep {spec.name}: {len(rows)} of {spec.trials} trials ({counts}); table in {spec.directory / CSV_FILE}"
    if best is None:
        emit(summary + "; no trial is COMPLETE yet")
        return None
    path = write_best_config(spec, best)
    emit(summary)
    emit(f"best: trial {best.number} ({spec.trial_name(best.number)}), {spec.metric} {best.value:.4f}; train it again: "
         f"python train.py -c {path}")
    return best


def trial_rows(spec: SweepSpec, trials: list[Any]) -> list[dict[str, Any]]:
    """One dict per trial with the columns of trials.csv (None where a trial has no figure yet)."""
    return [
        {
            "number": trial.number,
            "state": trial.state.name,
            "value": best_value(trial, spec.mode),
            **{dimension.key: trial.params.get(dimension.key, _MISSING) for dimension in spec.space},
            "iteration": last_iteration(trial),
            "seconds": trial.user_attrs.get(ATTR_SECONDS),
        }
        for trial in trials
    ]


_MISSING = object()  # a parameter a trial has not drawn (it was interrupted while drawing)


def _cell(value: Any, column: str, *, short: bool) -> str:
    """How a value shows in the table (short) or the CSV: null for a None parameter, blank for no figure."""
    if value is _MISSING or (value is None and column in ("value", "iteration", "seconds")):
        return ""
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    if isinstance(value, float):
        if column == "seconds":
            return f"{value:.1f}"
        return (f"{value:.4f}" if column == "value" else f"{value:.4g}") if short else repr(value)
    return str(value)


def table(rows: list[dict[str, Any]]) -> str:
    """The rows as aligned text columns under a header."""
    if not rows:
        return "no trials yet"
    columns = list(rows[0])
    cells = [columns] + [[_cell(row[column], column, short=True) for column in columns] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip() for line in cells)


def csv_text(rows: list[dict[str, Any]]) -> str:
    """trials.csv: the header row and one row per trial, full precision."""
    buffer = io.StringIO()
    if rows:
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(list(rows[0]))
        for row in rows:
            writer.writerow([_cell(value, column, short=False) for column, value in row.items()])
    return buffer.getvalue()


def write_best_config(spec: SweepSpec, best: Any) -> Path:
    """best_config.yaml: the best trial's resolved config under the name `<sweep>_best`, fresh (resume_path null)."""
    rename = [f"name={spec.name}_best", "resume_path=null"]
    ran = run_log_dir(spec.base, spec.trial_name(best.number)) / "config.yaml"  # what the trial's run resolved
    if ran.is_file():
        config = load_config(ran, rename)
    else:  # its log directory was moved away: the same config from the sweep's own pieces
        params = [override(key, value) for key, value in best.params.items()]
        config = load_config(spec.config_path, [*spec.overrides, *params, *rename])
    header = (
        f"# The best trial of sweep {spec.name} ({spec.path}): trial {best.number}, run {spec.trial_name(best.number)}, "
        f"{spec.metric} {best.value:.6g} ({spec.mode}).\n"
        f"# Its resolved config, named {spec.name}_best so that training it again leaves the trial's files alone:\n"
        f"#   python train.py -c {spec.directory / BEST_CONFIG_FILE}\n"
    )
    path = spec.directory / BEST_CONFIG_FILE
    atomic_write_text(path, header + dump_config(config))
    return path


def write_hparams(spec: SweepSpec, trials: list[Any]) -> None:
    """One TensorBoard HParams entry per finished trial with a value, in `hparams/<trial name>/`
    (written once: a rerun or --report adds only the trials finished since)."""
    todo = [
        trial
        for trial in trials
        if trial.state.name in ("COMPLETE", "PRUNED")
        and best_value(trial, spec.mode) is not None
        and not (spec.directory / HPARAMS_DIR / spec.trial_name(trial.number)).exists()
    ]
    if not todo:
        return
    from torch.utils.tensorboard import SummaryWriter  # heavy: only when there is something to write

    with SummaryWriter(log_dir=str(spec.directory / HPARAMS_DIR)) as writer:
        for trial in todo:
            hparams = {key: _hparam(value) for key, value in trial.params.items()} | {"state": trial.state.name}
            metrics = {f"sweep/{spec.metric}": best_value(trial, spec.mode), "sweep/iteration": float(last_iteration(trial))}
            writer.add_hparams(hparams, metrics, run_name=spec.trial_name(trial.number))


def _hparam(value: Any) -> Any:
    """A parameter as TensorBoard's HParams take it (numbers, strings, booleans): null as the string."""
    return "null" if value is None else value
