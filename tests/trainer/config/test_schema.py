"""The config schema (trainer/config/schema.py, DESIGN.md section 3): a document -> a frozen, typed Config.

Every mistake a user can make in a config must surface here as one InputError line that names
the key path, shows what was given and what is expected. Reading files, `base` and KEY=VALUE
overrides are in test_files.py; the command line in tests/e2e/test_config_cli.py.
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import pytest
import torch
import yaml

from tests.helpers import error_of, tiny_config, write_config, write_config_text
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


def config_error(document: dict) -> str:
    """The one-line InputError that validating `document` raises."""
    return error_of(lambda: config_from_dict(document))


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
