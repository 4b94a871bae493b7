"""Reading one weights or checkpoint file safely: `torch.load(..., weights_only=True)` for
PyTorch files, safetensors for `.safetensors` files and Hugging Face folders; a URL is read
from a temporary download. Any failure is one InputError line naming the file."""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any

import torch

from trainer.checkpoint import weight_files
from trainer.checkpoint.storage import is_url, local_copy
from trainer.errors import InputError, first_line


def load_file(path: str | Path, what: str) -> Any:
    """torch.load with weights_only=True (safetensors files and Hugging Face folders: their own
    loader, trainer/checkpoint/weight_files.py); any failure is one InputError line naming the file. A URL
    (`s3://...`) is downloaded to a temporary file first; its errors name the URL."""
    if is_url(path):
        with local_copy(str(path), what, companions=lambda copy: weight_files.shard_files(copy, what)) as local:
            return load_file(local, what)
    path = Path(path)
    if weight_files.is_safetensors(path):
        return weight_files.load(path, what)
    if path.is_dir():
        raise InputError(
            f"{what} {path} is a directory, not a checkpoint file; give the path of a .pt, .pth or .safetensors "
            f"file, of a folder with {weight_files.INDEX_NAME}, or of a sharded checkpoint (<name>_iter_<N>.dcp)"
        )
    if not path.is_file():
        raise InputError(f"{what} {path} does not exist; check the path")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        found = re.search(r"GLOBAL (\S+)", str(error))
        if found:
            raise InputError(
                f"{what} {path} was refused: it holds Python objects other than tensors and plain "
                f"containers ({found.group(1)}), which could run code when loaded; if you trust it, "
                "re-save just its state dict with torch.save"
            ) from None
        raise InputError(
            f"{what} {path} is corrupt, truncated or not a PyTorch file (unreadable pickle); use another file"
        ) from None
    except Exception as error:  # noqa: BLE001 - torch.load on damaged bytes raises all sorts (IndexError, EOFError, ...)
        reason = first_line(error)
        raise InputError(f"{what} {path} is corrupt, truncated or not a PyTorch file ({reason}); use another file") from None
