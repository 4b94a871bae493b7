"""Logger: TensorBoard scalars are handed over in batches, with the wall times they were logged at; the
training line shows samples/s, and tokens/s and MFU where the run has the counts."""

from __future__ import annotations

import pytest
import torch
import torch.utils.tensorboard
from torch.utils.data import Dataset

import trainer.tracking.logger
from models.simple_cnn import MLP
from tests.helpers import tiny_config, train_in_process
from trainer.config import LoggingConfig
from trainer.tracking.logger import SCALAR_HANDOFF_SECONDS, Logger
from trainer.tracking.throughput import Throughput, peak_flops_of


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
    monkeypatch.setattr(trainer.tracking.logger, "time", clock)
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


# -- throughput in the training line --------------------------------------------------------------


class TinyTokens(Dataset):
    """64 random 8-feature samples with 4 classes that declare 16 tokens each, as a text dataset would."""

    tokens_per_sample = 16

    def __init__(self) -> None:
        generator = torch.Generator().manual_seed(0)
        self.inputs = torch.randn(64, 8, generator=generator)
        self.labels = torch.randint(4, (64,), generator=generator)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.inputs[index], self.labels[index]


class TickingClock(FakeClock):
    """A FakeClock whose perf_counter moves one second each time it is read (the logger reads it once per line)."""

    def perf_counter(self) -> float:
        self.now += 1.0
        return self.now


class RecordingSummaryWriter(RecordingWriter):
    """RecordingWriter in SummaryWriter's place, keeping every instance for the test to read."""

    instances: list[RecordingSummaryWriter] = []

    def __init__(self, *args, **kwargs) -> None:
        super().__init__()
        type(self).instances.append(self)


def test_the_training_line_and_scalars_show_samples_and_tokens_per_second(workdir, monkeypatch):
    monkeypatch.setattr(trainer.tracking.logger, "time", TickingClock())
    monkeypatch.setattr(torch.utils.tensorboard, "SummaryWriter", RecordingSummaryWriter)
    document = tiny_config(
        model={"type": "MLP", "in_features": 8, "hidden": 8, "num_classes": 4},
        data={"batch_size": 8, "train": {"type": f"{__name__}.TinyTokens"}},
        scheduler=None,
        train={"total_iters": 10, "accumulate": 2},
        logging={"interval": 5, "progress": False},
    )
    assert train_in_process(workdir, document) == 0
    # 5 iterations per (fake) second x 8 samples x 2 micro-batches; x 16 tokens each; CPU: no MFU
    lines = [line for line in (workdir / "experiments/tiny/train.log").read_text().splitlines() if "| iter " in line]
    assert len(lines) == 2 and all("| 5.0 it/s | 80.0 samples/s | 1,280 tokens/s | eta" in line for line in lines)
    scalars = {(tag, step): value for tag, value, step, _ in RecordingSummaryWriter.instances[-1].scalars}
    assert {tag for tag, _ in scalars} == {"train/loss", "train/lr", "train/samples_per_sec", "train/tokens_per_sec"}
    assert scalars["train/samples_per_sec", 10] == 80.0 and scalars["train/tokens_per_sec", 10] == 1280.0


def test_mfu_joins_the_line_and_scalars_when_the_logger_has_flops_and_a_peak(tmp_path, monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(trainer.tracking.logger, "time", clock)
    counts = Throughput(samples_per_step=4, tokens_per_sample=8, flops_per_token=1e6, peak_flops=1e9)  # a fake peak
    logger = Logger(
        tmp_path, LoggingConfig(tensorboard=True, progress=False), total_iters=100, start_iteration=0, throughput=counts
    )
    logger._writer.close()
    logger._writer = writer = RecordingWriter()
    clock.now += 2.0
    logger.log_training(iteration=10, epoch=0, loss=1.0, lr=0.1)
    logger.flush()
    logger.close()
    # 5 it/s x 4 = 20 samples/s x 8 = 160 tokens/s; 1e6 flops x 160 / 1e9 = 16 %
    assert "| 5.0 it/s | 20.0 samples/s | 160 tokens/s | mfu 16.0% | eta 0:00:18" in (tmp_path / "train.log").read_text()
    scalars = {tag: value for tag, value, _, _ in writer.scalars}
    assert scalars["train/samples_per_sec"] == 20.0 and scalars["train/tokens_per_sec"] == 160.0
    assert scalars["train/mfu"] == pytest.approx(16.0)


class FlopsMLP(MLP):
    """Kiln's MLP declaring flops per token, as GPT does (6 flops per parameter per token, the 6N rule)."""

    def flops_per_token(self, seq_len: int | None = None) -> float:
        return 6.0 * sum(p.numel() for p in self.parameters())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_a_gpu_with_a_known_peak_the_training_line_shows_mfu(workdir):
    document = tiny_config(
        device="cuda",
        model={"type": f"{__name__}.FlopsMLP", "in_features": 8, "hidden": 8, "num_classes": 4},
        data={"batch_size": 8, "train": {"type": f"{__name__}.TinyTokens"}},
        scheduler=None,
        train={"total_iters": 10},
        logging={"interval": 5, "progress": False, "tensorboard": False},
    )
    assert train_in_process(workdir, document) == 0
    lines = [line for line in (workdir / "experiments/tiny/train.log").read_text().splitlines() if "| iter " in line]
    known = peak_flops_of(torch.cuda.get_device_name(0)) is not None
    assert len(lines) == 2 and all(("| mfu " in line) == known and "tokens/s" in line for line in lines)
