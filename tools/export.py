"""Export the weights of a checkpoint:
python tools/export.py CHECKPOINT [-o OUT] [--format pth|safetensors|pt|hf] [--merge] [--force].

- `--format pth` (default): the weight-only `{"params": state_dict}` the trainer writes, byte for
  byte, e.g. to recover a deleted `.pth` from its `.pt`.
- `--format safetensors`: the same tensors in a `.safetensors` file, for tools that read that
  format (it holds no pickle, so loading it can never run code).
- `--format pt`: the whole checkpoint as one full `.pt`, for a sharded checkpoint directory
  (`<name>_iter_<N>.dcp`, which CHECKPOINT may be for every format): consolidated in host
  memory, its optimizer state keyed by parameter name as FSDP's file checkpoints are.
- `--format hf`: a model directory in the Hugging Face layout (default OUT: CHECKPOINT's name
  with `_hf`), which `transformers.AutoModelForCausalLM.from_pretrained(OUT)` loads: config.json,
  model.safetensors (sharded above 5 GiB), generation_config.json and, when the run used an `hf`
  tokenizer, its files (trainer/checkpoint/hf_export.py). It needs a full checkpoint (.pt or
  .dcp), whose recorded config says the architecture: `model: {type: hf, ...}`, `GPT` (as GPT-2)
  or `Llama`; any other model is exit 2.

  A LoRA run's checkpoint (`train.lora`: it holds the adapters, and the identity of its frozen
  base) is written as a PEFT adapter directory (`adapter_config.json`, `adapter_model.safetensors`)
  that `peft.PeftModel.from_pretrained(transformers_model, OUT)` loads; with `--merge`, as the
  merged full model in the Hugging Face layout: the base is read again from the path the
  checkpoint records (its sha256 checked) and every adapted weight becomes W + (alpha / r) * B @ A.

From a full `.pt` it takes the weights the trainer's `.pth` of that iteration holds: the EMA
weights when the run used `train.ema`, else the model's. A `.pth` or another tool's state dict
(found as `pretrain_key: auto` finds it) works too, as do a `.safetensors` file and a Hugging
Face model folder or sharded index (read as pretrain_path reads them: trainer/checkpoint/weight_files.py).
An existing file is never overwritten unless --force is given; every write is atomic (temporary file, fsync, rename).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

# Run as `python tools/export.py` from the repo root: the script's own folder is on sys.path,
# the repo root (where trainer/ and utils/ live) is not.
REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from utils.cli import OneLineErrorParser, run_tool  # noqa: E402  (needs the repo root on sys.path)

SUFFIXES = {"pth": ".pth", "safetensors": ".safetensors", "pt": ".pt", "hf": "_hf"}
EMA_COUNTER = "n_averaged"  # AveragedModel's step counter, not a weight


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """CHECKPOINT, -o OUT, --format and --force."""
    parser = OneLineErrorParser(
        prog="tools/export.py",
        description="Write the weights of a checkpoint as a weight-only .pth or a .safetensors file.",
        epilog="example: python tools/export.py weights/digits_cnn_best.pt --format safetensors",
    )
    parser.add_argument(
        "checkpoint",
        help="a Kiln .pt, .pth or sharded .dcp directory, another tool's state dict, a .safetensors file, or a Hugging Face "
        "model folder or sharded index",
    )
    parser.add_argument("-o", "--output", help="where to write (default: CHECKPOINT with the format's suffix)")
    parser.add_argument("--format", choices=sorted(SUFFIXES), default="pth", help="pth (default), safetensors, pt or hf")
    parser.add_argument("--force", action="store_true", help="overwrite OUT if it exists")
    parser.add_argument(
        "--merge", action="store_true", help="with --format hf, of a LoRA checkpoint: the base with the adapters merged in"
    )
    return parser.parse_args(argv)


def weights_of(obj: Any, path: Path) -> tuple[dict, str]:
    """(state dict, where it came from) of a loaded checkpoint, as the trainer's .pth holds it."""
    from trainer.checkpoint import KEY_FORMAT, KEY_MODEL, clean_state_dict, extract_weights

    if isinstance(obj, dict) and KEY_FORMAT in obj:  # a full Kiln .pt
        ema = obj.get("ema")
        if ema:
            # AveragedModel's state dict: `module.<key>` per tensor plus its counter. The
            # trainer's .pth holds `ema.module`'s state dict, i.e. these without the prefix.
            ema_weights = {key: value for key, value in ema.items() if key != EMA_COUNTER}
            return clean_state_dict(ema_weights), "EMA weights (train.ema) of the full checkpoint"
        if obj.get("base") is not None:  # a LoRA run's (trainer/checkpoint/frozen_base.py): its model state is the adapters
            return clean_state_dict(obj[KEY_MODEL]), "LoRA adapters of the full checkpoint"
        return clean_state_dict(obj[KEY_MODEL]), "model weights of the full checkpoint"
    return clean_state_dict(extract_weights(obj, "auto", path)), "weights of"


