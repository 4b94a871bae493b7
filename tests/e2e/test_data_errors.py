"""A file deep in a dataset that cannot be read: one `error:` line naming it, exit 1, also in train.log.

(A bad file in the first batch is the preflight's: exit 2 before any file moves, in
tests/e2e/test_bad_inputs.py.) ImageFolder reads its files when a sample is asked for, so the
corrupt file is placed where the run meets it only later: a training batch after the first,
or a validation batch after the first.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from data.sampler import ResumableBatchSampler
from tests.helpers import run_train, tiny_config, train_in_process, write_config
from trainer.errors import TrainingError

pytestmark = pytest.mark.slow

MODEL = {"type": "SimpleCNN", "num_classes": 2, "in_channels": 3, "width": 4}


def image_folder(root: Path, per_class: int, corrupt: int | None = None) -> list[Path]:
    """root/a/<i>.png and root/b/<i>.png, 8x8 RGB; sample `corrupt` (ImageFolder's order) is not an image."""
    paths = [root / name / f"{index}.png" for name in ("a", "b") for index in range(per_class)]
    for number, path in enumerate(paths):
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8), color=(40 * number, 100, 200)).save(path)
    if corrupt is not None:
        paths[corrupt].write_bytes(b"\x89PNG but then nothing a decoder can read")
    return paths


def test_a_corrupt_training_image_read_by_a_worker_later_is_one_line_and_exit_1(workdir):
    # 8 images, batches of 2: the preflight reads batch 0 of epoch 0; put the bad one in a later batch
    order = ResumableBatchSampler(8, 2, seed=0, shuffle=True, drop_last=True).epoch_order(0).tolist()
    position = next(p for p in range(2, 8) if order[p] != 0)  # sample 0 ImageFolder reads when built
    paths = image_folder(workdir / "images", per_class=4, corrupt=order[position])
    document = tiny_config(
        model=MODEL,
        data={"batch_size": 2, "num_workers": 1, "train": {"type": "ImageFolder", "root": "images"}},
        train={"total_iters": 8},
    )
    result = run_train(workdir, "-c", str(write_config(workdir / "images.yaml", document)))

    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    bad = paths[order[position]].relative_to(workdir)
    expected = (
        f"error: data.train: a batch could not be read at iteration {position // 2 + 1}: sample {order[position]} of "
        f"ImageFolder: ValueError: cannot read image {bad} (UnidentifiedImageError); remove it or replace it with a "
        "valid image, then resume with resume_path=auto"
    )
    assert lines[-1] == expected
    assert [line for line in lines if line.startswith("error:")] == [expected]
    assert (workdir / "experiments/tiny/train.log").read_text().splitlines()[-1].endswith(expected)


def test_a_corrupt_validation_image_after_the_first_batch_stops_the_run_naming_it(workdir):
    image_folder(workdir / "train", per_class=2)
    paths = image_folder(workdir / "val", per_class=3, corrupt=4)  # batches [0, 1] [2, 3] [4, 5]: the third
    document = tiny_config(
        model=MODEL,
        data={
            "batch_size": 4,
            "val_batch_size": 2,
            "train": {"type": "ImageFolder", "root": "train"},
            "val": {"type": "ImageFolder", "root": "val"},
        },
        train={"total_iters": 2, "val_interval": 2},
    )
    with pytest.raises(TrainingError) as caught:
        train_in_process(workdir, document)
    message = str(caught.value)
    assert message.startswith(
        f"data.val: a batch could not be read at the validation of iteration 2: sample 4 of ImageFolder: "
        f"ValueError: cannot read image {paths[4].relative_to(workdir)} (UnidentifiedImageError)"
    ), message
    assert f"error: {message}" in (workdir / "experiments/tiny/train.log").read_text()
