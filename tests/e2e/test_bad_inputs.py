"""Bad inputs, end to end (DESIGN.md section 2): `python train.py` exits 2 with one clean line.

Each case runs train.py as a process in a directory that already holds an earlier run of the
same experiment (`tiny`: its weights/, experiments/ and config). Whatever is wrong, the run must

- exit with code 2;
- end stderr with exactly one line starting with "error: ", which names the problem;
- print no traceback;
- leave every file of the directory byte-identical, move nothing and create nothing: a typo in
  a config must never archive (or overwrite) the earlier run's files.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import yaml

from tests.helpers import run_train, tiny_config, write_config

pytestmark = pytest.mark.slow

CONFIG = "config.yaml"
EARLIER_CHECKPOINT = "weights/tiny_iter_10.pt"  # of an MLP: another architecture than tiny's SimpleCNN
EARLIER_WEIGHTS = "weights/tiny_iter_10.pth"

Setup = Callable[[Path], list[str]]  # writes a case's files into the directory, returns train.py's arguments


# ---------------------------------------------------------------------------------------------
# The earlier run and the snapshot


@pytest.fixture(scope="module")
def earlier_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory holding a real finished run of `tiny` (an MLP, 10 iterations), made once."""
    root = tmp_path_factory.mktemp("earlier_run")
    document = tiny_config(
        model={"type": "MLP", "hidden": 16},
        scheduler={"type": "CosineAnnealingLR", "T_max": 10},
        train={"total_iters": 10, "val_interval": 10},
    )
    write_config(root / "earlier.yaml", document)
    result = run_train(root, "-c", "earlier.yaml")
    assert result.returncode == 0, result.stderr
    for path in (EARLIER_CHECKPOINT, EARLIER_WEIGHTS, "weights/tiny_best.pt", "experiments/tiny/train.log"):
        assert (root / path).is_file(), f"the earlier run did not write {path}"
    return root


def snapshot(root: Path) -> dict[str, bytes | None]:
    """Every path under `root` (relative) -> its bytes, or None for a directory."""
    return {str(path.relative_to(root)): path.read_bytes() if path.is_file() else None for path in sorted(root.rglob("*"))}


def describe_changes(before: dict[str, bytes | None], after: dict[str, bytes | None]) -> str:
    """Which paths appeared, disappeared or changed between two snapshots."""
    gone = sorted(set(before) - set(after))
    new = sorted(set(after) - set(before))
    changed = sorted(path for path in set(before) & set(after) if before[path] != after[path])
    return f"removed or moved: {gone}; created: {new}; changed: {changed}"


# ---------------------------------------------------------------------------------------------
# How a case writes its inputs


def config(*overrides: str, **changes) -> Setup:
    """tiny_config(**changes) as config.yaml, run with `overrides`."""

    def setup(root: Path) -> list[str]:
        write_config(root / CONFIG, tiny_config(**changes))
        return ["-c", CONFIG, *overrides]

    return setup


def config_text(text: str) -> Setup:
    """config.yaml holding exactly `text`."""

    def setup(root: Path) -> list[str]:
        (root / CONFIG).write_text(text, encoding="utf-8")
        return ["-c", CONFIG]

    return setup


def nested(dotted: str, value) -> dict:
    """tiny_config's top-level entry for `dotted`, with the key at the dotted path set to `value`."""
    document = tiny_config()
    top, *middle, last = dotted.split(".")
    node = document[top]
    for part in middle:
        node = node[part]
    node[last] = value
    return {top: document[top]}


def base_cycle(root: Path) -> list[str]:
    write_config(root / "a.yaml", {"base": "b.yaml", **tiny_config()})
    write_config(root / "b.yaml", {"base": "a.yaml", "seed": 1})
    return ["-c", "a.yaml"]


def base_missing(root: Path) -> list[str]:
    write_config(root / CONFIG, {"base": "parent.yaml", **tiny_config()})
    return ["-c", CONFIG]


def base_too_long(root: Path) -> list[str]:
    write_config(root / CONFIG, {"base": "x" * 300, **tiny_config()})  # a name longer than the file system takes
    return ["-c", CONFIG]


def config_is_a_directory(root: Path) -> list[str]:
    (root / "configs").mkdir()
    return ["-c", "configs/"]


def base_is_a_directory(root: Path) -> list[str]:
    (root / "bases").mkdir()
    write_config(root / CONFIG, {"base": "bases", **tiny_config()})
    return ["-c", CONFIG]


def log_dir_is_a_file(root: Path) -> list[str]:
    (root / "logs").mkdir()
    (root / "logs" / "tiny").write_text("a file where the run's log directory should be\n")
    return config("logging.dir=logs")(root)


def weights_dir_as_resume_path(root: Path) -> list[str]:
    return config("resume_path=weights")(root)


