"""Building a run's components from its config: the plugins that register them, then the
model (with LoRA adapters when train.lora asks, spread over the processes by the parallel
strategy), loss, metrics, reporters, data loaders, optimizer, scheduler, EMA and the optimizer
step that ties them together.

The order of construction is fixed (model first, from the seed every rank shares; then the
rest): the initial weights and every random draw after them depend on it.
"""

from __future__ import annotations

import importlib
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from data.loader import build_loader, dataset_of
from trainer.activation_checkpointing import apply_activation_checkpointing
from trainer.config.schema import Component, Config
from trainer.distributed.process import Distributed
from trainer.distributed.strategy import SingleDevice, build_strategy
from trainer.errors import InputError
from trainer.evaluation.evaluator import MetricFn, Reporter, bind_metrics
from trainer.lora import apply_run_lora
from trainer.numerics import NonFiniteGuard
from trainer.optim import build_optimizer, build_scheduler, steps_on_metric
from trainer.registry import DATASETS, LOSSES, METRICS, MODELS, REPORTERS, build
from trainer.step import OptimizerStep, build_ema
from trainer.tracking.logger import Logger
from trainer.tracking.throughput import describe_throughput
from trainer.tracking.trackers import Trackers


def import_plugins(modules: list[str]) -> None:
    """Import the config's `imports:` (user modules that register components)."""
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # user modules beside the config's working directory
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError as error:
            raise InputError(f"config key imports: cannot import {name!r} ({error}); check the module name") from None
    import data  # noqa: F401  (registers Kiln's datasets)
    import models  # noqa: F401  (registers Kiln's models, and timm's namespace)
    import trainer.evaluation.metrics  # noqa: F401  (registers Kiln's metrics)
    import trainer.evaluation.reporters  # noqa: F401  (registers Kiln's validation reporters)
    import trainer.losses  # noqa: F401  (registers Kiln's losses)


@dataclass
class Components:
    """What one run is made of; the Trainer drives them."""

    model: nn.Module  # the plain model: state dicts are taken from it, never from a wrapper
    strategy: SingleDevice
    loss_fn: Any
    metrics: dict[str, MetricFn]
    reporters: list[Reporter]
    train_loader: Any
    val_loader: Any | None
    optimizer: torch.optim.Optimizer
    scheduler: Any | None
    ema: nn.Module | None
    guard: NonFiniteGuard
    step: OptimizerStep


def build_components(config: Config, dist: Distributed, device: torch.device) -> Components:
    """Every component of the run `config` describes, on `device`, in the fixed order."""
    model = _build_model(config, dist, device)
    apply_activation_checkpointing(model, config)  # train.activation_checkpointing: blocks recomputed in the backward
    # train.lora (nothing without it): adapters wrapped in, the base frozen, the checkpoints told
    # to keep the adapters only; before FSDP shards the model and before the optimizer sees it.
    apply_run_lora(model, config)
    strategy = build_strategy(config.train.strategy, dist, ema=config.train.ema)
    strategy.prepare(model)  # before the optimizer: it must see FSDP's sharded parameters
    loss_fn = build(LOSSES, config.loss, key="loss")
    if isinstance(loss_fn, nn.Module):
        loss_fn.to(device)
    metrics = {
        spec.name: build(METRICS, Component(spec.type, spec.kwargs), key=f"metrics[{index}]")
        for index, spec in enumerate(config.metrics)
    }
    reporters = [build(REPORTERS, spec, key=f"val.reporters[{i}]") for i, spec in enumerate(config.val.reporters)]
    loaders = _Loaders(config, dist, device, metrics)
    train_loader = loaders.build(config.data.train, "data.train", config.data.batch_size, train=True)
    val_loader = None
    if config.data.val is not None:
        val_batch = config.data.val_batch_size or config.data.batch_size
        val_loader = loaders.build(config.data.val, "data.val", val_batch, train=False)
    optimizer = build_optimizer(config.optimizer, model, device)
    scheduler = build_scheduler(config, optimizer)
    ema = build_ema(model, config.train.ema)
    guard = NonFiniteGuard(config.train.nan_policy, config.train.max_skipped, device)
    # DDP and torch.compile wrap the same module: their parameters are the model's, and state
    # dicts are always taken from the plain `model`, so no `module.` or `_orig_mod.` reaches a file.
    forward_model = strategy.wrap(model, device)
    if config.train.compile:
        forward_model = torch.compile(forward_model)
    step = OptimizerStep(
        model=forward_model,
        raw_model=model,
        loss_fn=loss_fn,
        optimizer=optimizer,
        scheduler=None if steps_on_metric(scheduler) else scheduler,  # that one steps at validation
        ema=ema,
        guard=guard,
        config=config.train,
        device=device,
        dist=dist,  # a loss that counts its tokens counts them over every rank
    )
    return Components(
        model=model,
        strategy=strategy,
        loss_fn=loss_fn,
        metrics=metrics,
        reporters=reporters,
        train_loader=train_loader,
        val_loader=val_loader,
        optimizer=optimizer,
        scheduler=scheduler,
        ema=ema,
        guard=guard,
        step=step,
    )


