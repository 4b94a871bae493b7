"""Experiment trackers (logging.trackers): what csv, mlflow and wandb record, read back with each one's own
reader; a resume continues the same tracker run without any step twice; a tracker that fails never stops
the run, and one whose package is missing is an exit-2 error naming `pip install`.

MLflow runs against a real `mlflow server` (sqlite store) on 127.0.0.1 that this module starts and stops;
W&B runs offline (WANDB_MODE=offline): nothing leaves the machine.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
import torch

import train
from tests.helpers import Proxy, free_port, iterations_reading_the_device, tiny_config, train_in_process, write_config
from trainer.config import config_from_dict
from trainer.tracking.logger import Logger
from trainer.tracking.trackers import Tracker, Trackers, fanout
from trainer.tracking.trackers.base import RunInfo
from trainer.trainer import Trainer

pytestmark = pytest.mark.usefixtures("one_thread")

LOGGED = [5, 10, 15, 20, 25, 30]  # logging.interval 5 over the tiny config's 30 iterations
VALIDATED = [10, 20, 30]


def tracked(trackers: list, *, checkpoint_interval: int = 10, **logging) -> dict:
    """The tiny config with `trackers` (TensorBoard off: these tests read the trackers)."""
    settings = {"interval": 5, "progress": False, "tensorboard": False, "trackers": trackers, **logging}
    return tiny_config(logging=settings, checkpoint={"interval": checkpoint_interval})


def checkpoint(workdir: Path, iteration: int) -> dict:
    """The full .pt of `iteration`."""
    return torch.load(workdir / "weights" / f"tiny_iter_{iteration}.pt", weights_only=True)


def log_lines(workdir: Path, text: str) -> list[str]:
    """The lines of train.log that contain `text`."""
    return [line for line in (workdir / "experiments/tiny/train.log").read_text().splitlines() if text in line]


def read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    """(header, rows) through csv.DictReader."""
    with open(path, newline="") as file:
        reader = csv.DictReader(file)
        return list(reader.fieldnames or []), list(reader)


def csv_history(workdir: Path) -> dict[str, list[tuple[int, float]]]:
    """metrics.csv as {column: [(iteration, value), ...]} for the cells that have a value."""
    header, rows = read_csv(workdir / "experiments/tiny/metrics.csv")
    return {key: [(int(row["iteration"]), float(row[key])) for row in rows if row[key]] for key in header[1:]}


# -- csv -----------------------------------------------------------------------------------------


def test_csv_writes_one_row_per_logged_iteration_with_every_scalar_and_the_best(workdir):
    assert train_in_process(workdir, tracked(["csv"], log_checkpoints="best")) == 0
    header, rows = read_csv(workdir / "experiments/tiny/metrics.csv")
    assert header == ["iteration", "train/loss", "train/lr", "train/samples_per_sec", "val/accuracy"]
    assert [int(row["iteration"]) for row in rows] == LOGGED
    assert [int(row["iteration"]) for row in rows if row["val/accuracy"]] == VALIDATED
    for row in rows:  # the loss the log line shows, at the same iteration
        assert log_lines(workdir, f"iter {row['iteration']}/30 | epoch 0 | loss {float(row['train/loss']):.4f} |")
    best = checkpoint(workdir, 30)["best_metrics"]
    summary = json.loads((workdir / "experiments/tiny/summary.json").read_text())
    assert summary == {"best/accuracy": best["accuracy"], "best/iteration": best["iteration"]}
    assert float(rows[VALIDATED.index(best["iteration"]) * 2 + 1]["val/accuracy"]) == best["accuracy"]
    _, params = read_csv(workdir / "experiments/tiny/params.csv")
    params = {row["key"]: row["value"] for row in params}
    assert params["optimizer.lr"] == "0.003" and params["data.train.augment"] == "true"
    assert params["metrics"] == '["accuracy"]' and params["scheduler.type"] == "CosineAnnealingLR"
    _, artifacts = read_csv(workdir / "experiments/tiny/artifacts.csv")
    assert artifacts and {row["tag"] for row in artifacts} == {"best"}
    assert {row["path"] for row in artifacts} == {str(Path("experiments/tiny/tiny_best.pth"))}


def test_csv_resume_after_a_crash_past_the_checkpoint_logs_no_iteration_twice(workdir):
    """A run checkpointed at 20 that logged on to 30 before it died: resuming from 20 drops rows 25 and 30,
    and logs them again with the same values (the resume is bitwise)."""
    document = tracked(["csv"], checkpoint_interval=20)
    assert train_in_process(workdir, document) == 0
    first = csv_history(workdir)
    assert train_in_process(workdir, document, "resume_path=weights/tiny_iter_20.pt", "train.total_iters=40") == 0
    _, rows = read_csv(workdir / "experiments/tiny/metrics.csv")
    assert [int(row["iteration"]) for row in rows] == [*LOGGED, 35, 40]
    resumed = csv_history(workdir)
    assert resumed["train/loss"][:6] == first["train/loss"]  # 25 and 30 again, bit for bit
    assert resumed["val/accuracy"][:3] == first["val/accuracy"]
    assert len(log_lines(workdir, "tracker csv: dropped 2 rows of metrics.csv logged after iteration 20")) == 1


def test_trackers_read_nothing_from_the_device_between_logging_steps(workdir, monkeypatch):
    document = tracked(["csv"], checkpoint_interval=20, interval=20, log_checkpoints="all")
    document["train"] = {"total_iters": 40, "val_interval": 20}
    trainer = Trainer(config_from_dict(document))
    assert set(iterations_reading_the_device(trainer, monkeypatch)) <= {20, 40}


# -- the fan-out ---------------------------------------------------------------------------------


class RecordingTracker(Tracker):
    """Records its calls; raises in the call named `fail_in`; waits for `release` in close."""

    name = "recording"

    def __init__(self, fail_in: str | None = None, release: threading.Event | None = None) -> None:
        self.calls: list[str] = []
        self.fail_in, self.release = fail_in, release

    def _record(self, method: str) -> None:
        self.calls.append(method)
        if method == self.fail_in:
            raise ConnectionError("server went away\nsecond line")

    def start(self, run):
        self._record("start")

    def log_scalars(self, rows):
        self._record("log_scalars")

    def log_artifact(self, artifact):
        assert artifact.path.read_bytes() == b"weights" and artifact.path != artifact.source  # its own copy
        self._record("log_artifact")

    def close(self, finished):
        self._record("close")
        if self.release is not None:
            self.release.wait(30)


def test_a_failing_tracker_warns_once_then_drops_its_calls_and_its_staged_files(tmp_path):
    tracker = RecordingTracker(fail_in="log_artifact")
    trackers = Trackers([tracker])
    trackers.start(name="tiny", log_dir=tmp_path, run_id="abc", start_iteration=0)
    weights = tmp_path / "tiny_best.pth"
    weights.write_bytes(b"weights")
    trackers.log_scalars({"train/loss": 1.0}, 5)
    trackers.log_artifact(weights, "best", 10)  # fails
    trackers.log_scalars({"train/loss": 0.5}, 10)
    trackers.log_artifact(weights, "best", 20)
    trackers.close(finished=True, timeout=5)
    assert tracker.calls == ["start", "log_scalars", "log_artifact"]
    assert trackers.notes() == [
        "warning: tracker recording stopped (server went away); nothing more is sent to it, "
        "and training, checkpoints, train.log and the other trackers go on unaffected"
    ]
    assert weights.read_bytes() == b"weights" and not (tmp_path / ".tracker_uploads").exists()


def test_close_waits_a_bounded_time_for_a_tracker_that_hangs(tmp_path):
    release = threading.Event()
    trackers = Trackers([RecordingTracker(release=release)])
    trackers.start(name="tiny", log_dir=tmp_path, run_id="abc", start_iteration=0)
    started = time.monotonic()
    trackers.close(finished=True, timeout=0.5)
    assert time.monotonic() - started < 3
    assert [line.split(" (")[0] for line in trackers.notes()] == ["warning: tracker recording stopped"]
    release.set()


def test_each_tracker_gets_its_own_copy_of_a_weight_file_that_is_replaced_meanwhile(tmp_path):
    seen: list[bytes] = []

    class Uploader(Tracker):
        name = "uploader"

        def log_artifact(self, artifact):
            time.sleep(0.2)  # a slow upload: the best is replaced on disk meanwhile
            seen.append(artifact.path.read_bytes())

    trackers = Trackers([Uploader()])
    trackers.start(name="tiny", log_dir=tmp_path, run_id="abc", start_iteration=0)
    best = tmp_path / "tiny_best.pth"
    for content in (b"first best", b"second best"):
        (tmp_path / "new").write_bytes(content)
        os.replace(tmp_path / "new", best)  # as atomic_copy replaces the archived best
        trackers.log_artifact(best, "best", 10)
    trackers.close(finished=True, timeout=5)
    assert seen == [b"first best", b"second best"]


def test_the_run_info_carries_the_saved_state_into_start(tmp_path):
    class Resumable(Tracker):
        name = "resumable"
        info: RunInfo | None = None

        def start(self, run):
            Resumable.info = run

        def state(self):
            return {"run_id": "live"} if Resumable.info else {}

    trackers = Trackers([Resumable()])
    trackers.restore({"resumable": {"run_id": "saved"}, "gone": {"run_id": "kept"}})
    trackers.start(name="tiny", log_dir=tmp_path, run_id="abc", start_iteration=20)
    trackers.close(finished=True, timeout=5)
    assert Resumable.info.saved == {"run_id": "saved"} and Resumable.info.start_iteration == 20
    assert trackers.state() == {"resumable": {"run_id": "live"}, "gone": {"run_id": "kept"}}


# -- bad configs ---------------------------------------------------------------------------------


def exit_code_and_last_line(workdir: Path, document: dict, capsys) -> tuple[int, str]:
    """train.py's exit code and the last line it wrote to stderr."""
    code = train.main(["-c", str(write_config(workdir / "config.yaml", document))])
    return code, capsys.readouterr().err.strip().splitlines()[-1]


