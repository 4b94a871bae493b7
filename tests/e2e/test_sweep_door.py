"""The sweep's door checks what it says (issue 23, point 7): every value of every choice, both ends of every
range and every override (the sweep file's and the command line's) must give a config a trial can start,
components included (their types resolve, their arguments bind), and ranges are finite. A mistake is one
`error:` line and exit 2 with nothing on disk, before any trial runs. No training happens here.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.test_sweep import base_config, call, write_sweep
from tests.helpers import write_config

ACCEPTS = "params, lr, betas, eps, weight_decay, amsgrad, maximize, foreach, capturable, differentiable, fused"

DOOR_CASES = {
    "a choice of an unknown type": (
        {"space": {"optimizer.type": {"choice": ["AdamW", "SGD", "Adamm"]}}},
        [],
        "sweep file sweep.yaml: space optimizer.type: the value 'Adamm' does not fit the base config (config key "
        "optimizer: unknown optimizer type 'Adamm'; did you mean Adam or RAdam or NAdam?)",
    ),
    "a choice of a scheduler that needs an argument the base config lacks": (
        {"space": {"scheduler.type": {"choice": ["CosineAnnealingLR", "StepLR"]}}},
        [],
        "sweep file sweep.yaml: space scheduler.type: the value 'StepLR' does not fit the base config (config key "
        "scheduler: scheduler StepLR: missing a required argument: 'step_size'; it accepts optimizer, step_size, "
        "gamma, last_epoch)",
    ),
    "a command-line override of an argument the constructor does not take": (
        {},
        ["optimizer.lrr=1"],
        "sweep file sweep.yaml: override optimizer.lrr=1 (the command line) does not fit the base config base.yaml: "
        "config key optimizer: optimizer AdamW: got an unexpected keyword argument 'lrr' (did you mean lr?); "
        f"it accepts {ACCEPTS}",
    ),
    "an override in the sweep file naming an unknown model": (
        {"overrides": ["train.total_iters=20", "model.type=SimpleCN"]},
        ["device=cpu"],
        "sweep file sweep.yaml: override model.type=SimpleCN (key overrides) does not fit the base config base.yaml: "
        "config key model: unknown model type 'SimpleCN'; did you mean SimpleCNN?",
    ),
    "a range to infinity": (
        {"space": {"optimizer.lr": {"log_float": [1.0e-4, float("inf")]}}},
        [],
        "sweep file sweep.yaml: space optimizer.lr: log_float range [0.0001, inf] has an end that is not a finite "
        "number; write [lo, hi] with two finite numbers",
    ),
    "a range from nan": (
        {"space": {"optimizer.lr": {"float": [float("nan"), 1.0e-2]}}},
        [],
        "sweep file sweep.yaml: space optimizer.lr: float range [nan, 0.01] has an end that is not a finite number; "
        "write [lo, hi] with two finite numbers",
    ),
    "a range wider than a float": (
        {"space": {"optimizer.weight_decay": {"float": [-1.0e308, 1.0e308]}}},
        [],
        "sweep file sweep.yaml: space optimizer.weight_decay: float range [-1e+308, 1e+308] is wider than a float holds "
        "(hi - lo overflows); narrow it",
    ),
    "a choice of nan": (
        {"space": {"optimizer.lr": {"choice": [float("nan"), 1.0e-2]}}},
        [],
        "sweep file sweep.yaml: space optimizer.lr: choice value nan is not a finite number (a trial's KEY=VALUE cannot "
        "carry it, and nan equals no choice); list finite numbers, or null to switch the key off",
    ),
}


@pytest.mark.parametrize("changes, overrides, line", DOOR_CASES.values(), ids=DOOR_CASES.keys())
def test_a_sweep_whose_trials_could_not_start_is_one_line_and_exit_2_with_nothing_written(
    workdir: Path, changes: dict, overrides: list[str], line: str
) -> None:
    write_sweep(workdir, **changes)
    before = sorted(path.name for path in workdir.iterdir())
    code, out, err = call("-c", "sweep.yaml", *overrides)
    assert (code, out, err) == (2, "", f"error: {line}\n")
    assert sorted(path.name for path in workdir.iterdir()) == before  # no study, no trial, no run


def test_a_base_config_that_cannot_start_a_trial_is_named(workdir: Path) -> None:
    write_sweep(workdir)
    write_config(workdir / "base.yaml", {**base_config(), "loss": {"type": "CrossEntropyLos"}})
    code, _, err = call("-c", "sweep.yaml", "device=cpu")
    assert (code, err) == (
        2,
        "error: sweep file sweep.yaml: the base config base.yaml cannot start a trial: config key loss: unknown loss type "
        "'CrossEntropyLos'; did you mean CrossEntropyLoss or LinearCrossEntropyLoss or TokenCrossEntropy?\n",
    )
    assert not (workdir / "experiments").exists()
