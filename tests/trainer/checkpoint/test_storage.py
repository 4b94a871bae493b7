"""Checkpoints on object storage (issue 16, points 4-6), against a real S3-compatible server.

The server is moto's server mode (`moto[server]`): of the S3-compatible servers it is the one
that installs with pip, needs no binary download and no container, and speaks the S3 REST API
over HTTP as S3 and MinIO do, so s3fs/botocore talk to it unchanged. It runs as a subprocess on
127.0.0.1 with IAM authentication on (INITIAL_NO_AUTH_ACTION_COUNT: the first three requests
create a user, its policy and its access key; every later request must be signed with that
key), so that bad credentials are refused as S3 refuses them.

Between the runs and the server sits a small TCP proxy (`Proxy`) that records the request line
of every HTTP request in order, and can hold one chosen request forever after forwarding half
of its first bytes: a run is SIGKILLed while that upload is in flight, with nothing of fsspec
or S3 mocked.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import torch

from tests.helpers import (
    REPO,
    TRAIN_PY,
    Proxy,
    assert_bitwise_equal,
    call,
    free_port,
    load_params,
    load_tool,
    loaded_through_pretrain,
    moto_server,
    published_weights,
    run_train,
    save_sharded,
    tiny_config,
    train_in_dir,
    write_config,
)
from trainer.checkpoint import CheckpointManager
from trainer.checkpoint.storage import file_digest
from trainer.config import config_from_dict
from trainer.errors import InputError
from trainer.trainer import Trainer

pytest.importorskip("s3fs")
pytest.importorskip("moto")

BUCKET = "kiln"
REGION = "us-east-1"
# 30 iterations, a save and a validation every 10: tiny_iter_10/20/30 and best files.
RUN = tiny_config(logging={"interval": 5, "progress": False, "tensorboard": False})
checkpoints_tool, export_tool = load_tool("checkpoints"), load_tool("export")



def _wait_for_port(port: int, process: subprocess.Popen, timeout: float = 60) -> None:
    """Until the server accepts connections (a bare TCP connect: no request, nothing counted)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"moto_server exited with {process.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("moto_server did not start")


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory):
    """moto's S3 server with authentication on, a bucket, and the AWS_* environment pointing at it."""
    import boto3

    with moto_server(tmp_path_factory.mktemp("moto"), INITIAL_NO_AUTH_ACTION_COUNT="3") as (server, port):
        _wait_for_port(port, server)
        endpoint = f"http://127.0.0.1:{port}"
        iam = boto3.client(
            "iam", endpoint_url=endpoint, region_name=REGION, aws_access_key_id="bootstrap", aws_secret_access_key="x"
        )
        iam.create_user(UserName="kiln")
        policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}
        iam.put_user_policy(UserName="kiln", PolicyName="s3", PolicyDocument=json.dumps(policy))
        key = iam.create_access_key(UserName="kiln")["AccessKey"]
        env = {
            "AWS_ENDPOINT_URL": endpoint,
            "AWS_ACCESS_KEY_ID": key["AccessKeyId"],
            "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"],
            "AWS_DEFAULT_REGION": REGION,
        }
        with pytest.MonkeyPatch.context() as patch:
            for name, value in env.items():
                patch.setenv(name, value)
            client = boto3.client("s3")
            client.create_bucket(Bucket=BUCKET)
            proxy = Proxy(port)
            yield {"client": client, "env": env, "proxy": proxy, "endpoint": endpoint}
            proxy.close()


def _prefix() -> str:
    return f"t{uuid.uuid4().hex[:8]}"


def _objects(s3, prefix: str) -> dict[str, bytes]:
    """Every object under `prefix/`, by its key relative to the prefix."""
    client = s3["client"]
    listing = client.list_objects_v2(Bucket=BUCKET, Prefix=f"{prefix}/").get("Contents", [])
    return {item["Key"][len(prefix) + 1 :]: client.get_object(Bucket=BUCKET, Key=item["Key"])["Body"].read() for item in listing}


