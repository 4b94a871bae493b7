"""The Trainer: build, (resume or pretrain), loop { step; log; validate; save }, finish.

The Trainer is the loop. Its components come from trainer/build.py, the checkpoint's format
and the parallel strategy are objects it hands the CheckpointManager (trainer/checkpoint/), and
the run's outputs (lock, archiving earlier runs, recorded config) are trainer/guards/outputs.py's.
"""

from __future__ import annotations

import signal
import uuid
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

from torch import nn

from trainer.batches import every_batch, next_batch, to_device
from trainer.build import Components, build_components, build_logger, import_plugins
from trainer.callbacks import Stop, ValidationCallback, ask_callbacks
from trainer.checkpoint.layout import KEY_BEST, KEY_EPOCH, KEY_ITERATION, KEY_RUN_ID, TrainingState
from trainer.checkpoint.manager import CheckpointManager
from trainer.checkpoint.restore import changes_since, find_checkpoint, load_pretrained, restore_components, resume_notes
from trainer.config.schema import Config
from trainer.distributed.device import configure_backends, resolve_device, wants_cuda
from trainer.distributed.process import from_environment
from trainer.errors import InputError, TrainingError
from trainer.evaluation.evaluator import best_text, evaluate, is_better
from trainer.guards.data_identity import KEY_DATA, RunData
from trainer.guards.outputs import RunDirectory, check_output_dirs, check_shared_checkpoint_dir
from trainer.guards.preflight import preflight
from trainer.guards.signals import StopSignals
from trainer.numerics import FIXES, RecentLosses, weights_are_finite
from trainer.optim import steps_on_metric
from trainer.tracking.logger import Logger
from trainer.tracking.trackers import Trackers, build_trackers
from utils.seed import get_rng_state, seed_everything, set_rng_state


