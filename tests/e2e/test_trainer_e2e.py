"""End-to-end: train.py in a temporary directory, and the files a user relies on afterwards."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import yaml

from tests.helpers import REPO, load_params, run_train, tiny_config, train_in_process, write_config
from trainer.checkpoint import FORMAT_VERSION

FULL_KEYS = {"format_version", "model", "optimizer", "scheduler", "iteration", "epoch", "best_metrics", "config"}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    """One 30-iteration run of train.py as a subprocess, shared by the tests that inspect it."""
    workdir = tmp_path_factory.mktemp("run")
    config = write_config(workdir / "tiny.yaml", tiny_config())
    result = run_train(workdir, "-c", str(config))
    assert result.returncode == 0, result.stderr
    return workdir, result


def test_run_writes_iteration_and_best_files_in_both_formats(finished_run):
    workdir, _ = finished_run
    names = sorted(path.name for path in (workdir / "weights").iterdir())
    expected_iters = [f"tiny_iter_{n}.{ext}" for n in (10, 20, 30) for ext in ("pt", "pth")]
    assert set(expected_iters) <= set(names)
    assert {"tiny_best.pt", "tiny_best.pth"} <= set(names)
    assert not [name for name in names if name.endswith(".tmp")]


def test_full_checkpoint_has_contract_keys_and_loads_weights_only(finished_run):
    workdir, _ = finished_run
    checkpoint = torch.load(workdir / "weights" / "tiny_iter_30.pt", weights_only=True)
    assert FULL_KEYS <= set(checkpoint)
    assert checkpoint["format_version"] == FORMAT_VERSION
    assert checkpoint["iteration"] == 30
    assert checkpoint["epoch"] == 0  # 1438 // 32 = 44 batches per epoch
    assert checkpoint["position"] == 30
    assert checkpoint["config"]["name"] == "tiny"
    assert checkpoint["config"]["train"]["total_iters"] == 30
    assert set(checkpoint["best_metrics"]) == {"accuracy", "iteration"}
    assert isinstance(checkpoint["scheduler"], dict) and checkpoint["scheduler"]["last_epoch"] == 30
    assert len(checkpoint["rng"]) == 1 and set(checkpoint["rng"][0]) == {"python", "numpy", "torch", "cuda"}


def test_weight_only_file_is_exactly_params_and_matches_full_checkpoint(finished_run):
    workdir, _ = finished_run
    weights = torch.load(workdir / "weights" / "tiny_iter_30.pth", weights_only=True)
    assert set(weights) == {"params"}
    checkpoint = torch.load(workdir / "weights" / "tiny_iter_30.pt", weights_only=True)
    assert weights["params"].keys() == checkpoint["model"].keys()
    assert all(torch.equal(weights["params"][k], checkpoint["model"][k]) for k in weights["params"])
    assert not [key for key in weights["params"] if "module." in key or "_orig_mod." in key]


def test_best_files_hold_the_best_validation_and_logger_archives_a_copy(finished_run):
    workdir, _ = finished_run
    best = torch.load(workdir / "weights" / "tiny_best.pt", weights_only=True)
    final = torch.load(workdir / "weights" / "tiny_iter_30.pt", weights_only=True)
    assert best["iteration"] == best["best_metrics"]["iteration"]
    assert final["best_metrics"] == best["best_metrics"]
    archived = workdir / "experiments" / "tiny" / "tiny_best.pth"
    assert archived.read_bytes() == (workdir / "weights" / "tiny_best.pth").read_bytes()


def test_log_directory_has_train_log_resolved_config_and_tensorboard(finished_run):
    workdir, result = finished_run
    log_dir = workdir / "experiments" / "tiny"
    log = (log_dir / "train.log").read_text()
    assert re.search(r"iter 5/30 \| epoch 0 \| loss \d+\.\d+ \| lr [\d.e+-]+ \| [\d.]+ it/s \| [\d.,]+ samples/s \| eta ", log)
    assert "validation @ iter 30: accuracy" in log
    assert "iter 5/30" in result.stdout  # the console shows the same lines
    resolved = yaml.safe_load((log_dir / "config.yaml").read_text())
    assert resolved["train"]["val_interval"] == 10 and resolved["checkpoint"]["dir"] == "weights"


def test_tensorboard_scalars_read_back_with_tensorboards_loader(finished_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    workdir, _ = finished_run
    events = EventAccumulator(str(workdir / "experiments" / "tiny"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss", "train/lr", "val/accuracy"} <= tags
    assert [event.step for event in events.Scalars("train/loss")] == [5, 10, 15, 20, 25, 30]
    assert [event.step for event in events.Scalars("val/accuracy")] == [10, 20, 30]
    assert all(0.0 <= event.value <= 1.0 for event in events.Scalars("val/accuracy"))


def test_quick_start_config_reaches_97_percent(workdir):
    """The quick start's promise, on a shortened schedule (the full one reaches ~99%)."""
    document = yaml.safe_load((REPO / "configs" / "digits_cnn.yaml").read_text())
    assert train_in_process(workdir, document, "train.total_iters=600", "scheduler.T_max=600", "logging.progress=false") == 0
    best = torch.load(workdir / "weights" / "digits_cnn_best.pt", weights_only=True)["best_metrics"]
    assert best["accuracy"] >= 0.97


