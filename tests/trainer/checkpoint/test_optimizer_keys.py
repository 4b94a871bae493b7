"""An optimizer state keyed by parameter index (one process, DDP) converts to one keyed by name
(FSDP's) and back, matched by name group by group; groups that hold other parameters are refused."""

from __future__ import annotations

import pytest
import torch

from models.gpt import GPT
from tests.helpers import assert_bitwise_equal
from trainer.checkpoint.optimizer_keys import keyed_by_name, rekeyed
from trainer.distributed.strategy import SingleDevice


def stepped_gpt() -> tuple[GPT, torch.optim.Optimizer]:
    """A tied GPT and an AdamW with two groups (norms apart), one step taken (its moments exist)."""
    torch.manual_seed(0)
    model = GPT(vocab_size=32, block_size=8, n_layer=1, n_head=2, n_embd=8)
    norms = [p for name, p in model.named_parameters() if p.ndim == 1]
    rest = [p for name, p in model.named_parameters() if p.ndim != 1]
    optimizer = torch.optim.AdamW([{"params": rest}, {"params": norms, "weight_decay": 0.0}])
    model(torch.randint(32, (2, 8))).sum().backward()
    optimizer.step()
    return model, optimizer


def test_an_index_keyed_state_named_and_numbered_again_is_unchanged_and_names_the_tied_weight_once():
    model, optimizer = stepped_gpt()
    names = SingleDevice().parameter_names(model, optimizer)
    saved = optimizer.state_dict()
    by_name = rekeyed(saved, names, by_name=True)
    assert keyed_by_name(by_name) and not keyed_by_name(saved)
    assert "transformer.wte.weight" in by_name["state"] and "lm_head.weight" not in by_name["state"]
    assert by_name["param_groups"][1]["params"] == names[1] == [n for n, p in model.named_parameters() if p.ndim == 1]
    back = rekeyed(by_name, names, by_name=False)
    assert back["param_groups"] == saved["param_groups"]
    assert back["state"].keys() == saved["state"].keys()
    for index, entries in saved["state"].items():
        assert_bitwise_equal(back["state"][index], entries)
    assert rekeyed(saved, names, by_name=False) is saved  # keyed alike: the strategy's own loader checks it


def test_a_name_keyed_state_whose_groups_hold_other_parameters_is_refused_naming_them():
    model, optimizer = stepped_gpt()
    names = SingleDevice().parameter_names(model, optimizer)
    by_name = rekeyed(optimizer.state_dict(), names, by_name=True)
    moved = names[1][0]  # a norm weight that another selection put in the first group
    by_name["param_groups"][0]["params"].append(moved)
    by_name["param_groups"][1]["params"].remove(moved)
    with pytest.raises(ValueError, match=rf"^parameter group 0 held other parameters than it does now \({moved}\)$"):
        rekeyed(by_name, names, by_name=False)
    numbered = optimizer.state_dict()
    numbered["param_groups"] = numbered["param_groups"][:1]
    with pytest.raises(ValueError, match=r"^its parameter groups hold \[\d+\] parameters, this optimizer's \[\d+, \d+\]$"):
        rekeyed(numbered, names, by_name=True)
