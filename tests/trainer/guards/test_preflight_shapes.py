"""No silent wrong math at the door (issue 23, point 4): a loss or metric that PyTorch only warns
about (targets that broadcast against the output) is the preflight's one-line exit 2."""

from __future__ import annotations

import pytest

from tests.helpers import error_of, tiny_config
from trainer.config import config_from_dict
from trainer.trainer import Trainer

# The mean absolute error of the predicted class, with one keepdim too many: (B, 1) against (B,).
L1_METRIC = '''
import torch
import torch.nn.functional as F


class ClassError:
    def __call__(self, output, target):
        predicted = output.argmax(dim=1, keepdim=True).float()
        return F.l1_loss(predicted, target.float(), reduction="sum"), torch.tensor(float(target.numel()))
'''

# Cross-entropy that warns as KLDivLoss(reduction="mean") does.
NOISY_LOSS = """
import warnings
from torch import nn


class NoisyLoss(nn.CrossEntropyLoss):
    def forward(self, output, target):
        warnings.warn("reduction: 'mean' divides the total loss by both the batch size and the support size.")
        return super().forward(output, target)
"""

ONE_OUTPUT = {"type": "MLP", "num_classes": 1, "hidden": 16}


@pytest.mark.parametrize("loss", ["MSELoss", "L1Loss", "SmoothL1Loss", "HuberLoss"])
def test_a_one_output_model_with_an_elementwise_loss_on_class_labels_exits_2_naming_the_shapes(workdir, loss):
    document = tiny_config(model=ONE_OUTPUT, loss={"type": loss})
    message = error_of(lambda: Trainer(config_from_dict(document)))
    assert message.startswith(
        f"preflight: the loss ({loss}) on a training batch of data.train (Digits) warns 'Using a target size "
        "(torch.Size([32])) that is different to the input size (torch.Size([32, 1]))."
    )
    assert message.endswith(
        "it would compute a meaningless number on broadcast tensors; check that model, loss and data fit together: "
        "output (32, 1) float32, targets (32,) int64"
    )
    assert list(workdir.iterdir()) == []  # before anything is written


def test_a_metric_that_broadcasts_exits_2_naming_it(workdir):
    (workdir / "l1_metric.py").write_text(L1_METRIC)
    document = tiny_config(metrics=["accuracy", {"type": "l1_metric.ClassError", "name": "mae"}])
    message = error_of(lambda: Trainer(config_from_dict(document)))
    assert message.startswith("preflight: metric mae on a validation batch of data.val (Digits) warns 'Using a target size")
    fit = "check that metric mae fits the model's output and the targets"
    assert message.endswith(f"{fit}: output (128, 10) float32, targets (128,) int64")


def test_a_loss_that_warns_about_something_else_passes_the_preflight(workdir):
    # KLDivLoss's warning about its 'mean' reduction speaks of sizes but not of shapes that differ.
    (workdir / "noisy_loss.py").write_text(NOISY_LOSS)
    trainer = Trainer(config_from_dict(tiny_config(loss={"type": "noisy_loss.NoisyLoss"})))
    trainer.close()
