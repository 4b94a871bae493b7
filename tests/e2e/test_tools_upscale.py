"""tools/upscale.py: a config and weights turn an image into a PNG `scale` times its size."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from models.simple_cnn import SimpleCNN
from models.sr import EDSR
from tests.helpers import REPO, load_tool, tiny_config, write_config

UPSCALE_PY = REPO / "tools" / "upscale.py"
MODEL = {"type": "EDSR", "scale": 2, "num_features": 8, "num_blocks": 1}


@pytest.fixture
def inputs(tmp_path: Path) -> dict[str, Path]:
    """A config with a tiny EDSR x2, its untrained weights as .pth, and a 20x30 RGB image."""
    config = write_config(tmp_path / "sr.yaml", tiny_config(model=MODEL))
    torch.manual_seed(0)
    weights = tmp_path / "edsr.pth"
    torch.save({"params": EDSR(**{k: v for k, v in MODEL.items() if k != "type"}).state_dict()}, weights)
    image = tmp_path / "small.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)).save(image)
    return {"config": config, "weights": weights, "image": image, "output": tmp_path / "out" / "big.png"}


def test_run_from_the_repo_root_writes_a_png_twice_the_size(inputs):
    inputs["output"].parent.mkdir()
    result = subprocess.run(
        [sys.executable, "tools/upscale.py", "-c", inputs["config"], "--weights", inputs["weights"], inputs["image"]]
        + ["-o", inputs["output"]],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    with Image.open(inputs["output"]) as written:
        assert (written.format, written.mode, written.size) == ("PNG", "RGB", (60, 40))
        pixels = torch.from_numpy(np.array(written)).permute(2, 0, 1)
    # An untrained EDSR is exactly bicubic upscaling (its tail starts at zero).
    with Image.open(inputs["image"]) as original:
        lr = torch.from_numpy(np.array(original)).permute(2, 0, 1)[None].float() / 255
    bicubic = F.interpolate(lr, scale_factor=2, mode="bicubic", align_corners=False).clamp(0, 1)
    assert torch.equal(pixels, bicubic[0].mul(255).round().byte())


def test_tiles_give_the_same_image_as_one_pass():
    tool = load_tool("upscale")
    torch.manual_seed(0)
    model = EDSR(scale=3, num_features=8, num_blocks=1, bicubic_skip=False).eval()
    image = torch.rand(1, 3, 23, 17)
    whole = tool.upscale(model, image)
    # The receptive field is 6 LR pixels wide on each side: 8 pixels of context hide every seam.
    tiled = tool.upscale(model, image, tile=8, tile_pad=8)
    assert tiled.shape == (1, 3, 69, 51)
    assert torch.allclose(tiled, whole, atol=1e-5)


def run_main(capsys, *argv) -> tuple[int, str]:
    code = load_tool("upscale").main([str(arg) for arg in argv])
    return code, capsys.readouterr().err


def test_a_missing_image_is_exit_2_with_one_line(inputs, capsys):
    code, err = run_main(capsys, "-c", inputs["config"], "--weights", inputs["weights"], "nope.png", "-o", inputs["output"])
    assert code == 2 and err == "error: image nope.png does not exist; check the path\n"


def test_a_file_that_is_not_an_image_is_exit_2(inputs, capsys):
    inputs["image"].write_bytes(b"garbage")
    code, err = run_main(capsys, "-c", inputs["config"], "--weights", inputs["weights"], inputs["image"], "-o", inputs["output"])
    assert code == 2 and err.startswith(f"error: cannot read image {inputs['image']}") and err.count("\n") == 1


def test_corrupt_weights_are_exit_2(inputs, capsys):
    inputs["weights"].write_bytes(b"\x80\x02 not a checkpoint")
    code, err = run_main(capsys, "-c", inputs["config"], "--weights", inputs["weights"], inputs["image"], "-o", inputs["output"])
    assert code == 2 and "is corrupt, truncated or not a PyTorch file" in err and err.count("\n") == 1


def test_weights_of_another_architecture_are_exit_2(inputs, capsys):
    inputs["output"].parent.mkdir()
    torch.save({"params": EDSR(num_features=16, num_blocks=1).state_dict()}, inputs["weights"])
    code, err = run_main(capsys, "-c", inputs["config"], "--weights", inputs["weights"], inputs["image"], "-o", inputs["output"])
    assert code == 2 and "does not match the model" in err and err.count("\n") == 1
    assert list(inputs["output"].parent.iterdir()) == []  # nothing written, not even a temporary file


def test_an_unwritable_output_is_exit_2(inputs, capsys):
    output = inputs["image"].parent / "no" / "such" / "dir" / "out.png"
    code, err = run_main(capsys, "-c", inputs["config"], "--weights", inputs["weights"], inputs["image"], "-o", output)
    assert code == 2 and err.startswith(f"error: cannot write {output}") and err.count("\n") == 1


def test_a_non_sr_config_is_exit_2_saying_so(inputs, capsys, tmp_path):
    digits = write_config(tmp_path / "digits.yaml", tiny_config())
    torch.save({"params": SimpleCNN(num_classes=10, width=8).state_dict()}, inputs["weights"])
    code, err = run_main(capsys, "-c", digits, "--weights", inputs["weights"], inputs["image"], "-o", inputs["output"])
    assert code == 2 and err.count("\n") == 1
    assert err.startswith(f"error: config {digits} is not a super-resolution model: for a (1, 3, 8, 8) image it gives ")
    assert not inputs["output"].parent.exists()


@pytest.mark.parametrize(("suffix", "fmt"), [(".jpg", "JPEG"), (".webp", "WEBP"), (".PNG", "PNG")])
def test_the_output_suffix_picks_the_format(inputs, capsys, suffix, fmt):
    output = inputs["output"].with_suffix(suffix)
    output.parent.mkdir()
    code, _ = run_main(capsys, "-c", inputs["config"], "--weights", inputs["weights"], inputs["image"], "-o", output)
    assert code == 0
    with Image.open(output) as written:
        assert written.format == fmt and written.size == (60, 40)


def test_an_unknown_output_suffix_is_refused_before_any_work(inputs, capsys):
    code, err = run_main(capsys, "-c", inputs["config"], "--weights", inputs["weights"], inputs["image"], "-o", "out.xyz")
    assert code == 2 and err == "error: -o out.xyz: .xyz names no image format Pillow writes; use .png, .jpg or .webp\n"


def test_the_input_is_never_overwritten_without_force(inputs, capsys):
    original = inputs["image"].read_bytes()
    argv = ["-c", inputs["config"], "--weights", inputs["weights"], inputs["image"], "-o", inputs["image"]]
    code, err = run_main(capsys, *argv)
    assert code == 2
    assert err == f"error: -o {inputs['image']} is the input image; pass --force to overwrite it, or give another -o\n"
    assert inputs["image"].read_bytes() == original
    assert run_main(capsys, *argv, "--force")[0] == 0
    with Image.open(inputs["image"]) as written:
        assert written.size == (60, 40)


def test_an_existing_output_is_kept_without_force(inputs, capsys):
    inputs["output"].parent.mkdir()
    inputs["output"].write_bytes(b"the user's file")
    code, err = run_main(capsys, "-c", inputs["config"], "--weights", inputs["weights"], inputs["image"], "-o", inputs["output"])
    assert code == 2 and err.startswith(f"error: -o {inputs['output']} exists; pass --force")
    assert inputs["output"].read_bytes() == b"the user's file"