@pytest.mark.parametrize("package", ["mlflow", "wandb"])
def test_a_tracker_whose_package_is_missing_is_exit_2_naming_pip_install(workdir, monkeypatch, capsys, package):
    monkeypatch.setitem(sys.modules, package, None)  # as if it were not installed
    code, line = exit_code_and_last_line(workdir, tracked(["csv", package]), capsys)
    assert code == 2
    assert line == (
        f"error: config key logging.trackers[1]: tracker {package} needs the Python package {package}, which cannot be "
        f"imported (import of {package} halted; None in sys.modules); pip install {package}, or remove it from logging.trackers"
    )
    assert not (workdir / "experiments").exists()  # refused before anything was written


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("mlfow", "error: config key logging.trackers[0]: unknown tracker type 'mlfow'; did you mean mlflow?"),
        (
            {"type": "mlflow", "tracking_url": "http://127.0.0.1:5000"},
            "error: config key logging.trackers[0]: tracker mlflow: got an unexpected keyword argument 'tracking_url' "
            "(did you mean tracking_uri?); it accepts tracking_uri, experiment, run_name, tags",
        ),
        (
            {"type": "wandb", "mode": "ofline"},
            "error: config key logging.trackers[0]: tracker wandb: mode must be one of online, offline, disabled, "
            "got 'ofline'; fix its arguments in the config",
        ),
    ],
    ids=["unknown-name", "unknown-option", "bad-option-value"],
)
def test_an_unknown_tracker_or_option_is_exit_2_in_one_line(workdir, capsys, spec, message):
    assert exit_code_and_last_line(workdir, tracked([spec]), capsys) == (2, message)


