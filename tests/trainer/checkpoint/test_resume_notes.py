"""The log lines a resume writes (trainer/checkpoint/restore.py resume_notes)."""

from __future__ import annotations

from pathlib import Path

import pytest

from trainer.checkpoint.restore import resume_notes


@pytest.mark.parametrize(
    ("world_sizes", "note"),
    [
        ((1, 2), "world size changed: the checkpoint was saved by 1 process, this run has 2"),
        ((2, 1), "world size changed: the checkpoint was saved by 2 processes, this run has 1"),
    ],
)
def test_a_changed_world_size_is_noted_in_plain_english(world_sizes, note):
    notes = resume_notes(Path("weights/tiny_iter_10.pt"), 10, 1, [], False, world_sizes)
    assert notes == ["resumed from weights/tiny_iter_10.pt at iteration 10 (epoch 1)", note]


def test_the_same_world_size_is_not_noted():
    assert resume_notes(Path("weights/tiny_iter_10.pt"), 10, 1, [], False, (2, 2)) == [
        "resumed from weights/tiny_iter_10.pt at iteration 10 (epoch 1)"
    ]
