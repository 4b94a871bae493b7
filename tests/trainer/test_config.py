"""The config door (DESIGN.md sections 2 and 3): YAML + base + overrides -> a frozen, typed Config.

Every mistake a user can make in a config must surface here as one InputError line that names
the key path, shows what was given and what is expected.
"""

from __future__ import annotations

import copy
import dataclasses
import os
from pathlib import Path

import pytest
import torch
import yaml

import train
from tests.conftest import run_train, tiny_config, write_config
from trainer.config import (
    CheckpointConfig,
    Component,
    Config,
    LoggingConfig,
    MetricSpec,
    TrainConfig,
    ValConfig,
    config_from_dict,
    dump_config,
    load_config,
)
from trainer.config.files import apply_override, merge, parse_yaml
from trainer.errors import InputError
from utils.seed import seed_everything

# ---------------------------------------------------------------------------------------------
# helpers


def without(document: dict, dotted: str) -> dict:
    """A deep copy of `document` with the key at the dotted path removed."""
    document = copy.deepcopy(document)
    *parents, last = dotted.split(".")
    node = document
    for part in parents:
        node = node[part]
    del node[last]
    return document


def with_value(document: dict, dotted: str, value) -> dict:
    """A deep copy of `document` with the key at the dotted path set to `value`."""
    document = copy.deepcopy(document)
    *parents, last = dotted.split(".")
    node = document
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = value
    return document


def error_of(call) -> str:
    """Run `call`, require an InputError with a one-line message, and return that message."""
    with pytest.raises(InputError) as caught:
        call()
    assert type(caught.value) is InputError
    message = str(caught.value)
    assert message, "an InputError needs a message"
    assert "\n" not in message, f"the message must be one line: {message!r}"
    return message


def config_error(document: dict) -> str:
    """The one-line InputError that validating `document` raises."""
    return error_of(lambda: config_from_dict(document))


@pytest.fixture
def tiny_file(tmp_path: Path) -> Path:
    """The tiny config written to a YAML file."""
    return write_config(tmp_path / "tiny.yaml", tiny_config())


# ---------------------------------------------------------------------------------------------
# Loading a valid file


def test_valid_file_loads_into_typed_config_with_given_values(tiny_file: Path):
    config = load_config(tiny_file)

    assert isinstance(config, Config)
    assert config.name == "tiny"
    assert config.device == "cpu"
    assert config.model == Component("SimpleCNN", {"num_classes": 10, "width": 8})
    assert config.loss == Component("CrossEntropyLoss", {})
    assert config.optimizer == Component("AdamW", {"lr": 3.0e-3, "weight_decay": 0.01})
    assert config.scheduler == Component("CosineAnnealingLR", {"T_max": 30})
    assert config.metrics == [MetricSpec("accuracy", "accuracy")]
    assert config.data.batch_size == 32
    assert config.data.val_batch_size == 128
    assert config.data.train == Component("Digits", {"split": "train", "augment": True})
    assert config.data.val == Component("Digits", {"split": "val"})
    assert config.train.total_iters == 30
    assert config.train.val_interval == 10
    assert config.checkpoint.interval == 10
    assert config.logging.interval == 5
    assert config.logging.progress is False


