"""mlflow: the run in an MLflow tracking server (or any MLflow tracking URI), through MlflowClient.

Options: `tracking_uri` (default: MLflow's own: MLFLOW_TRACKING_URI, else its local default),
`experiment` (default: MLFLOW_EXPERIMENT_NAME, else the experiment's `name`), `run_name`
(default: `name`), `tags` (a mapping set on the run).

Recorded: params, the resolved config flattened with dots (values over MLflow's length limit,
6000 characters in MLflow 3, are truncated with a warning); metrics, every scalar under its
TensorBoard name at step = the global iteration, stamped with the time it was logged;
`best/<metric>` and `best/iteration` at each new best (so a metric's latest value is the best);
weight files under `checkpoints/best/` (each new best, replacing the previous one) and
`checkpoints/` (each `<name>_iter_<N>.pth` with log_checkpoints: all), with the tags
`kiln.checkpoint.best` and `kiln.checkpoint.latest` naming them.

Resume: the checkpoint holds the MLflow run id and the run continues (status RUNNING again).
MLflow cannot delete metric points, so the tracker asks the server for each metric's newest
step and skips the steps it already holds: a killed run may have logged past its last
checkpoint, and since Kiln's resume is exact those values are the same. Then `catch_up` sends the
checkpoint's best metrics and best weights if the run lacks them (an earlier process lost the server).

Outages: a request that fails because the server is away (no connection, a timeout, HTTP 5xx or
429 after MLflow's own retries) is `recoverable`: the fan-out keeps what the tracker misses and
sends it when the server answers again. A rejected request (HTTP 4xx) stops the tracker. A
`tracking_uri` whose scheme no MLflow store takes is refused at the door (exit 2).
"""

from __future__ import annotations

import os
import time
import urllib.parse
from typing import Any

from trainer.errors import did_you_mean
from trainer.registry import TRACKERS
from trainer.tracking.trackers.base import Artifact, RunInfo, ScalarRow, Tracker, as_text, check_text, require

KILN_RUN_TAG = "kiln.run_id"  # finds the run again when a checkpoint was saved before its id was known


def check_scheme(tracking_uri: str | None) -> None:
    """ValueError (exit 2 at the door) when the tracking URI, or MLFLOW_TRACKING_URI in its place, has a
    scheme no installed MLflow store takes: without this check the run would start and the tracker
    would fail on its thread with one warning, recording nothing."""
    uri, source = tracking_uri, "tracking_uri"
    if uri is None:
        uri, source = os.environ.get("MLFLOW_TRACKING_URI"), "MLFLOW_TRACKING_URI (tracking_uri is not set)"
    if not uri:
        return
    try:  # MLflow's own table of schemes (plugins included); private names, so only where they exist
        from mlflow.tracking._tracking_service import utils as tracking_utils
        from mlflow.tracking.registry import UnsupportedModelRegistryStoreURIException as Unsupported

        stores = tracking_utils._tracking_store_registry
    except (ImportError, AttributeError):
        return
    # Unity Catalog schemes are in the table only to refuse them when the store is built.
    refused = getattr(tracking_utils, "_get_databricks_uc_rest_store", None)
    try:
        usable = stores.get_store_builder(uri) is not refused
    except Unsupported:
        usable = False
    if not usable:
        schemes = sorted(scheme for scheme, builder in stores._registry.items() if scheme and builder is not refused)
        near = did_you_mean(urllib.parse.urlparse(uri).scheme, schemes)
        raise ValueError(
            f"{source} {uri!r} has a scheme MLflow cannot use{f' ({near})' if near else ''}; it takes "
            f"{', '.join(schemes)} or a local path: give a server as http://HOST:PORT or a local store as sqlite:///PATH.db"
        ) from None


def _chunks(items: list, size: int) -> list[list]:
    """`items` in lists of at most `size` (MLflow's per-request limits)."""
    return [items[start : start + size] for start in range(0, len(items), size)]


