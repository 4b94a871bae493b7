"""The preflight check: one batch of each split through model, loss and metrics, before any file moves.

A model whose output does not fit the loss or the data (`resnet18` on the 1-channel digits,
`MSELoss` on class labels), a metric that does not fit the model's output, or an image that
cannot be decoded in the first batch would otherwise fail at the first step with a traceback,
after the earlier run's files were archived. Here each is a one-line InputError (exit 2) that
names the stage, the error and the shapes involved.

Some misfits do not fail at all: PyTorch's elementwise losses (MSELoss, L1Loss, SmoothL1Loss,
HuberLoss) only warn when the targets broadcast against the output (a 1-output model on class
labels: "Using a target size (torch.Size([32])) that is different to the input size
(torch.Size([32, 1]))"), and the run would train to the end on a meaningless number. So the
warnings the loss and the metrics raise about sizes and broadcasting are errors here too.

The check leaves no trace, so that a run's results stay bitwise what they are without it:
the batches are fetched straight from the datasets (BatchFetcher seeds each sample from
(seed, epoch, index); the loaders' iterators and samplers are not touched), and the global
RNG states, the model's buffers (BatchNorm statistics), its gradients and its train/eval
modes are put back afterwards. It runs the plain model (not the compiled or DDP-wrapped one):
a DDP-wrapped parameter's gradient hook does nothing before DDP's first forward.

Under torchrun every rank runs it and all ranks agree before the model runs (data errors are
one rank's own) and after: a failure on any rank is an exit 2 on every rank, never a hang.
Under FSDP the model's forward and backward are collectives: every rank runs the same ones,
in the same order as a training step and a validation do, so they pair up; a failure inside
them is the same on every rank (the same model, the same batch shapes).
"""

from __future__ import annotations

import contextlib
import copy
import re
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import torch
from torch import nn

from data.loader import dataset_of, describe_error, peek_batch
from trainer.config.schema import Config
from trainer.distributed.process import Distributed
from trainer.errors import InputError, first_line
from trainer.evaluation.evaluator import MetricFn, Reporter
from trainer.step import OptimizerStep, sums_over_elements
from utils.seed import get_rng_state, set_rng_state

T = TypeVar("T")

# A warning that says a loss or metric computed on tensors broadcast against each other: its
# number is wrong, not merely noisy. (KLDivLoss's "divides ... by the batch size" is about its
# reduction, not about shapes, and does not match.)
_SHAPE_WARNING = re.compile(r"broadcast|target size|input size|shapes? (?:do not|does not|don't) match", re.IGNORECASE)


def preflight(
    config: Config,
    *,
    step: OptimizerStep,
    metrics: dict[str, MetricFn],
    reporters: Sequence[Reporter],
    loaders: tuple[Any, Any | None],
    move: Callable[[Any], Any],
    dist: Distributed,
    device: torch.device,
) -> None:
    """Train-mode forward, loss and backward on the first training batch, then eval-mode forward,
    every metric and reporter on the first validation batch; InputError naming what failed.

    `step` gives the plain model, the loss and the configured autocast; `loaders` are the
    (training, validation or None) loaders; `move` puts a batch on the device.
    """
    model = step.raw_model
    train_loader, val_loader = loaders
    _check_model_takes_data(model, train_loader, val_loader)
    with _leaving_no_trace(model), warnings.catch_warnings():
        # The first step warns about the same things again; a failure here is the one line instead.
        warnings.simplefilter("ignore")
        failure, batches = _attempt(_read_batches, config, train_loader, val_loader, move)
        failure = _agree(failure, dist, device)  # before the model runs: its forward may be a collective
        if failure is None:
            train_batch, val_batch = batches
            failure, _ = _attempt(_check_training, config, model, _private_copy(step.loss_fn), step, train_batch)
            if failure is None and val_batch is not None:
                failure, _ = _attempt(_check_validation, config, model, metrics, reporters, val_batch)
            failure = _agree(failure, dist, device)
    if failure is not None:
        raise InputError(failure)


def _check_model_takes_data(model: nn.Module, train_loader: Any, val_loader: Any | None) -> None:
    """A model's own `check_data(dataset, key)` hook (GPT: vocabulary and context size against the
    dataset's), with each dataset; its InputError names the key. Same on every rank: no agreement needed."""
    check = getattr(model, "check_data", None)
    if check is None:
        return
    check(dataset_of(train_loader), key="data.train")
    if val_loader is not None:
        check(dataset_of(val_loader), key="data.val")


