"""TokenCrossEntropy, token-exact gradient accumulation (issue 14 point 4), and an LM run through the
Trainer. The nll / bpb / perplexity metrics and their hooks (bind, finalize) are in
tests/trainer/evaluation/test_metrics.py."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tests.helpers import (
    SCRIPTS,
    TOLERANCE,
    RecordingSGD,
    ToyLM,
    iterations_reading_the_device,
    load_tool,
    make_step,
    one_step,
    relative_error,
    run_two_ranks,
    split,
    tiny_config,
    toy_batch,
    train_in_process,
    write_config,
)
from trainer.config import Component, config_from_dict
from trainer.errors import InputError
from trainer.losses import TokenCrossEntropy
from trainer.registry import LOSSES, build
from trainer.step import sums_over_elements

DDP_SCRIPT = SCRIPTS / "lm_accumulation_ddp.py"

# -- the loss ----------------------------------------------------------------------------------


@pytest.mark.parametrize("ignore_index", [-100, 3])
def test_token_cross_entropy_equals_torch_cross_entropy_with_ignore_index(ignore_index):
    logits = torch.randn(3, 5, 7, dtype=torch.float64)
    targets = torch.randint(7, (3, 5))
    targets[0, 2:] = ignore_index
    loss = build(LOSSES, Component("TokenCrossEntropy", {"ignore_index": ignore_index}))
    expected = F.cross_entropy(logits.reshape(-1, 7), targets.reshape(-1), ignore_index=ignore_index)
    valid = (targets != ignore_index).sum()
    assert isinstance(loss, TokenCrossEntropy) and sums_over_elements(loss)
    assert torch.equal(loss(logits, targets), expected)
    assert torch.equal(loss.loss_count(targets), valid)
    assert relative_error(loss.loss_sum(logits, targets), expected * valid) <= 1e-12


def test_token_cross_entropy_rejects_a_non_integer_ignore_index():
    with pytest.raises(InputError, match="ignore_index must be an integer"):
        build(LOSSES, Component("TokenCrossEntropy", {"ignore_index": 0.5}), key="loss")


# -- gradient accumulation ----------------------------------------------------------------------


def _reference_and_model():
    torch.manual_seed(0)
    reference, model = ToyLM(), ToyLM()
    model.load_state_dict(reference.state_dict())
    return reference, model


@pytest.mark.parametrize("parts", [1, 2, 4])
@pytest.mark.parametrize(
    "train",
    [{}, {"amp": "fp16", "grad_clip": 0.05}, {"nan_policy": "skip", "grad_clip": 0.05}, {"amp": "bf16", "nan_policy": "skip"}],
    ids=["plain", "fp16_scaler_clip", "skip_clip", "bf16_skip"],
)
def test_k_micro_batches_with_different_token_counts_give_the_loss_and_gradients_of_one_batch(parts, train):
    # Micro-batches of 8/k rows hold different numbers of valid targets (VALID_PER_ROW), so a mean
    # of micro-batch means would be off (HF transformers PR #34191); the token mean of the step is not.
    # (The toy LM is float64, which autocast leaves alone: the amp cases check the scaler, clipping
    # and skip paths, not half-precision rounding.)
    inputs, targets = toy_batch()
    reference, model = _reference_and_model()
    expected_loss, expected = one_step(reference, [(inputs, targets)], 1, **train)
    loss, grads = one_step(model, split(inputs, targets, parts), parts, **train)
    assert relative_error(loss, expected_loss) <= TOLERANCE
    assert relative_error(expected_loss, F.cross_entropy(reference(inputs).flatten(0, 1), targets.flatten())) < 0.5
    for grad, reference_grad in zip(grads, expected, strict=True):
        assert relative_error(grad, reference_grad) <= TOLERANCE
    for after, reference_after in zip(model.parameters(), reference.parameters(), strict=True):
        assert relative_error(after, reference_after) <= TOLERANCE


def test_the_returned_loss_is_the_token_mean_of_the_whole_step():
    inputs, targets = toy_batch()
    reference, model = _reference_and_model()
    with torch.no_grad():
        expected = F.cross_entropy(model(inputs).flatten(0, 1), targets.flatten(), ignore_index=-100)
    loss, _ = one_step(model, split(inputs, targets, 4), 4)
    assert relative_error(loss, expected) <= 1e-12


def test_a_loss_without_the_protocol_keeps_the_mean_of_micro_batch_means():
    # What every classification and SR loss gets, exactly as before: each micro-batch's mean / k.
    # With uneven token counts that is not the batch's token mean: the difference the protocol fixes.
    inputs, targets = toy_batch()
    reference, model = _reference_and_model()
    plain = nn.CrossEntropyLoss()  # no loss_sum / loss_count
    assert not sums_over_elements(plain)

    def mean_loss(output, target):
        return plain(output.flatten(0, 1), target.flatten())

    optimizer = RecordingSGD(model.parameters(), lr=0.1)
    micro = split(inputs, targets, 2)
    loss = make_step(model, model, mean_loss, optimizer, 2)(iter(micro))
    with torch.no_grad():
        means = [mean_loss(reference(x), y) for x, y in micro]
    assert torch.equal(loss, means[0] / 2 + means[1] / 2)
    _, token_mean_grads = one_step(reference, [(inputs, targets)], 1)
    assert relative_error(optimizer.seen[0], token_mean_grads[0]) > 1e-3


def test_a_step_without_any_valid_token_is_a_zero_loss_not_nan():
    inputs, targets = toy_batch()
    targets[:] = -100
    _, model = _reference_and_model()
    loss, grads = one_step(model, split(inputs, targets, 2), 2)
    assert loss.item() == 0 and all(not grad.any() for grad in grads)


@pytest.mark.slow
def test_two_process_ddp_accumulation_matches_one_process_with_the_global_token_count():
    result = run_two_ranks(DDP_SCRIPT, timeout=120)
    assert result.returncode == 0 and result.stdout.startswith("ok"), result.stdout + result.stderr[-3000:]


# -- through the Trainer -------------------------------------------------------------------------

TOY_LM_PLUGIN = '''
import torch
from torch import nn
from torch.utils.data import Dataset


class RandomTokens(Dataset):
    """Random (inputs, targets) windows of 6 tokens; validation's last window is padded with -100."""

    def __init__(self, split="train", with_bytes=True):
        generator = torch.Generator().manual_seed(0 if split == "train" else 1)
        self.inputs = torch.randint(11, (64 if split == "train" else 12, 6), generator=generator)
        self.targets = torch.randint(11, self.inputs.shape, generator=generator)
        if split == "val":
            self.targets[-1, 3:] = -100
        if with_bytes:
            self.token_bytes = torch.arange(11) % 3 + 1

    def __len__(self):
        return len(self.inputs)

    def __getitem__(self, index):
        return self.inputs[index], self.targets[index]

    def get_batch(self, indices, seeds):
        return self.inputs[indices], self.targets[indices]  # one gather per batch, as TextTokens


