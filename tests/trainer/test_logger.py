"""Logger: TensorBoard scalars are handed over in batches, with the wall times they were logged at."""

from __future__ import annotations

import pytest

import trainer.logger
from trainer.config import LoggingConfig
from trainer.logger import SCALAR_HANDOFF_SECONDS, Logger


class RecordingWriter:
    """Stands in for SummaryWriter: records what it is handed."""

    def __init__(self) -> None:
        self.scalars: list[tuple[str, float, int, float]] = []
        self.flushes = 0

    def add_scalar(self, tag: str, value: float, step: int, walltime: float) -> None:
        self.scalars.append((tag, value, step, walltime))

    def flush(self) -> None:
        self.flushes += 1

    def close(self) -> None:
        pass


class FakeClock:
    """time.time, time.monotonic and time.perf_counter that move only when told to."""

    def __init__(self) -> None:
        self.now = 1_000.0

    def time(self) -> float:
        return self.now

    def monotonic(self) -> float:
        return self.now

    perf_counter = monotonic


@pytest.fixture
def logger_and_writer(tmp_path, monkeypatch) -> tuple[Logger, RecordingWriter, FakeClock]:
    clock = FakeClock()
    monkeypatch.setattr(trainer.logger, "time", clock)
    logger = Logger(tmp_path, LoggingConfig(tensorboard=True, progress=False), total_iters=100, start_iteration=0)
    logger._writer.close()
    logger._writer = writer = RecordingWriter()
    yield logger, writer, clock
    logger.close()


def test_scalars_wait_for_the_handoff_interval_then_go_over_with_their_own_times(logger_and_writer):
    logger, writer, clock = logger_and_writer
    logger.scalars({"train/loss": 2.0, "train/lr": 0.1}, 50)
    clock.now += 1
    logger.scalars({"train/loss": 1.5, "train/lr": 0.1}, 100)
    assert writer.scalars == []  # nothing handed over within the interval
    clock.now += SCALAR_HANDOFF_SECONDS
    logger.scalars({"train/loss": 1.0, "train/lr": 0.1}, 150)
    assert writer.scalars == [
        ("train/loss", 2.0, 50, 1_000.0),
        ("train/lr", 0.1, 50, 1_000.0),
        ("train/loss", 1.5, 100, 1_001.0),
        ("train/lr", 0.1, 100, 1_001.0),
        ("train/loss", 1.0, 150, 1_001.0 + SCALAR_HANDOFF_SECONDS),
        ("train/lr", 0.1, 150, 1_001.0 + SCALAR_HANDOFF_SECONDS),
    ]
    logger.scalars({"train/loss": 0.5}, 200)
    assert len(writer.scalars) == 6  # the interval starts again at each hand-off


def test_flush_and_close_hand_over_everything_pending(logger_and_writer):
    logger, writer, clock = logger_and_writer
    logger.scalars({"val/accuracy": 0.9}, 10)
    logger.flush()
    assert writer.scalars == [("val/accuracy", 0.9, 10, 1_000.0)] and writer.flushes == 1
    logger.scalars({"val/accuracy": 0.95}, 20)
    logger.close()
    assert writer.scalars[-1] == ("val/accuracy", 0.95, 20, 1_000.0)
