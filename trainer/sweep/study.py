"""The Optuna study of a sweep: its RDB storage (sqlite in the sweep directory), sampler and pruner.

The sweep process asks for trials and tells their outcomes; each trial's process reports its
validations to the same storage (trial_hook.py). Several processes share the sqlite file, so
every connection waits for a lock (sqlite's busy timeout) instead of failing at once with
"database is locked", and never longer: a call that cannot get the lock within
SQLITE_TIMEOUT_SECONDS fails, as one line (a trial: exit 1, its checkpoints intact; the sweep: exit
1, rerun to continue). Nothing else in a study call waits: the file is local, SQLAlchemy's pool is
never exhausted by one thread, and Optuna's only retry loop (creating a trial, 5 tries) multiplies
the bound by 5 at most.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trainer.config.schema import config_changes
from trainer.errors import InputError, TrainingError, first_line

if TYPE_CHECKING:
    import optuna

    from trainer.sweep.spec import SweepSpec

STORAGE_FILE = "study.db"
# Seconds a connection waits for another process's write before sqlite gives up: trial processes
# report one validation at a time, so a wait is short, but a loaded machine can stall a writer.
# The bound of every study call (docs/sweeps.md); a trial's creation, which Optuna tries 5 times, 5x it.
SQLITE_TIMEOUT_SECONDS = 120

# Study user attributes: what defines the study (objective and space), and the pruner's settings
# (the trial processes build their pruner from them).
ATTR_DEFINITION = "kiln_definition"
ATTR_PRUNER = "kiln_pruner"
# Trial user attributes.
ATTR_PRUNED_AT = "kiln_pruned_at"  # the iteration a trial's process stopped at when the pruner said so
ATTR_SECONDS = "kiln_seconds"  # wall time of all the trial's processes
ATTR_ERROR = "kiln_error"  # a failed trial's error line


def import_optuna() -> Any:
    """The optuna module, quiet below warnings; InputError naming the install command when it is missing."""
    try:
        import optuna
    except ImportError:
        raise InputError(
            "sweeps need optuna, which is not installed: pip install optuna "
            "(the tested version: pip install -r requirements-dev.txt -c constraints.txt)"
        ) from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the sweep prints its own lines
    return optuna


def storage_url(directory: Path) -> str:
    """The sqlite URL of the study file in the sweep directory (absolute: trials may run elsewhere)."""
    return f"sqlite:///{(directory / STORAGE_FILE).absolute()}"


def rdb_storage(url: str, *, create: bool) -> optuna.storages.RDBStorage:
    """An RDBStorage whose sqlite connections wait for locks; `create` makes the tables (the sweep does)."""
    optuna = import_optuna()
    with _bounded_wait(url):
        return optuna.storages.RDBStorage(
            url,
            engine_kwargs={"connect_args": {"timeout": SQLITE_TIMEOUT_SECONDS}},
            skip_compatibility_check=not create,
            skip_table_creation=not create,
        )


def storage_failure(error: BaseException) -> str:
    """Why a study call failed, as one phrase: sqlite's own reason ("database is locked"), which
    Optuna's StorageInternalError and SQLAlchemy's wrapper hide behind their own text."""
    cause = error
    while cause.__cause__ is not None:
        cause = cause.__cause__
    return first_line(getattr(cause, "orig", None) or cause, strip=True)


@contextmanager
def _bounded_wait(url: str) -> Iterator[None]:
    """A study call inside that could not get the file's lock within the bound is a TrainingError,
    one line naming the file and the fix, instead of SQLAlchemy's traceback."""
    import sqlalchemy.exc

    optuna = import_optuna()
    try:
        yield
    except (sqlalchemy.exc.OperationalError, optuna.exceptions.StorageInternalError) as error:
        reason = storage_failure(error)
        if "locked" not in reason and "busy" not in reason:
            raise  # not the wait: a damaged or unreadable file says so itself
        raise TrainingError(
            f"the sweep's study {url.removeprefix('sqlite:///')} did not answer within {SQLITE_TIMEOUT_SECONDS} s "
            f"({reason}): another process holds it locked; check that none is stuck on it (fuser), then run the same "
            "command again to continue the sweep"
        ) from None


def pruner_settings(spec: SweepSpec) -> dict:
    """The pruner as {type, **kwargs}; hyperband's resources default to the trials' validation
    interval and length (a step is an iteration)."""
    settings = spec.pruner.to_dict()
    if spec.pruner.type == "hyperband":
        settings.setdefault("min_resource", spec.base.train.val_interval)
        settings.setdefault("max_resource", spec.base.train.total_iters)
    return settings


def check_options(spec: SweepSpec) -> None:
    """Build the sampler and the pruner once, so that options Optuna refuses are one line before
    anything is written (tools/sweep.py calls it right after loading the sweep file)."""
    build_sampler(spec)
    build_pruner(pruner_settings(spec), f"sweep file {spec.path}")


