"""Nothing waits forever on an object store (issue 23, point 1), against a real S3-compatible server.

moto's server runs as a subprocess on 127.0.0.1 (no authentication: credentials are not the point
here). A store that accepts connections but never answers is made two ways, with nothing of
botocore, s3fs or aiohttp mocked: `kill -STOP` of the server (a stopped MinIO: every request
hangs), and the TCP proxy of tests/helpers.py holding one chosen PUT (a hung proxy: that upload
hangs, everything else answers). The watchdog's bounds are shortened where a test waits on them
(2 s instead of 30 s for a run's calls, 3 s instead of 10 s for the start-up check).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import pytest

from tests.helpers import (
    TRAIN_PY,
    Proxy,
    assert_bitwise_equal,
    call,
    error_of,
    load_params,
    load_tool,
    moto_server,
    tiny_config,
    train_in_dir,
    write_config,
)
from trainer.checkpoint import CheckpointManager
from trainer.checkpoint import storage as storage_module
from trainer.config import config_from_dict
from trainer.errors import TrainingError
from utils import stopping

pytest.importorskip("s3fs")
pytest.importorskip("moto")

BUCKET = "kiln"
# 30 iterations, a save and a validation every 10: tiny_iter_10/20/30 and best files.
RUN = tiny_config(logging={"interval": 5, "progress": False, "tensorboard": False})
FAST = storage_module.Bounds(connect_s=5, read_s=15, attempts=2, stall_s=2)  # RUN's, with a 2 s watchdog
checkpoints_tool = load_tool("checkpoints")
# tests/e2e/test_fault_injection.py's way: a plugin (`imports`) changes Kiln in the run's process.
GRACE_PLUGIN = "import trainer.checkpoint.storage as storage\nstorage.STOP_GRACE_S = 2.0\n"


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory):
    """moto's S3 server with a bucket, a Proxy in front of it, and the AWS_* environment."""
    import boto3

    env = {"AWS_ACCESS_KEY_ID": "kiln", "AWS_SECRET_ACCESS_KEY": "x", "AWS_DEFAULT_REGION": "us-east-1"}
    with moto_server(tmp_path_factory.mktemp("moto")) as (server, port), pytest.MonkeyPatch.context() as patch:
        endpoint = f"http://127.0.0.1:{port}"
        for name, value in {"AWS_ENDPOINT_URL": endpoint, **env}.items():
            patch.setenv(name, value)
        client = _wait_for(lambda: boto3.client("s3").create_bucket(Bucket=BUCKET) and boto3.client("s3"), server)
        proxy = Proxy(port)
        yield {"server": server, "client": client, "proxy": proxy, "endpoint": endpoint}
        proxy.close()


def _wait_for(make, server: subprocess.Popen, timeout: float = 60):
    """make() once the server answers."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return make()
        except Exception:  # noqa: BLE001 - not up yet
            if server.poll() is not None or time.monotonic() > deadline:
                raise
            time.sleep(0.2)


@pytest.fixture(autouse=True)
def no_stop_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    """No stop signal an earlier in-process run received (utils/stopping.py) counts here."""
    monkeypatch.setattr(stopping, "_listener", None)


@pytest.fixture
def held(store, monkeypatch: pytest.MonkeyPatch, workdir: Path):
    """A fresh prefix whose `tiny_iter_20.pth` PUT the proxy holds; runs go through the proxy,
    stage their uploads under workdir/tmp, and have a 2 s watchdog with short waits between tries."""
    proxy, prefix = store["proxy"], f"t{uuid.uuid4().hex[:8]}"
    stage = workdir / "tmp"
    stage.mkdir()
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
    monkeypatch.setattr(tempfile, "tempdir", str(stage))
    monkeypatch.setattr(storage_module, "RUN", FAST)
    monkeypatch.setattr(storage_module, "RETRY_WAIT_S", 0.1)
    proxy.held.clear()
    proxy.hold = f"PUT /{BUCKET}/{prefix}/tiny_iter_20.pth"
    yield {"proxy": proxy, "prefix": prefix, "url": f"s3://{BUCKET}/{prefix}", "stage": stage}
    proxy.hold = None


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, one_thread) -> Path:
    """An uninterrupted LOCAL run of RUN: its weights/ folder."""
    workdir = tmp_path_factory.mktemp("local")
    assert train_in_dir(workdir, RUN) == 0
    return workdir / "weights"


def _puts(proxy: Proxy, start: int, path: str) -> int:
    """How many PUT requests of `path` went through the proxy since request number `start`."""
    return proxy.requests[start:].count(f"PUT {path}")


def _kept(message: str) -> Path:
    """The directory a failed upload's error line says the checkpoint is kept in."""
    found = re.search(
        r"kept locally: (\S+) holds tiny_iter_20\.pt, tiny_iter_20\.pth \(python tools/checkpoints\.py push \1 ", message
    )
    assert found, message
    return Path(found.group(1))


