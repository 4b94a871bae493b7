"""CheckpointManager and loading: formats, pretrained weights from other tools, safety."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest
import torch

from tests.helpers import run_train, tiny_config, train_in_dir, train_in_process, write_config
from trainer.checkpoint import CheckpointManager, clean_state_dict, load_file
from trainer.config import config_from_dict
from trainer.errors import InputError, TrainingError
from trainer.trainer import Trainer
from utils.io import atomic_torch_save

# -- the weights every pretrain test starts from ------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished 10-iteration tiny run; its weights/ holds real .pt and .pth files."""
    workdir = tmp_path_factory.mktemp("trained")
    assert train_in_dir(workdir, tiny_config(), "train.total_iters=10") == 0
    return workdir / "weights"


def _reference(trained: Path) -> dict[str, torch.Tensor]:
    return torch.load(trained / "tiny_iter_10.pth", weights_only=True)["params"]


def _model_after_pretrain(workdir: Path, document: dict) -> dict[str, torch.Tensor]:
    """Build the Trainer (which loads pretrain_path) and return its model's weights."""
    trainer = Trainer(config_from_dict(document))
    try:
        assert trainer.iteration == 0
        return {key: value.clone() for key, value in trainer.model.state_dict().items()}
    finally:
        trainer.close()


def _assert_loaded(weights: dict[str, torch.Tensor], reference: dict[str, torch.Tensor]) -> None:
    assert weights.keys() == reference.keys()
    assert all(torch.equal(weights[key], reference[key]) for key in reference)


# -- formats ------------------------------------------------------------------------------------


def test_full_checkpoint_is_about_three_times_the_weights_with_adamw(trained):
    ratio = (trained / "tiny_iter_10.pt").stat().st_size / (trained / "tiny_iter_10.pth").stat().st_size
    # params + AdamW's exp_avg and exp_avg_sq, plus a few KB of RNG state and the parameter names of each group
    assert 2.6 < ratio < 3.5


def test_full_checkpoint_is_about_twice_the_weights_with_sgd_momentum(workdir):
    document = tiny_config(optimizer={"type": "SGD", "lr": 0.05, "momentum": 0.9}, model={"type": "SimpleCNN", "width": 16})
    assert train_in_process(workdir, document, "train.total_iters=10") == 0
    weights = workdir / "weights"
    ratio = (weights / "tiny_iter_10.pt").stat().st_size / (weights / "tiny_iter_10.pth").stat().st_size
    assert 1.8 < ratio < 2.2  # params + one momentum buffer


def test_clean_state_dict_strips_ddp_and_compile_prefixes():
    state = {
        "module._orig_mod.head.weight": torch.ones(1),
        "_orig_mod.features.0.bias": torch.zeros(1),
        "modules.x": torch.ones(1),
        "encoder._orig_mod.block.weight": torch.ones(1),  # a compiled submodule
        "wrapper.module.weight": torch.ones(1),  # a user's submodule that happens to be called `module`
    }
    assert list(clean_state_dict(state)) == [
        "head.weight",
        "features.0.bias",
        "modules.x",
        "encoder.block.weight",
        "wrapper.module.weight",
    ]


def test_atomic_save_failure_leaves_the_previous_file_intact(tmp_path):
    target = tmp_path / "run_iter_10.pt"
    atomic_torch_save({"a": torch.ones(3)}, target)
    before = target.read_bytes()

    class Unpicklable:
        def __reduce__(self):
            raise OSError("No space left on device")

    with pytest.raises(OSError, match="No space left"):
        atomic_torch_save({"a": torch.zeros(3), "b": Unpicklable()}, target)
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run_iter_10.pt"]  # no temporary file left


def test_latest_and_prune_see_only_this_experiments_complete_files(tmp_path):
    manager = CheckpointManager(tmp_path, "exp", keep_last=2)
    (tmp_path / "exp_long_iter_1.pt").write_bytes(b"another experiment that shares the prefix")
    (tmp_path / ".exp_iter_20.pt.1.tmp").write_bytes(b"interrupted write")
    manager.save("best", {"iteration": 5}, {"w": torch.ones(1)})
    for iteration in (5, 10, 15):
        manager.save(f"iter_{iteration}", {"iteration": iteration}, {"w": torch.ones(1)})
    assert manager.latest() == tmp_path / "exp_iter_15.pt"
    names = {p.name for p in tmp_path.iterdir()}
    # Each iteration save pruned down to keep_last once its own files were complete.
    assert {n for n in names if n.startswith("exp_iter_")} == {
        "exp_iter_10.pt",
        "exp_iter_10.pth",
        "exp_iter_15.pt",
        "exp_iter_15.pth",
    }
    assert {"exp_best.pt", "exp_best.pth", "exp_long_iter_1.pt", ".exp_iter_20.pt.1.tmp"} <= names
    assert manager.prune() == []


