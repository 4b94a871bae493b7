"""Reading one weights or checkpoint file safely: `torch.load(..., weights_only=True)` for
PyTorch files, safetensors for `.safetensors` files and Hugging Face folders; a URL is read
from a temporary download. Any failure is one InputError line naming the file.

Integrity: a PyTorch file is a zip archive whose every record (the pickled structure
`data.pkl`, each tensor's storage `data/<n>`) carries the CRC-32 torch.save computed while it
wrote it. torch.load never checks them, so a flipped byte in a tensor loads silently;
`check_records` checks them all before the file is unpickled, and a mismatch is an InputError
saying the file is damaged. The .pth stays plain `{"params": state_dict}`: its checksums are
inside the file, so they travel with every copy of it.
"""

from __future__ import annotations

import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import torch

from trainer.checkpoint import weight_files
from trainer.checkpoint.storage import is_url, local_copy
from trainer.errors import InputError, first_line

DAMAGED_FIX = "use an intact copy or another checkpoint"  # the fix of every "is damaged" error
_CHUNK = 8 * 2**20


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
    check_records(path, what)
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


def check_records(path: Path, what: str) -> int:
    """Check the CRC-32 of every record of the PyTorch zip file `path`; return how many were checked.

    InputError naming the file and the record when one does not match. A record whose stored
    CRC is 0 has none (torch.save with `torch.utils.serialization.config.save.compute_crc32`
    off), and a file that is no zip archive (torch's legacy format, another tool's file) holds
    none: those are left to torch.load, which judges what it can.
    """
    if not zipfile.is_zipfile(path):
        return 0
    checked, name = 0, None
    try:
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                name = info.filename
                if info.CRC == 0:  # nothing recorded (an empty record's CRC is 0 too): nothing to check
                    continue
                with archive.open(info) as record:  # zipfile compares the CRC-32 once the record is read to its end
                    while record.read(_CHUNK):
                        pass
                checked += 1
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as error:
        raise InputError(f"{what} {path} is damaged: {_record_damage(name, first_line(error))}; {DAMAGED_FIX}") from None
    return checked


def _record_damage(name: str | None, reason: str) -> str:
    """What `check_records` found wrong with the record `name` (None: the archive's directory)."""
    if name is None:
        return f"its zip directory is unreadable ({reason})"
    if reason.startswith("Bad CRC-32"):
        return f"its record {name} does not match the CRC-32 saved with it, so its bytes changed after it was written"
    return f"its record {name} is unreadable ({reason})"