def output_path(source: Path, output: str | None, fmt: str, force: bool) -> Path:
    """The file to write; an existing one (or the source itself) is an InputError unless --force."""
    from trainer.errors import InputError

    target = Path(output) if output else _default_output(source, fmt)
    if target.resolve() == source.resolve():
        raise InputError(f"{target} is the checkpoint itself; give another -o OUT")
    if target.exists() and not force:
        raise InputError(f"{target} exists; pass --force to overwrite it, or -o to write elsewhere")
    if not target.parent.is_dir():
        raise InputError(f"-o {target}: the folder {target.parent} does not exist; create it first")
    return target


def _default_output(source: Path, fmt: str) -> Path:
    """CHECKPOINT with the format's suffix (`x.pt` -> `x.safetensors`; `x.pt` -> `x_hf/` for hf)."""
    if fmt == "hf":
        return source.with_name(source.name.removesuffix(source.suffix) + SUFFIXES[fmt])
    return source.with_suffix(SUFFIXES[fmt])


def write_pth(weights: dict, target: Path) -> None:
    """`{"params": weights}` written like the trainer's .pth (same torch.save, atomic)."""
    from trainer.checkpoint import KEY_WEIGHTS
    from utils.io import atomic_torch_save

    atomic_torch_save({KEY_WEIGHTS: weights}, target)


def write_safetensors(weights: dict, target: Path, source: Path) -> None:
    """The tensors as a .safetensors file, written to a temporary name and renamed (utils.io)."""
    import torch
    from safetensors.torch import save

    from utils.io import atomic_write

    # safetensors refuses non-contiguous tensors and tensors that share memory (tied weights):
    # a contiguous copy of each is neither.
    tensors = {key: value.detach().clone(memory_format=torch.contiguous_format) for key, value in weights.items()}
    metadata = {"format": "pt", "source": source.name}  # "pt": what transformers and timm expect of torch tensors
    data = save(tensors, metadata=metadata)  # bytes, so that utils.io writes, fsyncs and renames them
    atomic_write(target, lambda file: file.write(data))


def export(checkpoint: str, output: str | None, fmt: str, force: bool, merge: bool = False) -> tuple[Path, str, int]:
    """Write the weights of `checkpoint`; return (written path, what they were, tensor count)."""
    from trainer.checkpoint import KEY_FORMAT, KEY_OPTIMIZER, read_whole
    from trainer.checkpoint.storage import basename, is_url, local_copy
    from trainer.errors import InputError

    if is_url(output):
        raise InputError(f"-o {output} is a URL; write a local file, then upload it with tools/checkpoints.py push")
    if merge and fmt != "hf":
        raise InputError(f"--merge writes a Hugging Face model directory; add --format hf (not {fmt})")
    if is_url(checkpoint):  # read from a temporary download; the export lands here unless -o says where
        with local_copy(checkpoint, "checkpoint") as local:
            return export(str(local), output or str(Path(basename(checkpoint)).with_suffix(SUFFIXES[fmt])), fmt, force, merge)
    source = Path(checkpoint)
    obj = read_whole(source, "checkpoint")  # a sharded .dcp directory: consolidated
    if fmt == "pt" and not (isinstance(obj, dict) and KEY_OPTIMIZER in obj and KEY_FORMAT in obj):
        raise InputError(f"--format pt needs a full checkpoint (a .pt or a sharded .dcp directory); {source} holds weights only")
    try:
        weights, what = weights_of(obj, source)
    except InputError:
        keys = sorted(map(str, obj))[:8] if isinstance(obj, dict) else type(obj).__name__
        raise InputError(
            f"checkpoint {source} holds no weights: it is not a Kiln .pt or .pth and has no params, model or "
            f"state_dict entry (its keys: {keys}); load it yourself and torch.save its state dict"
        ) from None
    if fmt == "hf":
        target = _default_output(source, fmt) if output is None else Path(output)
        files, layout, count = write_hf(obj, weights, source, target, force, merge)
        return target, f"{len(files)} files ({', '.join(files)}) {layout}, from the {what}", count
    target = output_path(source, output, fmt, force)
    try:
        if fmt == "safetensors":
            write_safetensors(weights, target, source)
        elif fmt == "pt":
            from utils.io import atomic_torch_save

            atomic_torch_save(obj, target)
            what = "full checkpoint consolidated from"
        else:
            write_pth(weights, target)
    except OSError as error:  # it names the temporary file; the user knows the target
        raise OSError(error.errno, error.strerror or str(error), str(target)) from error
    return target, what, len(weights)