def _build_model(config: Config, dist: Distributed, device: torch.device) -> nn.Module:
    """The model on `device`, with SyncBatchNorm and channels_last as the config asks."""
    model = build(MODELS, config.model, key="model").to(device)
    if config.train.sync_bn and dist.enabled:
        if device.type != "cuda":
            raise InputError("config key train.sync_bn: SyncBatchNorm needs CUDA devices; set it to false on CPU")
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if config.train.channels_last:
        model.to(memory_format=torch.channels_last)
    return model


class _Loaders:
    """Builds the run's data loaders: each rank its share of the global batch."""

    def __init__(self, config: Config, dist: Distributed, device: torch.device, metrics: dict[str, MetricFn]) -> None:
        self.config, self.dist, self.device, self.metrics = config, dist, device, metrics

    def build(self, spec: Component, key: str, batch_size: int, *, train: bool) -> Any:
        """A loader over the dataset `spec`; an empty or too-small training set is an InputError."""
        dataset = build(DATASETS, spec, key=key)
        if len(dataset) == 0:
            raise InputError(f"config key {key}: the {spec.type} dataset is empty; point it at data")
        if not train:  # the set the metrics measure: those that need it (bpb: bytes per token) see it once
            bind_metrics(self.metrics, dataset, f"{key} ({spec.type})")
        world_size = self.dist.world_size
        if batch_size % world_size:
            raise InputError(
                f"config key data.{'batch_size' if train else 'val_batch_size'}: {batch_size} does not split evenly "
                f"across {world_size} processes; use a multiple of {world_size} (it is the global batch)"
            )
        if train and batch_size > len(dataset):
            raise InputError(
                f"config key data.batch_size: {batch_size} is larger than the training set ({len(dataset)} "
                f"samples of {spec.type}); lower data.batch_size"
            )
        data = self.config.data
        return build_loader(
            dataset,
            batch_size=batch_size,
            seed=self.config.seed,
            train=train,
            num_workers=data.num_workers,
            pin_memory=self.device.type == "cuda" if data.pin_memory is None else data.pin_memory,
            persistent_workers=data.persistent_workers,
            prefetch_factor=data.prefetch_factor,
            rank=self.dist.rank,
            world_size=world_size,
        )


def build_logger(
    config: Config, parts: Any, log_dir: Path, trackers: Trackers, dist: Distributed, device: torch.device
) -> Logger:
    """The run's Logger (writing on rank 0 only), with the counts that turn it/s into samples/s,
    tokens/s and MFU; it starts at `parts.iteration` (the Trainer's, after a resume)."""
    throughput = describe_throughput(
        parts.model,
        dataset_of(parts.train_loader),
        samples_per_step=config.data.batch_size * config.train.accumulate,  # data.batch_size is global
        device=device,
        world_size=dist.world_size,
    )
    return Logger(
        log_dir,
        config.logging,
        total_iters=config.train.total_iters,
        start_iteration=parts.iteration,
        enabled=dist.is_main,
        throughput=throughput,
        trackers=trackers,  # rank 0 only: the Logger is disabled on the others
    )