# -- an upload that hangs -----------------------------------------------------------------------


def test_an_upload_the_store_never_answers_is_tried_3_times_then_exit_1_and_nothing_is_lost(held, reference, workdir):
    proxy, url = held["proxy"], held["url"]
    start = len(proxy.requests)
    started = time.monotonic()
    with pytest.raises(TrainingError) as caught:
        train_in_dir(workdir, RUN, f"checkpoint.dir={url}")
    message = str(caught.value)
    assert time.monotonic() - started < 60
    assert _puts(proxy, start, f"/{BUCKET}/{held['prefix']}/tiny_iter_20.pth") == 3  # the first try and 2 retries
    kept = _kept(message)
    assert message == (
        f"could not write checkpoint {url}/tiny_iter_20.pth (upload failed after 3 attempts: the object store at "
        f"{proxy.url} did not answer within 2 s (put_file {BUCKET}/{held['prefix']}/tiny_iter_20.pth); check that it "
        f"is up and reachable (AWS_ENDPOINT_URL, the network); kept locally: {kept} holds tiny_iter_20.pt, "
        f"tiny_iter_20.pth (python tools/checkpoints.py push {kept} {url} uploads them)); earlier checkpoints are "
        f"intact: {storage_module.RemoteStorage.write_fix}, then resume with resume_path=auto"
    )
    log = (workdir / "experiments" / "tiny" / "train.log").read_text()
    assert f"error: {message}" in log
    # The previous complete checkpoint is intact and is what auto resumes; the unfinished pair is nowhere in the store.
    assert CheckpointManager(url, "tiny").latest() == f"{url}/tiny_iter_10.pt"
    assert kept.parent == held["stage"] and sorted(path.name for path in kept.iterdir()) == [
        "tiny_iter_20.pt",
        "tiny_iter_20.pth",
    ]
    assert_bitwise_equal(load_params(kept / "tiny_iter_20.pth"), load_params(reference / "tiny_iter_20.pth"))

    proxy.hold = None  # the store is back: the kept pair goes up as the line says, and the run resumes from it
    code, _, err = call(checkpoints_tool, "push", str(kept), url)
    assert (code, err) == (0, "")
    assert CheckpointManager(url, "tiny").latest() == f"{url}/tiny_iter_20.pt"
    assert train_in_dir(workdir, RUN, f"checkpoint.dir={url}", "resume_path=auto") == 0
    assert f"resumed from {url}/tiny_iter_20.pt at iteration 20" in (workdir / "experiments" / "tiny" / "train.log").read_text()
    manager = CheckpointManager(url, "tiny")
    final = workdir / "final.pth"
    manager.storage.get("tiny_iter_30.pth", final)
    assert_bitwise_equal(load_params(final), load_params(reference / "tiny_iter_30.pth"))


def test_an_upload_that_hangs_once_is_retried_and_the_run_ends_as_an_uninterrupted_one(held, reference, workdir):
    proxy, url = held["proxy"], held["url"]
    start = len(proxy.requests)
    release = threading.Thread(target=lambda: proxy.held.wait(120) and setattr(proxy, "hold", None), daemon=True)
    release.start()  # the first try hangs; the store answers the second
    assert train_in_dir(workdir, RUN, f"checkpoint.dir={url}") == 0
    assert _puts(proxy, start, f"/{BUCKET}/{held['prefix']}/tiny_iter_20.pth") == 2
    assert list(held["stage"].iterdir()) == []  # staged files go once they are up
    final = workdir / "final.pth"
    CheckpointManager(url, "tiny").storage.get("tiny_iter_30.pth", final)
    assert_bitwise_equal(load_params(final), load_params(reference / "tiny_iter_30.pth"))