# -- wandb (offline) -----------------------------------------------------------------------------


def wandb_records(path: Path) -> list:
    """The records of a .wandb file (W&B's LevelDB-style log of protobuf records), parsed by wandb.proto."""
    from wandb.proto import wandb_internal_pb2

    data, records, pending, position, block = path.read_bytes(), [], b"", 7, 32768
    assert data[:4] == b":W&B"  # then the magic and version: a 7-byte file header
    while position + 7 <= len(data):
        if block - position % block < 7:  # a block's tail too short for a record header is padding
            position += block - position % block
            continue
        _, length, kind = struct.unpack("<IHB", data[position : position + 7])  # crc32, length, FULL/FIRST/MIDDLE/LAST
        if position + 7 + length > len(data):  # a record still being written
            break
        pending += data[position + 7 : position + 7 + length]
        position += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def _items(items) -> dict:
    """A record's {key: value} (W&B writes some keys as nested_key paths)."""
    return {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in items}


def finished_records(path: Path, timeout: float = 60) -> list:
    """The records of a .wandb file once W&B has written its last one (`exit`).

    wandb.finish() returns when W&B's service process has the run, which writes the file out a
    moment later: on a loaded machine the test would otherwise read it half written.
    """
    deadline = time.monotonic() + timeout
    while True:
        records = wandb_records(path)
        if any(record.WhichOneof("record_type") == "exit" for record in records) or time.monotonic() > deadline:
            return records
        time.sleep(0.2)


