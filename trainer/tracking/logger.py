"""Logger: console + experiments/<name>/train.log + TensorBoard + tqdm + the experiment trackers; archives the best weights."""

from __future__ import annotations

import datetime
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from trainer.config.schema import LoggingConfig
from trainer.errors import TrainingError
from trainer.tracking.throughput import Throughput, mfu
from utils import console
from utils.io import atomic_copy, atomic_write_text

if TYPE_CHECKING:
    from trainer.tracking.trackers import Trackers

# TensorBoard's writer thread wakes and takes the GIL for every event it is handed, which on a
# small model costs a few percent of the training steps (see docs/performance.md). Scalars are
# therefore handed to it in batches: at most this often, at every save (flush) and at close.
# TensorBoard itself writes to disk only every 120 s (its flush_secs), so curves lag no more.
SCALAR_HANDOFF_SECONDS = 10.0
# In the log directory, beside the archived best .pth (with trackers and log_checkpoints): the
# iteration whose weights it holds, so that a resume can hand them to a tracker that missed them.
BEST_RECORD = ".best_weights.json"


class Logger:
    """Writes log lines to the console and train.log, scalars to TensorBoard, and a progress bar.

    Only what the trainer hands it at a logging interval reaches here, so nothing in this class
    runs (or syncs with the device) on every step.
    """

    def __init__(
        self,
        log_dir: Path,
        config: LoggingConfig,
        *,
        total_iters: int,
        start_iteration: int,
        enabled: bool = True,
        throughput: Throughput | None = None,
        trackers: Trackers | None = None,
    ) -> None:
        self.log_dir = log_dir
        self.enabled = enabled  # False on every torchrun rank but 0: nothing is printed or written
        self.throughput = throughput or Throughput()  # numbers only: the Logger knows no model or dataset
        self._file = None
        self._writer = None
        self._bar = None
        self._total = total_iters
        self._last_time = time.perf_counter()
        self._last_iteration = start_iteration
        self._pending_scalars: list[tuple[str, float, int, float]] = []  # (tag, value, step, wall time)
        self._last_handoff = time.monotonic()
        # The trackers (logging.trackers) get what TensorBoard gets; each runs on its own thread.
        self._trackers = trackers if enabled and trackers else None
        self._log_checkpoints = config.log_checkpoints
        self._start_iteration = start_iteration
        if not enabled:
            return
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._file = open(log_dir / "train.log", "a", encoding="utf-8")  # resuming appends
        if config.tensorboard:
            from torch.utils.tensorboard import SummaryWriter  # heavy: imported only when used

            # purge_step drops events a killed run wrote after its last checkpoint, so a resumed
            # run's curves have no duplicate steps (TensorBoard honours it when reading).
            self._writer = SummaryWriter(str(log_dir), purge_step=start_iteration + 1 if start_iteration else None)
        if config.progress and sys.stdout.isatty():
            from tqdm import tqdm

            # Through utils.console, so that a terminal that hung up (EIO) or a closed pipe on
            # stderr silences the bar instead of raising (also in tqdm's monitor thread).
            stream = console.ConsoleStream(sys.stderr)
            self._bar = tqdm(total=total_iters, initial=start_iteration, unit="it", dynamic_ncols=True, file=stream)

    def info(self, message: str) -> None:
        """One timestamped line to train.log and the console (dropped silently once the console is gone)."""
        if not self.enabled:
            return
        line = f"{datetime.datetime.now():%Y-%m-%d %H:%M:%S} | {message}"
        self._file.write(line + "\n")  # first: the file keeps every line whatever the console does
        self._file.flush()
        if self._bar is None:
            console.write(sys.stdout, line + "\n")
            return
        with self._bar.get_lock():  # the bar steps aside for the line, as tqdm.write does
            self._bar.clear(nolock=True)
            console.write(sys.stdout, line + "\n")
            self._bar.refresh(nolock=True)

    def scalars(self, values: dict[str, float], step: int) -> None:
        """TensorBoard scalars {tag: value} at `step`, stamped now and handed over in batches; the trackers get them too."""
        if self._trackers is not None:
            self._trackers.log_scalars(values, step)  # a put on each tracker's queue: it never waits
        if self._writer is None:
            return
        now = time.time()
        self._pending_scalars += [(tag, value, step, now) for tag, value in values.items()]
        if time.monotonic() - self._last_handoff >= SCALAR_HANDOFF_SECONDS:
            self._hand_off_scalars()

    def _hand_off_scalars(self) -> None:
        """Give the pending scalars, with the wall times they were logged at, to the SummaryWriter."""
        for tag, value, step, wall_time in self._pending_scalars:
            self._writer.add_scalar(tag, value, step, walltime=wall_time)
        self._pending_scalars.clear()
        self._last_handoff = time.monotonic()

    def flush(self) -> None:
        """Write everything logged so far to the TensorBoard event file (called after each save)."""
        if self._writer is not None:
            self._hand_off_scalars()
            self._writer.flush()
        if self._trackers is not None:
            self._trackers.flush()
            self._report_trackers()

    def start_tracking(self, *, name: str, run_id: str | None, config: dict, best: dict[str, float] | None = None) -> None:
        """Open the trackers' runs (a resume continues the checkpoint's) and record the resolved config as params;
        on resume, bring them up to date with the checkpoint's `best` (best_metrics), which an earlier process
        may have failed to send them (an outage)."""
        if self._trackers is None:
            return
        self._trackers.start(name=name, log_dir=self.log_dir, run_id=run_id, start_iteration=self._start_iteration)
        self._trackers.log_params(config)
        if best and self._start_iteration:
            self._trackers.catch_up(best, self._archived_best(int(best["iteration"])))
        self._report_trackers()

    def _report_trackers(self) -> None:
        """Write the lines the trackers' threads queued (notes, their one warning) to train.log, from this thread."""
        if self._trackers is not None:
            for line in self._trackers.notes():
                self.info(line)

    def log_training(self, *, iteration: int, epoch: int, loss: float, lr: float) -> None:
        """The periodic training line: iteration, epoch, loss, lr, it/s, samples/s (tokens/s, MFU) and ETA."""
        if not self.enabled:
            return
        now = time.perf_counter()
        speed = (iteration - self._last_iteration) / max(now - self._last_time, 1e-9)
        eta = datetime.timedelta(seconds=round((self._total - iteration) / max(speed, 1e-9)))
        rates = self._rates(speed)
        shown = f"{speed:.1f} it/s | {rates['samples_per_sec']:,.1f} samples/s"
        if "tokens_per_sec" in rates:
            shown += f" | {rates['tokens_per_sec']:,.0f} tokens/s"
        if "mfu" in rates:
            shown += f" | mfu {rates['mfu']:.1f}%"
        self.info(f"iter {iteration}/{self._total} | epoch {epoch} | loss {loss:.4f} | lr {lr:.3e} | {shown} | eta {eta}")
        self.scalars({"train/loss": loss, "train/lr": lr, **{f"train/{name}": value for name, value in rates.items()}}, iteration)
        if self._bar is not None:
            self._bar.update(iteration - self._last_iteration)
            self._bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}")
        self._last_time, self._last_iteration = now, iteration
        self._report_trackers()

    def _rates(self, speed: float) -> dict[str, float]:
        """samples_per_sec, and tokens_per_sec and mfu (in percent) where the run has the counts, at `speed` it/s.

        From host-side numbers only (the interval's wall time and fixed counts): nothing is read
        from the device for them.
        """
        counts = self.throughput
        rates = {"samples_per_sec": speed * counts.samples_per_step}
        if counts.tokens_per_sample is not None:
            rates["tokens_per_sec"] = rates["samples_per_sec"] * counts.tokens_per_sample
            if counts.flops_per_token is not None and counts.peak_flops:
                rates["mfu"] = 100 * mfu(counts.flops_per_token, rates["tokens_per_sec"], counts.peak_flops)
        return rates

    def log_validation(
        self,
        *,
        iteration: int,
        results: dict[str, float],
        best: dict[str, float],
        metric: str,
        extras: dict[str, float] | None = None,
    ) -> None:
        """The validation line with every metric, the reporters' figures and the best so far."""
        extras = extras or {}
        shown = ", ".join(f"{name} {value:.4f}" for name, value in results.items())
        shown += "".join(f" | {name} {value:.4f}" for name, value in extras.items())
        best_text = f"best {metric} {best[metric]:.4f} @ iter {int(best['iteration'])}" if best else "no best yet"
        self.info(f"validation @ iter {iteration}: {shown} | {best_text}")
        self.scalars({f"val/{name}": value for name, value in {**results, **extras}.items()}, iteration)
        if self._trackers is not None and best and int(best["iteration"]) == iteration:  # a new best
            self._trackers.log_summary(best)
        self._report_trackers()

    def images(self, images: dict, step: int) -> None:
        """TensorBoard image grids {tag: (N, C, H, W) tensor in [0, 1]} at `step`."""
        if self._writer is not None:
            for tag, batch in images.items():
                self._writer.add_images(tag, batch.detach().float().clamp(0, 1).cpu(), step)

    def save_text(self, filename: str, text: str) -> Path:
        """Write a text file (the resolved config) into the log directory, atomically (rank 0 only)."""
        if not self.enabled:
            return self.log_dir / filename
        path = self.log_dir / filename
        atomic_write_text(path, text)
        return path

    def archive_best(self, weights_path: Path, iteration: int | None = None) -> Path:
        """Keep a copy of the best weight-only file in the log directory, and hand it to the trackers with
        log_checkpoints best or all; TrainingError if it cannot be written. May run on the checkpoint writer's thread."""
        target = self.log_dir / weights_path.name
        try:
            atomic_copy(weights_path, target)
            if iteration is not None and self._trackers is not None and self._log_checkpoints != "none":
                self._record_archived_best(target, iteration)
        except OSError as error:
            raise TrainingError(
                f"could not archive the best weights to {target} ({error.strerror or error}); {weights_path} is "
                "intact: free disk space or fix permissions in logging.dir, then resume with resume_path=auto"
            ) from error
        if self._log_checkpoints != "none":
            self._record_weights(target, "best", iteration)
        return target

    def _record_archived_best(self, target: Path, iteration: int) -> None:
        """Write which iteration the archived best holds, with the file's identity (a later copy is a new file)."""
        status = target.stat()
        record = {"file": target.name, "iteration": iteration, "inode": status.st_ino, "size": status.st_size}
        atomic_write_text(self.log_dir / BEST_RECORD, json.dumps({**record, "mtime_ns": status.st_mtime_ns}) + "\n")

    def _archived_best(self, iteration: int) -> Path | None:
        """The archived best .pth if it is known to hold the weights of `iteration` (with log_checkpoints), else None.

        A killed run may have archived a later best than the checkpoint it is resumed from: those are
        not the weights of `iteration`, and the resumed run computes that best again anyway.
        """
        if self._log_checkpoints == "none":
            return None
        try:
            record = json.loads((self.log_dir / BEST_RECORD).read_text())
            path = self.log_dir / Path(record["file"]).name
            status = path.stat()
        except (OSError, ValueError, KeyError, TypeError):
            return None
        identity = [record.get(key) for key in ("iteration", "inode", "size", "mtime_ns")]
        return path if identity == [iteration, status.st_ino, status.st_size, status.st_mtime_ns] else None

    def log_checkpoint(self, weights_path: Path, iteration: int | None = None) -> None:
        """Hand an iteration's .pth to the trackers as the latest checkpoint (log_checkpoints: all).

        `weights_path` need only be readable during the call: each tracker gets its own link or copy.
        """
        if self._log_checkpoints == "all":
            self._record_weights(weights_path, "latest", iteration)

    def _record_weights(self, path: Path, tag: Literal["best", "latest"], iteration: int | None) -> None:
        """The trackers' share of a weight file, if there are trackers."""
        if self._trackers is not None:
            self._trackers.log_artifact(path, tag, iteration)

    def close(self) -> None:
        """Flush and close the trackers (waiting a bounded time), the file, the TensorBoard writer and the bar."""
        if self._trackers is not None:
            self._trackers.close(finished=self._last_iteration >= self._total)
            self._report_trackers()  # before the file closes: a tracker's one warning may come at the end
        if self._bar is not None:
            self._bar.close()
        if self._writer is not None:
            self._hand_off_scalars()
            self._writer.close()
        if self._file is not None:
            self._file.close()
