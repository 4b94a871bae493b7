"""The Trainer: build, (resume or pretrain), loop { step; log; validate; save }, finish."""

from __future__ import annotations

import signal
import uuid
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

from data.loader import dataset_of, describe_error
from trainer.build import import_plugins
from trainer.callbacks import Stop, ValidationCallback
from trainer.checkpoint import sharded
from trainer.checkpoint.manager import (
    KEY_BEST,
    KEY_EPOCH,
    KEY_ITERATION,
    KEY_MODEL,
    KEY_RUN_ID,
    CheckpointManager,
    clean_state_dict,
    make_checkpoint,
)
from trainer.checkpoint.restore import (
    changes_since,
    find_checkpoint,
    load_pretrained,
    restore_components,
    resume_notes,
)
from trainer.config.schema import Component, Config, dump_config
from trainer.distributed import process as distributed
from trainer.distributed.device import configure_backends, resolve_device, wants_cuda
from trainer.errors import InputError, TrainingError
from trainer.evaluation.evaluator import bind_metrics, evaluate
from trainer.guards.outputs import (
    RUN_ID_FILE,
    archive_other_runs,
    archive_previous_run,
    check_output_dirs,
    check_shared_checkpoint_dir,
    run_log_dir,
)
from trainer.guards.preflight import preflight
from trainer.guards.runlock import RunLock
from trainer.guards.signals import StopSignals
from trainer.numerics import FIXES, NonFiniteGuard, weights_are_finite
from trainer.optim import build_optimizer, build_scheduler, steps_on_metric
from trainer.registry import DATASETS, LOSSES, METRICS, MODELS, REPORTERS, build
from trainer.step import OptimizerStep, build_ema
from trainer.tracking.logger import Logger
from trainer.tracking.throughput import describe_throughput
from trainer.tracking.trackers import Trackers, build_trackers
from utils.seed import get_rng_state, seed_everything, set_rng_state