def wandb_run(run_dir: Path) -> dict:
    """What an offline run directory holds: run id, project, name, config, history by step, summary, artifacts."""
    (path,) = run_dir.glob("run-*.wandb")
    run: dict = {"config": {}, "history": {}, "summary": {}, "artifacts": []}
    for record in finished_records(path):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run.update(id=record.run.run_id, project=record.run.project, name=record.run.display_name)
        elif kind == "config":
            run["config"].update(_items(record.config.update))
        elif kind == "history":
            values = _items(record.history.item)
            run["history"][record.history.step.num] = {key: value for key, value in values.items() if not key.startswith("_")}
        elif kind == "summary":
            run["summary"].update(_items(record.summary.update))
        elif kind == "artifact":
            files = [entry.path for entry in record.artifact.manifest.contents]
            run["artifacts"].append((record.artifact.name, list(record.artifact.aliases), files, record.artifact.metadata))
    return run


@pytest.fixture
def wandb_dir(tmp_path, monkeypatch) -> Path:
    """Offline W&B with every one of its directories in tmp_path: no account, nothing leaves the machine."""
    directory = tmp_path / "wandb_root"
    directory.mkdir()
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(directory))
    for name in ("WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_CONFIG_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(name, str(tmp_path / name.lower()))
    return directory / "wandb"


def offline_runs(wandb_dir: Path) -> list[dict]:
    """Every offline run directory, oldest first."""
    return [wandb_run(path) for path in sorted(wandb_dir.glob("offline-run-*"))]


def test_wandb_offline_records_config_history_summary_and_the_best_weights(workdir, wandb_dir):
    document = tracked(["csv", {"type": "wandb", "project": "kiln-tests"}], log_checkpoints="best")
    assert train_in_process(workdir, document) == 0
    (run,) = offline_runs(wandb_dir)
    saved = checkpoint(workdir, 30)
    assert run["id"] == saved["trackers"]["wandb"]["run_id"] and (run["project"], run["name"]) == ("kiln-tests", "tiny")
    assert run["config"]["optimizer.lr"] == 0.003 and run["config"]["train.total_iters"] == 30
    assert run["config"]["model.type"] == "SimpleCNN" and run["config"]["metrics"] == ["accuracy"]
    assert sorted(run["history"]) == LOGGED
    for key, points in csv_history(workdir).items():  # every scalar, at its iteration, with its value
        assert [(step, run["history"][step][key]) for step, _ in points] == points
    best = saved["best_metrics"]
    assert (run["summary"]["best/accuracy"], run["summary"]["best/iteration"]) == (best["accuracy"], best["iteration"])
    names = {(name, frozenset(aliases), tuple(files)) for name, aliases, files, _ in run["artifacts"]}
    assert names == {(f"tiny-{run['id']}", frozenset({"best", "latest"}), ("tiny_best.pth",))}  # W&B adds latest itself
    assert [json.loads(metadata)["iteration"] for *_, metadata in run["artifacts"]][-1] == best["iteration"]


def test_wandb_resume_continues_the_run_and_sends_no_step_twice(workdir, wandb_dir):
    document = tracked([{"type": "wandb", "project": "kiln-tests"}], checkpoint_interval=20)
    assert train_in_process(workdir, document) == 0
    assert train_in_process(workdir, document, "resume_path=weights/tiny_iter_20.pt", "train.total_iters=40") == 0
    first, resumed = offline_runs(wandb_dir)  # offline: one directory per process; `wandb sync` joins them in order
    assert first["id"] == resumed["id"] == checkpoint(workdir, 40)["trackers"]["wandb"]["run_id"]
    assert sorted(first["history"]) == LOGGED and sorted(resumed["history"]) == [35, 40]
    assert "val/accuracy" in resumed["history"][40]
    assert len(log_lines(workdir, f"tracker wandb: continuing run {first['id']}; it holds steps up to iteration 30")) == 1


# -- mlflow (a real server) ----------------------------------------------------------------------



def _mlflow_server_process(root: Path, port: int) -> subprocess.Popen:
    """`mlflow server` on a sqlite store in `root`, in its own process group (it starts uvicorn as a child)."""
    cli = Path(sys.executable).with_name("mlflow")
    command = [str(cli)] if cli.exists() else [sys.executable, "-m", "mlflow"]
    command += ["server", "--backend-store-uri", f"sqlite:///{root}/mlflow.db"]
    command += ["--artifacts-destination", str(root / "artifacts"), "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    environment = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # no job-runner process to start
    log = open(root / "server.log", "wb")  # noqa: SIM115 - the server writes to it until it stops
    return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=environment, start_new_session=True)


@pytest.fixture(scope="module")
def _mlflow_boot(request, tmp_path_factory):
    """Start the server at the module's first test if any mlflow test is selected: it boots while the others run."""
    if not any("mlflow_server" in item.fixturenames for item in request.session.items if item.module is request.module):
        yield None
        return
    root = tmp_path_factory.mktemp("mlflow_server")
    port = free_port()
    process = _mlflow_server_process(root, port)
    yield process, f"http://127.0.0.1:{port}", root
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


@pytest.fixture(autouse=True, scope="module")
def _boot_mlflow_early(_mlflow_boot):
    """Pulls _mlflow_boot in at the first test of the module."""


@pytest.fixture
def mlflow_server(_mlflow_boot) -> str:
    """The tracking URI of the module's server, once it answers /health."""
    process, url, root = _mlflow_boot
    deadline = time.monotonic() + 240  # a loaded 2-core machine takes most of a minute to import it twice
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"mlflow server exited: {(root / 'server.log').read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    return url
        except OSError:
            time.sleep(0.25)
    pytest.fail("mlflow server did not answer /health in 240 s")


def mlflow_run(url: str, experiment: str):
    """The one run of `experiment`, read back with MlflowClient."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(url)
    (run,) = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    return client, run


def mlflow_history(client, run) -> dict[str, list[tuple[int, float]]]:
    """{metric: [(step, value), ...]} in step order."""
    return {
        key: sorted((point.step, point.value) for point in client.get_metric_history(run.info.run_id, key))
        for key in run.data.metrics
    }


def test_mlflow_records_params_every_scalar_the_best_and_the_weights(workdir, mlflow_server, tmp_path):
    mlflow = {"type": "mlflow", "tracking_uri": mlflow_server, "experiment": "fresh", "run_name": "tiny / first try"}
    mlflow["tags"] = {"team": "vision", "note": "x" * 7000}  # the note is a 7000-character param too
    assert train_in_process(workdir, tracked(["csv", mlflow], log_checkpoints="all")) == 0
    client, run = mlflow_run(mlflow_server, "fresh")
    saved = checkpoint(workdir, 30)
    assert run.info.run_id == saved["trackers"]["mlflow"]["run_id"]
    assert (run.info.status, run.info.run_name, run.data.tags["team"]) == ("FINISHED", "tiny / first try", "vision")
    assert run.data.tags["kiln.run_id"] == (workdir / "experiments/tiny/run_id.txt").read_text().strip()
    params = run.data.params
    assert (params["optimizer.lr"], params["train.total_iters"], params["model.type"]) == ("0.003", "30", "SimpleCNN")
    assert (params["data.train.augment"], params["metrics"], params["logging.trackers.0"]) == ("true", '["accuracy"]', "csv")
    assert params["logging.trackers.1.tags.note"] == "x" * 6000  # MLflow's limit, and one warning that says so
    assert log_lines(workdir, "warning: tracker mlflow") == log_lines(workdir, "param logging.trackers.1.tags.note is 7000")
    assert len(log_lines(workdir, "warning: tracker mlflow")) == 1
    history = mlflow_history(client, run)
    assert {key: points for key, points in history.items() if not key.startswith("best/")} == csv_history(workdir)
    assert [step for step, _ in history["train/loss"]] == LOGGED and [step for step, _ in history["val/accuracy"]] == VALIDATED
    best = saved["best_metrics"]
    assert history["best/accuracy"][-1] == (best["iteration"], best["accuracy"])
    assert history["best/iteration"][-1] == (best["iteration"], best["iteration"])
    assert (run.data.tags["kiln.checkpoint.best"], run.data.tags["kiln.checkpoint.latest"]) == (
        "checkpoints/best/tiny_best.pth",
        "checkpoints/tiny_iter_30.pth",
    )
    for artifact, local in [("checkpoints/best/tiny_best.pth", "experiments/tiny/tiny_best.pth")] + [
        (f"checkpoints/tiny_iter_{n}.pth", f"weights/tiny_iter_{n}.pth") for n in VALIDATED
    ]:
        downloaded = client.download_artifacts(run.info.run_id, artifact, str(tmp_path))
        assert Path(downloaded).read_bytes() == (workdir / local).read_bytes(), artifact
    assert not (workdir / "experiments/tiny/.tracker_uploads").exists()


def test_mlflow_resume_after_a_crash_past_the_checkpoint_continues_the_run_without_a_step_twice(workdir, mlflow_server):
    document = tracked([{"type": "mlflow", "tracking_uri": mlflow_server, "experiment": "resumed"}], checkpoint_interval=20)
    assert train_in_process(workdir, document) == 0  # logged up to 30, last checkpoint 30, resumed from 20 below
    client, first = mlflow_run(mlflow_server, "resumed")
    logged_first = mlflow_history(client, first)
    assert train_in_process(workdir, document, "resume_path=weights/tiny_iter_20.pt", "train.total_iters=40") == 0
    client, run = mlflow_run(mlflow_server, "resumed")  # still one run
    assert run.info.run_id == first.info.run_id == checkpoint(workdir, 40)["trackers"]["mlflow"]["run_id"]
    assert run.info.status == "FINISHED"
    history = mlflow_history(client, run)
    assert [step for step, _ in history["train/loss"]] == [*LOGGED, 35, 40]  # 25 and 30 once each
    assert [step for step, _ in history["val/accuracy"]] == [*VALIDATED, 40]
    assert history["train/loss"][:6] == logged_first["train/loss"]
    assert len(log_lines(workdir, f"tracker mlflow: continuing run {run.info.run_id}")) == 1
    assert run.data.params["train.total_iters"] == "30"  # MLflow params cannot change: a note and a tag say so
    assert run.data.tags["kiln.config_changed_at_iter_20"] == "train.total_iters, resume_path"
    assert len(log_lines(workdir, "tracker mlflow: params keep the values the run started with")) == 1


def test_mlflow_server_that_stops_mid_run_costs_one_warning_and_nothing_else(workdir, mlflow_server, monkeypatch, caplog):
    """MLflow's client retries for minutes by default (MLFLOW_HTTP_REQUEST_MAX_RETRIES=7): training does not wait,
    and the end of the run waits CLOSE_TIMEOUT_SECONDS at most (3 s here instead of 10, to keep the test short)."""
    from mlflow.tracking import MlflowClient

    monkeypatch.setattr(fanout, "CLOSE_TIMEOUT_SECONDS", 3.0)
    proxy = Proxy(int(mlflow_server.rsplit(":", 1)[1]))
    client = MlflowClient(mlflow_server)

    def reached_the_server() -> bool:
        experiment = client.get_experiment_by_name("stopped")
        runs = client.search_runs([experiment.experiment_id]) if experiment else []
        return bool(runs and runs[0].data.metrics)

    stopped_at: list[float] = []
    original = Logger.log_validation

    def stop_server_after_the_first_validation(self, **kwargs):
        original(self, **kwargs)
        if kwargs["iteration"] == 10:
            deadline = time.monotonic() + 60
            while not reached_the_server():  # the run was tracked before the server goes away
                assert time.monotonic() < deadline
                time.sleep(0.1)
            proxy.stop()
            stopped_at.append(time.monotonic())

    monkeypatch.setattr(Logger, "log_validation", stop_server_after_the_first_validation)
    mlflow = {"type": "mlflow", "tracking_uri": f"http://127.0.0.1:{proxy.port}", "experiment": "stopped"}
    assert train_in_process(workdir, tracked(["csv", mlflow], log_checkpoints="best")) == 0
    assert time.monotonic() - stopped_at[0] < 3 + 15  # CLOSE_TIMEOUT_SECONDS, and 20 iterations on a loaded machine
    assert all((workdir / f"weights/tiny_iter_{n}.{suffix}").is_file() for n in VALIDATED for suffix in ("pt", "pth"))
    assert [int(row["iteration"]) for row in read_csv(workdir / "experiments/tiny/metrics.csv")[1]] == LOGGED
    warnings = log_lines(workdir, "warning:")
    assert len(warnings) == 1 and "warning: tracker mlflow stopped (" in warnings[0], warnings
    assert log_lines(workdir, "done: tiny at iteration 30")
    assert not [record for record in caplog.records if record.name.startswith("urllib3")]  # no "Retrying ..." lines
    client, run = mlflow_run(mlflow_server, "stopped")
    assert run.info.status == "RUNNING"  # it could not be told it ended
    assert {step for step, _ in mlflow_history(client, run)["train/loss"]} <= {5, 10}


def test_mlflow_server_that_never_answers_delays_the_start_by_the_start_timeout_at_most(workdir, monkeypatch):
    """Nothing listens on the port: MLflow's client would retry for minutes; the run waits START_TIMEOUT_SECONDS
    for it once (1 s here), trains, and leaves it behind at the end (CLOSE_TIMEOUT_SECONDS, 1 s here)."""
    monkeypatch.setattr(fanout, "START_TIMEOUT_SECONDS", 1.0)
    monkeypatch.setattr(fanout, "CLOSE_TIMEOUT_SECONDS", 1.0)
    mlflow = {"type": "mlflow", "tracking_uri": f"http://127.0.0.1:{free_port()}", "experiment": "never"}
    started = time.monotonic()
    assert train_in_process(workdir, tracked(["csv", mlflow])) == 0
    assert time.monotonic() - started < 1 + 1 + 15  # both timeouts, and the run on a loaded machine
    assert len(log_lines(workdir, "tracker mlflow: its run is not open after 1 s; training starts")) == 1
    warnings = log_lines(workdir, "warning:")
    assert len(warnings) == 1 and "warning: tracker mlflow stopped (still busy 1 s after training ended" in warnings[0]
    assert (workdir / "weights/tiny_iter_30.pt").is_file()
    assert "mlflow" not in checkpoint(workdir, 30)["trackers"]  # no run id: a resume tries again by kiln.run_id tag


# -- MLflow outages (issue 23, point 6; the in-process ones are in test_tracker_outage.py) ---------------------


class ReopenableProxy(Proxy):
    """tests.helpers.Proxy that can listen again on its port after stop(): a server that comes back."""

    def reopen(self) -> None:
        self._server = socket.create_server(("127.0.0.1", self.port))  # SO_REUSEADDR: the cut connections linger
        threading.Thread(target=self._accept, daemon=True).start()


def cut_after_the_first_best(monkeypatch, proxy: ReopenableProxy, url: str, experiment: str) -> None:
    """Cut the proxy at iteration 15's log, once the best of iteration 10 has reached the server (the run
    is tracked before the outage)."""
    from mlflow.tracking import MlflowClient

    client, original = MlflowClient(url), Trackers.log_scalars

    def holds_the_first_best() -> bool:
        found = client.get_experiment_by_name(experiment)
        runs = client.search_runs([found.experiment_id]) if found else []
        return bool(runs) and "best/accuracy" in runs[0].data.metrics

    def log_scalars(self, values, step):
        if step == 15:
            _wait_until(holds_the_first_best, timeout=60)
            proxy.stop()
        original(self, values, step)

    monkeypatch.setattr(Trackers, "log_scalars", log_scalars)


@pytest.fixture
def outage(mlflow_server, monkeypatch) -> tuple[ReopenableProxy, str]:
    """(a proxy to the module's server, the server's own URL); MLflow's client gives up at once (no retries),
    so an outage is seen at its first request."""
    url = mlflow_server
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setattr(fanout, "RETRY_SECONDS", 60.0)  # no retry during these short runs: the close tries once more
    return ReopenableProxy(int(url.rsplit(":", 1)[1])), url


def best_weights_in_mlflow(client, run, tmp_path: Path) -> bytes:
    """The bytes of the run's best-weights artifact."""
    return Path(client.download_artifacts(run.info.run_id, "checkpoints/best/tiny_best.pth", str(tmp_path))).read_bytes()


