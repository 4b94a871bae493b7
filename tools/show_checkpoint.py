"""Show what a checkpoint holds: python tools/show_checkpoint.py PATH.

Prints the format (full .pt, weight-only .pth, safetensors or another tool's file), iteration,
epoch, best metrics, parameter count and size, the checksums checked, the top-level keys, and
the run's config as YAML. Files are read with `torch.load(weights_only=True)` (through
trainer.checkpoint.load_file) or safetensors, so showing an untrusted file never runs code from it.

Nothing damaged is called good: a file whose records do not match their CRC-32 is one `error:`
line (exit 2), as resume_path would say; a sharded .dcp directory is `complete` only when every
file its .metadata names is there with the size it implies and every recorded CRC-32 matches,
else `damaged: <the file and what is wrong>`. Parameters are counted as the run's log counts
them: a tensor tied under two names (GPT's lm_head.weight is its token embedding) once.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

# Run as `python tools/show_checkpoint.py` from the repo root: the script's own folder is on
# sys.path, the repo root (where trainer/ lives) is not.
REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from utils.cli import OneLineErrorParser, run_tool  # noqa: E402  (needs the repo root on sys.path)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """PATH."""
    parser = OneLineErrorParser(
        prog="tools/show_checkpoint.py",
        description="Show what a .pt, .pth or .safetensors file, or a sharded .dcp directory, holds.",
        epilog="example: python tools/show_checkpoint.py weights/digits_cnn_best.pt",
    )
    parser.add_argument("path", help="the checkpoint file or sharded checkpoint directory")
    return parser.parse_args(argv)


def describe(path: Path) -> tuple[list[tuple[str, str]], dict | None]:
    """([(label, text), ...], the saved config or None) for the file at `path`."""
    import torch

    from trainer.checkpoint import (
        KEY_BEST,
        KEY_CONFIG,
        KEY_EPOCH,
        KEY_FORMAT,
        KEY_ITERATION,
        KEY_MODEL,
        KEY_WEIGHTS,
        load_file,
    )
    from trainer.checkpoint.formats import format_of
    from trainer.errors import InputError

    if format_of(path).is_directory:  # trainer/checkpoint/formats: a sharded .dcp directory (or its .partial)
        return _describe_sharded(path)
    if not path.exists():
        raise InputError(f"checkpoint {path} does not exist; check the path")
    if path.suffix == ".safetensors" and path.is_file():
        size = f"{path} ({path.stat().st_size / 1e6:.2f} MB)"
        return [("file", size), *_describe_safetensors(path)], None
    obj = load_file(path, "checkpoint")  # a directory: says what to give instead; damaged records: exit 2
    size = f"{path} ({path.stat().st_size / 1e6:.2f} MB)"
    keys = _first_keys(obj) if isinstance(obj, dict) else f"none (a {type(obj).__name__})"
    if isinstance(obj, dict) and KEY_FORMAT in obj:
        rows = [
            ("format", f"full checkpoint (.pt), format_version {obj[KEY_FORMAT]}"),
            ("iteration", str(obj.get(KEY_ITERATION, "?"))),
            ("epoch", str(obj.get(KEY_EPOCH, "?"))),
            ("best", best_text(obj.get(KEY_BEST) or {})),
            ("parameters", tensor_summary(obj.get(KEY_MODEL) or {}, "model")),
            ("ema", "yes: the .pth beside it holds the EMA weights" if obj.get("ema") else "no"),
            *_base_rows(obj),
        ]
        config = obj.get(KEY_CONFIG)
    elif isinstance(obj, dict) and set(obj) == {KEY_WEIGHTS}:
        rows = [
            ("format", 'weight-only (.pth): {"params": state_dict}'),
            ("iteration", "not stored (a .pth holds only weights; the .pt of the same name has the rest)"),
            ("parameters", tensor_summary(obj[KEY_WEIGHTS])),
        ]
        config = None
    else:
        bare = isinstance(obj, dict) and bool(obj) and all(isinstance(value, torch.Tensor) for value in obj.values())
        what = "a bare state dict (as torchvision and timm save)" if bare else "not a Kiln checkpoint"
        rows = [("format", f"other: {what}"), ("parameters", _foreign_weights(obj, path))]
        config = None
    return [("file", size), *rows, ("checksums", _record_checksums(path)), ("top-level keys", keys)], config


def describe_location(location: str) -> tuple[list[tuple[str, str]], dict | None]:
    """`describe` for a local path or a URL (`s3://...`: read from a temporary download, shown by its URL)."""
    from trainer.checkpoint.storage import is_url, local_copy

    if not is_url(location):
        return describe(Path(location))
    with local_copy(location, "checkpoint") as local:
        rows, config = describe(local)
    return [(label, text.replace(str(local), location)) for label, text in rows], config


def _describe_sharded(path: Path) -> tuple[list[tuple[str, str]], dict | None]:
    """Rows for a sharded checkpoint directory: complete, incomplete or damaged, who saved it, what it holds."""
    from trainer.checkpoint import KEY_BEST, KEY_CONFIG, KEY_EPOCH, KEY_ITERATION, dcp, load_file
    from trainer.errors import InputError

    size = f"{path} ({dcp.describe_size(path) / 1e6:.2f} MB in {sum(1 for _ in path.iterdir())} files)"
    status, checksums = _sharded_status(path)
    rows = [("file", size), ("format", f"sharded checkpoint (torch.distributed.checkpoint), {status}")]
    if not (path / dcp.STATE_FILE).is_file():
        return rows, None
    try:
        state = load_file(path / dcp.STATE_FILE, "checkpoint")
    except InputError:
        if status.startswith("damaged"):  # kiln_state.pt itself: the status row has said so
            return rows, None
        raise
    processes = state.get(dcp.KEY_WORLD_SIZE, "?")
    rows += [
        ("saved by", f"{processes} process{'es' if processes != 1 else ''} (resumes on any number)"),
        ("iteration", str(state.get(KEY_ITERATION, "?"))),
        ("epoch", str(state.get(KEY_EPOCH, "?"))),
        ("best", best_text(state.get(KEY_BEST) or {})),
        *_base_rows(state),
    ]
    if checksums is not None:  # complete and intact: the tensors can be read
        rows += [("parameters", _sharded_parameters(path, state)), ("checksums", checksums)]
    return rows, state.get(KEY_CONFIG)


def _base_rows(obj: dict) -> list[tuple[str, str]]:
    """The `base` row of a LoRA run's checkpoint (it holds the adapters; the frozen base is named
    by path and sha256); none for a checkpoint that holds its whole model."""
    from trainer.checkpoint.frozen_base import KEY_BASE

    base = obj.get(KEY_BASE)
    if not isinstance(base, dict):
        return []
    where = base.get("path") or "the seed's initialisation (no pretrain_path)"
    return [("base", f"{where}, sha256 {base.get('sha256')} (frozen; the model entries are the LoRA adapters)")]


def _sharded_status(path: Path) -> tuple[str, str | None]:
    """(`complete`, `incomplete (why ...)` or `damaged: what ...`; the checksums row when complete and intact)."""
    from trainer.checkpoint import dcp

    if not dcp.is_complete(path):
        return f"incomplete ({dcp.incomplete_reason(path)}; never resumed from)", None
    damage, checked = dcp.find_damage(path)
    if damage is not None:
        return f"damaged: {damage} (resume_path and pretrain_path refuse it; resume_path=auto skips it)", None
    if checked:
        return "complete", f"CRC-32 of {checked} files match what was written"
    return "complete", "none recorded (written before Kiln recorded them); every shard has the size .metadata implies"


def _sharded_parameters(path: Path, state: dict) -> str:
    """'119,104 in 11 tensors (model); lm_head.weight is transformer.wte.weight (tied, counted once)'.

    A sharded checkpoint stores a tied tensor under each of its names. A model entry the
    optimizer does not hold (it holds each Parameter once, by its first name) that is equal to
    one of the same shape it does hold is that tensor's second name: counted once, as the
    run's log counts `model.parameters()`.
    """
    from trainer.checkpoint import dcp

    shapes = dcp.model_shapes(path)
    groups = (state.get("optimizer") or {}).get("param_groups") or []
    trained = {name for group in groups for name in group.get("params", []) if isinstance(name, str) and name in shapes}
    tied = _tied_entries(path, shapes, trained)
    count = sum(_numel(shape) for key, shape in shapes.items() if key not in tied)
    return f"{count:,} in {len(shapes) - len(tied)} tensors (model)" + _tied_note(tied)


def _tied_entries(path: Path, shapes: dict[str, tuple[int, ...]], trained: set[str]) -> dict[str, str]:
    """{second name: first name} of the model entries of a sharded checkpoint that repeat a trained tensor."""
    import torch

    from trainer.checkpoint import dcp

    candidates = {key for key in shapes if key not in trained and any(shapes[name] == shapes[key] for name in trained)}
    if not candidates:
        return {}
    partners = {name for name in trained if any(shapes[name] == shapes[key] for key in candidates)}
    tensors = dcp.load_entries(path, [f"model.{key}" for key in sorted(candidates | partners)])
    tied = {}
    for key in sorted(candidates):
        same = [name for name in sorted(partners) if torch.equal(tensors[f"model.{key}"], tensors[f"model.{name}"])]
        if same:
            tied[key] = same[0]
    return tied


def _tied_note(tied: dict[str, str]) -> str:
    """'; lm_head.weight is transformer.wte.weight (tied, counted once)', or '' without ties."""
    if not tied:
        return ""
    pairs = ", ".join(f"{second} is {first}" for second, first in sorted(tied.items()))
    return f"; {pairs} (tied, counted once)"


def _record_checksums(path: Path) -> str:
    """The checksums row of a PyTorch file (load_file has checked them: they match)."""
    from trainer.checkpoint.files import check_records

    checked = check_records(path, "checkpoint")
    if checked:
        return f"CRC-32 of {checked} records match what was written"
    return "none recorded (not a zip archive, or saved with CRC-32 off): nothing to check"


def _numel(shape: tuple[int, ...]) -> int:
    """The number of elements of a tensor of `shape`."""
    count = 1
    for size in shape:
        count *= size
    return count


def _first_keys(obj: dict, limit: int = 12) -> str:
    """The first `limit` top-level keys, and how many more there are."""
    keys = [str(key) for key in obj]
    more = f" (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def _describe_safetensors(path: Path) -> list[tuple[str, str]]:
    """Rows for a .safetensors file (tensors and metadata; no pickle involved)."""
    from trainer.errors import InputError

    try:
        from safetensors import safe_open
        from safetensors.torch import load_file as load_safetensors

        tensors = load_safetensors(path)
        with safe_open(path, framework="pt") as file:
            metadata = file.metadata() or {}
    except ImportError:
        raise InputError("reading .safetensors needs the safetensors package; pip install -r requirements.txt") from None
    except Exception as error:  # noqa: BLE001 - safetensors raises its own error types for damaged files
        raise InputError(f"checkpoint {path} is not a readable safetensors file ({error}); use another file") from None
    return [
        ("format", "safetensors"),
        ("parameters", tensor_summary(tensors)),
        ("metadata", ", ".join(f"{key}={value}" for key, value in metadata.items()) or "none"),
    ]


def _foreign_weights(obj: Any, path: Path) -> str:
    """The parameter summary of the state dict `pretrain_key: auto` would find, or why there is none."""
    from trainer.checkpoint import extract_weights
    from trainer.errors import InputError

    try:
        return tensor_summary(extract_weights(obj, "auto", path), "what pretrain_key: auto finds")
    except InputError:
        return "no state dict under params, model or state_dict, nor at the top level (set pretrain_key to use it)"


def tensor_summary(state: dict, note: str = "") -> str:
    """'151,306 in 8 tensors, 0.61 MB (note)': values (parameters and buffers) and their size; a
    tensor saved under two names (tied weights: torch.save keeps them one storage) counts once."""
    import torch

    first_name: dict[tuple, str] = {}
    tied: dict[str, str] = {}
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            continue
        view = (value.untyped_storage().data_ptr(), value.storage_offset(), value.dtype, tuple(value.shape), value.stride())
        if value.numel() and view in first_name:
            tied[str(key)] = first_name[view]
        else:
            first_name[view] = str(key)
    tensors = [value for key, value in state.items() if isinstance(value, torch.Tensor) and str(key) not in tied]
    count = sum(tensor.numel() for tensor in tensors)
    size = sum(tensor.numel() * tensor.element_size() for tensor in tensors) / 1e6
    described = f" ({note})" if note else ""
    return f"{count:,} in {len(tensors)} tensors, {size:.2f} MB{described}" + _tied_note(tied)


def best_text(best: dict) -> str:
    """'accuracy 0.9861 @ iter 250', or that there is none yet."""
    metrics = {key: value for key, value in best.items() if key != "iteration"}
    if not metrics:
        return "none yet (no validation before this save)"
    values = ", ".join(f"{name} {value:.6g}" for name, value in metrics.items())
    return f"{values} @ iter {best['iteration']}" if "iteration" in best else values


def render(rows: list[tuple[str, str]], config: dict | None) -> str:
    """Aligned `label: text` lines, then the config as YAML indented under `config:`."""
    import yaml

    width = max(len(label) for label, _ in rows) + 1
    lines = [f"{label + ':':<{width}} {text}" for label, text in rows]
    if config is not None:
        text = yaml.safe_dump(config, sort_keys=False, default_flow_style=None, width=100)
        lines += ["config:", *(f"  {line}" for line in text.splitlines())]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Parse, describe, print; exit 2 with one line on a bad input."""
    args = parse_args(argv)  # before importing torch, so --help stays fast
    from trainer.errors import REPORTED_ERRORS, report_error

    try:
        rows, config = describe_location(args.path)
    except REPORTED_ERRORS as error:
        return report_error(error)
    print(render(rows, config))
    return 0


if __name__ == "__main__":
    run_tool(main)  # exits 141, without a traceback, when the reader of the output went away
