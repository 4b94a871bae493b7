"""The tracker interface: what an experiment tracker receives, and the helpers trackers share.

A tracker records one run in another system (a CSV file, an MLflow server, Weights & Biases).
The Logger hands the fan-out (trainer/tracking/trackers/fanout.py) what it already has at logging and
validation time; the fan-out calls each tracker on that tracker's own thread, so no tracker
method ever runs on the training thread, and none touches the model or the device. Trackers
never import the Logger.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Literal

from trainer.errors import InputError, first_line


class MissingPackageError(InputError):
    """A tracker's optional package is not installed (exit 2 at start-up, naming `pip install ...`)."""


def require(module: str, package: str | None = None) -> ModuleType:
    """Import `module` for a tracker; MissingPackageError naming the pip package if it cannot be imported."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        reason = first_line(error)
        raise MissingPackageError(
            f"needs the Python package {package or module}, which cannot be imported ({reason}); "
            f"pip install {package or module}, or remove it from logging.trackers"
        ) from None


def check_text(key: str, value: Any) -> None:
    """A tracker's text option: None or a non-empty string (TypeError otherwise, shown as the config error)."""
    if value is not None and (not isinstance(value, str) or not value):
        raise TypeError(f"{key} must be a non-empty string, got {value!r}")


def _drop(line: str) -> None:
    """Discard a note (a RunInfo made outside a run, as in a test)."""


@dataclass(frozen=True)
class RunInfo:
    """What a tracker knows of the run it records."""

    name: str
    """The experiment's `name`: letters, digits, `_ . -`, so it is safe in file and artifact names."""
    log_dir: Path
    """<logging.dir>/<name>/."""
    run_id: str | None
    """Kiln's run id (experiments/<name>/run_id.txt): the same across resumes; None for old checkpoints."""
    start_iteration: int
    """0 for a fresh run, the checkpoint's iteration on resume."""
    saved: dict = field(default_factory=dict)
    """This tracker's `state()` from the checkpoint; {} on a fresh run."""
    note: Callable[[str], None] = _drop
    """Queue a line for train.log (the training thread writes it at its next log)."""


@dataclass(frozen=True)
class ScalarRow:
    """The scalars logged at one iteration, with the wall time they were logged at."""

    step: int
    values: dict[str, float]
    time: float


@dataclass(frozen=True)
class Artifact:
    """A weight file to record. `path` is this tracker's own copy (removed after the call, so Kiln
    may replace the original meanwhile); `source` is where Kiln keeps the file."""

    path: Path
    source: Path
    tag: Literal["best", "latest"]
    iteration: int | None


class Tracker:
    """One experiment tracker. Every method runs on the tracker's own thread, in the order called.

    An exception from any method never stops the run: one the tracker calls `recoverable` (an
    outage) makes the fan-out keep what the tracker misses and call it again once it answers, so
    a call may come twice and must not record twice; any other stops this tracker (the fan-out
    logs one warning). `state()` is the exception: the training thread calls it at each
    checkpoint, so it only reads attributes.
    """

    name = "tracker"
    """The name it is registered and saved under."""
    max_key_length: int | None = None
    """Longest parameter name the tracker takes; longer ones are truncated with a warning."""
    max_value_length: int | None = None
    """Longest parameter value (as text) the tracker takes; longer ones are truncated with a warning."""
    wants_files = True
    """Whether log_artifact needs its own copy of the file (a tracker that only lists paths does not)."""

    def start(self, run: RunInfo) -> None:
        """Open the run, or continue the one `run.saved` names."""

    def log_params(self, params: dict[str, Any]) -> None:
        """The resolved config, flattened with dots (see `flatten`), once at start."""

    def log_scalars(self, rows: list[ScalarRow]) -> None:
        """Scalars at their global iterations, oldest first (rows that queued up arrive together)."""

    def log_summary(self, summary: dict[str, float], step: int) -> None:
        """The best metrics so far as {"best/<metric>": value, "best/iteration": N}, at each new best (`step` = N)."""

    def log_artifact(self, artifact: Artifact) -> None:
        """A .pth: tag best (each new best) or latest (each <name>_iter_<N> with log_checkpoints: all)."""

    def catch_up(self, summary: dict[str, float], step: int, artifact: Artifact | None) -> None:
        """On resume, after `start`: the checkpoint's best metrics (as in log_summary) and, with log_checkpoints,
        its best weights, which an earlier process may have failed to send. Send what the run lacks; the
        default sends both (right for trackers that keep only the newest summary)."""
        self.log_summary(summary, step)
        if artifact is not None:
            self.log_artifact(artifact)

    def recoverable(self, error: Exception) -> bool:
        """Whether `error` is an outage that may pass (a server that is down or does not answer): the fan-out
        then keeps what the tracker misses and tries it again later. False (the default): the tracker stops."""
        return False

    def flush(self) -> None:
        """Make what was logged so far durable (called after each iteration checkpoint)."""

    def state(self) -> dict:
        """What a resume needs to continue this run (saved in the checkpoint); {} while unknown."""
        return {}

    def close(self, finished: bool) -> None:
        """End the run: `finished` when training reached train.total_iters, else it stopped early."""


def flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    """Nested mappings -> {"optimizer.lr": 0.001, ...}; lists that hold mappings are indexed
    (`scheduler.schedulers.0.type`), other lists stay whole values."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{name}."))
        elif isinstance(value, list) and any(isinstance(item, dict) for item in value):
            flat.update(flatten({str(index): item for index, item in enumerate(value)}, f"{name}."))
        else:
            flat[name] = value
    return flat


def as_text(value: Any) -> str:
    """A parameter value as text: strings as they are, anything else as JSON (true, null, [0.9, 0.999])."""
    return value if isinstance(value, str) else json.dumps(value)


def fit_limits(params: dict[str, Any], tracker: Tracker) -> tuple[dict[str, Any], list[str]]:
    """`params` with names and values cut to the tracker's limits, and one warning per cut."""
    key_limit, value_limit = tracker.max_key_length, tracker.max_value_length
    if key_limit is None and value_limit is None:
        return params, []
    fitted, warnings = {}, []
    for key, value in params.items():
        if key_limit is not None and len(key) > key_limit:
            warnings.append(f"param name {key[:60]}... is {len(key)} characters, over its limit of {key_limit}; truncated")
            key = key[:key_limit]
        text = as_text(value)
        if value_limit is not None and len(text) > value_limit:
            warnings.append(
                f"param {key} is {len(text)} characters, over its limit of {value_limit}; logged its first {value_limit} "
                "(config.yaml has it whole)"
            )
            value = text[:value_limit]
        fitted[key] = value
    return fitted, warnings


def summary_of(best: dict[str, float]) -> dict[str, float]:
    """{"best/accuracy": 0.9, "best/iteration": 20} from Kiln's best_metrics {"accuracy": 0.9, "iteration": 20}."""
    return {f"best/{name}": value for name, value in best.items()}


def clipped_first_line(error: BaseException | str, limit: int = 300) -> str:
    """An error as one short line, for a warning in train.log: first_line(error, strip=True), cut to `limit` characters."""
    text = first_line(error, strip=True)
    return text if len(text) <= limit else text[: limit - 3] + "..."