def test_defaults_of_design_section_3_fill_every_optional_key(tmp_path: Path):
    minimal = {
        "name": "minimal",
        "model": {"type": "SimpleCNN"},
        "loss": {"type": "CrossEntropyLoss"},
        "data": {"train": {"type": "Digits"}},
        "optimizer": {"type": "AdamW"},
        "train": {"total_iters": 7},
    }
    config = load_config(write_config(tmp_path / "minimal.yaml", minimal))

    assert config.imports == []
    assert config.seed == 0
    assert config.device == "auto"
    assert config.deterministic is False
    assert config.metrics == [MetricSpec("accuracy", "accuracy")]
    assert config.scheduler is None
    assert config.data.batch_size == 64
    assert config.data.val_batch_size is None  # meaning: the same as batch_size
    assert config.data.num_workers == 0
    assert config.data.val is None
    assert config.train == TrainConfig(
        total_iters=7,
        val_interval=250,
        amp="none",
        grad_clip=None,
        accumulate=1,
        ema=None,
        compile=False,
        channels_last=False,
        strategy="ddp",
        sync_bn=False,
        nan_policy="stop",
        max_skipped=10,
    )
    assert config.val == ValConfig(metric="accuracy", mode="max")
    assert config.checkpoint == CheckpointConfig(dir="weights", interval=500, keep_last=None, async_=False)
    assert config.logging == LoggingConfig(dir="experiments", interval=50, tensorboard=True, progress=True)
    assert config.resume_path is None
    assert config.pretrain_path is None
    assert config.pretrain_key == "auto"
    assert config.pretrain_revise_keys == []
    assert config.strict_load is True


def test_checkpoint_async_key_is_read_from_yaml_key_async(tmp_path: Path):
    path = write_config(tmp_path / "c.yaml", tiny_config(checkpoint={"async": True, "keep_last": 2}))
    config = load_config(path)
    assert config.checkpoint.async_ is True
    assert config.checkpoint.keep_last == 2


def test_metric_given_as_mapping_is_reported_under_its_name():
    config = config_from_dict(
        tiny_config(metrics=["accuracy", {"type": "accuracy", "name": "top3", "topk": 3}], val={"metric": "top3"})
    )
    assert config.metrics == [MetricSpec("accuracy", "accuracy"), MetricSpec("accuracy", "top3", {"topk": 3})]
    assert config.val.metric == "top3"


def test_whole_number_float_such_as_1e4_is_accepted_as_an_integer():
    config = config_from_dict(with_value(tiny_config(), "train.total_iters", 1e4))
    assert config.train.total_iters == 10000
    assert type(config.train.total_iters) is int


def test_integer_given_for_a_float_key_becomes_a_float():
    config = config_from_dict(with_value(tiny_config(), "train.grad_clip", 1))
    assert config.train.grad_clip == 1.0
    assert type(config.train.grad_clip) is float


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
# Validation errors: unknown keys


def test_unknown_key_names_path_and_suggests_nearest():
    message = config_error(tiny_config(optimzer={"type": "SGD"}))
    assert message == "config key optimzer is unknown; did you mean optimizer?"


def test_unknown_nested_key_names_full_path_and_suggests_nearest():
    message = config_error(with_value(tiny_config(), "train.total_iter", 5))
    assert message == "config key train.total_iter is unknown; did you mean train.total_iters?"


def test_unknown_key_in_a_deeper_section_names_its_section():
    message = config_error(with_value(tiny_config(), "data.batchsize", 5))
    assert message == "config key data.batchsize is unknown; did you mean data.batch_size?"


def test_unknown_key_without_a_close_match_lists_the_known_keys():
    message = config_error(with_value(tiny_config(), "val.zzzzzz", 1))
    assert message == "config key val.zzzzzz is unknown; known keys here: metric, mode, reporters"


def test_checkpoint_async_is_known_under_its_yaml_name_only():
    message = config_error(with_value(tiny_config(), "checkpoint.async_", True))
    assert "checkpoint.async_ is unknown" in message
    assert "did you mean checkpoint.async?" in message


# ---------------------------------------------------------------------------------------------
# Validation errors: wrong types


@pytest.mark.parametrize(
    ("key", "value", "expected_message"),
    [
        ("train.total_iters", "abc", "config key train.total_iters: got 'abc' (string), expected an integer"),
        ("train.total_iters", 2.5, "config key train.total_iters: got 2.5 (number), expected an integer"),
        ("train.total_iters", True, "config key train.total_iters: got True (boolean), expected an integer"),
        ("logging.tensorboard", 3, "config key logging.tensorboard: got 3 (integer), expected true or false"),
        ("seed", "zero", "config key seed: got 'zero' (string), expected an integer"),
        ("train.grad_clip", "big", "config key train.grad_clip: got 'big' (string), expected a number"),
        ("imports", ["ok", 3], "config key imports[1]: got 3 (integer), expected a string"),
        ("name", 5, "config key name: got 5 (integer), expected a string"),
    ],
)
def test_wrong_type_names_key_given_value_and_expected_type(key: str, value, expected_message: str):
    assert config_error(with_value(tiny_config(), key, value)) == expected_message


