"""Kiln's Trainer against a plain PyTorch loop: same model, data, optimizer, iterations and seed.

The plain loop is what a user would write: a TensorDataset, a shuffling DataLoader, and the
usual zero_grad/backward/step. Kiln runs with its default logging (a line and TensorBoard
scalars every 50 iterations), no validation, and one checkpoint at the end; the plain loop
saves its final weights with torch.save. Both sides include building the data and the model.

    python benchmarks/overhead.py [--repeats 5]
"""

from __future__ import annotations

import contextlib
import os

import torch
import torch.nn.functional as F
from _common import alternate, median, parse_repeats, scratch_dir
from torch.utils.data import DataLoader, TensorDataset

from data.digits import Digits
from models.simple_cnn import MLP, SimpleCNN
from trainer.config import config_from_dict
from trainer.trainer import Trainer

CASES = {
    # name: (model type, kwargs, iterations, batch size)
    "SimpleCNN, batch 64": ("SimpleCNN", {"num_classes": 10}, 1000, 64),
    "tiny MLP, batch 64": ("MLP", {"hidden": 32}, 3000, 64),
    "tiny MLP, batch 256": ("MLP", {"hidden": 32}, 3000, 256),
}
LR = 1e-3


def plain_loop(model_type: str, kwargs: dict, iterations: int, batch: int) -> None:
    """The hand-written loop a user would write."""
    torch.manual_seed(0)
    digits = Digits("train")
    dataset = TensorDataset(digits.images, digits.labels)  # already normalised
    loader = DataLoader(dataset, batch_size=batch, shuffle=True, drop_last=True)
    model = {"SimpleCNN": SimpleCNN, "MLP": MLP}[model_type](**kwargs)
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR)
    model.train()
    done = 0
    while done < iterations:
        for images, labels in loader:
            loss = F.cross_entropy(model(images), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            done += 1
            if done == iterations:
                break
    torch.save(model.state_dict(), "plain_final.pth")


def kiln_loop(model_type: str, kwargs: dict, iterations: int, batch: int) -> None:
    """The same work through Kiln's Trainer with its default logging."""
    config = config_from_dict(
        {
            "name": "overhead",
            "device": "cpu",
            "model": {"type": model_type, **kwargs},
            "loss": {"type": "CrossEntropyLoss"},
            "data": {"batch_size": batch, "train": {"type": "Digits", "split": "train"}},
            "optimizer": {"type": "AdamW", "lr": LR},
            "train": {"total_iters": iterations},
            "checkpoint": {"interval": iterations},
            "logging": {"progress": False},
        }
    )
    trainer = Trainer(config)
    try:
        trainer.fit()
    finally:
        trainer.close()


def main() -> None:
    """Run both sides of each case alternately and print the medians and ratios."""
    repeats = parse_repeats(__doc__)
    with scratch_dir(), open(os.devnull, "w") as devnull:
        for name, case in CASES.items():
            iterations = case[2]
            with contextlib.redirect_stdout(devnull):  # Kiln's log lines
                times = alternate(
                    {
                        "plain": lambda case=case: plain_loop(*case),
                        "kiln": lambda case=case: kiln_loop(*case),
                    },
                    repeats,
                )
            plain, kiln = median(times["plain"]), median(times["kiln"])
            print(
                f"{name:20s} {iterations} iterations: plain {plain:.3f} s ({plain / iterations * 1e6:.0f} us/step), "
                f"kiln {kiln:.3f} s ({kiln / iterations * 1e6:.0f} us/step), ratio kiln/plain {kiln / plain:.3f} "
                f"(medians of {repeats} alternating runs)"
            )


if __name__ == "__main__":
    main()
