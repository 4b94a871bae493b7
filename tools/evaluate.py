"""Evaluate weights on a config's validation set: python tools/evaluate.py -c CONFIG --weights PATH [KEY=VALUE ...].

Builds the model, the validation data and the metrics exactly as the Trainer does, loads the
weights strictly and prints a small table; the LAST line is the metrics as one JSON object, so
scripts can read it with `tail -n 1`. Exit 2 with one `error: ...` line on a bad input.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

# Run as `python tools/evaluate.py` from the repo root: the script's own folder is on sys.path,
# the repo root (where trainer/, data/ and models/ live) is not.
REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from utils.cli import OneLineErrorParser, run_tool  # noqa: E402  (needs the repo root on sys.path)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """-c CONFIG, --weights PATH and KEY=VALUE overrides (as train.py takes them)."""
    parser = OneLineErrorParser(
        prog="tools/evaluate.py",
        description="Evaluate weights on the validation set of a config.",
        epilog="example: python tools/evaluate.py -c configs/digits_cnn.yaml --weights weights/digits_cnn_best.pth",
    )
    parser.add_argument("-c", "--config", required=True, help="the experiment's YAML file (model, data.val, metrics)")
    parser.add_argument(
        "--weights",
        required=True,
        help="a Kiln .pth or .pt, another tool's state dict, a .safetensors file, or a Hugging Face folder or sharded index",
    )
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted config key = YAML value, e.g. device=cpu")
    return parser.parse_intermixed_args(argv)


def evaluate_weights(config_path: str, weights: str, overrides: list[str]) -> tuple[dict[str, float], dict[str, float], str]:
    """(metrics, reporter scalars, what was evaluated) for `weights` on the config's validation set."""
    import torch

    from data.loader import build_loader
    from trainer.build import import_plugins
    from trainer.config import Component, load_config
    from trainer.distributed.device import resolve_device
    from trainer.errors import InputError
    from trainer.evaluation.evaluator import bind_metrics, evaluate
    from trainer.registry import DATASETS, METRICS, MODELS, REPORTERS, build

    config = load_config(config_path, overrides)
    if config.data.val is None:
        raise InputError(f"config key data.val is not set in {config_path}; the tool evaluates on it, so add a val dataset")
    import_plugins(config.imports)
    device = resolve_device(config.device)
    model = build(MODELS, config.model, key="model")
    load_weights_into(model, weights, config)
    model.to(device)
    metrics = {
        spec.name: build(METRICS, Component(spec.type, spec.kwargs), key=f"metrics[{index}]")
        for index, spec in enumerate(config.metrics)
    }
    reporters = [build(REPORTERS, spec, key=f"val.reporters[{i}]") for i, spec in enumerate(config.val.reporters)]
    dataset = build(DATASETS, config.data.val, key="data.val")
    if len(dataset) == 0:
        raise InputError(f"config key data.val: the {config.data.val.type} dataset is empty; point it at data")
    bind_metrics(metrics, dataset, f"data.val ({config.data.val.type})")  # as the Trainer does (bpb: bytes per token)
    loader = build_loader(
        dataset,
        batch_size=config.data.val_batch_size or config.data.batch_size,  # as in training: the same sums
        seed=config.seed,
        train=False,
        num_workers=config.data.num_workers,
        pin_memory=device.type == "cuda" if config.data.pin_memory is None else config.data.pin_memory,
        persistent_workers=False,  # one pass: nothing to keep the workers alive for
        prefetch_factor=config.data.prefetch_factor,
    )
    results = evaluate(model, loader, metrics, lambda batch: to_device(batch, device), reporters=reporters)
    extras: dict[str, float] = {}
    for reporter in reporters:
        scalars, _ = reporter.summary(lambda totals: totals)  # one process: nothing to sum across
        extras.update(scalars)
    what = f"{weights} on {config.data.val.type} ({len(dataset)} samples, {config.name}, {device}, torch {torch.__version__})"
    return results, extras, what


def load_weights_into(model: Any, path: str, config: Any) -> None:
    """Load the weights in `path` into `model` strictly, finding them as pretrain_path does.

    A Kiln run's own .pth/.pt matches its config's model as it is (a LoRA run's holds the adapters:
    they go on the base the config's pretrain_path names); the config's
    pretrain_revise_keys (which map a *pretrain* file's keys) are applied only when it does
    not, as for a foreign state dict. (digits_finetune renames the pretrained head away: its
    rule would break its own outputs.)
    """
    from trainer.checkpoint import extract_weights, load_model_state, read_whole, revise_keys
    from trainer.lora.weights import holds_adapters, load_adapted

    # read as every path is (trainer/checkpoint/readers.py): a file, a URL, or a sharded .dcp directory
    whole = read_whole(path, "--weights")
    state = extract_weights(whole, config.pretrain_key, path, "--weights")
    revised = revise_keys(state, [])  # strips DDP `module.` / compile `_orig_mod.` prefixes only
    if holds_adapters(revised):  # a LoRA run's: its adapters on the config's pretrain_path (trainer/lora/weights.py)
        load_adapted(model, config, revised, whole, f"--weights {path}")
        return
    if config.pretrain_revise_keys and set(revised) != set(model.state_dict()):
        revised = revise_keys(state, config.pretrain_revise_keys)
    load_model_state(
        model,
        revised,
        strict=True,
        source=f"--weights {path}",
        fix="pass the config the weights were trained with (or set pretrain_key / pretrain_revise_keys for another tool's file)",
    )


def to_device(batch: Any, device: Any) -> Any:
    """Put a batch (tensors, possibly nested in tuples, lists or dicts) on `device`."""
    if hasattr(batch, "to"):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(item, device) for item in batch)
    if isinstance(batch, dict):
        return {key: to_device(value, device) for key, value in batch.items()}
    return batch


def table(results: dict[str, float], extras: dict[str, float]) -> str:
    """Two aligned columns: metric and value (reporter figures after the metrics)."""
    rows = [("metric", "value"), *((name, f"{value:.6g}") for name, value in {**results, **extras}.items())]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def main(argv: list[str] | None = None) -> int:
    """Parse, evaluate, print the table and the JSON line; exit 2 with one line on a bad input."""
    args = parse_args(argv)  # before importing torch, so --help stays fast
    from trainer.errors import REPORTED_ERRORS, report_error

    try:
        results, extras, what = evaluate_weights(args.config, args.weights, args.overrides)
    except REPORTED_ERRORS as error:
        return report_error(error)
    print(f"evaluated {what}")
    print(table(results, extras))
    print(json.dumps(results))  # the last line: machine-readable
    return 0


if __name__ == "__main__":
    run_tool(main)  # exits 141, without a traceback, when the reader of the output went away