def write_hf(obj: Any, weights: dict, source: Path, target: Path, force: bool, merge: bool = False) -> tuple[list[str], str, int]:
    """The Hugging Face directory of a full checkpoint's weights (of a LoRA checkpoint: a PEFT
    adapter directory, or with `merge` the merged model); return (the file names written, what
    layout they are in, how many tensors)."""
    from models.hf import model_for_export
    from trainer.checkpoint import KEY_CONFIG
    from trainer.checkpoint.hf_export import check_target
    from trainer.errors import InputError

    check_target(target, force)  # before any work
    if not (isinstance(obj, dict) and isinstance(obj.get(KEY_CONFIG), dict)):
        raise InputError(
            f"--format hf needs a full checkpoint (a .pt or a sharded .dcp directory), which records the model's config; "
            f"{source} holds weights only: export the .pt of the same iteration"
        )
    run_config = obj[KEY_CONFIG]
    model = model_for_export(run_config.get("model") or {}, f"checkpoint {source}")
    lora = (run_config.get("train") or {}).get("lora")
    if lora is None:
        if merge:
            raise InputError(f"--merge: checkpoint {source} holds no LoRA adapters (a full fine-tune); export it without --merge")
        return write_model(obj, model, weights, source, target, force), "in the Hugging Face layout", len(weights)
    base = _base_of(obj, source)
    if not merge:
        from trainer.checkpoint.hf_export import write_adapter_directory
        from trainer.lora.peft import adapter_directory

        config, tensors = adapter_directory(model, lora, weights, base.get("path"), str(source))
        files = write_adapter_directory(target, config=config, tensors=tensors, force=force)
        return files, "of a PEFT adapter directory (LoRA)", len(tensors)
    from trainer.lora.peft import merged_weights

    merged = merged_weights(model, lora, weights, read_base(model, run_config, base, source), str(source))
    files = write_model(obj, model, merged, source, target, force)
    return files, "in the Hugging Face layout, LoRA adapters merged into their base", len(merged)


def _base_of(obj: dict, source: Path) -> dict:
    """The `base: {path, sha256}` a LoRA checkpoint records; InputError when it has none."""
    from trainer.checkpoint.frozen_base import KEY_BASE
    from trainer.errors import InputError

    base = obj.get(KEY_BASE)
    if not isinstance(base, dict):
        raise InputError(f"checkpoint {source}: its config has train.lora but it records no base; export a checkpoint Kiln wrote")
    return base


