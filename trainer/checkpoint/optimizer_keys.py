"""An optimizer state dict keyed by parameter index (torch.optim's: one process, DDP) or by
parameter name (FSDP's whole state, and a sharded checkpoint consolidated by tools/export.py),
converted to the keying the running strategy loads.

torch.optim numbers the parameters in the order its groups list them; DCP's state_dict API names
them as `model.named_parameters()` does (a tied weight once, under its first name). Both orders
are the same walk over the groups, so a state converts by position once the groups agree: a
name-keyed state must list, group by group, exactly the names this optimizer steps (the
selection of each group is checked by name, never only by shape), and an index-keyed one must
have groups of the same sizes.
"""

from __future__ import annotations

from typing import Any

PARAMS = "params"


def rekeyed(saved: dict[str, Any], names: list[list[str]], by_name: bool) -> dict[str, Any]:
    """`saved` keyed by name (`by_name`) or by index, for an optimizer whose groups step the
    parameters `names` (group by group); ValueError saying how the groups differ."""
    if keyed_by_name(saved) == by_name:
        return saved  # the strategy's own loader checks it
    groups = saved.get("param_groups") or []
    (_check_names if keyed_by_name(saved) else _check_sizes)(groups, names)
    flat = [name for group in names for name in group]
    saved_keys = [key for group in groups for key in group[PARAMS]]
    target = flat if by_name else list(range(len(flat)))
    mapping = dict(zip(saved_keys, target, strict=True))
    return {
        "state": {mapping[key]: entries for key, entries in saved.get("state", {}).items()},
        "param_groups": [{**group, PARAMS: [mapping[key] for key in group[PARAMS]]} for group in groups],
    }


def keyed_by_name(optimizer_state: dict[str, Any]) -> bool:
    """Whether an optimizer state dict names its parameters rather than numbering them."""
    groups = optimizer_state.get("param_groups") or []
    return any(isinstance(key, str) for group in groups for key in group.get(PARAMS, []))


def _check_names(groups: list[dict[str, Any]], names: list[list[str]]) -> None:
    """ValueError unless the saved groups list exactly `names`, group by group."""
    saved = [list(group[PARAMS]) for group in groups]
    if len(saved) != len(names):
        raise ValueError(f"it has {len(saved)} parameter groups, this optimizer {len(names)}")
    for index, (old, new) in enumerate(zip(saved, names, strict=True)):
        if old != new:
            differing = sorted(set(old) ^ set(new)) or [f"{len(old)} parameters in another order"]
            raise ValueError(f"parameter group {index} held other parameters than it does now ({', '.join(differing[:3])})")


def _check_sizes(groups: list[dict[str, Any]], names: list[list[str]]) -> None:
    """ValueError unless the saved groups have the sizes of this optimizer's."""
    saved = [len(group[PARAMS]) for group in groups]
    now = [len(group) for group in names]
    if saved != now:
        raise ValueError(f"its parameter groups hold {saved} parameters, this optimizer's {now}")