def pretrain_text_file(root: Path) -> list[str]:
    (root / "notes.txt").write_text("these are not weights\n")
    return config("pretrain_path=notes.txt")(root)


def pretrain_list_file(root: Path) -> list[str]:
    torch.save([1, 2, 3], root / "list.pt")
    return config("pretrain_path=list.pt")(root)


class Payload:
    """Pickles into a call of Path.touch: code that would run if the file were unpickled unsafely."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


MARKER = "pwned"  # what the malicious pickle would create


def pretrain_malicious_pickle(root: Path) -> list[str]:
    torch.save({"params": {"w": torch.ones(1)}, "evil": Payload(root / MARKER)}, root / "evil.pth")
    return config("pretrain_path=evil.pth")(root)


def output_under_a_file(key: str) -> Setup:
    """`key` (checkpoint.dir or logging.dir) points under a regular file: it cannot be created.

    The tests run as root, for whom chmod does not make a directory unwritable.
    """

    def setup(root: Path) -> list[str]:
        (root / "afile").write_text("a regular file, not a directory\n")
        return config(f"{key}=afile/out")(root)

    return setup


def corrupt_image_in_the_first_batch(root: Path) -> list[str]:
    """An image folder of four 8x8 images, the third not an image: it is in the first batch (all
    four), and not sample 0, which ImageFolder itself reads when it is built."""
    from PIL import Image

    for name in ("a/0.png", "a/1.png", "b/0.png", "b/1.png"):
        (root / "images" / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8), color=(200, 30, 30)).save(root / "images" / name)
    (root / "images/b/0.png").write_bytes(b"not an image")
    document = tiny_config(
        model={"type": "SimpleCNN", "num_classes": 2, "in_channels": 3, "width": 4},
        data={"batch_size": 4, "train": {"type": "ImageFolder", "root": "images"}},
    )
    write_config(root / CONFIG, document)
    return ["-c", CONFIG]


def xfail(reason: str):
    return pytest.mark.xfail(reason=reason, strict=True)


# (setup, substrings the error line must contain), one per bad input
CASES = [
    pytest.param(
        lambda root: ["-c", "missing.yaml"], ["config file missing.yaml does not exist", "check the path"], id="config-missing"
    ),
    pytest.param(config_text(""), [f"config file {CONFIG} is empty"], id="config-empty"),
    pytest.param(
        config_text("name: tiny\nmodel: {type: SimpleCNN\nloss: {type: CrossEntropyLoss}\n"),
        [f"{CONFIG}: not valid YAML at line 3, column 5"],
        id="config-not-yaml",
    ),
    pytest.param(
        config_text("- name: tiny\n- seed: 0\n"), ["the top level is a list, expected a mapping"], id="config-top-level-list"
    ),
    pytest.param(config(nmae="tiny"), ["config key nmae is unknown; did you mean name?"], id="unknown-top-level-key"),
    pytest.param(
        config(**nested("train.total_iter", 30)),
        ["config key train.total_iter is unknown; did you mean train.total_iters?"],
        id="unknown-nested-key",
    ),
    pytest.param(
        config(**nested("train.total_iters", "abc")),
        ["config key train.total_iters: got 'abc' (string), expected an integer"],
        id="wrong-type",
    ),
    pytest.param(
        config("train.total_iters=0"), ["config key train.total_iters: got 0", "expected an integer >= 1"], id="zero-total-iters"
    ),
    pytest.param(
        config("train.val_interval=-5"),
        ["config key train.val_interval: got -5", "expected an integer >= 1"],
        id="negative-val-interval",
    ),
    pytest.param(
        config(**nested("checkpoint.interval", 0)),
        ["config key checkpoint.interval: got 0", "expected an integer >= 1"],
        id="zero-checkpoint-interval",
    ),
    pytest.param(
        config("data.batch_size=-32"),
        ["config key data.batch_size: got -32", "expected an integer >= 1"],
        id="negative-batch-size",
    ),
    pytest.param(
        config("optimizer.lr=-1"), ["config key optimizer: optimizer AdamW", "Invalid learning rate: -1"], id="negative-lr"
    ),
    pytest.param(
        config("model.type=SimpleCN"),
        ["config key model: unknown model type 'SimpleCN'; did you mean SimpleCNN"],
        id="unknown-model-type",
    ),
    pytest.param(
        config("optimizer.type=AdamWW"),
        ["config key optimizer: unknown optimizer type 'AdamWW'; did you mean AdamW"],
        id="unknown-optimizer-type",
    ),
    pytest.param(
        config("model.type=nope.Net"),
        ["config key model: model type 'nope.Net': cannot import module 'nope'"],
        id="dotted-path-does-not-import",
    ),
    pytest.param(
        config("train.total_iters"), ["override 'train.total_iters' has no '='; write KEY=VALUE"], id="override-without-equals"
    ),
    pytest.param(
        config("train.total_iter=5"),
        ["config key train.total_iter is unknown; did you mean train.total_iters?"],
        id="override-of-unknown-key",
    ),
    pytest.param(base_cycle, ["config `base` cycle:", "a.yaml -> ", "b.yaml -> "], id="base-cycle"),
    pytest.param(base_missing, [f"config key base in {CONFIG}: parent.yaml does not exist"], id="base-missing"),
    pytest.param(
        config("val.metric=loss"),
        ["config key val.metric: got 'loss', expected one of the metric names ['accuracy']"],
        id="val-metric-not-a-metric",
    ),
    pytest.param(
        config("train.amp=fp8"),
        ["config key train.amp: got 'fp8' (string), expected one of 'none', 'bf16', 'fp16'"],
        id="bad-enum",
    ),
    pytest.param(
        config("resume_path=weights/nowhere.pt"), ["resume_path weights/nowhere.pt does not exist"], id="resume-path-missing"
    ),
    pytest.param(
        config(f"resume_path={EARLIER_WEIGHTS}"),
        [f"resume_path {EARLIER_WEIGHTS} is a weight-only .pth", "set pretrain_path instead"],
        id="resume-path-is-a-pth",
    ),
    pytest.param(
        config(f"resume_path={EARLIER_CHECKPOINT}"),
        [f"resume_path {EARLIER_CHECKPOINT} does not match the model (", "missing: features.0.weight"],
        id="resume-path-of-another-architecture",
    ),
    pytest.param(
        pretrain_text_file, ["pretrain_path notes.txt is corrupt, truncated or not a PyTorch file"], id="pretrain-text-file"
    ),
    pytest.param(
        pretrain_list_file, ["pretrain_path list.pt holds no state dict", "set pretrain_key"], id="pretrain-holds-a-list"
    ),
    pytest.param(
        pretrain_malicious_pickle,
        ["pretrain_path evil.pth was refused: it holds Python objects other than tensors"],
        id="pretrain-malicious-pickle",
    ),
    pytest.param(
        config(device="cuda"),
        ["config key device: 'cuda' was asked for but CUDA is not available here"],
        id="device-cuda-without-gpu",
        marks=pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU"),
    ),
    pytest.param(
        output_under_a_file("checkpoint.dir"),
        ["config key checkpoint.dir: afile/out cannot be written because", "afile is a file, not a directory"],
        id="checkpoint-dir-not-writable",
    ),
    pytest.param(
        log_dir_is_a_file,
        ["config key logging.dir: the run's log directory logs/tiny is a file, not a directory"],
        id="log-dir-is-a-file",
    ),
    pytest.param(
        weights_dir_as_resume_path,
        ["resume_path weights is a directory, not a checkpoint file"],
        id="resume-path-is-a-directory",
    ),
    pytest.param(
        output_under_a_file("logging.dir"),
        ["config key logging.dir: afile/out cannot be written because", "afile is a file, not a directory"],
        id="logging-dir-not-writable",
    ),
    pytest.param(
        config("data.batch_size=5000"),
        ["config key data.batch_size: 5000 is larger than the training set"],
        id="batch-larger-than-dataset",
    ),
    pytest.param(
        config("model.widht=8"),
        ["config key model: model SimpleCNN: got an unexpected keyword argument 'widht' (did you mean width?)"],
        id="model-unknown-argument",
    ),
    pytest.param(
        config(metrics=[{"type": "acuracy", "name": "accuracy"}]),
        ["config key metrics[0]: unknown metric type 'acuracy'; did you mean accuracy?"],
        id="metric-unknown-type",
    ),
    pytest.param(
        config("train.total_iters=2024-13-01"),
        ["override train.total_iters", "2024-13-01"],
        id="override-impossible-date",
    ),
    pytest.param(
        config("data.batch_size=0x_"),
        ["override data.batch_size", "0x_"],
        id="override-hex-without-digits",
    ),
    pytest.param(
        config(**{"seed\nx": 1}),
        ["config key", "is unknown"],
        id="unknown-key-with-a-line-break",
    ),
    pytest.param(
        base_too_long,
        [f"config key base in {CONFIG}"],
        id="base-path-too-long",
    ),
    pytest.param(
        config(pretrain_revise_keys=[["a{99999999999}", ""]]),
        ["config key pretrain_revise_keys[0]"],
        id="revise-regex-repeat-too-large",
    ),
    pytest.param(
        config(device="cpu\n"),
        ["config key device"],
        id="device-with-a-trailing-line-break",
    ),
    pytest.param(
        config_is_a_directory,
        ["config file configs is a directory, not a YAML file; pass the path of a .yaml file"],
        id="config-is-a-directory",
    ),
    pytest.param(
        base_is_a_directory, [f"config key base in {CONFIG}: bases is a directory, not a YAML file"], id="base-is-a-directory"
    ),
    pytest.param(
        config_text(yaml.safe_dump(tiny_config(), sort_keys=False) + "train:\n  amp: bf16\n"),
        [f"{CONFIG}: key 'train' appears twice (lines ", "merge the two blocks into one"],
        id="config-repeated-key",
    ),
    pytest.param(
        config("model={type: MLP, hidden: 8, hidden: 16}"),
        ["override model: key 'hidden' appears twice", "keep only one of them"],
        id="override-repeated-key",
    ),
    pytest.param(
        config(f"seed={2**64}"),
        [f"config key seed: got {2**64} (integer), expected an integer in [0, 2**63 - 1]"],
        id="seed-beyond-64-bits",
    ),
    pytest.param(
        config(model={"type": "resnet18", "num_classes": 10}),
        [
            "preflight: the model (resnet18) on a training batch of data.train (Digits) failed: RuntimeError:",
            "to have 3 channels",
            "check that model, loss and data fit together: inputs (32, 1, 8, 8) float32",
        ],
        id="model-does-not-fit-the-data",
    ),
    pytest.param(
        config(loss={"type": "MSELoss"}),
        [
            "preflight: the loss (MSELoss) on a training batch of data.train (Digits) failed: RuntimeError:",
            "output (32, 10) float32, targets (32,) int64",
        ],
        id="loss-does-not-fit-the-model",
    ),
    pytest.param(
        corrupt_image_in_the_first_batch,
        [
            "preflight: the first batch of data.train (ImageFolder) cannot be read: sample 2 of ImageFolder:",
            "cannot read image images/b/0.png (UnidentifiedImageError); remove it or replace it",
        ],
        id="corrupt-image-in-the-first-batch",
    ),
    pytest.param(
        config(scheduler={"type": "ReduceLROnPlateau"}, data={"batch_size": 32, "train": {"type": "Digits"}}),
        ["config key scheduler: ReduceLROnPlateau steps on val.metric at each validation, but there is no data.val"],
        id="plateau-scheduler-without-validation",
    ),
]


@pytest.mark.parametrize(("setup", "expected"), CASES)
def test_bad_input_exits_2_with_one_line_and_touches_no_file(
    earlier_run: Path, tmp_path: Path, setup: Setup, expected: list[str]
) -> None:
    root = tmp_path / "run"
    shutil.copytree(earlier_run, root)
    args = setup(root)
    before = snapshot(root)

    result = run_train(root, *args)

    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2, f"exit {result.returncode}; stderr:\n{result.stderr}"
    assert "Traceback" not in result.stderr, result.stderr
    assert lines, "stderr is empty"
    assert lines[-1].startswith("error: "), f"the last line of stderr is not the error: {lines[-1]!r}"
    assert [line for line in lines if line.startswith("error:")] == [lines[-1]], result.stderr
    for part in expected:
        assert part in lines[-1], f"{part!r} not in {lines[-1]!r}"
    after = snapshot(root)
    assert after == before, describe_changes(before, after)
    assert not (root / MARKER).exists(), "the malicious pickle's payload ran"


def test_matrix_covers_every_listed_bad_input() -> None:
    assert len(CASES) >= 28
    assert len({case.id for case in CASES}) == len(CASES)


def test_snapshot_sees_a_created_a_moved_and_a_changed_file(tmp_path: Path) -> None:
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights/a.pth").write_bytes(b"a")
    (tmp_path / "train.log").write_text("line\n")
    before = snapshot(tmp_path)
    assert snapshot(tmp_path) == before
    (tmp_path / "weights/archived").mkdir()
    (tmp_path / "weights/a.pth").rename(tmp_path / "weights/archived/a.pth")
    (tmp_path / "train.log").write_text("line\nmore\n")
    after = snapshot(tmp_path)
    assert after != before
    assert describe_changes(before, after) == (
        "removed or moved: ['weights/a.pth']; created: ['weights/archived', 'weights/archived/a.pth']; changed: ['train.log']"
    )


def test_earlier_run_is_a_real_mlp_checkpoint(earlier_run: Path) -> None:
    """The other-architecture case relies on this: the earlier run's .pt holds an MLP."""
    checkpoint = torch.load(earlier_run / EARLIER_CHECKPOINT, weights_only=True)
    assert checkpoint["config"]["model"]["type"] == "MLP"
    assert any(key.startswith("net.") for key in checkpoint["model"])
    assert yaml.safe_load((earlier_run / "experiments/tiny/config.yaml").read_text())["name"] == "tiny"