def _params(data: bytes) -> dict[str, torch.Tensor]:
    import io

    return torch.load(io.BytesIO(data), weights_only=True)["params"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, one_thread) -> Path:
    """An uninterrupted LOCAL run of RUN: its weights/ folder."""
    workdir = tmp_path_factory.mktemp("local")
    assert train_in_dir(workdir, RUN) == 0
    return workdir / "weights"


@pytest.fixture(scope="module")
def s3_run(s3, tmp_path_factory: pytest.TempPathFactory, one_thread) -> tuple[Path, str]:
    """RUN to iteration 20 with checkpoint.dir on S3: (its working directory, the prefix)."""
    workdir, prefix = tmp_path_factory.mktemp("s3run"), _prefix()
    assert train_in_dir(workdir, RUN, f"checkpoint.dir=s3://{BUCKET}/{prefix}", "train.total_iters=20") == 0
    return workdir, prefix


# -- a run on s3:// -----------------------------------------------------------------------------


def test_a_run_writes_complete_pairs_and_best_to_s3_then_resumes_auto_bitwise(s3, s3_run, reference):
    workdir, prefix = s3_run
    objects = _objects(s3, prefix)
    assert sorted(objects) == [
        "tiny_best.pt",
        "tiny_best.pth",
        "tiny_iter_10.pt",
        "tiny_iter_10.pth",
        "tiny_iter_20.pt",
        "tiny_iter_20.pth",
    ]  # no staging or write-check leftovers
    # The Logger's best copy stays in the local log directory; nothing lands in a local weights/.
    assert (workdir / "experiments" / "tiny" / "tiny_best.pth").read_bytes() == objects["tiny_best.pth"]
    assert not (workdir / "weights").exists()
    head = s3["client"].head_object(Bucket=BUCKET, Key=f"{prefix}/tiny_iter_20.pt")
    local_copy = workdir / "copy.pt"
    local_copy.write_bytes(objects["tiny_iter_20.pt"])
    assert head["Metadata"] == {"sha256": file_digest(local_copy)}

    url = f"s3://{BUCKET}/{prefix}"
    assert train_in_dir(workdir, RUN, f"checkpoint.dir={url}", "resume_path=auto") == 0
    log = (workdir / "experiments" / "tiny" / "train.log").read_text()
    assert f"resumed from {url}/tiny_iter_20.pt at iteration 20" in log
    assert_bitwise_equal(_params(_objects(s3, prefix)["tiny_iter_30.pth"]), load_params(reference / "tiny_iter_30.pth"))