def test_list_key_given_a_scalar_names_the_key_and_expects_a_list():
    message = config_error(tiny_config(imports="myplugin"))
    assert message.startswith("config key imports: got 'myplugin' (string), expected a list")


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("imports", "myplugin", "expected a list of strings"),
        ("pretrain_revise_keys", "x", "expected a list of lists of strings"),
    ],
)
def test_list_types_are_described_in_plain_english(key: str, value, expected: str):
    assert config_error(tiny_config(**{key: value})).endswith(expected)


def test_section_that_is_not_a_mapping_is_an_error():
    message = config_error(tiny_config(val="accuracy"))
    assert message == "config key val: got 'accuracy' (string), expected a mapping of the val keys"


@pytest.mark.parametrize("value", ["SimpleCNN", {"width": 8}, {"type": ""}, None])
def test_component_without_a_type_is_an_error(value):
    message = config_error(tiny_config(model=value))
    assert message.startswith("config key model: got ")
    assert "expected a mapping with a `type`" in message


def test_component_kwarg_names_must_be_strings():
    message = config_error(tiny_config(model={"type": "SimpleCNN", 3: "x"}))
    assert message.startswith("config key model:")
    assert "3" in message
    assert "not a string" in message


def test_pretrain_revise_keys_pair_must_have_two_items():
    message = config_error(tiny_config(pretrain_revise_keys=[["^net\\."]]))
    assert message.startswith("config key pretrain_revise_keys[0]: got ['^net\\\\.']")
    assert "expected a pair [regex, replacement]" in message


def test_pretrain_revise_keys_regex_must_compile():
    message = config_error(tiny_config(pretrain_revise_keys=[["(", ""]]))
    assert message.startswith("config key pretrain_revise_keys[0]: '(' is not a valid regular expression")


# ---------------------------------------------------------------------------------------------
# Validation errors: required keys


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("name", "a string"),
        ("model", "a mapping with a `type`"),
        ("loss", "a mapping with a `type`"),
        ("data", "a mapping"),
        ("data.train", "a mapping with a `type`"),
        ("optimizer", "a mapping with a `type`"),
        ("train", "a mapping"),
        ("train.total_iters", "an integer"),
    ],
)
def test_missing_required_key_is_named_with_what_it_expects(key: str, expected: str):
    message = config_error(without(tiny_config(), key))
    assert message.startswith(f"config key {key} is required but missing; expected {expected}")


# ---------------------------------------------------------------------------------------------
# Validation errors: enums, ranges, cross-key rules, patterns


@pytest.mark.parametrize(
    ("key", "value", "expected_message"),
    [
        ("train.amp", "fp8", "config key train.amp: got 'fp8' (string), expected one of 'none', 'bf16', 'fp16'"),
        ("val.mode", "maximum", "config key val.mode: got 'maximum' (string), expected one of 'max', 'min'"),
        ("train.strategy", "zero", "config key train.strategy: got 'zero' (string), expected one of 'ddp', 'fsdp'"),
        ("train.nan_policy", "ignore", "config key train.nan_policy: got 'ignore' (string), expected one of 'stop', 'skip'"),
    ],
)
def test_bad_enum_value_lists_the_allowed_values(key: str, value: str, expected_message: str):
    assert config_error(with_value(tiny_config(), key, value)) == expected_message


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("train.total_iters", 0, "an integer >= 1"),
        ("train.val_interval", 0, "an integer >= 1"),
        ("train.accumulate", 0, "an integer >= 1"),
        ("train.max_skipped", 0, "an integer >= 1"),
        ("data.batch_size", -1, "an integer >= 1"),
        ("data.val_batch_size", 0, "an integer >= 1"),
        ("data.num_workers", -1, "an integer >= 0"),
        ("checkpoint.interval", 0, "an integer >= 1"),
        ("checkpoint.keep_last", 0, "an integer >= 1"),
        ("logging.interval", 0, "an integer >= 1"),
        ("train.grad_clip", 0, "a number > 0"),
        ("train.ema", 1.5, "a decay in (0, 1)"),
    ],
)
def test_non_positive_interval_or_size_is_rejected_with_the_rule(key: str, value, expected: str):
    message = config_error(with_value(tiny_config(), key, value))
    assert message.startswith(f"config key {key}: got {value!r} (")
    assert f"expected {expected}" in message