@TRACKERS.register(name="mlflow")
class MlflowTracker(Tracker):
    """One MLflow run per Kiln run, continued across resumes."""

    name = "mlflow"

    def __init__(
        self,
        *,
        tracking_uri: str | None = None,
        experiment: str | None = None,
        run_name: str | None = None,
        tags: dict | None = None,
    ) -> None:
        for key, value in (("tracking_uri", tracking_uri), ("experiment", experiment), ("run_name", run_name)):
            check_text(key, value)
        if tags is not None and not isinstance(tags, dict):
            raise TypeError(f"tags must be a mapping of tag names to values, got {tags!r}")
        require("mlflow")
        from mlflow.exceptions import MlflowException
        from mlflow.utils import validation

        self._error = MlflowException
        self.max_key_length = validation.MAX_ENTITY_KEY_LENGTH
        self.max_value_length = validation.MAX_PARAM_VAL_LENGTH
        self._limits = validation.MAX_PARAMS_TAGS_PER_BATCH, validation.MAX_METRICS_PER_BATCH
        self._tags = {str(key): as_text(value) for key, value in (tags or {}).items()}
        too_long = [key for key, value in self._tags.items() if len(value) > validation.MAX_TAG_VAL_LENGTH]
        if too_long:
            raise ValueError(f"tag {too_long[0]} is longer than MLflow's {validation.MAX_TAG_VAL_LENGTH} characters; shorten it")
        check_scheme(tracking_uri)
        self._uri, self._experiment, self._run_name = tracking_uri, experiment, run_name
        self._client: Any = None
        self.run_id: str | None = None
        self._held: dict[str, int] = {}  # metric -> the newest step the run holds (resume)
        self._params_held: dict[str, str] | None = None  # the run's params when it was continued
        self._iteration_of_resume = 0
        self._note: Any = None

    def start(self, run: RunInfo) -> None:
        """Continue the checkpoint's run, or create one in the experiment."""
        from mlflow.tracking import MlflowClient

        self._client = client = MlflowClient(tracking_uri=self._uri)
        experiment = self._experiment or os.environ.get("MLFLOW_EXPERIMENT_NAME") or run.name
        experiment_id = self._experiment_id(experiment)
        found = self._existing_run(run, experiment_id)
        self._iteration_of_resume, self._note = run.start_iteration, run.note
        if found is None:
            tags = {**self._tags, KILN_RUN_TAG: run.run_id or ""}
            self.run_id = client.create_run(experiment_id, run_name=self._run_name or run.name, tags=tags).info.run_id
            run.note(f"run {self.run_id} in experiment {experiment} at {client.tracking_uri}")
            return
        self.run_id = found.info.run_id
        self._params_held = dict(found.data.params)
        self._held = {key: max(m.step for m in client.get_metric_history(self.run_id, key)) for key in found.data.metrics}
        client.update_run(self.run_id, status="RUNNING")
        newest = f"; it holds metrics up to iteration {max(self._held.values())}, not sent again" if self._held else ""
        run.note(f"continuing run {self.run_id} in experiment {experiment} at {client.tracking_uri}{newest}")

    def _experiment_id(self, name: str) -> str:
        """The id of the experiment `name`, created if it does not exist yet."""
        experiment = self._client.get_experiment_by_name(name)
        if experiment is not None:
            return experiment.experiment_id
        try:
            return self._client.create_experiment(name)
        except self._error:  # another run created it meanwhile
            return self._client.get_experiment_by_name(name).experiment_id

    def _existing_run(self, run: RunInfo, experiment_id: str) -> Any:
        """The run to continue: the checkpoint's, else (a checkpoint saved before it was known, or a start
        tried again after an outage that may have created it) the one tagged with Kiln's run id; None when
        the server has neither."""
        saved = run.saved.get("run_id")
        if saved:
            try:
                return self._client.get_run(saved)
            except self._error as error:
                if error.error_code != "RESOURCE_DOES_NOT_EXIST":
                    raise
                run.note(f"the checkpoint's run {saved} is not on {self._client.tracking_uri}; starting a new run")
                return None
        if not run.run_id:
            return None
        query = f"tags.`{KILN_RUN_TAG}` = '{run.run_id}'"
        found = self._client.search_runs([experiment_id], filter_string=query, max_results=1)
        return found[0] if found else None

    def log_params(self, params: dict[str, Any]) -> None:
        """The flattened config; on resume only keys the run lacks (MLflow params cannot change)."""
        texts = {key: as_text(value) for key, value in params.items()}
        if self._params_held is not None:
            changed = [key for key, text in texts.items() if key in self._params_held and self._params_held[key] != text]
            if changed:
                self._note_changed(changed)
            texts = {key: text for key, text in texts.items() if key not in self._params_held}
        from mlflow.entities import Param

        for chunk in _chunks([Param(key, text) for key, text in texts.items()], self._limits[0]):
            self._client.log_batch(self.run_id, params=chunk)

    def _note_changed(self, changed: list[str]) -> None:
        """Say which params keep their first value (train.log and config_resumed_iter_N.yaml have the new ones)."""
        from mlflow.entities import RunTag

        shown = ", ".join(changed[:8]) + (f" and {len(changed) - 8} more" if len(changed) > 8 else "")
        tag = RunTag(f"kiln.config_changed_at_iter_{self._iteration_of_resume}", shown)
        self._client.log_batch(self.run_id, tags=[tag])
        self._note(f"params keep the values the run started with (MLflow cannot change them): {shown}")

    def log_scalars(self, rows: list[ScalarRow]) -> None:
        """Every scalar at its iteration, skipping the steps the run already holds."""
        from mlflow.entities import Metric

        metrics = [
            Metric(key, float(value), int(row.time * 1000), row.step)
            for row in rows
            for key, value in row.values.items()
            if row.step > self._held.get(key, -1)
        ]
        for chunk in _chunks(metrics, self._limits[1]):
            self._client.log_batch(self.run_id, metrics=chunk)

    def log_summary(self, summary: dict[str, float], step: int) -> None:
        """best/<metric> and best/iteration as metrics at the best's iteration."""
        self.log_scalars([ScalarRow(step, summary, time.time())])

    def catch_up(self, summary: dict[str, float], step: int, artifact: Artifact | None) -> None:
        """The best metrics at their iteration unless the run holds that step already, and the best weights
        unless the run's kiln.checkpoint.best_iteration tag says it has them (or a later best's)."""
        sent = []
        if step > self._held.get("best/iteration", -1):
            self.log_summary(summary, step)
            sent.append(f"the best metrics of iteration {step}")
        if artifact is not None:
            held = self._client.get_run(self.run_id).data.tags.get(f"kiln.checkpoint.{artifact.tag}_iteration")
            if held is None or not held.isdigit() or int(held) < step:
                self.log_artifact(artifact)
                sent.append("its weights" if sent else f"the best weights of iteration {step}")
        if sent and self._note is not None:
            self._note(f"brought up to date with what an earlier process could not send: {' and '.join(sent)}")

    def recoverable(self, error: Exception) -> bool:
        """An outage: the server did not answer, refused the connection or failed (HTTP 5xx, 429), not a rejection (4xx)."""
        if isinstance(error, OSError):
            return True
        return isinstance(error, self._error) and (error.get_http_status_code() >= 500 or error.get_http_status_code() == 429)

    def log_artifact(self, artifact: Artifact) -> None:
        """Upload the .pth under checkpoints/best/ or checkpoints/ and tag the run with where it is."""
        from mlflow.entities import RunTag

        folder = "checkpoints/best" if artifact.tag == "best" else "checkpoints"
        self._client.log_artifact(self.run_id, str(artifact.path), folder)
        tags = [RunTag(f"kiln.checkpoint.{artifact.tag}", f"{folder}/{artifact.path.name}")]
        if artifact.iteration is not None:
            tags.append(RunTag(f"kiln.checkpoint.{artifact.tag}_iteration", str(artifact.iteration)))
        self._client.log_batch(self.run_id, tags=tags)

    def state(self) -> dict:
        """{"run_id": ...} once the run exists."""
        return {"run_id": self.run_id} if self.run_id else {}

    def close(self, finished: bool) -> None:
        """FINISHED when training reached its end, else KILLED (a resume sets it RUNNING again)."""
        if self.run_id is not None:
            self._client.set_terminated(self.run_id, status="FINISHED" if finished else "KILLED")
