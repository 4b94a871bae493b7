"""csv: `<logging.dir>/<name>/metrics.csv`, one row per logged iteration, readable with csv.DictReader.

Columns: `iteration`, then one per scalar under its TensorBoard name (`train/loss`, `val/accuracy`),
in the order they first appear; a cell is empty where that scalar was not logged (validation
runs less often than logging). Beside it: `params.csv` (`key,value`: the resolved config
flattened with dots), `summary.json` (the best metrics) and `artifacts.csv` (`iteration,tag,path`
of each weight file the run recorded; this tracker lists them, it does not copy them).

On resume it drops the rows a killed run wrote after the checkpoint's iteration, as
TensorBoard's purge_step does: the resumed run logs those iterations again, with the same
values, since Kiln's resume is exact.
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

from trainer.registry import TRACKERS
from trainer.tracking.trackers.base import Artifact, RunInfo, ScalarRow, Tracker, as_text
from utils.io import atomic_write_text

METRICS_FILE = "metrics.csv"
PARAMS_FILE = "params.csv"
SUMMARY_FILE = "summary.json"
ARTIFACTS_FILE = "artifacts.csv"
ARTIFACT_COLUMNS = ["iteration", "tag", "path"]


def read_rows(path: Path) -> tuple[list[dict[str, str]], list[str]]:
    """(rows, columns) of a CSV file with a header row; ([], []) if there is none."""
    if not path.is_file():
        return [], []
    with open(path, newline="", encoding="utf-8") as file:
        reader = csv.DictReader(file)
        return list(reader), list(reader.fieldnames or [])


def write_rows(path: Path, rows: list[dict[str, str]], columns: list[str]) -> None:
    """Replace `path` atomically by a header row and `rows`."""
    text = io.StringIO()
    writer = csv.DictWriter(text, columns, restval="", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, text.getvalue())


def append_row(path: Path, row: dict[str, str], columns: list[str]) -> None:
    """Append one row to `path`, whose header is `columns` (written first if the file is new)."""
    new = not path.is_file()
    with open(path, "a", newline="", encoding="utf-8") as file:
        writer = csv.DictWriter(file, columns, restval="", lineterminator="\n")
        if new:
            writer.writeheader()
        writer.writerow(row)


def _until(rows: list[dict[str, str]], iteration: int) -> list[dict[str, str]]:
    """The rows logged at or before `iteration` (rows without one are kept)."""
    return [row for row in rows if not row.get("iteration") or int(row["iteration"]) <= iteration]


@TRACKERS.register(name="csv")
class CsvTracker(Tracker):
    """metrics.csv, params.csv, summary.json and artifacts.csv in the run's log directory."""

    name = "csv"
    wants_files = False  # it lists where Kiln keeps the files

    def __init__(self) -> None:
        self._dir = Path(".")
        self._columns = ["iteration"]
        self._rows: list[dict[str, str]] = []  # every row in metrics.csv, as text
        self._pending: dict[str, str] | None = None  # the newest iteration's row, written once the next one starts

    def start(self, run: RunInfo) -> None:
        """Keep the rows up to the resumed iteration (all of them on a fresh run: there are none)."""
        self._dir = run.log_dir
        self._dir.mkdir(parents=True, exist_ok=True)
        rows, columns = read_rows(self._dir / METRICS_FILE)
        self._rows, self._columns = _until(rows, run.start_iteration), columns or ["iteration"]
        if len(self._rows) < len(rows):
            write_rows(self._dir / METRICS_FILE, self._rows, self._columns)
            run.note(
                f"dropped {len(rows) - len(self._rows)} rows of {METRICS_FILE} logged after iteration {run.start_iteration}, "
                "the checkpoint resumed (they are logged again)"
            )
        artifacts, _ = read_rows(self._dir / ARTIFACTS_FILE)
        if len(_until(artifacts, run.start_iteration)) < len(artifacts):
            write_rows(self._dir / ARTIFACTS_FILE, _until(artifacts, run.start_iteration), ARTIFACT_COLUMNS)

    def log_params(self, params: dict) -> None:
        """params.csv: `key,value` for every flattened config key."""
        rows = [{"key": key, "value": as_text(value)} for key, value in params.items()]
        write_rows(self._dir / PARAMS_FILE, rows, ["key", "value"])

    def log_scalars(self, rows: list[ScalarRow]) -> None:
        """Gather each iteration's scalars into one row; a row is written when the next iteration starts."""
        for row in rows:
            if self._pending is not None and self._pending["iteration"] != str(row.step):
                self._write(self._pending)
                self._pending = None
            if self._pending is None:
                self._pending = {"iteration": str(row.step)}
            self._pending.update({tag: repr(float(value)) for tag, value in row.values.items()})

    def _write(self, row: dict[str, str]) -> None:
        """Append `row`; rewrite the file when it brings a new column or adds to the last row."""
        new_columns = [column for column in row if column not in self._columns]
        self._columns += new_columns
        if self._rows and self._rows[-1]["iteration"] == row["iteration"]:
            self._rows[-1] = {**self._rows[-1], **row}
        else:
            self._rows.append(row)
            if not new_columns:
                append_row(self._dir / METRICS_FILE, row, self._columns)
                return
        write_rows(self._dir / METRICS_FILE, self._rows, self._columns)

    def log_summary(self, summary: dict[str, float], step: int) -> None:
        """summary.json: {"best/<metric>": value, "best/iteration": N}."""
        atomic_write_text(self._dir / SUMMARY_FILE, json.dumps(summary, indent=2) + "\n")

    def log_artifact(self, artifact: Artifact) -> None:
        """One row of artifacts.csv: where Kiln keeps the file."""
        row = {"iteration": "" if artifact.iteration is None else str(artifact.iteration), "tag": artifact.tag}
        append_row(self._dir / ARTIFACTS_FILE, {**row, "path": str(artifact.source)}, ARTIFACT_COLUMNS)

    def catch_up(self, summary: dict[str, float], step: int, artifact: Artifact | None) -> None:
        """summary.json as the checkpoint has it (metrics.csv was cut back to it too), and a row for the best
        weights unless artifacts.csv has one of that iteration."""
        self.log_summary(summary, step)
        if artifact is None:
            return
        rows, _ = read_rows(self._dir / ARTIFACTS_FILE)
        if not any(row["tag"] == artifact.tag and row["iteration"] == str(artifact.iteration) for row in rows):
            self.log_artifact(artifact)

    def flush(self) -> None:
        """Write the pending row and sync metrics.csv to disk (after each iteration checkpoint)."""
        if self._pending is not None:
            self._write(self._pending)
            self._pending = None
        path = self._dir / METRICS_FILE
        if path.is_file():
            with open(path, "rb") as file:
                os.fsync(file.fileno())

    def close(self, finished: bool) -> None:
        """Write the last row."""
        self.flush()
