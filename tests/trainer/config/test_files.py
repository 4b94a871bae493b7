"""Config files (trainer/config/files.py, DESIGN.md section 2): YAML with the 1.2 float rule and no
repeated keys, `base` inheritance and KEY=VALUE overrides.

Every mistake must surface here as one InputError line that names the file or the override and
the key path. What the loaded document turns into is in test_schema.py.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

import pytest
import yaml

from tests.helpers import error_of, tiny_config, write_config
from trainer.config import Component, MetricSpec, config_from_dict, load_config
from trainer.config.files import apply_override, merge, parse_yaml
from trainer.errors import InputError

# ---------------------------------------------------------------------------------------------
# YAML 1.2 floats


@pytest.mark.parametrize(
    ("text", "expected"),
    [("3e-4", 3e-4), ("1e12", 1e12), ("-2E+3", -2000.0), ("1.0e-3", 1e-3), ("5e0", 5.0)],
)
def test_exponent_numbers_without_a_dot_are_floats(text: str, expected: float):
    value = parse_yaml(f"x: {text}", "test")["x"]
    assert type(value) is float
    assert value == expected


def test_quoted_exponent_stays_a_string_and_plain_integers_stay_integers():
    document = parse_yaml("a: '3e-4'\nb: 10\nc: abc", "test")
    assert document == {"a": "3e-4", "b": 10, "c": "abc"}
    assert type(document["b"]) is int


def test_yaml_12_float_rule_does_not_change_pyyamls_global_safe_loader():
    assert yaml.safe_load("x: 3e-4") == {"x": "3e-4"}


def test_lr_3e_minus_4_in_a_file_is_a_float(tmp_path: Path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(tiny_config(), sort_keys=False).replace("lr: 0.003", "lr: 3e-4"))
    assert "lr: 3e-4" in path.read_text()

    lr = load_config(path).optimizer.kwargs["lr"]
    assert type(lr) is float
    assert lr == 3e-4


def test_1e12_in_a_file_is_a_float(tmp_path: Path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(tiny_config(), sort_keys=False).replace("weight_decay: 0.01", "weight_decay: 1e12"))
    assert "weight_decay: 1e12" in path.read_text()
    value = load_config(path).optimizer.kwargs["weight_decay"]
    assert type(value) is float
    assert value == 1e12


def test_override_values_3e_minus_4_and_1e12_are_floats(tiny_file: Path):
    config = load_config(tiny_file, ["optimizer.lr=3e-4", "train.grad_clip=1e12"])
    assert type(config.optimizer.kwargs["lr"]) is float
    assert config.optimizer.kwargs["lr"] == 3e-4
    assert type(config.train.grad_clip) is float
    assert config.train.grad_clip == 1e12


# ---------------------------------------------------------------------------------------------
# base inheritance


def test_base_deep_merges_and_the_child_wins(tmp_path: Path):
    write_config(tmp_path / "base.yaml", tiny_config())
    child = write_config(
        tmp_path / "child.yaml",
        {"base": "base.yaml", "name": "child", "optimizer": {"lr": 0.5}, "train": {"total_iters": 99}},
    )
    config = load_config(child)

    assert config.name == "child"
    assert config.optimizer == Component("AdamW", {"lr": 0.5, "weight_decay": 0.01})  # kwargs merged
    assert config.train.total_iters == 99
    assert config.train.val_interval == 10  # sibling key kept from the base
    assert config.model == Component("SimpleCNN", {"num_classes": 10, "width": 8})


def test_base_path_is_relative_to_the_child_file_not_the_working_directory(workdir: Path):
    (workdir / "bases").mkdir()
    (workdir / "experiments_cfg" / "deep").mkdir(parents=True)
    (workdir / "elsewhere").mkdir()
    write_config(workdir / "bases" / "common.yaml", tiny_config(seed=123))
    child = write_config(workdir / "experiments_cfg" / "deep" / "child.yaml", {"base": "../../bases/common.yaml", "name": "rel"})
    config = load_config(Path("experiments_cfg/deep/child.yaml"))
    assert config.seed == 123
    assert config.name == "rel"

    # the same file, loaded from another working directory
    os.chdir(workdir / "elsewhere")
    assert load_config(child) == config


def test_base_lists_are_replaced_not_merged(tmp_path: Path):
    write_config(
        tmp_path / "base.yaml",
        tiny_config(
            metrics=["accuracy", {"type": "accuracy", "name": "top3", "topk": 3}],
            pretrain_revise_keys=[["^net\\.", ""], ["^module\\.", ""]],
        ),
    )
    child = write_config(
        tmp_path / "child.yaml", {"base": "base.yaml", "metrics": ["accuracy"], "pretrain_revise_keys": [["^a", "b"]]}
    )
    config = load_config(child)
    assert config.metrics == [MetricSpec("accuracy", "accuracy")]
    assert config.pretrain_revise_keys == [["^a", "b"]]


def test_child_component_with_a_different_type_replaces_the_base_one_whole(tmp_path: Path):
    write_config(
        tmp_path / "base.yaml",
        tiny_config(optimizer={"type": "AdamW", "lr": 1e-3, "weight_decay": 0.01, "betas": [0.9, 0.95]}),
    )
    child = write_config(tmp_path / "child.yaml", {"base": "base.yaml", "optimizer": {"type": "SGD", "lr": 0.1}})
    config = load_config(child)
    # SGD takes no betas: inheriting AdamW's kwargs would break its constructor
    assert config.optimizer == Component("SGD", {"lr": 0.1})


def test_child_component_with_the_same_type_merges_kwargs(tmp_path: Path):
    write_config(tmp_path / "base.yaml", tiny_config())
    child = write_config(tmp_path / "child.yaml", {"base": "base.yaml", "model": {"type": "SimpleCNN", "dropout": 0.0}})
    assert load_config(child).model == Component("SimpleCNN", {"num_classes": 10, "width": 8, "dropout": 0.0})


def test_merge_rules_directly():
    parent = {"a": {"x": 1, "y": [1, 2]}, "opt": {"type": "AdamW", "lr": 1}, "keep": 5}
    child = {"a": {"y": [3]}, "opt": {"type": "SGD", "momentum": 0.9}, "new": True}
    merged = merge(parent, child)
    assert merged == {"a": {"x": 1, "y": [3]}, "opt": {"type": "SGD", "momentum": 0.9}, "keep": 5, "new": True}
    # neither input is modified
    assert parent == {"a": {"x": 1, "y": [1, 2]}, "opt": {"type": "AdamW", "lr": 1}, "keep": 5}
    assert child == {"a": {"y": [3]}, "opt": {"type": "SGD", "momentum": 0.9}, "new": True}


def test_base_chain_of_three_files_applies_grandparent_then_parent_then_child(tmp_path: Path):
    write_config(tmp_path / "grand.yaml", tiny_config(seed=1, deterministic=True))
    write_config(tmp_path / "parent.yaml", {"base": "grand.yaml", "seed": 2, "train": {"total_iters": 20}})
    child = write_config(tmp_path / "child.yaml", {"base": "parent.yaml", "seed": 3, "train": {"val_interval": 5}})
    config = load_config(child)
    assert config.seed == 3
    assert config.deterministic is True  # only the grandparent sets it
    assert config.train.total_iters == 20  # the parent's
    assert config.train.val_interval == 5  # the child's
    assert config.name == "tiny"


def test_base_cycle_is_an_error_naming_the_files(tmp_path: Path):
    write_config(tmp_path / "a.yaml", {**tiny_config(), "base": "b.yaml"})
    write_config(tmp_path / "b.yaml", {"base": "a.yaml", "seed": 1})
    message = error_of(lambda: load_config(tmp_path / "a.yaml"))
    assert "cycle" in message
    assert "a.yaml" in message and "b.yaml" in message


def test_base_pointing_at_itself_is_a_cycle(tmp_path: Path):
    write_config(tmp_path / "self.yaml", {**tiny_config(), "base": "self.yaml"})
    message = error_of(lambda: load_config(tmp_path / "self.yaml"))
    assert "cycle" in message
    assert "self.yaml" in message


def test_missing_base_file_is_an_error_naming_the_key_and_the_path(tmp_path: Path):
    child = write_config(tmp_path / "child.yaml", {**tiny_config(), "base": "nope/missing.yaml"})
    message = error_of(lambda: load_config(child))
    assert message.startswith("config key base in ")
    assert str(tmp_path / "nope" / "missing.yaml") in message
    assert "does not exist" in message
    assert "relative to" in message


def test_base_that_is_not_a_string_is_an_error(tmp_path: Path):
    child = write_config(tmp_path / "child.yaml", {**tiny_config(), "base": 3})
    message = error_of(lambda: load_config(child))
    assert "config key base" in message
    assert "got 3" in message
    assert "expected a path" in message


def test_base_null_means_no_base(tmp_path: Path):
    path = write_config(tmp_path / "c.yaml", {**tiny_config(), "base": None})
    assert load_config(path) == config_from_dict(tiny_config())


# ---------------------------------------------------------------------------------------------
# KEY=VALUE overrides


def test_scalar_override_replaces_a_nested_value(tiny_file: Path):
    config = load_config(tiny_file, ["train.total_iters=100", "name=other", "logging.tensorboard=false"])
    assert config.train.total_iters == 100
    assert config.name == "other"
    assert config.logging.tensorboard is False


def test_list_override_is_parsed_as_yaml(tiny_file: Path):
    config = load_config(tiny_file, ["optimizer.betas=[0.9, 0.999]"])
    assert config.optimizer.kwargs["betas"] == [0.9, 0.999]
    assert config.optimizer.kwargs["lr"] == 3e-3


def test_list_override_replaces_the_list(tiny_file: Path):
    config = load_config(tiny_file, ["metrics=[accuracy, {type: accuracy, name: top3, topk: 3}]"])
    assert config.metrics == [MetricSpec("accuracy", "accuracy"), MetricSpec("accuracy", "top3", {"topk": 3})]


def test_mapping_override_merges_key_by_key(tiny_file: Path):
    config = load_config(tiny_file, ["logging={interval: 7, tensorboard: false}"])
    assert config.logging.interval == 7
    assert config.logging.tensorboard is False
    assert config.logging.progress is False  # kept from the file


def test_mapping_override_with_another_type_replaces_the_component(tiny_file: Path):
    config = load_config(tiny_file, ["optimizer={type: SGD, lr: 0.1, momentum: 0.9}"])
    assert config.optimizer == Component("SGD", {"lr": 0.1, "momentum": 0.9})


def test_null_override_clears_an_optional_key(tiny_file: Path):
    config = load_config(tiny_file, ["scheduler=null", "data.val=null", "data.val_batch_size=null"])
    assert config.scheduler is None
    assert config.data.val is None
    assert config.data.val_batch_size is None


def test_override_may_add_free_form_kwargs_under_components(tiny_file: Path):
    config = load_config(tiny_file, ["model.dropout=0.1", "optimizer.momentum=0.9", "data.train.max_shift=2"])
    assert config.model.kwargs == {"num_classes": 10, "width": 8, "dropout": 0.1}
    assert config.optimizer.kwargs == {"lr": 3e-3, "weight_decay": 0.01, "momentum": 0.9}
    assert config.data.train.kwargs == {"split": "train", "augment": True, "max_shift": 2}


def test_override_may_set_an_optional_section_absent_from_the_file(tiny_file: Path):
    config = load_config(tiny_file, ["val.mode=min", "checkpoint.keep_last=3", "resume_path=auto"])
    assert config.val.mode == "min"
    assert config.checkpoint.keep_last == 3
    assert config.resume_path == "auto"


def test_later_override_wins_over_earlier_one(tiny_file: Path):
    assert load_config(tiny_file, ["seed=1", "seed=2"]).seed == 2


def test_override_of_unknown_key_is_an_error_with_did_you_mean(tiny_file: Path):
    message = error_of(lambda: load_config(tiny_file, ["train.totl_iters=5"]))
    assert message == "config key train.totl_iters is unknown; did you mean train.total_iters?"


def test_override_without_equals_sign_is_an_error_showing_the_form(tiny_file: Path):
    message = error_of(lambda: load_config(tiny_file, ["train.total_iters"]))
    assert "'train.total_iters'" in message
    assert "no '='" in message
    assert "KEY=VALUE" in message


def test_override_with_empty_key_part_is_an_error(tiny_file: Path):
    message = error_of(lambda: load_config(tiny_file, ["train..total_iters=5"]))
    assert "'train..total_iters'" in message
    assert "dotted key path" in message


def test_override_descending_into_a_scalar_is_an_error_naming_the_scalar(tiny_file: Path):
    message = error_of(lambda: load_config(tiny_file, ["train.total_iters.x=1"]))
    assert "train.total_iters.x=1" in message
    assert "train.total_iters is a" in message
    assert "not a mapping" in message


def test_override_descending_into_a_list_is_an_error(tiny_file: Path):
    message = error_of(lambda: load_config(tiny_file, ["metrics.0=accuracy"]))
    assert "metrics is a list" in message
    assert "not a mapping" in message


def test_override_with_invalid_yaml_value_names_the_override(tiny_file: Path):
    message = error_of(lambda: load_config(tiny_file, ["optimizer.betas=[0.9,"]))
    assert message.startswith("override optimizer.betas: not valid YAML")


def test_override_with_wrong_type_is_validated_like_the_file(tiny_file: Path):
    message = error_of(lambda: load_config(tiny_file, ["train.total_iters=abc"]))
    assert message == "config key train.total_iters: got 'abc' (string), expected an integer"


def test_overrides_do_not_modify_the_loaded_file(tiny_file: Path):
    before = tiny_file.read_text()
    load_config(tiny_file, ["seed=5"])
    assert tiny_file.read_text() == before
    assert load_config(tiny_file).seed == 0


def test_override_of_base_is_applied_or_refused_never_silently_ignored(tmp_path: Path, tiny_file: Path):
    write_config(tmp_path / "other_base.yaml", tiny_config(seed=7))
    try:
        config = load_config(tiny_file, ["base=other_base.yaml"])
    except InputError as error:
        assert "base" in str(error)
        return
    assert config.seed == 7, "base=other_base.yaml was accepted but had no effect"


def test_apply_override_leaves_its_input_document_unchanged():
    document = tiny_config(scheduler=None)
    before = copy.deepcopy(document)
    result = apply_override(document, "scheduler.T_max=5")
    assert result["scheduler"] == {"T_max": 5}
    assert document == before


# ---------------------------------------------------------------------------------------------
# Files that are not a config


def test_missing_config_file_is_an_error_naming_the_path(tmp_path: Path):
    missing = tmp_path / "nope.yaml"
    message = error_of(lambda: load_config(missing))
    assert message == f"config file {missing} does not exist; check the path given to -c or base"


def test_empty_config_file_is_an_error(tmp_path: Path):
    path = tmp_path / "empty.yaml"
    path.write_text("# only a comment\n")
    message = error_of(lambda: load_config(path))
    assert message.startswith(f"config file {path} is empty")
    assert "required keys" in message


@pytest.mark.parametrize(("text", "kind"), [("- a\n- b\n", "list"), ("just text\n", "string")])
def test_top_level_that_is_not_a_mapping_is_an_error(tmp_path: Path, text: str, kind: str):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    message = error_of(lambda: load_config(path))
    assert message.startswith(f"config file {path}: the top level is a {kind}, expected a mapping")


def test_type_names_in_messages_take_the_right_article(tmp_path: Path, tiny_file: Path):
    path = tmp_path / "number.yaml"
    path.write_text("42\n")
    assert "the top level is an integer" in error_of(lambda: load_config(path))
    assert "train.total_iters is an integer" in error_of(lambda: load_config(tiny_file, ["train.total_iters.x=1"]))


def test_invalid_yaml_names_the_file_line_and_column(tmp_path: Path):
    path = tmp_path / "broken.yaml"
    path.write_text("name: tiny\nseed: 0\ntrain:\n  total_iters: 5\n val_interval: 3\n")
    message = error_of(lambda: load_config(path))
    assert message.startswith(f"{path}: not valid YAML at line 5, column ")
    assert "fix the syntax there" in message


def test_invalid_yaml_with_a_tab_names_line_and_column(tmp_path: Path):
    path = tmp_path / "tab.yaml"
    path.write_text("name: tiny\nseed: 0\n\tmodel: x\n")
    message = error_of(lambda: load_config(path))
    assert message.startswith(f"{path}: not valid YAML at line 3, column 1: ")


def test_yaml_python_tags_are_refused_by_the_safe_loader(tmp_path: Path):
    path = tmp_path / "evil.yaml"
    path.write_text("name: !!python/object/apply:os.system ['echo hacked']\n")
    message = error_of(lambda: load_config(path))
    assert message.startswith(f"{path}: not valid YAML")


def test_config_path_that_is_a_directory_is_an_error_saying_so(tmp_path: Path):
    (tmp_path / "configs").mkdir()
    message = error_of(lambda: load_config(tmp_path / "configs"))
    assert message == f"config file {tmp_path / 'configs'} is a directory, not a YAML file; pass the path of a .yaml file"


def test_base_that_is_a_directory_is_an_error_saying_so(tmp_path: Path):
    (tmp_path / "bases").mkdir()
    child = write_config(tmp_path / "child.yaml", {**tiny_config(), "base": "bases"})
    message = error_of(lambda: load_config(child))
    assert message == (
        f"config key base in {child}: {tmp_path / 'bases'} is a directory, not a YAML file; "
        f"give the path of a .yaml file, relative to {child}"
    )


# ---------------------------------------------------------------------------------------------
# Repeated keys: PyYAML would keep the last one silently


def test_a_second_train_block_is_an_error_naming_the_file_key_and_both_lines(tmp_path: Path):
    path = tmp_path / "twice.yaml"
    path.write_text("name: tiny\ntrain:\n  total_iters: 30\n  val_interval: 10\nseed: 0\ntrain:\n  amp: bf16\n", encoding="utf-8")
    message = error_of(lambda: load_config(path))
    assert message == f"{path}: key 'train' appears twice (lines 2 and 6); merge the two blocks into one"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("train:\n  total_iters: 5\n  amp: none\n  total_iters: 7\n", "key 'train.total_iters' appears twice (lines 2 and 4)"),
        ("data:\n  train:\n    type: Digits\n    type: Other\n", "key 'data.train.type' appears twice (lines 3 and 4)"),
        ("metrics:\n  - accuracy\n  - type: accuracy\n    name: a\n    name: b\n", "key 'metrics[1].name' appears twice"),
        ("seed: 0\n'seed': 1\n", "key 'seed' appears twice (lines 1 and 2); keep only one of them"),
        ("model: {type: MLP, type: SimpleCNN}\n", "key 'model.type' appears twice (line 1, columns 9 and 20)"),
    ],
)
def test_a_repeated_key_at_any_depth_is_named_by_its_dotted_path(text: str, expected: str):
    message = error_of(lambda: parse_yaml(text, "config.yaml"))
    assert message.startswith(f"config.yaml: {expected}")


def test_a_repeated_key_in_a_base_file_names_that_file(tmp_path: Path):
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(tiny_config()) + "seed: 3\n", encoding="utf-8")
    child = write_config(tmp_path / "child.yaml", {"base": "base.yaml", "name": "child"})
    message = error_of(lambda: load_config(child))
    assert message.startswith(f"{tmp_path / 'base.yaml'}: key 'seed' appears twice (lines ")


def test_a_repeated_key_in_an_override_value_names_the_override(tiny_file: Path):
    message = error_of(lambda: load_config(tiny_file, ["model={type: MLP, hidden: 8, hidden: 16}"]))
    assert message == "override model: key 'hidden' appears twice (line 1, columns 13 and 24); keep only one of them"


def test_keys_a_merge_brings_in_may_be_overridden_and_equal_keys_in_sibling_mappings_are_fine():
    text = (
        "defaults: &defaults {lr: 0.1, momentum: 0.9}\n"
        "optimizer:\n  <<: *defaults\n  type: SGD\n  lr: 0.5\n"
        "scheduler: {type: StepLR, step_size: 5}\n"
    )
    document = parse_yaml(text, "config.yaml")
    assert document["optimizer"] == {"lr": 0.5, "momentum": 0.9, "type": "SGD"}
    assert document["scheduler"]["type"] == "StepLR"