def test_val_metric_must_be_one_of_the_metrics():
    message = config_error(tiny_config(val={"metric": "top5"}))
    assert message.startswith("config key val.metric: got 'top5', expected one of the metric names ['accuracy']")
    assert "add it to `metrics`" in message


def test_val_metric_is_not_checked_without_validation_data():
    config = config_from_dict(with_value(tiny_config(val={"metric": "top5"}), "data.val", None))
    assert config.val.metric == "top5"


def test_metric_names_must_not_repeat():
    message = config_error(tiny_config(metrics=["accuracy", {"type": "accuracy", "topk": 3}]))
    assert message.startswith("config key metrics: the names ['accuracy', 'accuracy'] repeat")


@pytest.mark.parametrize("name", ["my run", "a/b", "exp:1", "ünïcode", ""])
def test_name_with_characters_unsafe_for_file_names_is_rejected(name: str):
    message = config_error(tiny_config(name=name))
    expected = "letters, digits, '_', '.' or '-', not starting with '.' (it names files)"
    assert message == f"config key name: got {name!r} (string), expected {expected}"


@pytest.mark.parametrize("name", ["digits_cnn", "exp-1.v2", "A9"])
def test_name_of_letters_digits_underscore_dot_dash_is_accepted(name: str):
    assert config_from_dict(tiny_config(name=name)).name == name


@pytest.mark.parametrize("name", [".", ".."])
def test_name_of_only_dots_is_rejected(name: str):
    config_error(tiny_config(name=name))


@pytest.mark.parametrize("device", ["gpu", "cuda0", "cuda:", "cuda:x", "CPU", "mps:0"])
def test_bad_device_string_is_rejected_with_the_allowed_forms(device: str):
    message = config_error(tiny_config(device=device))
    assert message == f"config key device: got {device!r} (string), expected auto, cpu, cuda or cuda:N"


@pytest.mark.parametrize("device", ["auto", "cpu", "cuda", "cuda:0", "cuda:12"])
def test_good_device_strings_are_accepted(device: str):
    assert config_from_dict(tiny_config(device=device)).device == device


@pytest.mark.parametrize("seed", [-1, -(2**63), 2**63, 2**64, 10**30])
def test_seed_outside_0_to_2_63_minus_1_is_rejected_with_the_range(seed: int):
    message = config_error(tiny_config(seed=seed))
    assert message == (
        f"config key seed: got {seed!r} (integer), expected an integer in [0, 2**63 - 1], the seeds torch and numpy all take"
    )


def test_largest_seed_and_its_per_rank_and_per_iteration_offsets_seed_every_generator():
    seed = config_from_dict(tiny_config(seed=2**63 - 1)).seed
    assert seed == 2**63 - 1
    # what the trainer seeds at the limits: rank 2**20 - 1 restoring at iteration 9e12
    seed_everything(seed + 2**20 - 1 + 1_000_003 * 9 * 10**12)
    torch.Generator().manual_seed(seed)  # the DataLoader's and the sampler's generators


def test_whole_number_float_seed_is_range_checked_too():
    assert "expected an integer in [0, 2**63 - 1]" in config_error(tiny_config(seed=1e30))


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


# ---------------------------------------------------------------------------------------------
# Round trip and immutability