def test_mlflow_back_for_the_close_is_sent_every_scalar_and_the_best_it_missed(workdir, outage, monkeypatch, tmp_path):
    proxy, server_url = outage
    cut_after_the_first_best(monkeypatch, proxy, server_url, "outage")
    original_close = Trackers.close

    def back_for_the_close(self, finished, timeout=None):
        proxy.reopen()
        original_close(self, finished, timeout)

    monkeypatch.setattr(Trackers, "close", back_for_the_close)
    mlflow = {"type": "mlflow", "tracking_uri": proxy.url, "experiment": "outage"}
    assert train_in_process(workdir, tracked(["csv", mlflow], log_checkpoints="best")) == 0
    best = checkpoint(workdir, 30)["best_metrics"]
    assert best["iteration"] == 30  # the best moved twice while the server was away
    client, run = mlflow_run(server_url, "outage")
    history = mlflow_history(client, run)
    assert {key: points for key, points in history.items() if not key.startswith("best/")} == csv_history(workdir)
    assert [step for step, _ in history["best/accuracy"]] == [10, 30] and history["best/accuracy"][-1][1] == best["accuracy"]
    assert run.data.tags["kiln.checkpoint.best_iteration"] == "30" and run.info.status == "FINISHED"
    assert best_weights_in_mlflow(client, run, tmp_path) == (workdir / "experiments/tiny/tiny_best.pth").read_bytes()
    warnings = log_lines(workdir, "warning:")
    assert len(warnings) == 1 and "warning: tracker mlflow stopped (API request to " in warnings[0], warnings
    assert len(log_lines(workdir, "tracker mlflow: reachable again after")) == 1