def test_background_save_writes_the_same_bytes_as_a_synchronous_save(trained, tmp_path):
    checkpoint = torch.load(trained / "tiny_iter_10.pt", weights_only=True)
    weights = torch.load(trained / "tiny_iter_10.pth", weights_only=True)["params"]
    CheckpointManager(tmp_path / "sync", "x").save("iter_1", checkpoint, weights)
    background = CheckpointManager(tmp_path / "async", "x", background=True)
    background.save("iter_1", checkpoint, weights)
    background.wait()
    for name in ("x_iter_1.pt", "x_iter_1.pth"):
        assert (tmp_path / "async" / name).read_bytes() == (tmp_path / "sync" / name).read_bytes()


def test_background_save_snapshots_the_state_before_returning(tmp_path):
    manager = CheckpointManager(tmp_path, "x", background=True)
    weights = {"w": torch.zeros(1000)}
    manager.save("iter_1", {"iteration": 1}, weights)
    weights["w"].add_(1)  # training goes on while the file is written
    manager.wait()
    assert torch.equal(torch.load(tmp_path / "x_iter_1.pth", weights_only=True)["params"]["w"], torch.zeros(1000))


def _disk_full(obj, path):
    raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize("background", [False, True])
def test_full_disk_stops_with_a_clear_error_and_keeps_earlier_checkpoints(tmp_path, monkeypatch, background):
    manager = CheckpointManager(tmp_path, "x", keep_last=1, background=background)
    manager.save("iter_1", {"iteration": 1}, {"w": torch.ones(1)})
    manager.wait()
    before = (tmp_path / "x_iter_1.pt").read_bytes()
    monkeypatch.setattr("trainer.checkpoint.writer.atomic_torch_save", _disk_full)
    with pytest.raises(TrainingError, match=r"could not write checkpoint .*x_iter_2\.pt \(No space left on device\); earlier"):
        manager.save("iter_2", {"iteration": 2}, {"w": torch.ones(1)})
        manager.wait()  # a background write reports its failure here
    assert (tmp_path / "x_iter_1.pt").read_bytes() == before  # not pruned: the new save never completed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x_iter_1.pt", "x_iter_1.pth"]


# -- pretrain_path: every common format --------------------------------------------------------


def test_pretrain_from_kiln_weight_only_pth(trained, workdir):
    weights = _model_after_pretrain(workdir, tiny_config(pretrain_path=str(trained / "tiny_iter_10.pth")))
    _assert_loaded(weights, _reference(trained))


def test_pretrain_from_kiln_full_pt_uses_its_model_entry(trained, workdir):
    weights = _model_after_pretrain(workdir, tiny_config(pretrain_path=str(trained / "tiny_iter_10.pt")))
    _assert_loaded(weights, _reference(trained))


def test_pretrain_from_basicsr_file_picks_params_ema_when_asked(trained, workdir):
    reference = _reference(trained)
    other = {key: value + 1 for key, value in reference.items()}
    torch.save({"params": other, "params_ema": reference}, workdir / "basicsr.pth")
    weights = _model_after_pretrain(workdir, tiny_config(pretrain_path="basicsr.pth", pretrain_key="params_ema"))
    _assert_loaded(weights, reference)
    weights = _model_after_pretrain(workdir, tiny_config(pretrain_path="basicsr.pth"))  # auto: params first
    _assert_loaded(weights, other)


def test_pretrain_from_plain_state_dict_as_torchvision_and_timm_save_it(trained, workdir):
    torch.save(_reference(trained), workdir / "plain.pth")
    _assert_loaded(_model_after_pretrain(workdir, tiny_config(pretrain_path="plain.pth")), _reference(trained))


def test_pretrain_from_lightning_ckpt_with_revised_keys(trained, workdir):
    lightning = {
        "epoch": 3,
        "global_step": 120,
        "pytorch-lightning_version": "2.6.0",
        "state_dict": {f"net.{key}": value for key, value in _reference(trained).items()},
        "optimizer_states": [],
    }
    torch.save(lightning, workdir / "model.ckpt")
    document = tiny_config(pretrain_path="model.ckpt", pretrain_revise_keys=[["^net\\.", ""]])
    _assert_loaded(_model_after_pretrain(workdir, document), _reference(trained))


