"""The parallel strategy as an object: how the model is spread over the processes, and how its
state (and the optimizer's) is taken out and put back.

- `SingleDevice`: one process; the model as it is.
- `DDP`: every rank holds the whole model; DistributedDataParallel all-reduces the gradients.
- `FSDP`: FSDP2 (`fully_shard`) shards parameters, gradients and optimizer state over the
  ranks; a whole state dict is gathered onto rank 0's host memory (every rank takes part).

Every strategy gives the tensors of a sharded checkpoint as this rank holds them
(`sharded_state`, through torch.distributed.checkpoint's state_dict API, keys free of wrapper
prefixes, so a checkpoint moves between strategies and world sizes) and puts them back
(`load_sharded_state`). The Trainer, restore and the checkpoint formats call these methods and
never ask which strategy they hold.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import nn

from trainer.distributed.process import Distributed
from trainer.errors import InputError


class SingleDevice:
    """One process: the model is used and saved as it is."""

    name: Literal["single", "ddp", "fsdp"] = "single"
    # Whether this strategy's whole optimizer state dict names parameters (FSDP's) rather than
    # numbering them (torch.optim's): a file checkpoint keyed the other way is converted on load
    # (trainer/checkpoint/optimizer_keys.py).
    keys_optimizer_by_name = False

    def __init__(self, dist: Distributed | None = None) -> None:
        self.dist = dist or Distributed()

    def prepare(self, model: nn.Module) -> None:
        """Change `model` in place before the optimizer is built (FSDP shards it here)."""

    def wrap(self, model: nn.Module, device: torch.device) -> nn.Module:
        """The module the training step calls; its parameters are `model`'s (state dicts come from `model`)."""
        return model

    def model_state(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """`model`'s whole state dict (every rank calls it; under FSDP gathered onto the host)."""
        return model.state_dict()

    def load_model_state(self, model: nn.Module, state: dict[str, torch.Tensor]) -> None:
        """Load a whole state dict whose keys were already checked (FSDP shards it onto every rank)."""
        model.load_state_dict(state, strict=False)

    def optimizer_state(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        """The optimizer's whole state dict (under FSDP keyed by parameter name, gathered)."""
        return optimizer.state_dict()

    def load_optimizer_state(self, model: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
        """The inverse of `optimizer_state`."""
        optimizer.load_state_dict(state)

    def parameter_names(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> list[list[str]]:
        """The name of every parameter `optimizer` steps, group by group, in the order torch.optim
        numbers them: what relates a state keyed by index to one keyed by name."""
        named = {id(parameter): name for name, parameter in model.named_parameters()}
        try:
            return [[named[id(parameter)] for parameter in group["params"]] for group in optimizer.param_groups]
        except KeyError:
            raise ValueError("the optimizer steps a parameter that is not the model's") from None

    def sharded_state(
        self, model: nn.Module, optimizer: torch.optim.Optimizer, ema: nn.Module | None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """(the tensors a sharded checkpoint holds, the optimizer state dict without them): model,
        optimizer and EMA state as this rank holds them (FSDP: its shards; otherwise plain tensors)."""
        from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

        optimizer_state = get_optimizer_state_dict(model, optimizer)
        tensors, extra = {}, {}
        for name, entries in optimizer_state["state"].items():
            tensors[name] = {key: value for key, value in entries.items() if isinstance(value, torch.Tensor)}
            extra[name] = {key: value for key, value in entries.items() if not isinstance(value, torch.Tensor)}
        parts: dict[str, Any] = {"model": get_model_state_dict(model), "optimizer": tensors}
        if ema is not None:
            parts["ema"] = ema.state_dict()
        return parts, {"state": extra, "param_groups": optimizer_state["param_groups"]}

    def load_sharded_state(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        ema: nn.Module | None,
        tensors: dict[str, Any],
        optimizer_rest: dict[str, Any],
    ) -> None:
        """The inverse of `sharded_state`: `tensors` (filled from a checkpoint, shaped as
        `sharded_state` gave them) and the rest of the optimizer state, into the live objects."""
        from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

        set_model_state_dict(model, tensors["model"])
        merged = {name: {**entries, **optimizer_rest["state"].get(name, {})} for name, entries in tensors["optimizer"].items()}
        set_optimizer_state_dict(model, optimizer, {"state": merged, "param_groups": optimizer_rest["param_groups"]})
        if ema is not None:
            ema.load_state_dict(tensors["ema"])


class DDP(SingleDevice):
    """DistributedDataParallel: a whole model on every rank, gradients all-reduced in backward."""

    name = "ddp"

    def wrap(self, model: nn.Module, device: torch.device) -> nn.Module:
        """`model` in DistributedDataParallel (its `no_sync` lets accumulation all-reduce once a step)."""
        device_ids = [device.index] if device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=device_ids)


class FSDP(SingleDevice):
    """FSDP2: parameters, gradients and optimizer state sharded over the ranks."""

    name = "fsdp"
    keys_optimizer_by_name = True

    def prepare(self, model: nn.Module) -> None:
        """Shard `model` in place (before the optimizer: it must see the sharded parameters)."""
        _shard_model(model)

    def model_state(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """The whole state dict, gathered onto the host (every rank must call this)."""
        from torch.distributed.checkpoint.state_dict import get_model_state_dict

        _reshard(model)
        return get_model_state_dict(model, options=_full_options())

    def load_model_state(self, model: nn.Module, state: dict[str, torch.Tensor]) -> None:
        """A whole state dict, sharded onto every rank."""
        from torch.distributed.checkpoint.state_dict import set_model_state_dict

        _reshard(model)
        set_model_state_dict(model, state, options=_full_options(strict=False))

    def optimizer_state(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        """The whole optimizer state keyed by parameter name, gathered onto the host."""
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

        _reshard(model)
        return get_optimizer_state_dict(model, optimizer, options=_full_options())

    def load_optimizer_state(self, model: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
        """The inverse of `optimizer_state`."""
        from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

        _reshard(model)
        if not any(isinstance(value, torch.Tensor) for entry in state["state"].values() for value in entry.values()):
            # No tensor to shard (SGD without momentum keeps `momentum_buffer: None`), which
            # set_optimizer_state_dict cannot place ("Expected device to be set"): the groups'
            # hyperparameters are all there is to restore.
            for group, saved in zip(optimizer.param_groups, state["param_groups"], strict=True):
                group.update({key: value for key, value in saved.items() if key != "params"})
            return
        set_optimizer_state_dict(model, optimizer, state, options=_full_options())

    def parameter_names(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> list[list[str]]:
        """As for one process, with the sharded parameters back in the modules (`_reshard`)."""
        _reshard(model)
        return super().parameter_names(model, optimizer)

    def sharded_state(
        self, model: nn.Module, optimizer: torch.optim.Optimizer, ema: nn.Module | None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """This rank's shards (see SingleDevice.sharded_state), with the sharded parameters back in the modules."""
        _reshard(model)
        return super().sharded_state(model, optimizer, ema)

    def load_sharded_state(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        ema: nn.Module | None,
        tensors: dict[str, Any],
        optimizer_rest: dict[str, Any],
    ) -> None:
        """The inverse of `sharded_state`, into the sharded parameters (`_reshard`)."""
        _reshard(model)
        super().load_sharded_state(model, optimizer, ema, tensors, optimizer_rest)


def build_strategy(name: Literal["ddp", "fsdp"], dist: Distributed, *, ema: float | None = None) -> SingleDevice:
    """The strategy `train.strategy` names for this job (one process: SingleDevice whatever the name);
    InputError for a combination that is not supported."""
    if not dist.enabled:
        return SingleDevice(dist)
    if name == "fsdp":
        if ema is not None:
            raise InputError("config key train.ema: EMA is not supported with strategy fsdp yet; use ddp or drop ema")
        return FSDP(dist)
    return DDP(dist)


def _reshard(model: nn.Module) -> None:
    """Put FSDP2's sharded parameters back in every module of `model` (a local step: no collective).

    FSDP2 leaves the root unit's parameters gathered after a forward that no backward follows
    (validation, the preflight): it does not reshard the root after forward, expecting the
    backward to need them. The modules then hold plain tensors the optimizer does not know, and
    DCP's state_dict API, which names the optimizer's parameters through the modules, fails
    (KeyError in get_optimizer_state_dict; a GPT's tied embedding lives in the root unit), or a
    load would fill tensors that the next reshard throws away.
    """
    from torch.distributed.fsdp import FSDPModule

    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.reshard()


def _full_options(**extra: Any) -> Any:
    """torch.distributed.checkpoint options for whole, host-side state dicts."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, cpu_offload=True, **extra)


def _shard_model(model: nn.Module) -> None:
    """Shard `model` in place with FSDP2: each unit `_shard_units` picks, then the root.

    Sharding units separately lets FSDP free one unit's gathered parameters before the next is
    gathered; the root call covers the parameters that sit directly on the model and the units
    left out because they share a parameter (tied embeddings).
    """
    from torch.distributed.fsdp import fully_shard

    for unit in _shard_units(model):
        fully_shard(unit)
    fully_shard(model)


def _shard_units(model: nn.Module) -> list[nn.Module]:
    """The modules to shard on their own: the model's children that hold parameters, looking
    inside containers without a forward (ModuleDict, ModuleList: a GPT's `transformer` and its
    blocks), except modules that share a parameter with another unit (a GPT's `wte` and
    `lm_head`): FSDP2 cannot shard one parameter in two units, so those stay with the root."""
    candidates: list[nn.Module] = []

    def visit(module: nn.Module) -> None:
        for child in module.children():
            if isinstance(child, (nn.ModuleDict, nn.ModuleList)):
                visit(child)
            elif any(True for _ in child.parameters()):
                candidates.append(child)

    visit(model)
    owners: dict[int, int] = {}
    for index, unit in enumerate(candidates):
        for parameter in unit.parameters():
            owners[id(parameter)] = -1 if owners.get(id(parameter), index) != index else index
    return [unit for index, unit in enumerate(candidates) if all(owners[id(p)] == index for p in unit.parameters())]