def test_mlflow_that_missed_the_best_is_brought_up_to_date_at_the_resume(workdir, outage, monkeypatch, tmp_path):
    """The issue's case: the server went away after the first best and was back for the resume; the run's best
    metrics, tag and weights were those of iteration 10 while the truth was iteration 30."""
    proxy, server_url = outage
    cut_after_the_first_best(monkeypatch, proxy, server_url, "missed")
    mlflow = {"type": "mlflow", "tracking_uri": proxy.url, "experiment": "missed"}
    document = tracked(["csv", mlflow], log_checkpoints="best")
    assert train_in_process(workdir, document) == 0
    client, run = mlflow_run(server_url, "missed")
    assert run.data.tags["kiln.checkpoint.best_iteration"] == "10" and run.data.metrics["best/iteration"] == 10
    assert len(log_lines(workdir, "tracker mlflow: still unreachable when the run ended")) == 1
    proxy.reopen()
    assert train_in_process(workdir, document, "resume_path=weights/tiny_iter_30.pt") == 0  # nothing left to train
    best = checkpoint(workdir, 30)["best_metrics"]
    client, run = mlflow_run(server_url, "missed")
    assert run.data.metrics["best/iteration"] == 30 and run.data.metrics["best/accuracy"] == best["accuracy"]
    assert run.data.tags["kiln.checkpoint.best_iteration"] == "30" and run.info.status == "FINISHED"
    assert best_weights_in_mlflow(client, run, tmp_path) == (workdir / "experiments/tiny/tiny_best.pth").read_bytes()
    (caught_up,) = log_lines(workdir, "tracker mlflow: brought up to date")
    assert caught_up.endswith("with what an earlier process could not send: the best metrics of iteration 30 and its weights")
    _, artifacts = read_csv(workdir / "experiments/tiny/artifacts.csv")
    assert [row["iteration"] for row in artifacts] == ["10", "20", "30"]  # csv had them all: nothing twice
    summary = json.loads((workdir / "experiments/tiny/summary.json").read_text())
    assert summary == {"best/accuracy": best["accuracy"], "best/iteration": 30}


def test_an_mlflow_tracking_uri_with_a_scheme_mlflow_cannot_use_is_exit_2_at_the_door(workdir, capsys):
    document = tracked(["csv", {"type": "mlflow", "tracking_uri": "htp://127.0.0.1:5000"}])
    code = train.main(["-c", str(write_config(workdir / "config.yaml", document))])
    assert code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "error: config key logging.trackers[1]: tracker mlflow: tracking_uri 'htp://127.0.0.1:5000' has a scheme MLflow "
        "cannot use (did you mean http?); it takes databricks, file, http, https, mssql, mysql, postgresql, sqlite or a "
        "local path: give a server as http://HOST:PORT or a local store as sqlite:///PATH.db"
    )
    assert not (workdir / "experiments").exists() and not (workdir / "weights").exists()


def _wait_until(condition, timeout: float = 30) -> None:
    """Poll `condition` until it holds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)