def build_pruner(settings: dict, where: str) -> Any:
    """The Optuna pruner that `settings` ({type: median | hyperband | none, ...kwargs}) names."""
    optuna = import_optuna()
    kwargs = {key: value for key, value in settings.items() if key != "type"}
    cls = {
        "median": optuna.pruners.MedianPruner,
        "hyperband": optuna.pruners.HyperbandPruner,
        "none": optuna.pruners.NopPruner,
    }[settings["type"]]
    return _construct(cls, kwargs, f"{where}: key pruner")


def build_sampler(spec: SweepSpec, trials_so_far: int = 0) -> Any:
    """The Optuna sampler of the sweep, seeded by default with the base config's seed.

    A continued sweep (`trials_so_far` trials in the study) offsets a tpe or random seed by that
    count: the same seed would replay the draws of the first trials, repeating their parameters.
    The grid's seed stays: it fixes the order of the grid, which a continued sweep must keep.
    """
    optuna = import_optuna()
    kwargs = {"seed": spec.base.seed, **spec.sampler.kwargs}
    grid = spec.sampler.type == "grid"
    if isinstance(kwargs["seed"], int) and not isinstance(kwargs["seed"], bool):
        kwargs["seed"] = (kwargs["seed"] + (0 if grid else trials_so_far)) % 2**32  # numpy takes seeds below 2**32
    if grid:
        kwargs["search_space"] = {dimension.key: dimension.grid() for dimension in spec.space}
        return _construct(_grid_sampler_class(), kwargs, f"sweep file {spec.path}: key sampler")
    cls = optuna.samplers.TPESampler if spec.sampler.type == "tpe" else optuna.samplers.RandomSampler
    return _construct(cls, kwargs, f"sweep file {spec.path}: key sampler")


def _construct(cls: type, kwargs: dict, what: str) -> Any:
    """cls(**kwargs); a wrong option is one line naming it."""
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as error:
        raise InputError(f"{what}: {cls.__name__} refused its options ({error}); see Optuna's documentation of it") from None


def _grid_sampler_class() -> type:
    """GridSampler that never calls study.stop(): the sweep counts its trials itself, and stop()
    outside study.optimize raises (Optuna's GridSampler.after_trial calls it on the last point)."""
    optuna = import_optuna()

    class GridSampler(optuna.samplers.GridSampler):
        """optuna.samplers.GridSampler without the study.stop() at the end of the grid."""

        def after_trial(self, study: Any, trial: Any, state: Any, values: Any) -> None:
            """Nothing: the sweep stops at `trials` trials on its own."""

    return GridSampler


def open_study(spec: SweepSpec, storage: Any) -> optuna.Study:
    """Create the sweep's study in `storage`, or load it; InputError if it was started with another
    objective or space (its trials would not be comparable); TrainingError, one line, if the study
    file stays locked beyond SQLITE_TIMEOUT_SECONDS."""
    with _bounded_wait(storage_url(spec.directory)):
        return _open_study(spec, storage)


def _open_study(spec: SweepSpec, storage: Any) -> optuna.Study:
    """open_study's work."""
    optuna = import_optuna()
    where = f"sweep file {spec.path}"
    study = optuna.create_study(
        storage=storage,
        study_name=spec.name,
        direction="maximize" if spec.mode == "max" else "minimize",
        sampler=build_sampler(spec),
        pruner=build_pruner(pruner_settings(spec), where),
        load_if_exists=True,
    )
    definition = json.loads(json.dumps(spec.definition()))  # as it reads back from storage
    stored = study.user_attrs.get(ATTR_DEFINITION)
    if stored is None:
        study.set_user_attr(ATTR_DEFINITION, definition)
    elif stored != definition:
        changes = "; ".join(config_changes(stored, definition))
        raise InputError(
            f"{where}: the study {spec.name} in {spec.directory / STORAGE_FILE} was started with another objective or "
            f"space ({changes}); restore them, or give the sweep another name to start a new study"
        )
    study.set_user_attr(ATTR_PRUNER, pruner_settings(spec))  # a rerun may change the pruner: later trials use it
    study.sampler = build_sampler(spec, len(study.get_trials(deepcopy=False)))
    return study


def load_existing_study(spec: SweepSpec) -> optuna.Study:
    """The sweep's study for --report; InputError if the sweep has not run yet."""
    optuna = import_optuna()
    path = spec.directory / STORAGE_FILE
    if not path.is_file():
        raise InputError(f"sweep {spec.name} has no study yet ({path} does not exist); run it first without --report")
    try:
        with _bounded_wait(storage_url(spec.directory)):
            return optuna.load_study(study_name=spec.name, storage=rdb_storage(storage_url(spec.directory), create=False))
    except KeyError:
        raise InputError(f"sweep {spec.name}: {path} holds no study of that name; run the sweep first without --report") from None


def best_value(trial: Any, mode: str) -> float | None:
    """The best objective value among a trial's reported validations (NaN never counts); None if none."""
    values = [value for value in trial.intermediate_values.values() if value == value]
    if not values:
        return None
    return max(values) if mode == "max" else min(values)


def last_iteration(trial: Any) -> int | None:
    """The last iteration a trial validated at (its reports are keyed by iteration)."""
    return max(trial.intermediate_values) if trial.intermediate_values else None