class Trainer:
    """Owns the model, data, optimizer and loop of one experiment.

    Everything the loop needs to continue exactly (iteration, epoch, position in the epoch,
    best metrics, RNG states) is in `state_dict()`, saved beside model, optimizer and scheduler.
    """

    def __init__(self, config: Config, validation_callbacks: list[ValidationCallback] | None = None) -> None:
        self.config = config
        self.validation_callbacks = list(validation_callbacks or [])  # trainer/callbacks.py
        self.stop_request: Stop | None = None  # set by a validation callback: the loop ends at this iteration
        check_output_dirs(config)
        import_plugins(config.imports)
        self.trackers = Trackers(build_trackers(config.logging.trackers))  # a missing package: exit 2 before anything runs
        self.dist = distributed.from_environment(use_cuda=wants_cuda(config.device))
        self.device = resolve_device(config.device, self.dist.local_rank)
        configure_backends(config.deterministic)
        seed_everything(config.seed)  # the same initial weights on every rank
        self._build_components()
        seed_everything(config.seed + self.dist.rank)  # each rank its own dropout stream
        self._preflight()  # a model, loss or data that do not fit: exit 2 before any file is touched
        check_shared_checkpoint_dir(config.checkpoint.dir, self.dist)  # several nodes: before any rank reads it
        self.checkpoints = CheckpointManager(
            config.checkpoint.dir,
            config.name,
            config.checkpoint.keep_last,
            background=config.checkpoint.async_,
            fmt=config.checkpoint.format,
            dist=self.dist,
        )
        self.iteration = 0
        self.epoch = 0
        self.position = 0  # batches of the current epoch already trained on
        self.best_metrics: dict[str, float] = {}
        self._batches = None  # the live iterator over the current epoch
        # Each step's loss stays on the device until the next log reads them all (and the
        # non-finite check scans them): no host sync, no device op per step.
        self._losses: list[torch.Tensor] = []

        self.run_id: str | None = uuid.uuid4().hex  # a resume takes the checkpoint's
        # Everything that can reject an input file runs before anything is locked, moved or written.
        changes, notes = self._start_point()
        self.lock = self._lock_experiment()
        try:
            self.logger = self._open_outputs(changes, notes)
        except BaseException:
            self.lock.release()
            raise

    # -- building ---------------------------------------------------------------------------

    def _build_components(self) -> None:
        """Model, loss, metrics, data loaders, optimizer and scheduler, from the config."""
        config = self.config
        self.model = build(MODELS, config.model, key="model").to(self.device)
        if config.train.sync_bn and self.dist.enabled:
            if self.device.type != "cuda":
                raise InputError("config key train.sync_bn: SyncBatchNorm needs CUDA devices; set it to false on CPU")
            self.model = nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
        if config.train.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.sharded = config.train.strategy == "fsdp" and self.dist.enabled
        if self.sharded:
            if config.train.ema is not None:
                raise InputError("config key train.ema: EMA is not supported with strategy fsdp yet; use ddp or drop ema")
            distributed.shard_model(self.model)  # before the optimizer: it must see the sharded parameters
        self.loss_fn = build(LOSSES, config.loss, key="loss")
        if isinstance(self.loss_fn, nn.Module):
            self.loss_fn.to(self.device)
        self.metrics = {
            spec.name: build(METRICS, Component(spec.type, spec.kwargs), key=f"metrics[{index}]")
            for index, spec in enumerate(config.metrics)
        }
        self.reporters = [build(REPORTERS, spec, key=f"val.reporters[{i}]") for i, spec in enumerate(config.val.reporters)]
        self.train_loader = self._build_loader(config.data.train, "data.train", config.data.batch_size, train=True)
        self.val_loader = None
        if config.data.val is not None:
            val_batch = config.data.val_batch_size or config.data.batch_size
            self.val_loader = self._build_loader(config.data.val, "data.val", val_batch, train=False)
        self.optimizer = build_optimizer(config.optimizer, self.model, self.device)
        self.scheduler = build_scheduler(config, self.optimizer)
        self.ema = build_ema(self.model, config.train.ema)
        self.guard = NonFiniteGuard(config.train.nan_policy, config.train.max_skipped, self.device)
        # DDP and torch.compile wrap the same module: their parameters are the model's, and
        # state dicts are always taken from the plain `self.model`, so no `module.` or
        # `_orig_mod.` reaches a file.
        forward_model = self.model
        if self.dist.enabled and not self.sharded:
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            forward_model = nn.parallel.DistributedDataParallel(self.model, device_ids=device_ids)
        if config.train.compile:
            forward_model = torch.compile(forward_model)
        self.step = OptimizerStep(
            model=forward_model,
            raw_model=self.model,
            loss_fn=self.loss_fn,
            optimizer=self.optimizer,
            scheduler=None if steps_on_metric(self.scheduler) else self.scheduler,  # that one steps at validation
            ema=self.ema,
            guard=self.guard,
            config=config.train,
            device=self.device,
            dist=self.dist,  # a loss that counts its tokens counts them over every rank
        )

    def _preflight(self) -> None:
        """One batch of each split through model, loss, metrics and reporters, leaving no trace
        (trainer/guards/preflight.py); InputError naming the stage that fails."""
        preflight(
            self.config,
            step=self.step,
            metrics=self.metrics,
            reporters=self.reporters,
            loaders=(self.train_loader, self.val_loader),
            move=self._move,
            dist=self.dist,
            device=self.device,
        )

    def _build_loader(self, spec: Component, key: str, batch_size: int, *, train: bool):
        """A loader over the dataset `spec`; an empty or too-small training set is an InputError."""
        from data.loader import build_loader

        dataset = build(DATASETS, spec, key=key)
        if len(dataset) == 0:
            raise InputError(f"config key {key}: the {spec.type} dataset is empty; point it at data")
        if not train:  # the set the metrics measure: those that need it (bpb: bytes per token) see it once
            bind_metrics(self.metrics, dataset, f"{key} ({spec.type})")
        if batch_size % self.dist.world_size:
            raise InputError(
                f"config key data.{'batch_size' if train else 'val_batch_size'}: {batch_size} does not split evenly "
                f"across {self.dist.world_size} processes; use a multiple of {self.dist.world_size} (it is the global batch)"
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
            world_size=self.dist.world_size,
        )

    # -- state ------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """The loop's own state: counters, position in the epoch, best metrics, RNG, scaler, EMA."""
        return {
            KEY_ITERATION: self.iteration,
            KEY_EPOCH: self.epoch,
            "position": self.position,
            KEY_BEST: dict(self.best_metrics),
            "rng": self.dist.gather_objects(get_rng_state()),  # one entry per rank
            "scaler": self.step.scaler.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            KEY_RUN_ID: self.run_id,
            "trackers": self.trackers.state(),  # {tracker: its run id ...}: a resume continues the same tracker runs
            # The steps since the last log line, so that a resumed run logs the same mean loss.
            "pending_losses": self.dist.gather_objects(self._recent_losses(float32=False).cpu()),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` returned (the RNG last, right before training goes on)."""
        self.iteration = state[KEY_ITERATION]
        self.epoch = state[KEY_EPOCH]
        self.position = state["position"]
        self.best_metrics = dict(state[KEY_BEST])
        self._batches = None
        if state.get("scaler"):
            self.step.scaler.load_state_dict(state["scaler"])
        if self.ema is not None and state.get("ema") is not None:
            self.ema.load_state_dict(state["ema"])
        self.run_id = state.get(KEY_RUN_ID)  # None: a checkpoint from before Kiln recorded it
        self.trackers.restore(state.get("trackers") or {})
        pending = state.get("pending_losses") or []
        if self.dist.rank < len(pending):
            self._losses = list(pending[self.dist.rank].to(self.device).unbind())
        self._restore_rng(state["rng"])

    def _restore_rng(self, states: list[dict]) -> None:
        """This rank's RNG states; a rank the checkpoint did not have (more processes now than
        when it was saved) gets a fresh stream seeded by (seed, rank, iteration)."""
        if self.dist.rank < len(states):
            set_rng_state(states[self.dist.rank])
        else:
            seed_everything(self.config.seed + self.dist.rank + 1_000_003 * self.iteration)

    @property
    def eval_model(self) -> nn.Module:
        """What validation, best tracking and the .pth use: the EMA weights when train.ema is on."""
        return self.ema.module if self.ema is not None else self.model

    def _weights(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """`model`'s whole state dict with clean keys (under FSDP gathered: every rank calls it)."""
        return clean_state_dict(distributed.model_state(model))

    # -- where the run starts ------------------------------------------------------------

    def _start_point(self) -> tuple[list[str] | None, list[str]]:
        """Resume from the checkpoint resume_path finds, or load pretrain_path; return (the config's
        changes since the checkpoint, None for a fresh run; log notes).

        Only reads files: nothing is locked, moved or written yet.
        """
        config = self.config
        path, checkpoint, skipped = find_checkpoint(config.resume_path, self.checkpoints)
        if checkpoint is None:
            return None, skipped + load_pretrained(self.model, config, self.checkpoints)
        took_over = restore_components(
            checkpoint,
            path,
            config=config,
            model=self.model,
            optimizer=self.optimizer,
            scheduler=self.scheduler,
            sharded=self.sharded,
            ema=self.ema,
        )
        self.load_state_dict(checkpoint)
        changes = changes_since(checkpoint, config)
        world_sizes = (len(checkpoint["rng"]), self.dist.world_size)  # one RNG state per rank that saved it
        return changes, skipped + resume_notes(path, self.iteration, self.epoch, changes, took_over, world_sizes)

    def _lock_experiment(self) -> RunLock:
        """Rank 0 takes the experiment's lock; every rank exits 2 if another run holds it."""
        config = self.config
        lock = RunLock(config.name, [config.logging.dir, config.checkpoint.dir])
        refused = None
        if self.dist.is_main:
            try:
                lock.acquire()
            except InputError as error:
                refused = error
        if self.dist.any(refused is not None, self.device):
            raise refused or InputError(f"experiment {config.name} is already running (rank 0 names the process)")
        return lock

    def _open_outputs(self, changes: list[str] | None, notes: list[str]) -> Logger:
        """Move other runs' files aside (rank 0), open the Logger, record the config and the run id.

        An output directory that turns out unwritable here (read-only, full) is an InputError:
        nothing has trained yet, and a move that failed left the files where they were.
        """
        try:
            return self._open_outputs_or_fail(changes, notes)
        except OSError as error:
            raise InputError(
                f"cannot write {error.filename or self.config.logging.dir} ({error.strerror or error}) before training; "
                "point logging.dir and checkpoint.dir at writable directories with free space"
            ) from None

    def _open_outputs_or_fail(self, changes: list[str] | None, notes: list[str]) -> Logger:
        """_open_outputs without the translation of I/O errors."""
        config, resumed = self.config, changes is not None
        self.dist.barrier()  # every rank has read what it needs before rank 0 moves files
        if self.dist.is_main:
            if resumed:
                notes = archive_other_runs(config, self.checkpoints, self.run_id) + notes
            else:
                notes = archive_previous_run(config, self.checkpoints) + notes
        logger = Logger(
            run_log_dir(config),
            config.logging,
            total_iters=config.train.total_iters,
            start_iteration=self.iteration,
            enabled=self.dist.is_main,
            throughput=describe_throughput(  # the counts that turn it/s into samples/s, tokens/s and MFU
                self.model,
                dataset_of(self.train_loader),
                samples_per_step=config.data.batch_size * config.train.accumulate,  # data.batch_size is global
                device=self.device,
                world_size=self.dist.world_size,
            ),
            trackers=self.trackers,  # rank 0 only: the Logger is disabled on the others
        )
        for note in notes:
            logger.info(note)
        if self.run_id is not None:
            logger.save_text(RUN_ID_FILE, self.run_id + "\n")
        if not resumed:
            logger.save_text("config.yaml", dump_config(config))
        elif changes:
            logger.save_text(f"config_resumed_iter_{self.iteration}.yaml", dump_config(config))
        logger.start_tracking(name=config.name, run_id=self.run_id, config=config.to_dict())
        return logger

    # -- the loop ---------------------------------------------------------------------------

    def fit(self) -> int:
        """Train to train.total_iters; return 0, 128+signal after SIGTERM/SIGINT/SIGHUP, or the
        exit code of a validation callback that ended the run (trainer/callbacks.py)."""
        total = self.config.train.total_iters
        self.logger.info(
            f"training {self.config.name} on {self.device}: iterations {self.iteration} -> {total}, "
            f"{sum(p.numel() for p in self.model.parameters()):,} parameters"
        )
        self.model.train()
        with StopSignals() as signals:
            while self.iteration < total:
                self._train_step()
                self.iteration += 1
                saved = self._after_step()
                if self.stop_request is not None:
                    return self._stop_early(saved)
                if self._stop_requested(signals):
                    if not saved:
                        self._save_iteration()
                    received = signals.received or signal.SIGTERM  # a rank stopped by another rank
                    name = signal.Signals(received).name  # SIGHUP: the terminal was lost
                    self.logger.info(f"stopped by signal {received} at iteration {self.iteration}; checkpoint saved ({name})")
                    return 128 + received
        self.logger.info(f"done: {self.config.name} at iteration {self.iteration}" + self._best_text())
        return 0

    def _stop_requested(self, signals: StopSignals) -> bool:
        """Whether to stop after this iteration. Under torchrun every rank must stop at the same
        one, so the ranks agree at logging intervals (no extra collective on other steps)."""
        if not self.dist.enabled:
            return signals.received is not None
        if self.iteration % self.config.logging.interval:
            return False
        return self.dist.any(signals.received is not None, self.device)

    def _next_batch(self) -> Any:
        """The next training batch; epochs roll over here and the position advances."""
        if self._batches is None:
            self.train_loader.sampler.set_epoch(self.epoch, self.position)
            self._batches = iter(self.train_loader)
        try:
            batch = next(self._batches)
        except Exception as error:  # a file deep in the dataset that cannot be read: one line, exit 1
            raise self._read_failed("data.train", error, f"iteration {self.iteration + 1}") from None
        self.position += 1
        if self.position == self.train_loader.sampler.batches_per_epoch:
            self.epoch, self.position, self._batches = self.epoch + 1, 0, None
        return batch

    def _move(self, batch: Any) -> Any:
        """Put a batch (tensors, possibly nested in tuples, lists or dicts) on the device."""
        if isinstance(batch, torch.Tensor):
            if self.config.train.channels_last and batch.dim() == 4:
                return batch.to(self.device, memory_format=torch.channels_last, non_blocking=True)
            return batch.to(self.device, non_blocking=True)
        if isinstance(batch, (list, tuple)):
            return type(batch)(self._move(item) for item in batch)
        if isinstance(batch, dict):
            return {key: self._move(value) for key, value in batch.items()}
        return batch

    def _micro_batches(self) -> Iterator[Any]:
        """The next `train.accumulate` training batches, on the device."""
        for _ in range(self.config.train.accumulate):
            yield self._move(self._next_batch())

    def _train_step(self) -> None:
        """One optimizer step. Nothing here reads a value back from the device."""
        self._losses.append(self.step(self._micro_batches()))  # at most logging.interval: each log empties it

    def _after_step(self) -> bool:
        """Log, validate and save as the schedule says; return whether a checkpoint was saved.

        Each of these reads values back from the device anyway, so the non-finite check
        happens there: before anything is logged as fine or written.
        """
        config, iteration = self.config, self.iteration
        total = config.train.total_iters
        due_log = iteration % config.logging.interval == 0 or iteration == total
        due_val = self.val_loader is not None and (iteration % config.train.val_interval == 0 or iteration == total)
        due_save = self.checkpoints.should_save(iteration, config.checkpoint.interval, total)
        if due_log or due_val or due_save:
            self._check_numerics(weights_too=due_save or due_val)
        if due_log:
            self._log_training()
        if due_val:
            self._validate()  # before the save, so the .pt holds the updated best
        if due_save:
            self._save_iteration()
        return due_save

    def _check_numerics(self, weights_too: bool) -> None:
        """Stop before logging or saving anything non-finite (train.nan_policy); note skipped steps.

        Every rank takes part, so that all of them stop at the same iteration under torchrun.
        """
        failure, note = self.guard.check(self._recent_losses(), self.iteration)
        if note:
            self.logger.info(f"iteration {self.iteration}: {note}")
        if failure is None and weights_too and not weights_are_finite(self.model):
            failure = (
                f"the weights became non-finite by iteration {self.iteration}; nothing from this iteration was "
                f"saved and earlier checkpoints are intact: {FIXES}, then resume"
            )
        if self.dist.any(failure is not None, self.device):
            raise TrainingError(failure or f"another rank found a non-finite value by iteration {self.iteration}")

    def _recent_losses(self, float32: bool = True) -> torch.Tensor:
        """The losses of the steps since the last log, as one (float32) tensor on the device."""
        if not self._losses:
            return torch.zeros(0, device=self.device)
        losses = torch.stack(self._losses)
        return losses.float() if float32 else losses

    def _log_training(self) -> None:
        """Read the losses kept on the device (the one sync per logging interval) and log their mean.

        Steps that nan_policy skip skipped are left out of the mean.
        """
        losses = self._recent_losses()
        finite = torch.isfinite(losses)
        mean_loss = torch.where(finite, losses, 0).sum() / finite.sum()
        loss = (self.dist.all_reduce_sum(mean_loss) / self.dist.world_size).item()
        self._losses.clear()
        lr = self.optimizer.param_groups[0]["lr"]
        self.logger.log_training(iteration=self.iteration, epoch=self.epoch, loss=loss, lr=lr)

    def _validate(self) -> None:
        """Compute every metric over the validation set; save best files on a new best."""
        reduce = self.dist.all_reduce_sum
        results = evaluate(self.eval_model, self._val_batches(), self.metrics, self._move, reduce, self.reporters)
        extras: dict[str, float] = {}
        for reporter in self.reporters:
            scalars, images = reporter.summary(reduce)
            extras.update(scalars)
            self.logger.images(images, self.iteration)
        metric = self.config.val.metric
        if steps_on_metric(self.scheduler):  # ReduceLROnPlateau: before the saves, which then hold its new state
            self.scheduler.step(results[metric])
        if self._is_better(results[metric]):
            self.best_metrics = {**results, "iteration": self.iteration}
            self._save("best", on_written=partial(self.logger.archive_best, iteration=self.iteration))
        self.logger.log_validation(
            iteration=self.iteration, results=results, extras=extras, best=self.best_metrics, metric=metric
        )
        self.stop_request = self._ask_callbacks(results)

    def _ask_callbacks(self, results: dict[str, float]) -> Stop | None:
        """Hand this validation to every validation callback; the first Stop any of them asks for.

        Under torchrun rank 0's answer is every rank's (one small collective per validation,
        only when there are callbacks), so that all of them stop at this same iteration.
        """
        if not self.validation_callbacks:
            return None
        requests = [callback(self.iteration, dict(results)) for callback in self.validation_callbacks]
        stop = next((request for request in requests if request is not None), None)
        return self.dist.gather_objects(stop)[0] if self.dist.enabled else stop

    def _stop_early(self, saved: bool) -> int:
        """End the run at this validation as a callback asked: save this iteration, log why, return its code."""
        if not saved:
            self._save_iteration()
        self.logger.info(f"stopped at iteration {self.iteration}: {self.stop_request.reason}; checkpoint saved")
        return self.stop_request.exit_code

    def _val_batches(self) -> Iterator[Any]:
        """The validation loader's batches; one that cannot be read stops the run with one line."""
        batches = iter(self.val_loader)
        while True:
            try:
                batch = next(batches)
            except StopIteration:
                return
            except Exception as error:
                raise self._read_failed("data.val", error, f"the validation of iteration {self.iteration}") from None
            yield batch

    @staticmethod
    def _read_failed(key: str, error: Exception, when: str) -> TrainingError:
        """The one-line error of a batch of `key` that could not be read (the original error names the file)."""
        reason = describe_error(error)
        fix = "" if ";" in reason else "; replace the file it names with a valid one"  # a message may say it already
        return TrainingError(f"{key}: a batch could not be read at {when}: {reason}{fix}, then resume with resume_path=auto")

    def _is_better(self, value: float) -> bool:
        """Whether `value` of val.metric beats the best so far (NaN never does)."""
        if value != value:
            return False
        if not self.best_metrics:
            return True
        best = self.best_metrics[self.config.val.metric]
        return value > best if self.config.val.mode == "max" else value < best

    def _checkpoint(self) -> dict[str, Any]:
        """The full checkpoint of the current state (see make_checkpoint for the layout)."""
        return make_checkpoint(
            model_state=self._weights(self.model),
            optimizer_state=distributed.optimizer_state(self.model, self.optimizer),
            scheduler_state=self.scheduler.state_dict() if self.scheduler is not None else None,
            trainer_state=self.state_dict(),
            config=self.config.to_dict(),
        )

    def _save_iteration(self) -> None:
        """Write <name>_iter_<N>.pt and .pth (old ones are pruned once they are complete).

        The TensorBoard curves are flushed too, so a run killed later keeps them up to here.
        """
        # the Logger hands the .pth to the trackers when logging.log_checkpoints is all
        self._save(f"iter_{self.iteration}", on_written=partial(self.logger.log_checkpoint, iteration=self.iteration))
        self.logger.flush()

    def _save(self, tag: str, on_written: Callable[[Path], Any] | None = None) -> None:
        """Every rank takes part (the RNG states are gathered; sharded: each writes its shards)."""
        final = self.iteration == self.config.train.total_iters
        self.checkpoints.save_from(tag, self, on_written=on_written, final=final)
        self.dist.barrier()

    # -- what CheckpointManager.save_from reads, in the format it writes ---------------------

    def full_checkpoint(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        """(the whole .pt checkpoint, the .pth weights), gathered onto rank 0 under FSDP."""
        checkpoint = self._checkpoint()
        weights = checkpoint[KEY_MODEL] if self.eval_model is self.model else self._weights(self.eval_model)
        return checkpoint, weights

    def sharded_parts(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """(the tensors this rank holds, for DCP; everything else, for rank 0's kiln_state.pt)."""
        tensors, optimizer_rest = sharded.tensor_parts(self.model, self.optimizer, self.ema)
        state = make_checkpoint(
            model_state={},  # in the DCP tensors, as are the optimizer's and the EMA's
            optimizer_state=optimizer_rest,
            scheduler_state=self.scheduler.state_dict() if self.scheduler is not None else None,
            trainer_state={**self.state_dict(), "ema": None},
            config=self.config.to_dict(),
        )
        return tensors, state

    def export_weights(self) -> dict[str, torch.Tensor]:
        """The .pth weights (EMA when on), gathered onto rank 0 under FSDP."""
        return self._weights(self.eval_model)

    def _best_text(self) -> str:
        """', best accuracy 0.98 @ iter 250' or ''."""
        if not self.best_metrics:
            return ""
        metric = self.config.val.metric
        return f", best {metric} {self.best_metrics[metric]:.4f} @ iter {int(self.best_metrics['iteration'])}"

    def close(self) -> None:
        """Wait for the last checkpoint write, then release the logger's files and the run lock."""
        try:
            self.checkpoints.wait()
        finally:
            self.logger.close()
            self.lock.release()
            self.dist.close()