class Trainer:
    """Owns the model, data, optimizer and loop of one experiment.

    Everything the loop needs to continue exactly (iteration, epoch, position in the epoch,
    best metrics, RNG states) is in `state_dict()`, saved beside model, optimizer and scheduler.
    """

    def __init__(
        self,
        config: Config,
        validation_callbacks: list[ValidationCallback] | None = None,
        stop_callbacks: list[Callable[[int, Any], str | None]] | None = None,
    ) -> None:
        self.config = config
        self.validation_callbacks = list(validation_callbacks or [])  # trainer/callbacks.py
        # Called as (signal, dist) after a stop by a signal, once its checkpoint is complete; each may return a
        # line for the log. trainer.run composes them (SLURM's requeue, trainer/guards/requeue.py).
        self.stop_callbacks = list(stop_callbacks or [])
        self.stop_request: Stop | None = None  # set by a validation callback: the loop ends at this iteration
        check_output_dirs(config)
        import_plugins(config.imports)
        self.trackers = Trackers(build_trackers(config.logging.trackers))  # a missing package: exit 2 before anything runs
        self.dist = from_environment(use_cuda=wants_cuda(config.device))
        self.device = resolve_device(config.device, self.dist.local_rank)
        configure_backends(config.deterministic)
        seed_everything(config.seed)  # the same initial weights on every rank
        self._adopt(build_components(config, self.dist, self.device))
        self.run_data = RunData(self.train_loader, self.val_loader)  # train and val of one corpus agree: exit 2 if not
        seed_everything(config.seed + self.dist.rank)  # each rank its own dropout stream
        check_shared_checkpoint_dir(config.checkpoint.dir, self.dist)  # several nodes: before any rank reads it
        checkpoint = config.checkpoint
        self.checkpoints = CheckpointManager(
            checkpoint.dir, config.name, checkpoint.keep_last, checkpoint.async_, checkpoint.format, self.dist
        )
        # What every save writes and every resume loads: the format takes from these what it needs.
        self.training_state = TrainingState(
            self.model, self.optimizer, self.scheduler, self.ema, self.strategy, loop=self, config=config.to_dict()
        )
        self.iteration = 0
        self.epoch = 0
        self.position = 0  # batches of the current epoch already trained on
        self.best_metrics: dict[str, float] = {}
        self._batches = None  # the live iterator over the current epoch
        self.losses = RecentLosses(self.device)  # each step's loss, on the device until the next log
        self.run_id: str | None = uuid.uuid4().hex  # a resume takes the checkpoint's
        # Everything that can reject an input file runs before anything is locked, moved or written.
        changes, notes = self._start_point()
        # A model, loss or data that do not fit: exit 2 before any file is touched. After the
        # weights are loaded, not before: the memory its forward and backward leave with the
        # allocator is then reused by training instead of adding to the load's own peak.
        self._preflight()
        self.outputs = RunDirectory(config, self.dist, self.checkpoints)
        self.lock = self.outputs.lock(self.device)
        try:
            self.logger = self._open_outputs(changes, notes)
            self.checkpoints.report = self.logger.info  # e.g. where a checkpoint superseded in another format went
        except BaseException:
            self.lock.release()
            raise

    # -- building ---------------------------------------------------------------------------

    def _adopt(self, parts: Components) -> None:
        """Keep the built components (trainer/build.py) as the Trainer's own attributes."""
        self.model, self.strategy, self.loss_fn = parts.model, parts.strategy, parts.loss_fn
        self.metrics, self.reporters = parts.metrics, parts.reporters
        self.train_loader, self.val_loader = parts.train_loader, parts.val_loader
        self.optimizer, self.scheduler, self.ema = parts.optimizer, parts.scheduler, parts.ema
        self.guard, self.step = parts.guard, parts.step

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
            "pending_losses": self.dist.gather_objects(self.losses.stacked(float32=False).cpu()),
            KEY_DATA: self.run_data.state(),  # what the run trains and validates on: a resume must match it
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
            self.losses.restore(pending[self.dist.rank])
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

    # -- where the run starts ------------------------------------------------------------

    def _start_point(self) -> tuple[list[str] | None, list[str]]:
        """Resume from the checkpoint resume_path finds, or load pretrain_path; return (the config's
        changes since the checkpoint, None for a fresh run; log notes).

        Only reads files: nothing is locked, moved or written yet.
        """
        config = self.config
        path, checkpoint, skipped = find_checkpoint(config.resume_path, self.checkpoints)
        skipped += self.run_data.check_start(checkpoint, path, config.resume_data)  # other data: exit 2 before loading
        if checkpoint is None:
            return None, skipped + load_pretrained(self.model, config, self.strategy)
        took_over = restore_components(checkpoint, path, config=config, state=self.training_state)
        self.load_state_dict(checkpoint)
        changes = changes_since(checkpoint, config)
        world_sizes = (len(checkpoint["rng"]), self.dist.world_size)  # one RNG state per rank that saved it
        return changes, skipped + resume_notes(path, self.iteration, self.epoch, changes, took_over, world_sizes)

    def _open_outputs(self, changes: list[str] | None, notes: list[str]) -> Logger:
        """Move other runs' files aside (rank 0), open the Logger, record the config and the run id.

        An output directory that turns out unwritable here (read-only, full) is an InputError:
        nothing has trained yet, and a move that failed left the files where they were.
        """
        try:
            notes = self.outputs.make_room(self.run_id, resumed=changes is not None) + notes
            logger = build_logger(self.config, self, self.outputs.path, self.trackers, self.dist, self.device)
            for note in notes:
                logger.info(note)
            self.outputs.record(logger.save_text, self.run_id, changes, self.iteration)
            logger.start_tracking(name=self.config.name, run_id=self.run_id, config=self.config.to_dict(), best=self.best_metrics)
            return logger
        except OSError as error:
            raise InputError(
                f"cannot write {error.filename or self.config.logging.dir} ({error.strerror or error}) before training; "
                "point logging.dir and checkpoint.dir at writable directories with free space"
            ) from None

    # -- the loop ---------------------------------------------------------------------------

    def fit(self) -> int:
        """Train to train.total_iters; return 0, 128+signal after SIGTERM/SIGINT/SIGHUP/SIGUSR1, or
        the exit code of a validation callback that ended the run (trainer/callbacks.py)."""
        total = self.config.train.total_iters
        self.logger.info(
            f"training {self.config.name} on {self.device}: iterations {self.iteration} -> {total}, "
            f"{sum(p.numel() for p in self.model.parameters()):,} parameters"
        )
        self.model.train()
        stopped_by = None
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
                    self._finish_stop_save()  # inside the handlers: a second signal cannot cut the write short
                    stopped_by = signals.received or signal.SIGTERM  # a rank stopped by another rank
                    name = signal.Signals(stopped_by).name  # SIGHUP: the terminal was lost
                    self.logger.info(f"stopped by signal {stopped_by} at iteration {self.iteration}; checkpoint saved ({name})")
                    break
        if stopped_by is not None:
            self._call_stop_callbacks(stopped_by)  # outside them: a callback may leave a signal ignored
            return 128 + stopped_by
        best = best_text(self.best_metrics, self.config.val.metric)
        self.logger.info(f"done: {self.config.name} at iteration {self.iteration}{best}")
        return 0

    def _finish_stop_save(self) -> None:
        """Wait until the stop's checkpoint is complete on every rank (an async write included).

        No rank leaves before that: a launcher that ends the job when the first rank exits non-zero
        (torchrun, `srun --kill-on-bad-exit`) or a stop callback that ends it (a requeue) would
        otherwise kill rank 0 in the middle of the write.
        """
        self.checkpoints.wait()
        self.dist.barrier()

    def _call_stop_callbacks(self, signum: int) -> None:
        """Hand the stop by `signum` to the stop callbacks (trainer.run's: SLURM's requeue); log their lines."""
        for callback in self.stop_callbacks:
            note = callback(signum, self.dist)
            if note:
                self.logger.info(note)

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
        # a file deep in the dataset that cannot be read: one line, exit 1
        batch = next_batch(self._batches, "data.train", f"iteration {self.iteration + 1}")
        self.position += 1
        if self.position == self.train_loader.sampler.batches_per_epoch:
            self.epoch, self.position, self._batches = self.epoch + 1, 0, None
        return batch

    def _move(self, batch: Any) -> Any:
        """Put a batch on the device (trainer/batches.py)."""
        return to_device(batch, self.device, self.config.train.channels_last)

    def _micro_batches(self) -> Iterator[Any]:
        """The next `train.accumulate` training batches, on the device."""
        for _ in range(self.config.train.accumulate):
            yield self._move(self._next_batch())

    def _train_step(self) -> None:
        """One optimizer step. Nothing here reads a value back from the device."""
        self.losses.append(self.step(self._micro_batches()))

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
        failure, note = self.guard.check(self.losses.stacked(), self.iteration)
        if note:
            self.logger.info(f"iteration {self.iteration}: {note}")
        if failure is None and weights_too and not weights_are_finite(self.model):
            failure = (
                f"the weights became non-finite by iteration {self.iteration}; nothing from this iteration was "
                f"saved and earlier checkpoints are intact: {FIXES}, then resume"
            )
        if self.dist.any(failure is not None, self.device):
            raise TrainingError(failure or f"another rank found a non-finite value by iteration {self.iteration}")

    def _log_training(self) -> None:
        """Log the mean loss of the steps since the last log (the one sync per logging interval)."""
        loss = self.losses.take_mean(self.dist.all_reduce_sum, self.dist.world_size)
        lr = self.optimizer.param_groups[0]["lr"]
        self.logger.log_training(iteration=self.iteration, epoch=self.epoch, loss=loss, lr=lr)

    def _validate(self) -> None:
        """Compute every metric over the validation set; save best files on a new best."""
        reduce = self.dist.all_reduce_sum
        batches = every_batch(self.val_loader, "data.val", f"the validation of iteration {self.iteration}")
        results = evaluate(self.eval_model, batches, self.metrics, self._move, reduce, self.reporters)
        extras: dict[str, float] = {}
        for reporter in self.reporters:
            scalars, images = reporter.summary(reduce)
            extras.update(scalars)
            self.logger.images(images, self.iteration)
        metric = self.config.val.metric
        if steps_on_metric(self.scheduler):  # ReduceLROnPlateau: before the saves, which then hold its new state
            self.scheduler.step(results[metric])
        if is_better(results[metric], self.best_metrics, metric, self.config.val.mode):
            self.best_metrics = {**results, "iteration": self.iteration}
            self._save("best", on_written=partial(self.logger.archive_best, iteration=self.iteration))
        self.logger.log_validation(
            iteration=self.iteration, results=results, extras=extras, best=self.best_metrics, metric=metric
        )
        self.stop_request = ask_callbacks(self.validation_callbacks, self.iteration, results, self.dist)

    def _stop_early(self, saved: bool) -> int:
        """End the run at this validation as a callback asked: save this iteration, log why, return its code."""
        if not saved:
            self._save_iteration()
        self.logger.info(f"stopped at iteration {self.iteration}: {self.stop_request.reason}; checkpoint saved")
        return self.stop_request.exit_code

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
        self.checkpoints.save_state(tag, self.training_state, final=final, on_written=on_written)
        self.dist.barrier()

    def close(self) -> None:
        """Wait for the last checkpoint write, then release the logger's files and the run lock."""
        try:
            self.checkpoints.wait()
        finally:
            self.logger.close()
            self.lock.release()
            self.dist.close()
