"""Experiment trackers (logging.trackers): csv, mlflow, wandb, behind one interface the Logger fans out to.

Importing this package registers the three trackers; their packages (mlflow, wandb) are imported
only when a config names them.
"""

from trainer.tracking.trackers import csv_tracker, mlflow_tracker, wandb_tracker  # noqa: F401 - registers them
from trainer.tracking.trackers.base import Tracker
from trainer.tracking.trackers.fanout import CLOSE_TIMEOUT_SECONDS, Trackers, build_trackers

__all__ = ["CLOSE_TIMEOUT_SECONDS", "Tracker", "Trackers", "build_trackers"]
