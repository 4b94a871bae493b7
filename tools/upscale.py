"""Upscale an image with a trained SR model: python tools/upscale.py -c CONFIG --weights W.pth IN.png -o OUT.png."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported inside the functions, so that --help answers at once
    import torch
    from torch import nn

# Run as `python tools/upscale.py`, Python puts tools/ (not the repo root) on sys.path; the root
# is needed to import Kiln's packages (trainer, models, data) without installing them.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """-c CONFIG, --weights PATH, IMAGE, -o OUT.png, and --tile for large images."""
    parser = argparse.ArgumentParser(
        description="Upscale one image with the model a training config describes and trained weights.",
        epilog="example: python tools/upscale.py -c configs/sr_edsr_x2.yaml --weights weights/sr_edsr_x2_best.pth "
        "photo.png -o photo_x2.png",
    )
    parser.add_argument("-c", "--config", required=True, help="the training config (its `model` is built)")
    parser.add_argument("--weights", required=True, help="a .pth (weight-only) or .pt (full) checkpoint")
    parser.add_argument("image", help="the low-resolution input image (png, jpg, bmp, ...)")
    parser.add_argument("-o", "--output", required=True, help="where to write the upscaled image; its suffix picks the format")
    parser.add_argument("--force", action="store_true", help="overwrite OUT if it exists (never the input without it)")
    parser.add_argument("--tile", type=int, default=0, help="process in LR tiles of this size to bound memory (0: whole)")
    parser.add_argument("--tile-pad", type=int, default=8, help="LR pixels of context around each tile (hides seams)")
    args = parser.parse_args(argv)
    if args.tile < 0 or args.tile_pad < 0:
        parser.error("--tile and --tile-pad must be >= 0")  # exits 2 with the usage line
    return args


def load_model(config_path: str, weights_path: str) -> tuple[nn.Module, torch.device]:
    """The config's model with the weights loaded strictly, in eval mode on the config's device."""
    from trainer.build import import_plugins
    from trainer.checkpoint import load_model_state, read_weights
    from trainer.config import load_config
    from trainer.distributed.device import resolve_device
    from trainer.registry import MODELS, build

    config = load_config(config_path)
    import_plugins(config.imports)  # registers Kiln's models and the config's own plugins
    device = resolve_device(config.device)
    model = build(MODELS, config.model, key="model")
    state = read_weights(weights_path, "auto", [])
    load_model_state(model, state, strict=True, source=f"--weights {weights_path}", fix="pass weights trained with this config")
    return model.to(device).eval(), device


def upscale(model: nn.Module, image: torch.Tensor, tile: int = 0, tile_pad: int = 8) -> torch.Tensor:
    """(1, C, h, w) -> (1, C, H, W) in [0, 1]; with `tile`, tile by tile with `tile_pad` pixels of context."""
    import torch

    with torch.no_grad():
        if tile <= 0 or max(image.shape[-2:]) <= tile:
            return model(image).clamp(0, 1)
        height, width = image.shape[-2:]
        output = None
        for top in range(0, height, tile):
            for left in range(0, width, tile):
                # Run on the tile plus its context, then keep only the tile's own part of the output.
                y0, x0 = max(top - tile_pad, 0), max(left - tile_pad, 0)
                y1, x1 = min(top + tile + tile_pad, height), min(left + tile + tile_pad, width)
                piece = model(image[..., y0:y1, x0:x1])  # (1, C, (y1-y0)*s, (x1-x0)*s)
                scale = piece.shape[-1] // (x1 - x0)
                if output is None:
                    output = image.new_zeros(1, piece.shape[1], height * scale, width * scale)
                bottom, right = min(top + tile, height), min(left + tile, width)
                output[..., top * scale : bottom * scale, left * scale : right * scale] = piece[
                    ..., (top - y0) * scale : (bottom - y0) * scale, (left - x0) * scale : (right - x0) * scale
                ]
        return output.clamp(0, 1)


def output_format(output: str, image: str, force: bool) -> str:
    """The PIL format -o's suffix names (.png, .jpg, .webp, ...); InputError for an unknown suffix
    or an existing file (the input above all) without --force."""
    from PIL import Image

    from trainer.errors import InputError

    target = Path(output)
    fmt = Image.registered_extensions().get(target.suffix.lower())
    if fmt is None or fmt not in Image.SAVE:
        suffix = target.suffix or "no suffix"
        raise InputError(f"-o {output}: {suffix} names no image format Pillow writes; use .png, .jpg or .webp")
    if target.exists() and not force:
        what = "is the input image" if target.resolve() == Path(image).resolve() else "exists"
        raise InputError(f"-o {output} {what}; pass --force to overwrite it, or give another -o")
    return fmt


def check_is_sr(model: nn.Module, device: torch.device, config_path: str) -> None:
    """InputError unless the model maps a (1, 3, h, w) image to a larger (1, 3, H, W) one."""
    import torch

    from trainer.errors import InputError, first_line

    probe = torch.zeros(1, 3, 8, 8, device=device)
    try:
        with torch.no_grad():
            shape = tuple(model(probe).shape)
    except Exception as error:  # noqa: BLE001 - any failure means: not an RGB image-to-image model
        shape = f"an error ({first_line(error)})"
    if not (isinstance(shape, tuple) and len(shape) == 4 and shape[:2] == (1, 3) and shape[2] > 8 and shape[3] > 8):
        raise InputError(
            f"config {config_path} is not a super-resolution model: for a (1, 3, 8, 8) image it gives {shape}, not a "
            "larger (1, 3, H, W) image; pass an SR config such as configs/sr_edsr_x2.yaml"
        )


def save_image(image: torch.Tensor, path: str, fmt: str) -> None:
    """Write a (1, C, H, W) tensor in [0, 1] as an 8-bit image in `fmt`, atomically (no half-written file)."""
    from PIL import Image

    from utils.io import atomic_write

    pixels = image[0].mul(255).round().byte().permute(1, 2, 0).cpu().numpy()  # (H, W, C) uint8
    picture = Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels)
    atomic_write(path, lambda file: picture.save(file, format=fmt))


def main(argv: list[str] | None = None) -> int:
    """Load the model and image, upscale, write the PNG; exit 2 with one line on a bad input."""
    args = parse_args(argv)
    from data.sr import load_rgb
    from trainer.checkpoint.storage import is_url
    from trainer.errors import REPORTED_ERRORS, InputError, report_error

    try:
        if not Path(args.image).is_file():
            raise InputError(f"image {args.image} does not exist; check the path")
        fmt = output_format(args.output, args.image, args.force)
        if not is_url(args.weights) and not Path(args.weights).is_file():  # a URL is checked when it is read
            raise InputError(f"--weights {args.weights} does not exist; check the path (e.g. weights/<name>_best.pth)")
        try:
            image = load_rgb(args.image)[None]  # (1, 3, h, w)
        except ValueError as error:
            raise InputError(str(error)) from None
        model, device = load_model(args.config, args.weights)
        check_is_sr(model, device, args.config)
        output = upscale(model, image.to(device), args.tile, args.tile_pad)
        try:
            save_image(output, args.output, fmt)
        except OSError as error:
            raise InputError(f"cannot write {args.output} ({error.strerror or error}); check the -o path") from None
    except REPORTED_ERRORS as error:
        return report_error(error)
    print(f"wrote {args.output}: {tuple(image.shape[-2:])} -> {tuple(output.shape[-2:])}")
    return 0


if __name__ == "__main__":
    from utils.cli import run_tool

    run_tool(main)  # exits 141, without a traceback, when the reader of the output went away