def _attempt(check: Callable[..., T], *args: Any) -> tuple[str | None, T | None]:
    """(None, what `check` returned), or (the message of what it raised, None).

    Nothing escapes: under torchrun a rank that raised here would leave the others waiting in
    the next collective.
    """
    try:
        return None, check(*args)
    except InputError as error:
        return str(error), None
    except Exception as error:  # a component failing outside the stages (a reporter's reset)
        return f"preflight failed: {describe_error(error)}", None


def _agree(failure: str | None, dist: Distributed, device: torch.device) -> str | None:
    """The first rank's failure on every rank (all ranks call this together), or None."""
    if not dist.enabled or not dist.any(failure is not None, device):
        return failure
    failures = dist.gather_objects(failure)
    rank = next(rank for rank, message in enumerate(failures) if message is not None)
    return f"rank {rank}: {failures[rank]}"


@contextlib.contextmanager
def _leaving_no_trace(model: nn.Module) -> Iterator[None]:
    """Put back what a forward and backward change: RNG states, buffers, gradients, train/eval modes."""
    rng = get_rng_state()
    buffers = [buffer.detach().clone() for buffer in model.buffers()]  # BatchNorm's running statistics
    modes = [(module, module.training) for module in model.modules()]
    # The parameters as they are now. Under FSDP2 these are the sharded ones, which receive the
    # reduced gradients; after the validation forward the root's unsharded ones stand in their
    # place (the root does not reshard after a forward), so model.parameters() would miss them.
    parameters = list(model.parameters())
    try:
        yield
    finally:
        with torch.no_grad():
            for buffer, saved in zip(model.buffers(), buffers, strict=True):
                buffer.copy_(saved)
        for parameter in parameters:
            parameter.grad = None
        for module, training in modes:  # each module's own flag: model.train() would reset a frozen one
            module.training = training
        set_rng_state(rng)


def _read_batches(config: Config, train_loader: Any, val_loader: Any | None, move: Callable) -> tuple[Any, Any | None]:
    """The first training and validation batches, on the device."""
    train = _read_batch(train_loader, "data.train", config.data.train.type, move)
    val = _read_batch(val_loader, "data.val", config.data.val.type, move) if val_loader is not None else None
    return train, val


def _read_batch(loader: Any, key: str, dataset: str, move: Callable) -> tuple[Any, Any]:
    """The loader's first batch, on the device, as an (inputs, targets) pair."""
    try:
        batch = move(peek_batch(loader))
    except Exception as error:
        reason = describe_error(error)
        fix = "" if ";" in reason else "; replace or remove the file it names, or fix the dataset's arguments"
        raise InputError(f"preflight: the first batch of {key} ({dataset}) cannot be read: {reason}{fix}") from None
    if not isinstance(batch, (list, tuple)) or len(batch) != 2:
        raise InputError(
            f"preflight: a batch of {key} ({dataset}) is {_describe(batch)}, but the trainer takes (inputs, targets) "
            "pairs; make the dataset's samples (inputs, targets)"
        )
    return batch


def _private_copy(loss_fn: Callable) -> Callable:
    """A copy of the loss for the check: whatever state it keeps (running statistics, a call
    counter) stays the training's own. One that cannot be copied is used as it is."""
    try:
        return copy.deepcopy(loss_fn)
    except Exception:  # noqa: BLE001 - a loss holding something uncopyable (a lock, a file)
        return loss_fn


def _training_loss(loss_fn: Callable, output: torch.Tensor, targets: Any) -> torch.Tensor:
    """The loss as OptimizerStep backpropagates it: loss_sum / loss_count for a loss with the
    summed-loss protocol (trainer/step.py), else loss(output, targets)."""
    if not sums_over_elements(loss_fn):
        return loss_fn(output, targets)
    count = torch.as_tensor(loss_fn.loss_count(targets)).to(torch.float64)
    return loss_fn.loss_sum(output, targets) / torch.where(count > 0, count, torch.ones_like(count))


