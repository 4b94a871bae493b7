"""No silent wrong math on resume (issue 23, point 4): torch.optim matches saved moments to
parameters by position, so a resume whose param groups select other parameters than at the
checkpoint (allowed to change settings under resume_schedule: extend) is refused by name."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from tests.helpers import error_of, tiny_config, train_in_dir, train_in_process, write_config
from trainer.config import load_config
from trainer.trainer import Trainer

# SimpleCNN: weights features.0, features.2, head.2, head.5 and a bias beside each.
BIASES = [{"params": "bias", "weight_decay": 0.0}]
GROUPED = tiny_config(
    optimizer={"type": "AdamW", "lr": 3e-3, "weight_decay": 0.1, "param_groups": BIASES},
    train={"total_iters": 10, "val_interval": 10},
    checkpoint={"interval": 10},
    logging={"interval": 5, "progress": False, "tensorboard": False},
)
EXTEND = ("resume_schedule=extend", "train.total_iters=12")


@pytest.fixture(scope="module", params=["file", "sharded"])
def grouped_run(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A finished 10-iteration run with two param groups; (its directory, its checkpoint's name)."""
    root = tmp_path_factory.mktemp(f"grouped_{request.param}")
    assert train_in_dir(root, GROUPED, f"checkpoint.format={request.param}") == 0
    return root, "tiny_iter_10.pt" if request.param == "file" else "tiny_iter_10.dcp"


def _resume(run: tuple[Path, str], workdir: Path, groups: list[dict], *overrides: str) -> Trainer:
    """Build the Trainer resuming the run's checkpoint (copied into workdir) with other param groups."""
    root, name = run
    (workdir / "weights").mkdir(exist_ok=True)
    copy = shutil.copytree if name.endswith(".dcp") else shutil.copy
    copy(root / "weights" / name, workdir / "weights" / name)
    document = {**GROUPED, "optimizer": {**GROUPED["optimizer"], "param_groups": groups}}
    path = write_config(workdir / "config.yaml", document)
    format_ = "sharded" if name.endswith(".dcp") else "file"
    return Trainer(load_config(path, [f"resume_path=weights/{name}", f"checkpoint.format={format_}", *overrides]))


@pytest.mark.parametrize("grouped_run", ["file"], indirect=True)
def test_the_checkpoint_names_the_parameters_of_each_group(grouped_run):
    root, _ = grouped_run
    groups = torch.load(root / "weights/tiny_iter_10.pt", weights_only=True)["optimizer"]["param_groups"]
    assert [group["param_names"] for group in groups] == [
        ["features.0.weight", "features.2.weight", "head.2.weight", "head.5.weight"],
        ["features.0.bias", "features.2.bias", "head.2.bias", "head.5.bias"],
    ]


@pytest.mark.parametrize(
    ("groups", "change"),
    [
        # Same group sizes (4 and 4): torch.optim would load it without a word.
        ([{"params": "^features", "weight_decay": 0.0}], "param group 0 gains head.2.bias, head.5.bias and loses features"),
        (BIASES + [{"params": "^head", "lr": 1e-3}], "2 param groups then, 3 now"),
    ],
    ids=["same-sizes-other-parameters", "one-group-more"],
)
def test_extend_with_groups_that_select_other_parameters_is_refused(grouped_run, workdir, groups, change):
    message = error_of(lambda: _resume(grouped_run, workdir, groups, *EXTEND))
    assert message.startswith(f"resume_path weights/{grouped_run[1]}: optimizer.param_groups select other parameters than")
    assert change in message
    assert "matched by position" in message and "pretrain_path" in message
    assert not (workdir / "experiments").exists()  # refused before anything was written


def test_extend_with_the_same_selection_by_another_rule_resumes_with_the_new_settings(grouped_run, workdir):
    # max_ndim 1 takes exactly the biases here: the same parameters, so the moments fit.
    trainer = _resume(grouped_run, workdir, [{"max_ndim": 1, "weight_decay": 0.05}], *EXTEND)
    try:
        assert [group["weight_decay"] for group in trainer.optimizer.param_groups] == [0.1, 0.05]
        assert trainer.fit() == 0
    finally:
        trainer.close()


@pytest.mark.parametrize("grouped_run", ["file"], indirect=True)  # older checkpoints are .pt files
def test_a_checkpoint_without_names_is_checked_against_its_config(grouped_run, workdir):
    root, name = grouped_run
    checkpoint = torch.load(root / "weights" / name, weights_only=True)
    for group in checkpoint["optimizer"]["param_groups"]:
        del group["param_names"]  # as Kiln wrote them before it named the parameters
    (workdir / "old" / "weights").mkdir(parents=True)
    torch.save(checkpoint, workdir / "old" / "weights" / name)
    message = error_of(lambda: _resume((workdir / "old", name), workdir, [{"params": "^features"}], *EXTEND))
    assert "param group 0 gains head.2.bias, head.5.bias and loses features.0.weight" in message
    document = {**GROUPED, "optimizer": {**GROUPED["optimizer"], "param_groups": [{"max_ndim": 1, "weight_decay": 0.0}]}}
    assert train_in_process(workdir, document, f"resume_path=weights/{name}", *EXTEND) == 0  # the same selection