def test_to_dict_holds_only_plain_yaml_types_with_yaml_keys():
    plain = config_from_dict(tiny_config()).to_dict()
    assert plain["checkpoint"] == {"dir": "weights", "interval": 10, "keep_last": None, "async": False, "format": "file"}
    assert plain["model"] == {"type": "SimpleCNN", "num_classes": 10, "width": 8}
    assert plain["metrics"] == ["accuracy"]
    assert "base" not in plain
    assert yaml.safe_load(yaml.safe_dump(plain)) == plain  # safe_dump would refuse a dataclass


def test_dumped_config_loads_back_to_an_equal_config(tmp_path: Path):
    document = tiny_config(
        metrics=["accuracy", {"type": "accuracy", "name": "top3", "topk": 3}],
        val={"metric": "top3", "mode": "max"},
        checkpoint={"async": True, "keep_last": 2, "interval": 10},
        pretrain_revise_keys=[["^net\\.", ""]],
        imports=["json"],
    )
    document["optimizer"]["lr"] = 1e-5
    document["train"]["ema"] = 0.999
    config = load_config(write_config(tmp_path / "c.yaml", document))

    dumped = write_config_text(tmp_path / "dumped.yaml", dump_config(config))
    again = load_config(dumped)
    assert again == config
    assert again.optimizer.kwargs["lr"] == 1e-5


def test_dump_of_a_config_with_base_and_overrides_is_self_contained(tmp_path: Path):
    write_config(tmp_path / "base.yaml", tiny_config())
    (tmp_path / "sub").mkdir()
    child = write_config(tmp_path / "sub" / "child.yaml", {"base": "../base.yaml", "seed": 4})
    config = load_config(child, ["optimizer.lr=3e-4"])
    text = dump_config(config)
    assert "base" not in yaml.safe_load(text)
    assert load_config(write_config_text(tmp_path / "flat.yaml", text)) == config


def test_config_is_frozen():
    config = config_from_dict(tiny_config())
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.name = "other"
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.train.total_iters = 1
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.optimizer.type = "SGD"
    assert config.name == "tiny"
    assert config.train.total_iters == 30


def test_validation_does_not_modify_the_raw_document():
    document = tiny_config()
    before = copy.deepcopy(document)
    config_from_dict(document)
    assert document == before


def write_config_text(path: Path, text: str) -> Path:
    """Write YAML text as is and return its path."""
    path.write_text(text)
    return path


NUMBER_LIKE_STRINGS = {"a": "1e3", "b": "3e-4", "c": "yes", "d": "null", "e": "1_000", "f": "-2E+3", "g": ".5e1", "1e3": "x"}


def test_strings_that_read_as_numbers_or_keywords_are_quoted_and_reload_as_strings(tmp_path: Path):
    document = tiny_config(model={"type": "SimpleCNN", **NUMBER_LIKE_STRINGS}, optimizer={"type": "AdamW", "lr": 3e-4})
    config = config_from_dict(document)  # not through write_config: yaml.safe_dump writes "1e3" bare

    text = dump_config(config)
    again = load_config(write_config_text(tmp_path / "dumped.yaml", text))

    assert "a: '1e3'" in text and "'1e3': x" in text
    assert again.model.kwargs == NUMBER_LIKE_STRINGS
    assert again == config
    assert again.to_dict() == config.to_dict()
    assert type(again.optimizer.kwargs["lr"]) is float


def test_dump_is_otherwise_what_safe_dump_writes():
    config = config_from_dict(tiny_config())
    assert dump_config(config) == yaml.safe_dump(config.to_dict(), sort_keys=False, default_flow_style=None, width=100)


# ---------------------------------------------------------------------------------------------
# The command line, in process