def test_sigkill_during_an_upload_leaves_nothing_auto_picks_then_resume_matches_a_local_run(s3, reference, tmp_path):
    proxy, prefix = s3["proxy"], _prefix()
    url = f"s3://{BUCKET}/{prefix}"
    proxy.hold = f"PUT /{BUCKET}/{prefix}/tiny_iter_20.pt"  # the marker of the second pair
    config = write_config(tmp_path / "run.yaml", tiny_config(**{**RUN, "checkpoint": {"interval": 10, "dir": url}}))
    env = {**os.environ, "AWS_ENDPOINT_URL": proxy.url, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    run = subprocess.Popen(
        [sys.executable, str(TRAIN_PY), "-c", str(config)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    try:
        assert proxy.held.wait(timeout=120), "the upload of tiny_iter_20.pt never started"
        run.send_signal(signal.SIGKILL)  # its upload is in flight: half of the first bytes reached the server
    finally:
        output = run.communicate(timeout=60)[0].decode()
        proxy.hold = None
    assert run.returncode == -signal.SIGKILL, output[-2000:]

    objects = _objects(s3, prefix)
    assert "tiny_iter_20.pth" in objects and "tiny_iter_20.pt" not in objects  # the pair never completed
    assert {"tiny_iter_10.pt", "tiny_iter_10.pth"} <= set(objects)
    assert CheckpointManager(url, "tiny").latest() == f"{url}/tiny_iter_10.pt"
    code, out, _ = call(checkpoints_tool, "ls", url)
    assert code == 0
    rows = {cells[0]: cells[1:] for cells in (re.split(r"\s{2,}", line) for line in out.splitlines()[1:-1])}
    assert rows["tiny_iter_10"][0] == "10" and rows["tiny_iter_10"][2:] == [".pt .pth", "yes"]
    assert rows["tiny_iter_20"][2:] == [
        ".pth",
        "no: .pth without its .pt (an interrupted save or upload; resume_path auto skips it)",
    ]

    assert train_in_dir(tmp_path, RUN, f"checkpoint.dir={url}", "resume_path=auto") == 0
    log = (tmp_path / "experiments" / "tiny" / "train.log").read_text()
    assert f"resumed from {url}/tiny_iter_10.pt at iteration 10" in log
    assert_bitwise_equal(_params(_objects(s3, prefix)["tiny_iter_30.pth"]), load_params(reference / "tiny_iter_30.pth"))


def test_keep_last_on_s3_deletes_old_pairs_only_after_the_new_pair_is_up_and_never_best(s3, reference, workdir, monkeypatch):
    proxy, prefix = s3["proxy"], _prefix()
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)  # every request of this run is recorded in order
    start = len(proxy.requests)
    overrides = (f"checkpoint.dir=s3://{BUCKET}/{prefix}", "checkpoint.keep_last=1", "checkpoint.async=true")
    assert train_in_dir(workdir, RUN, *overrides) == 0  # the background thread does the uploads
    objects = _objects(s3, prefix)
    assert sorted(objects) == ["tiny_best.pt", "tiny_best.pth", "tiny_iter_30.pt", "tiny_iter_30.pth"]
    assert_bitwise_equal(_params(objects["tiny_iter_30.pth"]), load_params(reference / "tiny_iter_30.pth"))

    requests = [request for request in proxy.requests[start:] if f"/{BUCKET}/{prefix}/tiny_" in request]
    key = f"/{BUCKET}/{prefix}"
    for old, new in ((10, 20), (20, 30)):
        order = [requests.index(f"PUT {key}/tiny_iter_{new}.pth"), requests.index(f"PUT {key}/tiny_iter_{new}.pt")]
        order += [requests.index(f"DELETE {key}/tiny_iter_{old}.pt"), requests.index(f"DELETE {key}/tiny_iter_{old}.pth")]
        assert order == sorted(order)  # the new pair up, .pth then .pt; only then the old pair goes, .pt first
    assert not [request for request in requests if request.startswith("DELETE") and "_best" in request]


def test_a_fresh_run_moves_the_objects_already_under_the_prefix_aside(s3, workdir):
    prefix = _prefix()
    url = f"s3://{BUCKET}/{prefix}"
    assert train_in_dir(workdir, RUN, f"checkpoint.dir={url}", "train.total_iters=10") == 0
    before = _objects(s3, prefix)
    assert train_in_dir(workdir, RUN, f"checkpoint.dir={url}", "train.total_iters=10") == 0  # no resume_path
    after = _objects(s3, prefix)
    archived = {key.split("/", 1)[1]: data for key, data in after.items() if key.startswith("tiny_archived_")}
    assert archived == before  # every object of the first run, byte for byte, under tiny_archived_<stamp>/
    assert len({key.split("/", 1)[0] for key in after if "/" in key}) == 1
    assert sorted(key for key in after if "/" not in key) == sorted(before)  # the second run's own files
    log = (workdir / "experiments" / "tiny" / "train.log").read_text()
    assert re.search(rf"an earlier run's weights were moved to {re.escape(url)}/tiny_archived_\d{{8}}_\d{{6}}", log)


# -- pretrained weights and the tools reading s3:// ---------------------------------------------


def test_pretrain_path_reads_an_s3_url(s3, s3_run, workdir):
    _, prefix = s3_run
    url = f"s3://{BUCKET}/{prefix}/tiny_iter_10.pth"
    trainer = Trainer(config_from_dict(tiny_config(pretrain_path=url)))
    try:
        assert_bitwise_equal(trainer.model.state_dict(), _params(_objects(s3, prefix)["tiny_iter_10.pth"]))
    finally:
        trainer.close()
    missing = f"s3://{BUCKET}/{prefix}/nope.pth"
    with pytest.raises(InputError) as caught:
        Trainer(config_from_dict(tiny_config(pretrain_path=missing)))
    assert str(caught.value) == f"pretrain_path {missing} does not exist; check the path"


def test_pretrain_path_reads_a_sharded_hf_index_from_s3_with_its_shards(s3, tmp_path):
    index = save_sharded(published_weights(), tmp_path / "hf")
    prefix = _prefix()
    for path in index.parent.iterdir():
        s3["client"].upload_file(str(path), BUCKET, f"{prefix}/hf/{path.name}")
    url = f"s3://{BUCKET}/{prefix}/hf/{index.name}"
    loaded = loaded_through_pretrain(url)
    assert_bitwise_equal(loaded, published_weights())
    s3["client"].delete_object(Bucket=BUCKET, Key=f"{prefix}/hf/model-00002-of-00003.safetensors")
    with pytest.raises(InputError) as caught:
        loaded_through_pretrain(url)
    missing = f"s3://{BUCKET}/{prefix}/hf/model-00002-of-00003.safetensors"
    assert str(caught.value) == f"pretrain_path {missing} does not exist; check the path"


def test_export_evaluate_and_show_checkpoint_read_s3_urls(s3, s3_run, workdir):
    _, prefix = s3_run
    url = f"s3://{BUCKET}/{prefix}/tiny_iter_20.pt"
    code, out, err = call(export_tool, url)
    assert (code, err) == (0, ""), err
    assert out.strip() == f"wrote tiny_iter_20.pth: 8 tensors, the model weights of the full checkpoint {url}"
    assert (workdir / "tiny_iter_20.pth").read_bytes() == _objects(s3, prefix)["tiny_iter_20.pth"]  # byte for byte
    config = write_config(workdir / "run.yaml", RUN)
    code, out, err = call(load_tool("evaluate"), "-c", str(config), "--weights", f"s3://{BUCKET}/{prefix}/tiny_iter_20.pth")
    assert code == 0, err
    assert out.splitlines()[0].startswith(f"evaluated s3://{BUCKET}/{prefix}/tiny_iter_20.pth on Digits")
    code, out, _ = call(load_tool("show_checkpoint"), url)
    assert code == 0 and re.match(rf"file: +{re.escape(url)} \(0\.\d\d MB\)$", out.splitlines()[0]), out
    assert re.search(r"^iteration: +20$", out, re.MULTILINE)


# -- tools/checkpoints.py push | pull | ls ------------------------------------------------------


def _ls_rows(weights: Path) -> list[str]:
    """The ls lines the local files of `weights` should give (sizes from the files themselves)."""
    rows = [("checkpoint", "iteration", "size", "files", "complete")]
    for stem, iteration in (("tiny_iter_10", "10"), ("tiny_iter_20", "20"), ("tiny_iter_30", "30"), ("tiny_best", "best")):
        size = sum((weights / f"{stem}{suffix}").stat().st_size for suffix in (".pt", ".pth"))
        rows.append((stem, iteration, f"{size / 1e6:.2f} MB", ".pt .pth", "yes"))
    widths = [max(len(row[column]) for row in rows) for column in range(4)]
    return ["  ".join([*(cell.ljust(width) for cell, width in zip(row[:4], widths, strict=True)), row[4]]) for row in rows]


def test_push_and_pull_copy_only_what_is_missing_or_changed(s3, reference, tmp_path, monkeypatch):
    source = tmp_path / "weights"
    source.mkdir()
    for path in reference.glob("tiny_*"):  # not the run lock's hidden file
        (source / path.name).write_bytes(path.read_bytes())
    url = f"s3://{BUCKET}/{_prefix()}/weights"
    proxy = s3["proxy"]
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
    start = len(proxy.requests)

    code, out, err = call(checkpoints_tool, "push", str(source), url, "--name", "tiny")
    assert (code, err) == (0, ""), err
    assert len([line for line in out.splitlines() if line.startswith("copied ")]) == 8
    summary = out.splitlines()[-1]
    assert summary.startswith("push: 8 copied (") and summary.endswith(f"0 unchanged, {source} -> {url}")
    puts = [request.rsplit("/", 1)[1] for request in proxy.requests[start:] if request.startswith("PUT") and "/tiny_" in request]
    for stem in ("tiny_iter_10", "tiny_iter_20", "tiny_iter_30", "tiny_best"):
        assert puts.index(f"{stem}.pth") < puts.index(f"{stem}.pt")  # the marker last
    code, out, _ = call(checkpoints_tool, "ls", url)
    assert code == 0 and out.splitlines() == [*_ls_rows(source), f"4 checkpoints in {url}, 4 complete"]

    code, out, _ = call(checkpoints_tool, "push", str(source), url)
    assert code == 0 and out.splitlines() == [f"push: 0 copied (0.00 MB), 8 unchanged, {source} -> {url}"]

    data = bytearray((source / "tiny_iter_10.pth").read_bytes())
    data[-1] ^= 0xFF  # same size, other content
    (source / "tiny_iter_10.pth").write_bytes(bytes(data))
    (source / "tiny_best.pt").write_bytes((source / "tiny_best.pt").read_bytes() + b"\0")  # another size
    code, out, _ = call(checkpoints_tool, "push", str(source), url)
    lines = out.splitlines()
    assert code == 0 and lines[-1].startswith("push: 2 copied (") and lines[-1].endswith(" 6 unchanged, " + f"{source} -> {url}")
    assert sorted(lines[:2]) == sorted(
        [
            f"copied tiny_iter_10.pth ({len(data) / 1e6:.2f} MB, content differs)",
            f"copied tiny_best.pt ({(source / 'tiny_best.pt').stat().st_size / 1e6:.2f} MB, size differs)",
        ]
    )

    target = tmp_path / "pulled"
    code, out, _ = call(checkpoints_tool, "pull", url, str(target))
    assert code == 0 and out.splitlines()[-1].startswith("pull: 8 copied (")
    pulled = {path.name: path.read_bytes() for path in target.iterdir()}
    assert pulled == {path.name: path.read_bytes() for path in source.iterdir()}
    code, out, _ = call(checkpoints_tool, "pull", url, str(target))
    assert code == 0 and out.splitlines() == [f"pull: 0 copied (0.00 MB), 8 unchanged, {url} -> {target}"]


def test_checkpoints_tool_errors_are_one_line_exit_2(s3, tmp_path):
    code, out, err = call(checkpoints_tool, "ls", "s3://no-such-bucket/weights")
    assert (code, out) == (2, "")
    assert err.splitlines() == [
        "error: URL s3://no-such-bucket/weights cannot be used: the bucket no-such-bucket does not exist "
        "(The specified bucket does not exist); create it, or fix the URL"
    ]
    code, out, err = call(checkpoints_tool, "push", f"s3://{BUCKET}/x", str(tmp_path))
    assert (code, out) == (2, "")
    assert err.splitlines() == [
        f"error: SRC s3://{BUCKET}/x is a URL, but it must be a local folder here; see tools/checkpoints.py --help"
    ]
    code, out, err = call(checkpoints_tool, "push", str(tmp_path), f"s3://{BUCKET}/{_prefix()}")
    assert (code, out) == (2, "")
    assert err.splitlines() == [
        f"error: SRC {tmp_path} holds no checkpoint files (<name>_iter_<N>.*, <name>_best.*); check the path and --name"
    ]


# -- what is refused before training -------------------------------------------------------------


@pytest.mark.parametrize("fault", ["missing bucket", "wrong secret"])
def test_a_missing_bucket_or_bad_credentials_is_one_line_exit_2_before_training(s3, tmp_path, fault):
    bucket = "no-such-bucket" if fault == "missing bucket" else BUCKET
    env = {"AWS_SECRET_ACCESS_KEY": "wrong"} if fault == "wrong secret" else {}
    config = write_config(tmp_path / "run.yaml", RUN)
    started = time.monotonic()
    result = run_train(tmp_path, "-c", str(config), f"checkpoint.dir=s3://{bucket}/weights", env=env)
    assert result.returncode == 2, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr
    prefix = f"error: config key checkpoint.dir: s3://{bucket}/weights cannot be used: "
    if fault == "missing bucket":
        reason = "the bucket no-such-bucket does not exist (The specified bucket does not exist); create it, or fix the URL"
        assert lines[0] == prefix + reason
    else:
        assert lines[0].startswith(prefix + "access was refused (The request signature we calculated does not match")
        fix = "; check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, and that they may list, read and write there"
        assert lines[0].endswith(fix)
    assert not (tmp_path / "experiments").exists() and not (tmp_path / "weights").exists()  # before anything
    assert time.monotonic() - started < 60


def test_an_unreachable_endpoint_is_one_line_before_training(s3, workdir, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    with pytest.raises(InputError) as caught:
        Trainer(config_from_dict(tiny_config(checkpoint={"dir": f"s3://{BUCKET}/weights"})))
    message = str(caught.value)
    assert message.startswith(
        f"config key checkpoint.dir: s3://{BUCKET}/weights cannot be used: cannot reach the object store at http://127.0.0.1:"
    )
    assert message.endswith("; check AWS_ENDPOINT_URL and the network")
    assert not (workdir / "experiments").exists()


def test_without_s3fs_the_error_names_the_package(workdir, monkeypatch):
    import importlib

    monkeypatch.setitem(sys.modules, "s3fs", None)  # `import s3fs` raises ImportError
    monkeypatch.delitem(importlib.import_module("fsspec.registry")._registry, "s3", raising=False)  # fsspec's cache
    with pytest.raises(InputError) as caught:
        Trainer(config_from_dict(tiny_config(checkpoint={"dir": "s3://bucket/weights"})))
    assert str(caught.value) == (
        "config key checkpoint.dir: s3://bucket/weights needs the s3fs package, which is not installed; pip install s3fs"
    )


def test_sharded_checkpoints_on_object_storage_are_refused_at_the_door():
    with pytest.raises(InputError, match=r"^config key checkpoint.format: sharded needs checkpoint.dir on a local or shared"):
        config_from_dict(tiny_config(checkpoint={"dir": "s3://bucket/weights", "format": "sharded"}))


def test_a_url_survives_the_config_unmangled(tmp_path):
    from trainer.config import dump_config, load_config

    config = load_config(write_config(tmp_path / "c.yaml", RUN), ["checkpoint.dir=s3://bucket//deep/prefix/"])
    assert config.checkpoint.dir == "s3://bucket//deep/prefix/"
    assert "checkpoint: {dir: 's3://bucket//deep/prefix/'," in dump_config(config)


def test_the_tool_names_the_sharded_files_as_trainer_sharded_does():
    from trainer.checkpoint import dcp

    assert (checkpoints_tool.METADATA_FILE, checkpoints_tool.STATE_FILE, checkpoints_tool.DCP) == (
        dcp.METADATA_FILE,
        dcp.STATE_FILE,
        dcp.SUFFIX,
    )


def test_repo_runs_the_tool_as_a_script(tmp_path):
    result = subprocess.run(
        [sys.executable, str(REPO / "tools" / "checkpoints.py"), "ls", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    header = "checkpoint  iteration  size  files  complete"
    assert result.stdout.splitlines() == [header, f"0 checkpoints in {tmp_path}, 0 complete"]


def test_a_filesystem_without_atomic_uploads_gets_a_temporary_name_then_a_move(tmp_path):
    url = f"file://{tmp_path}/remote"  # fsspec's local filesystem: a plain filesystem, not an object store
    manager = CheckpointManager(url, "x", keep_last=1)
    seen = []
    for iteration in (1, 2):
        manager.save(f"iter_{iteration}", {"iteration": iteration}, {"w": torch.ones(1)}, on_written=seen.append)
    assert sorted(path.name for path in (tmp_path / "remote").iterdir()) == ["x_iter_2.pt", "x_iter_2.pth"]
    assert manager.latest() == f"{url}/x_iter_2.pt"
    assert [path.name for path in seen] == ["x_iter_1.pth", "x_iter_2.pth"]  # local staging copies, gone afterwards
    assert not any(path.exists() for path in seen)
    assert torch.load(tmp_path / "remote" / "x_iter_2.pt", weights_only=True) == {"iteration": 2}