def test_second_fresh_run_archives_the_first_runs_files(workdir):
    document = tiny_config(train={"total_iters": 10, "val_interval": 10})
    assert train_in_process(workdir, document) == 0
    first_weights = load_params(workdir / "weights" / "tiny_iter_10.pth")
    # Another experiment whose name merely shares the prefix must not be touched.
    other = workdir / "weights" / "tiny_other_iter_10.pth"
    other.write_bytes(b"not ours")
    assert train_in_process(workdir, document) == 0
    archived = list((workdir / "weights").glob("tiny_archived_*"))
    assert len(archived) == 1
    assert sorted(p.name for p in archived[0].iterdir()) == sorted(
        ["tiny_iter_10.pt", "tiny_iter_10.pth", "tiny_best.pt", "tiny_best.pth"]
    )
    assert torch.equal(load_params(archived[0] / "tiny_iter_10.pth")["head.5.bias"], first_weights["head.5.bias"])
    assert other.read_bytes() == b"not ours"
    old_logs = list((workdir / "experiments").glob("tiny_archived_*"))
    assert len(old_logs) == 1 and (old_logs[0] / "train.log").is_file()
    assert f"weights were moved to weights/{archived[0].name}" in (workdir / "experiments" / "tiny" / "train.log").read_text()


def test_user_model_given_by_dotted_path_trains(workdir):
    (workdir / "my_nets.py").write_text(
        "import torch\n"
        "class TinyNet(torch.nn.Module):\n"
        "    def __init__(self, hidden=16):\n"
        "        super().__init__()\n"
        "        self.net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, hidden), torch.nn.ReLU(),\n"
        "                                       torch.nn.Linear(hidden, 10))\n"
        "    def forward(self, x):\n"
        "        return self.net(x)\n"
    )
    config = write_config(workdir / "user.yaml", tiny_config(name="user", model={"type": "my_nets.TinyNet", "hidden": 12}))
    result = run_train(workdir, "-c", str(config), "train.total_iters=10")
    assert result.returncode == 0, result.stderr
    params = load_params(workdir / "weights" / "user_iter_10.pth")
    assert params["net.1.weight"].shape == (12, 64)


def test_user_plugin_registered_through_imports_trains(workdir):
    (workdir / "plugin.py").write_text(
        "import torch\n"
        "from trainer.registry import LOSSES\n"
        "@LOSSES.register\n"
        "class SmoothCE(torch.nn.CrossEntropyLoss):\n"
        "    def __init__(self):\n"
        "        super().__init__(label_smoothing=0.1)\n"
    )
    document = tiny_config(imports=["plugin"], loss={"type": "SmoothCE"})
    assert train_in_process(workdir, document, "train.total_iters=5") == 0
    assert (workdir / "weights" / "tiny_iter_5.pth").is_file()


def test_run_without_validation_writes_no_best_files(workdir):
    document = tiny_config()
    del document["data"]["val"]
    assert train_in_process(workdir, document, "train.total_iters=10") == 0
    names = {path.name for path in (workdir / "weights").iterdir()}
    assert names == {"tiny_iter_10.pt", "tiny_iter_10.pth", ".tiny.lock"}  # the run lock's file stays


def test_min_mode_tracks_the_lowest_metric(workdir):
    # With mode min on accuracy, the best is the worst validation: the first one here.
    document = tiny_config(val={"metric": "accuracy", "mode": "min"})
    assert train_in_process(workdir, document) == 0
    best = torch.load(workdir / "weights" / "tiny_best.pt", weights_only=True)["best_metrics"]
    log = (workdir / "experiments" / "tiny" / "train.log").read_text()
    values = [float(v) for v in re.findall(r"validation @ iter \d+: accuracy ([\d.]+)", log)]
    assert best["accuracy"] == pytest.approx(min(values), abs=1e-4)


def test_keep_last_prunes_old_iteration_checkpoints_but_never_best(workdir):
    document = tiny_config(checkpoint={"interval": 5, "keep_last": 2})
    assert train_in_process(workdir, document) == 0
    names = {path.name for path in (workdir / "weights").iterdir()}
    assert {n for n in names if "_iter_" in n} == {"tiny_iter_25.pt", "tiny_iter_25.pth", "tiny_iter_30.pt", "tiny_iter_30.pth"}
    best_iteration = torch.load(workdir / "weights" / "tiny_best.pt", weights_only=True)["iteration"]
    assert best_iteration in (10, 20, 30)
    assert {"tiny_best.pt", "tiny_best.pth"} <= names