def _check_training(
    config: Config, model: nn.Module, loss_fn: Callable, step: OptimizerStep, batch: tuple[Any, Any]
) -> None:
    """Forward, loss and backward on a training batch, as OptimizerStep runs them (train mode, autocast)."""
    inputs, targets = batch
    fit = "check that model, loss and data fit together"
    where = f"on a training batch of data.train ({config.data.train.type})"
    model.train()
    with step.autocast():
        output = _stage(f"the model ({config.model.type}) {where}", fit, model, inputs, inputs=inputs)
        shapes = {"output": output, "targets": targets}
        what = f"the loss ({config.loss.type}) {where}"
        loss = _stage_without_shape_warnings(what, fit, _training_loss, loss_fn, output, targets, **shapes)
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        got = f"shape {tuple(loss.shape)}" if isinstance(loss, torch.Tensor) else f"a {type(loss).__name__}"
        raise InputError(
            f"preflight: the loss ({config.loss.type}) returned {got} {where}; it must reduce to a scalar (set its "
            f"reduction to mean or sum), and {fit}: {_shapes(**shapes)}"
        )
    _stage(f"the backward pass of the loss ({config.loss.type}) {where}", fit, loss.backward, **shapes)


@torch.no_grad()
def _check_validation(
    config: Config, model: nn.Module, metrics: dict[str, MetricFn], reporters: Sequence[Reporter], batch: tuple[Any, Any]
) -> None:
    """Forward in eval mode, every metric and reporter on a validation batch, as `evaluate` runs them."""
    inputs, targets = batch
    where = f"on a validation batch of data.val ({config.data.val.type})"
    model.eval()
    fit = "check that model and data fit together"
    output = _stage(f"the model ({config.model.type}) {where}", fit, model, inputs, inputs=inputs)
    shapes = {"output": output, "targets": targets}
    for name, metric in metrics.items():
        fit = f"check that metric {name} fits the model's output and the targets"
        pair = _stage_without_shape_warnings(f"metric {name} {where}", fit, _metric_pair, metric, output, targets, **shapes)
        if pair.shape != (2,):
            raise InputError(
                f"preflight: metric {name} returned {_describe(pair)} {where}; a metric returns a (sum, count) pair "
                f"of scalars: {_shapes(**shapes)}"
            )
    for index, reporter in enumerate(reporters):
        what = f"val.reporters[{index}] ({type(reporter).__name__}) {where}"
        _stage(what, "check that it fits the data", reporter.update, inputs, output, targets, inputs=inputs, **shapes)
        reporter.reset()  # it keeps what it saw (previews): forget this batch


def _metric_pair(metric: MetricFn, output: torch.Tensor, targets: Any) -> torch.Tensor:
    """The metric's (sum, count) stacked as `evaluate` stacks it."""
    return torch.stack(metric(output, targets))


def _stage(what: str, fix: str, run: Callable[..., T], *args: Any, **shown: Any) -> T:
    """`run(*args)`; an error becomes an InputError naming the stage, the error and the `shown` shapes."""
    try:
        return run(*args)
    except InputError:  # a component's own message already names the key and the fix
        raise
    except Exception as error:
        raise InputError(f"preflight: {what} failed: {describe_error(error)}; {fix}: {_shapes(**shown)}") from None


def _stage_without_shape_warnings(what: str, fix: str, run: Callable[..., T], *args: Any, **shown: Any) -> T:
    """`_stage`, and a warning about sizes or broadcasting that `run` raises is an InputError as well."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # inside the preflight's "ignore"; and seen again though warned before
        result = _stage(what, fix, run, *args, **shown)
    for warning in caught:
        message = first_line(str(warning.message), strip=True)
        if issubclass(warning.category, UserWarning) and _SHAPE_WARNING.search(message):
            raise InputError(
                f"preflight: {what} warns {message!r}: it would compute a meaningless number on broadcast tensors; "
                f"{fix}: {_shapes(**shown)}"
            )
    return result


def _shapes(**values: Any) -> str:
    """'inputs (32, 1, 8, 8) float32, output (32, 10) float32, targets (32,) int64'."""
    return ", ".join(f"{name} {_describe(value)}" for name, value in values.items())


def _describe(value: Any) -> str:
    """A tensor's shape and dtype; the same for each tensor of a tuple, list or dict; else the type."""
    if isinstance(value, torch.Tensor):
        return f"{tuple(value.shape)} {str(value.dtype).removeprefix('torch.')}"
    if isinstance(value, (list, tuple)):
        return f"a {type(value).__name__} of [{', '.join(_describe(item) for item in value)}]"
    if isinstance(value, dict):
        return "a dict of {" + ", ".join(f"{key!r}: {_describe(item)}" for key, item in value.items()) + "}"
    return f"a {type(value).__name__}"