def test_sigterm_while_an_upload_hangs_stops_the_run_within_the_grace_and_says_where_the_checkpoint_is(held, tmp_path):
    proxy, url = held["proxy"], held["url"]
    (tmp_path / "grace.py").write_text(GRACE_PLUGIN)
    config = write_config(tmp_path / "run.yaml", tiny_config(**{**RUN, "imports": ["grace"]}))
    env = {**os.environ, "TMPDIR": str(held["stage"]), "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    run = subprocess.Popen(
        [sys.executable, str(TRAIN_PY), "-c", str(config), f"checkpoint.dir={url}"],
        cwd=tmp_path,
        env=env,  # RUN's own 30 s watchdog and 3 attempts: without the stop, about 96 s before it gives up
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    try:
        assert proxy.held.wait(timeout=120), "the upload of tiny_iter_20.pth never started"
        signalled = time.monotonic()
        run.send_signal(signal.SIGTERM)
        _, stderr = run.communicate(timeout=60)
    finally:
        run.kill()
    assert time.monotonic() - signalled < 15  # the 2 s grace, and the process's exit
    assert run.returncode == 1, stderr[-2000:]
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in stderr, stderr[-2000:]
    kept = _kept(lines[0])
    assert lines[0].startswith(
        f"error: could not write checkpoint {url}/tiny_iter_20.pth (upload failed after 1 attempt (the run was asked to "
        f"stop): the object store at {proxy.url} did not answer within 2 s"
    )
    assert kept.parent == held["stage"] and sorted(path.name for path in kept.iterdir()) == [
        "tiny_iter_20.pt",
        "tiny_iter_20.pth",
    ]
    assert CheckpointManager(url, "tiny").latest() == f"{url}/tiny_iter_10.pt"


# -- the start-up check, and URLs that name no bucket ---------------------------------------------


def test_a_store_that_never_answers_is_one_line_exit_2_within_the_checks_bound(store, workdir, monkeypatch):
    from trainer.trainer import Trainer

    assert storage_module.CHECK.stall_s == 10  # the figure docs/checkpoints.md gives; 3 s here, to keep the suite quick
    monkeypatch.setattr(storage_module, "CHECK", storage_module.Bounds(connect_s=3, read_s=10, attempts=1, stall_s=3))
    url = f"s3://{BUCKET}/t{uuid.uuid4().hex[:8]}"
    config = config_from_dict(tiny_config(checkpoint={"dir": url}))
    os.kill(store["server"].pid, signal.SIGSTOP)  # a stopped MinIO: connections are accepted, nothing answers
    try:
        started = time.monotonic()
        message = error_of(lambda: Trainer(config))
        took = time.monotonic() - started
    finally:
        os.kill(store["server"].pid, signal.SIGCONT)
    assert 3 <= took < 15, took
    assert re.fullmatch(
        rf"config key checkpoint\.dir: {re.escape(url)} cannot be used: the object store at {re.escape(store['endpoint'])} "
        rf"did not answer within 3 s \(pipe_file {re.escape(url[5:])}\); check that it is up and reachable "
        r"\(AWS_ENDPOINT_URL, the network\)",
        message,
    ), message
    assert list(workdir.iterdir()) == []  # nothing on disk


@pytest.mark.parametrize("url", ["s3://", "s3:///weights", "gs://"])
def test_a_url_that_names_no_bucket_is_one_line_at_the_config_door(url):
    protocol = url.split(":", 1)[0]
    message = error_of(lambda: config_from_dict(tiny_config(checkpoint={"dir": url})))
    assert message == f"config key checkpoint.dir: {url} names no bucket; give {protocol}://BUCKET/PREFIX"


def test_the_tools_and_resume_path_say_the_same_of_a_url_without_a_bucket(workdir):
    from trainer.trainer import Trainer

    code, out, err = call(checkpoints_tool, "ls", "s3://")
    assert (code, out, err) == (2, "", "error: URL s3:// names no bucket; give s3://BUCKET/PREFIX\n")
    message = error_of(lambda: Trainer(config_from_dict(tiny_config(resume_path="s3:///x/tiny_iter_10.pt"))))
    assert message == "resume_path s3:///x/tiny_iter_10.pt names no bucket; give s3://BUCKET/PREFIX"


def test_a_bucket_name_botocore_refuses_is_blamed_on_the_url_not_the_network(store):
    message = error_of(lambda: storage_module.check_store("s3://no such bucket/w", "URL", write=False))
    assert message.startswith(
        'URL s3://no such bucket/w cannot be used: the URL is not a valid location there (Invalid bucket name "no such bucket"'
    )
    assert message.endswith("); fix the URL") and "network" not in message