class ToyLM(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(11, 8)
        self.head = nn.Linear(8, 11)

    def forward(self, tokens):
        return self.head(self.embed(tokens))  # (B, T, V)


class UnreducedSum(nn.Module):
    """A summed-loss protocol whose loss_sum forgot to reduce."""

    def forward(self, output, targets):
        return nn.functional.cross_entropy(output.flatten(0, 1), targets.flatten())

    def loss_sum(self, output, targets):
        return nn.functional.cross_entropy(output.flatten(0, 1), targets.flatten(), reduction="none")

    def loss_count(self, targets):
        return (targets != -100).sum()
'''


def _lm_run(workdir, **data) -> dict:
    (workdir / "toy_lm.py").write_text(TOY_LM_PLUGIN)
    document = tiny_config(
        name="toylm",
        model={"type": "toy_lm.ToyLM"},
        loss={"type": "TokenCrossEntropy"},
        metrics=["nll", "bpb", "perplexity"],
        data={
            "batch_size": 8,
            "val_batch_size": 5,
            "train": {"type": "toy_lm.RandomTokens", "split": "train"},
            "val": {"type": "toy_lm.RandomTokens", "split": "val", **data},
        },
        train={"total_iters": 4, "val_interval": 4, "accumulate": 2},
        val={"metric": "bpb", "mode": "min"},
        checkpoint={"interval": 4},
        logging={"interval": 2, "progress": False, "tensorboard": False},
    )
    del document["scheduler"]  # the digits config's cosine schedule
    return document


def test_a_trainer_binds_bpb_to_the_validation_set_and_tools_evaluate_too(workdir):
    document = _lm_run(workdir)
    assert train_in_process(workdir, document) == 0
    best = torch.load(workdir / "weights" / "toylm_best.pt", weights_only=True)["best_metrics"]
    assert best["perplexity"] == pytest.approx(math.exp(best["nll"]), rel=1e-9)
    assert best["bpb"] != pytest.approx(best["nll"] / math.log(2))  # tokens of 1-3 bytes
    write_config(workdir / "toylm.yaml", document)
    results, _, _ = load_tool("evaluate").evaluate_weights("toylm.yaml", "weights/toylm_best.pth", [])
    assert results == pytest.approx({name: best[name] for name in ("nll", "bpb", "perplexity")}, rel=1e-9)


def test_a_trainer_refuses_bpb_on_a_dataset_without_token_bytes_before_any_file(workdir):
    from trainer.trainer import Trainer

    document = _lm_run(workdir, with_bytes=False)
    with pytest.raises(InputError, match=r"^metric bpb on data.val \(toy_lm.RandomTokens\): bpb needs"):
        Trainer(config_from_dict(document))
    assert not (workdir / "weights").exists() and not (workdir / "experiments").exists()


def test_the_preflight_checks_the_loss_as_the_step_uses_it_loss_sum_over_loss_count(workdir):
    from trainer.trainer import Trainer

    document = _lm_run(workdir)
    document["loss"] = {"type": "toy_lm.UnreducedSum"}  # its __call__ alone is fine
    with pytest.raises(InputError, match=r"^preflight: the loss \(toy_lm.UnreducedSum\) returned shape \(48,\)"):
        Trainer(config_from_dict(document))


def test_the_token_mean_step_reads_nothing_back_to_the_host_between_logs(workdir, monkeypatch):
    # As tests/e2e/test_hot_loop.py for the classification path: only logging and validation read.

    from trainer.trainer import Trainer

    document = _lm_run(workdir)
    document["train"] = {"total_iters": 8, "val_interval": 8, "accumulate": 2}
    document["logging"] = {"interval": 4, "progress": False, "tensorboard": False}
    document["checkpoint"] = {"interval": 8}
    trainer = Trainer(config_from_dict(document))
    reads_at = iterations_reading_the_device(trainer, monkeypatch)
    assert reads_at and set(reads_at) <= {4, 8}
