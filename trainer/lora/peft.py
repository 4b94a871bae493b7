"""A LoRA checkpoint for the Hugging Face world (tools/export.py --format hf): its adapters as
a PEFT adapter directory, or merged into the base as plain weights.

The adapter directory is what `peft.PeftModel.from_pretrained(transformers_model, DIR)` reads:

- `adapter_config.json`: a `LoraConfig` (peft_type LORA, task_type CAUSAL_LM, r, lora_alpha,
  lora_dropout, target_modules, bias none, fan_in_fan_out, base_model_name_or_path, ...);
- `adapter_model.safetensors`: `base_model.model.<module>.lora_A.weight` (r, in) and
  `...lora_B.weight` (out, r) for every adapted module, under its Hugging Face name (the
  model's `hf_export` maps a Kiln name to it). GPT-2's projections are Conv1D layers there,
  whose weight is stored (in, out): PEFT keeps their A and B in nn.Linear's layout all the
  same and transposes only the merged update, which `fan_in_fan_out: true` tells it.

peft itself is never imported: the files are plain JSON and safetensors.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from trainer.errors import InputError
from trainer.lora.apply import ADAPTERS, matches, target_modules
from trainer.lora.layers import lora_delta

PEFT_PREFIX = "base_model.model."  # what PeftModel puts in front of the wrapped model's names


def adapter_directory(
    model: nn.Module, lora: dict[str, Any], adapters: dict[str, torch.Tensor], base_path: str | None, source: str
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(adapter_config.json, adapter_model.safetensors tensors) of a LoRA checkpoint: `model`, the
    run's architecture (HFCompatible, on the meta device is enough), `lora` the run's train.lora,
    `adapters` the checkpoint's model state. InputError when they do not fit each other."""
    modules = adapted_modules(model, lora, adapters, source)
    hf_names, conv1d = {}, {}
    for module in modules:
        hf_names[module], conv1d[module] = _hf_module(model, module, source)
    tensors = {
        f"{PEFT_PREFIX}{hf_names[module]}.{part}.weight": adapters[f"{module}.{part}.weight"]
        for module in modules
        for part in ADAPTERS
    }
    alpha = float(lora["alpha"])
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "r": int(lora["rank"]),
        "lora_alpha": int(alpha) if alpha.is_integer() else alpha,
        "lora_dropout": float(lora.get("dropout") or 0.0),
        "target_modules": _peft_targets(model, list(lora["targets"]), modules, hf_names),
        "bias": "none",
        # one switch for every layer; PEFT sets it back per layer where a target is an nn.Linear
        "fan_in_fan_out": any(conv1d.values()),
        "base_model_name_or_path": base_path,
        "inference_mode": True,
        "init_lora_weights": True,
        "modules_to_save": None,
        "use_rslora": False,  # the scale is alpha / r, not alpha / sqrt(r)
        "use_dora": False,
        "layers_to_transform": None,
        "layers_pattern": None,
        "rank_pattern": {},
        "alpha_pattern": {},
        "revision": None,
    }
    return config, tensors


def merged_weights(
    model: nn.Module, lora: dict[str, Any], adapters: dict[str, torch.Tensor], base: dict[str, torch.Tensor], source: str
) -> dict[str, torch.Tensor]:
    """`base` (the plain model's state dict) with every adapted layer's weight replaced by
    W + (alpha / r) * B @ A (`lora_delta`, as LoRALinear.merged computes it)."""
    scaling = float(lora["alpha"]) / int(lora["rank"])
    merged = dict(base)
    for module in adapted_modules(model, lora, adapters, source):
        key = f"{module}.weight"
        delta = lora_delta(adapters[f"{module}.lora_A.weight"], adapters[f"{module}.lora_B.weight"], scaling)
        merged[key] = base[key].to(delta.dtype) + delta
    return merged


def adapted_modules(model: nn.Module, lora: dict[str, Any], adapters: dict[str, torch.Tensor], source: str) -> list[str]:
    """The modules the run's train.lora adapts in `model`, checked against the checkpoint's adapters."""
    try:
        modules = target_modules(model, list(lora["targets"]))
    except InputError as error:
        raise InputError(f"checkpoint {source}: its train.lora does not fit its model ({error})") from None
    expected = {f"{module}.{part}.weight" for module in modules for part in ADAPTERS}
    if set(adapters) != expected:
        differing = sorted(set(adapters) ^ expected)[:3]
        raise InputError(
            f"checkpoint {source}: its adapters are not those its train.lora makes (e.g. {differing}); "
            "export a checkpoint Kiln wrote"
        )
    return modules


def _hf_module(model: nn.Module, module: str, source: str) -> tuple[str, bool]:
    """(the Hugging Face name of `module`, whether it is a Conv1D there), asked of the model's
    `hf_export` with a (1, 2) probe: a Conv1D weight comes back transposed, (2, 1)."""
    exported = model.hf_export(f"{module}.weight", torch.zeros(1, 2))
    if exported is None:
        raise InputError(
            f"checkpoint {source}: {module} has no weight of its own in the Hugging Face layout, so PEFT cannot adapt it; "
            "export with --merge"
        )
    name, tensor = exported
    return name.removesuffix(".weight"), tuple(tensor.shape) == (2, 1)


def _peft_targets(model: nn.Module, targets: list[str], modules: list[str], hf_names: dict[str, str]) -> list[str]:
    """target_modules for adapter_config.json: the run's own targets where PEFT would match exactly
    the same modules with them (Hugging Face names equal Kiln's, and no other module of that name),
    else the full Hugging Face names of the adapted modules."""
    same_names = all(hf_names[module] == module for module in modules)
    others = [name for name, _ in model.named_modules() if name not in modules and any(matches(name, t) for t in targets)]
    return list(targets) if same_names and not others else sorted(hf_names.values())
