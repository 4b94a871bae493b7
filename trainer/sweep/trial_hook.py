"""Inside a trial's process: report each validation to the sweep's study and ask its pruner.

tools/sweep.py starts every trial as an ordinary `train.py` run with three environment
variables: KILN_SWEEP_STORAGE (the study's RDB URL), KILN_SWEEP_STUDY (its name) and
KILN_SWEEP_TRIAL (the trial's number). trainer/callbacks.py then gives the Trainer the
validation callback built here. At each validation rank 0 reports (iteration, objective value)
as the trial's intermediate value and, before the last iteration, asks the pruner; when it says
prune, the callback records the iteration in the trial (`kiln_pruned_at`, which the sweep reads
even where a launcher such as torchrun hides the exit code) and asks the Trainer to stop there
with EXIT_PRUNED. The sweep process alone finishes trials (tell): a trial's process never does.
"""

from __future__ import annotations

import os
import signal

from trainer.callbacks import Stop, ValidationCallback
from trainer.config.schema import Config
from trainer.errors import InputError, TrainingError
from trainer.sweep.study import (
    ATTR_DEFINITION,
    ATTR_PRUNED_AT,
    ATTR_PRUNER,
    build_pruner,
    import_optuna,
    rdb_storage,
    storage_failure,
)
from utils.stopping import signal_on_parent_death

# Set by tools/sweep.py for each trial's process: the Optuna storage URL its study lives in.
SWEEP_STORAGE_ENV = "KILN_SWEEP_STORAGE"
SWEEP_STUDY_ENV = "KILN_SWEEP_STUDY"
SWEEP_TRIAL_ENV = "KILN_SWEEP_TRIAL"
# The exit code of a run the sweep's pruner stopped: not 0 (it did not finish), 1 (failure),
# 2 (bad input) or 128+signal, so the sweep records the trial as PRUNED.
EXIT_PRUNED = 3


def from_environment(config: Config) -> list[ValidationCallback]:
    """The callbacks this process's environment asks for: a sweep trial's reporter, or none."""
    if not os.environ.get(SWEEP_STORAGE_ENV):
        return []
    return [reporter_from_environment(config)]


def reporter_from_environment(config: Config) -> ValidationCallback:
    """The validation callback of the trial the environment names (a silent one on ranks other than 0)."""
    _end_with_parent()
    if int(os.environ.get("RANK", "0")) != 0:
        return lambda iteration, results: None  # rank 0 reports for the job; the Trainer shares its answer
    url = os.environ[SWEEP_STORAGE_ENV]
    study_name, number = os.environ.get(SWEEP_STUDY_ENV, ""), os.environ.get(SWEEP_TRIAL_ENV, "")
    if not study_name or not number.isdigit():
        raise InputError(
            f"{SWEEP_STORAGE_ENV} is set but {SWEEP_STUDY_ENV} or {SWEEP_TRIAL_ENV} is not; tools/sweep.py sets all three "
            "for its trials: unset it to train outside a sweep"
        )
    return TrialReporter(url, study_name, int(number), config.train.total_iters)


def _end_with_parent() -> None:
    """On Linux, have the kernel send this process SIGTERM when the sweep that started it dies, so
    that a killed sweep leaves no trial training on: the trial saves a checkpoint and exits (143),
    and the next run of the sweep resumes it."""
    signal_on_parent_death(signal.SIGTERM)  # without prctl the sweep still resumes the trial, later


class TrialReporter:
    """Reports a trial's validations to its study and asks the study's pruner after each one."""

    def __init__(self, url: str, study_name: str, number: int, total_iters: int) -> None:
        optuna = import_optuna()
        self.number, self.total_iters, self.url = number, total_iters, url
        try:
            storage = rdb_storage(url, create=False)
            study = optuna.load_study(study_name=study_name, storage=storage, sampler=optuna.samplers.RandomSampler())
            trial_id = storage.get_trial_id_from_study_id_trial_number(storage.get_study_id_from_name(study_name), number)
            self.metric = study.user_attrs[ATTR_DEFINITION]["metric"]
            self.pruner_type = study.user_attrs[ATTR_PRUNER]["type"]
            study.pruner = build_pruner(study.user_attrs[ATTR_PRUNER], f"sweep study {study_name}")
            self.trial = optuna.trial.Trial(study, trial_id)  # RandomSampler above: building it draws nothing
            # A resumed run validates again at iterations it reported before its checkpoint.
            self.reported = set(storage.get_trial(trial_id).intermediate_values)
        except Exception as error:  # noqa: BLE001 - a missing study or storage (KeyError, optuna's, sqlalchemy's): one line
            raise InputError(f"sweep trial {number}: cannot open its study {study_name!r} in {url} ({error!r})") from None

    def __call__(self, iteration: int, results: dict[str, float]) -> Stop | None:
        """Report this validation; a Stop when the pruner prunes the trial here."""
        value = float(results[self.metric])
        try:
            if iteration not in self.reported:
                self.trial.report(value, iteration)
                self.reported.add(iteration)
            if iteration >= self.total_iters or not self.trial.should_prune():
                return None
            self.trial.set_user_attr(ATTR_PRUNED_AT, iteration)
        except Exception as error:  # noqa: BLE001 - the storage's errors (sqlalchemy, optuna) end the run in one line
            raise TrainingError(
                f"sweep trial {self.number}: could not report iteration {iteration} to {self.url} ({storage_failure(error)}); "
                "the checkpoints are intact: rerun the sweep to resume the trial"
            ) from None
        return Stop(EXIT_PRUNED, f"pruned by the sweep's {self.pruner_type} pruner ({self.metric} {value:.4f})")