@pytest.mark.parametrize("prefix", ["module.", "_orig_mod.", "module._orig_mod."])
def test_pretrain_strips_ddp_and_compile_prefixes(trained, workdir, prefix):
    torch.save({"params": {prefix + key: value for key, value in _reference(trained).items()}}, workdir / "wrapped.pth")
    _assert_loaded(_model_after_pretrain(workdir, tiny_config(pretrain_path="wrapped.pth")), _reference(trained))


def test_finetune_with_a_new_head_loads_the_backbone_and_reports_the_head(trained, workdir, capsys):
    document = tiny_config(
        pretrain_path=str(trained / "tiny_iter_10.pth"),
        strict_load=False,
        model={"type": "SimpleCNN", "num_classes": 12, "width": 8},  # a wider head: the digits' labels still fit
    )
    weights = _model_after_pretrain(workdir, document)
    reference = _reference(trained)
    assert torch.equal(weights["features.0.weight"], reference["features.0.weight"])
    assert weights["head.5.weight"].shape == (12, 32)
    assert "2 shape-mismatched: head.5.weight (10, 32) vs (12, 32), head.5.bias (10,) vs (12,)" in capsys.readouterr().out


def test_strict_pretrain_with_a_new_head_is_an_error_naming_the_keys(trained, workdir):
    document = tiny_config(
        pretrain_path=str(trained / "tiny_iter_10.pth"), model={"type": "SimpleCNN", "num_classes": 12, "width": 8}
    )
    with pytest.raises(InputError, match=r"does not match the model \(2 shape-mismatched: head\.5\.weight .*strict_load: false"):
        _model_after_pretrain(workdir, document)


def test_pretrain_key_that_is_not_in_the_file_lists_its_keys(trained, workdir):
    document = tiny_config(pretrain_path=str(trained / "tiny_iter_10.pth"), pretrain_key="params_ema")
    with pytest.raises(InputError, match=r"pretrain_key 'params_ema' is not in .*\(its keys: \['params'\]\)"):
        _model_after_pretrain(workdir, document)


# -- what a wrong or hostile file gets ----------------------------------------------------------


class _Payload:
    """Pickles into a call of Path.touch: code that would run on an unsafe load."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_malicious_pickle_is_refused_and_its_code_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"params": {"w": torch.ones(1)}, "evil": _Payload(marker)}, tmp_path / "evil.pth")
    with pytest.raises(InputError, match=r"evil\.pth was refused: it holds Python objects other than tensors"):
        load_file(tmp_path / "evil.pth", "pretrain_path")
    assert not marker.exists()


def test_malicious_pretrain_file_exits_2_from_the_command_line(tmp_path):
    marker = tmp_path / "pwned"
    torch.save(_Payload(marker), tmp_path / "evil.pth")
    config = write_config(tmp_path / "c.yaml", tiny_config(pretrain_path="evil.pth"))
    result = run_train(tmp_path, "-c", str(config))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: pretrain_path evil.pth was refused")
    assert "Traceback" not in result.stderr
    assert not marker.exists()


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_corrupt_checkpoint_is_a_clear_error_naming_the_file(trained, tmp_path, damage):
    data = (trained / "tiny_iter_10.pt").read_bytes()
    broken = {"truncated": data[: len(data) // 2], "garbage": b"\x00not a checkpoint" * 10, "empty": b""}[damage]
    (tmp_path / "broken.pt").write_bytes(broken)
    with pytest.raises(InputError, match=r"resume_path .*broken\.pt is corrupt, truncated or not a PyTorch file"):
        CheckpointManager(tmp_path, "x").load_checkpoint(tmp_path / "broken.pt")


def test_weight_only_file_as_resume_path_says_what_it_is(trained, tmp_path):
    with pytest.raises(InputError, match=r"is a weight-only \.pth .* resuming needs a full \.pt .* set pretrain_path instead"):
        CheckpointManager(tmp_path, "x").load_checkpoint(trained / "tiny_iter_10.pth")


def test_resume_from_another_architecture_names_the_mismatched_keys(trained, workdir):
    document = tiny_config(resume_path=str(trained / "tiny_iter_10.pt"), model={"type": "MLP", "hidden": 8})
    with pytest.raises(InputError, match=r"resume_path .* does not match the model \(\d+ missing: net\.1\.weight"):
        Trainer(config_from_dict(document))


def test_missing_resume_path_is_a_clear_error(workdir):
    with pytest.raises(InputError, match=r"resume_path nowhere\.pt does not exist"):
        Trainer(config_from_dict(tiny_config(resume_path="nowhere.pt")))