def read_base(model: Any, run_config: dict, base: dict, source: Path) -> dict:
    """The weights of a LoRA checkpoint's frozen base, as `model`'s state dict, read again from the
    path the checkpoint records once its sha256 is the recorded one (as pretrain_path reads it)."""
    from trainer.checkpoint import read_weights
    from trainer.checkpoint.frozen_base import weights_sha256
    from trainer.checkpoint.hf_directory import is_model_directory, read_model_directory
    from trainer.checkpoint.storage import is_url
    from trainer.errors import InputError

    path = base.get("path")
    if path is None:
        raise InputError(
            f"--merge: checkpoint {source} was trained on the seed's initialisation (no pretrain_path), which no file "
            "holds; export the adapters without --merge"
        )
    if not is_url(path) and not Path(path).expanduser().exists():
        raise InputError(f"--merge: the base {path} of checkpoint {source} does not exist; restore it there, then export again")
    digest = weights_sha256(path)
    if digest != base.get("sha256"):
        raise InputError(
            f"--merge: checkpoint {source} was trained on the base {path} with sha256 {base.get('sha256')}, but {path} now has "
            f"sha256 {digest}; restore the base the run was trained on, then export again"
        )
    if is_model_directory(path):
        return read_model_directory(model, path, "base")
    state = read_weights(path, run_config.get("pretrain_key", "auto"), run_config.get("pretrain_revise_keys") or [], what="base")
    expected = model.state_dict()
    missing = [key for key in expected if key not in state]
    if missing:
        raise InputError(
            f"--merge: the base {path} of checkpoint {source} lacks {len(missing)} of the model's tensors (e.g. {missing[0]}); "
            "restore the base the run was trained on, then export again"
        )
    return {key: state[key].to(expected[key].dtype) for key in expected}


def write_model(obj: dict, model: Any, weights: dict, source: Path, target: Path, force: bool) -> list[str]:
    """The Hugging Face model directory of `weights` (the state dict of `model`, the run's
    architecture); return the file names written."""
    from models.hf import generation_config
    from trainer.checkpoint.hf_export import write_model_directory
    from trainer.errors import InputError

    run_config = obj["config"]
    expected = set(model.state_dict())
    if set(weights) != expected:
        differing = sorted(set(weights) ^ expected)[:3]
        raise InputError(f"checkpoint {source}: its weights do not fit the model its config records (e.g. {differing})")
    tensors = dict(pair for key, value in weights.items() if (pair := model.hf_export(key, value)) is not None)
    tokenizer = run_tokenizer(run_config, obj, source)
    generation = generation_config(model, tokenizer)
    # the special ids in config.json too: without them transformers assumes its class defaults
    # (Llama's bos 1 and eos 2), which may be any token of another vocabulary
    special_ids = {key: generation.get(key) for key in ("bos_token_id", "eos_token_id", "pad_token_id")}
    return write_model_directory(
        target,
        config={**model.hf_config(), **special_ids},
        tensors=tensors,
        generation_config=generation,
        tokenizer_files=[Path(tokenizer.path) / name for name in tokenizer.files] if tokenizer is not None else [],
        force=force,
    )


def run_tokenizer(run_config: dict, obj: dict, source: Path) -> Any | None:
    """The run's `hf` tokenizer (data.train's), checked against the one the checkpoint recorded; None for another kind."""
    from data.hf_tokenizer import HFTokenizer
    from trainer.errors import InputError

    train = (run_config.get("data") or {}).get("train") or {}
    spec = train.get("tokenizer") if isinstance(train, dict) else None
    if not (isinstance(spec, dict) and spec.get("type") == "hf"):
        return None
    tokenizer = HFTokenizer(spec.get("path"))
    recorded = (((obj.get("data") or {}).get("train") or {}).get("tokenizer") or {}).get("sha256")
    if recorded is not None and recorded != tokenizer.fingerprint():
        raise InputError(
            f"checkpoint {source} was trained with another tokenizer than the one now in {spec.get('path')} "
            "(its fingerprint changed); restore the tokenizer the run used, then export again"
        )
    return tokenizer


def main(argv: list[str] | None = None) -> int:
    """Parse, export, report; exit 2 with one line on a bad input."""
    args = parse_args(argv)  # before importing torch, so --help stays fast
    from trainer.errors import REPORTED_ERRORS, report_error

    try:
        target, what, count = export(args.checkpoint, args.output, args.format, args.force, args.merge)
    except REPORTED_ERRORS as error:
        return report_error(error)
    except OSError as error:  # a full disk or a read-only folder: nothing was left under the final name
        print(f"error: could not write {error.filename or args.output} ({error.strerror or error})", file=sys.stderr)
        return 1
    print(f"wrote {target}: {count} tensors, the {what} {args.checkpoint}")
    return 0


if __name__ == "__main__":
    run_tool(main)  # exits 141, without a traceback, when the reader of the output went away