def test_print_config_prints_yaml_that_reloads_to_the_same_config_without_training(workdir: Path, capsys):
    path = write_config(workdir / "tiny.yaml", tiny_config())

    code = train.main(["-c", str(path), "--print-config", "optimizer.lr=3e-4", "train.total_iters=12"])

    assert code == 0
    printed = capsys.readouterr().out
    expected = load_config(path, ["optimizer.lr=3e-4", "train.total_iters=12"])
    assert load_config(write_config_text(workdir / "printed.yaml", printed)) == expected
    assert "nan_policy: stop" in printed  # defaults filled
    assert not (workdir / "weights").exists()
    assert not (workdir / "experiments").exists()


def test_print_config_shows_the_base_merged(workdir: Path, capsys):
    write_config(workdir / "base.yaml", tiny_config())
    child = write_config(workdir / "child.yaml", {"base": "base.yaml", "name": "child_run"})
    assert train.main(["-c", str(child), "--print-config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["name"] == "child_run"
    assert printed["model"] == {"type": "SimpleCNN", "num_classes": 10, "width": 8}
    assert "base" not in printed


def test_cli_bad_key_returns_2_with_one_error_line_and_no_traceback(workdir: Path, capsys):
    path = write_config(workdir / "tiny.yaml", tiny_config())

    code = train.main(["-c", str(path), "train.totl_iters=5"])

    assert code == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert lines[-1] == "error: config key train.totl_iters is unknown; did you mean train.total_iters?"
    assert "Traceback" not in captured.err
    assert captured.out == ""
    assert not (workdir / "weights").exists()


def test_cli_missing_config_file_returns_2(workdir: Path, capsys):
    assert train.main(["-c", "missing.yaml", "--print-config"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: config file missing.yaml does not exist; check the path given to -c or base"]


def test_cli_config_path_that_is_a_directory_returns_2(workdir: Path, capsys):
    (workdir / "configs").mkdir()
    assert train.main(["-c", "configs/", "--print-config"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: config file configs is a directory, not a YAML file; pass the path of a .yaml file"]


def test_overrides_may_stand_on_both_sides_of_print_config(workdir: Path, capsys):
    path = write_config(workdir / "tiny.yaml", tiny_config())
    try:
        code = train.main(["-c", str(path), "seed=5", "--print-config", "train.total_iters=12"])
    except SystemExit as exit_:  # argparse's "unrecognized arguments"
        pytest.fail(f"argparse exited with {exit_.code}: {capsys.readouterr().err.strip()}")
    printed = yaml.safe_load(capsys.readouterr().out)
    assert code == 0
    assert printed["seed"] == 5
    assert printed["train"]["total_iters"] == 12


# ---------------------------------------------------------------------------------------------
# The command line, as a process (slower)


def assert_one_clean_error_line(result, *fragments: str) -> str:
    """Exit 2, exactly one stderr line starting with 'error:', no traceback; return that line."""
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    for fragment in fragments:
        assert fragment in lines[0]
    return lines[0]


@pytest.mark.slow
def test_train_py_typo_key_exits_2_with_one_line(workdir: Path):
    write_config(workdir / "tiny.yaml", tiny_config())
    result = run_train(workdir, "-c", "tiny.yaml", "optimizer.lr=3e-4", "train.val_intervall=5")
    line = assert_one_clean_error_line(result, "train.val_intervall", "did you mean train.val_interval?")
    assert line == "error: config key train.val_intervall is unknown; did you mean train.val_interval?"
    assert sorted(p.name for p in workdir.iterdir()) == ["tiny.yaml"]  # nothing written


@pytest.mark.slow
def test_train_py_missing_config_file_exits_2_with_one_line(workdir: Path):
    result = run_train(workdir, "-c", "configs/nope.yaml")
    assert_one_clean_error_line(result, "configs/nope.yaml", "does not exist")


@pytest.mark.slow
def test_train_py_free_form_kwarg_the_constructor_rejects_exits_2_naming_it(workdir: Path):
    write_config(workdir / "tiny.yaml", tiny_config())
    result = run_train(workdir, "-c", "tiny.yaml", "model.widht=8")
    assert_one_clean_error_line(result, "model SimpleCNN", "'widht'", "width")
