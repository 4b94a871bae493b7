"""Properties of the config door: whatever a config file or an override holds, load_config returns
a Config or raises an InputError with a one-line message, never any other exception.

The documents are tiny_config() mutated at random depths (keys added, removed or replaced with
random YAML values: numbers incl. nan/inf, strings, booleans, null, lists, mappings); the
overrides mix the known dotted keys with garbage keys and values, unparsable YAML included.

The examples at the end of the file are the inputs these properties found that once crashed the
loader; they are kept as plain regression tests.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any, get_args, get_type_hints

import pytest
import yaml
from hypothesis import HealthCheck, currently_in_test_context, event, given, settings
from hypothesis import strategies as st

from tests.helpers import tiny_config, write_config
from trainer.config import Component, Config, MetricSpec, config_from_dict, dump_config, load_config
from trainer.config.files import parse_yaml
from trainer.errors import InputError

PROPERTY_SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

# ---------------------------------------------------------------------------------------------
# Strategies


def known_paths(cls: type = Config, prefix: str = "") -> list[str]:
    """Every dotted key path of the Config dataclasses (YAML spelling, `async` not `async_`)."""
    paths = []
    hints = get_type_hints(cls)
    for spec in dataclasses.fields(cls):
        path = prefix + spec.metadata.get("key", spec.name)
        paths.append(path)
        for hint in get_args(hints[spec.name]) or (hints[spec.name],):
            if dataclasses.is_dataclass(hint) and hint not in (Component, MetricSpec):
                paths += known_paths(hint, path + ".")
    return paths


def leaf_paths(document: dict, prefix: str = "") -> list[str]:
    """Every dotted key path of a plain document (component kwargs such as model.width included)."""
    paths = []
    for key, value in document.items():
        paths.append(prefix + key)
        if isinstance(value, dict):
            paths += leaf_paths(value, f"{prefix}{key}.")
    return paths


KNOWN_PATHS = sorted(set(known_paths()) | set(leaf_paths(tiny_config())) | {"base", "model.type", "optimizer.betas"})
KNOWN_KEYS = sorted({path.rsplit(".", 1)[-1] for path in KNOWN_PATHS})

# Override values that are not YAML, or YAML that constructs to nothing usable.
GARBAGE_VALUES = [
    "[1,",
    "{a:",
    "{a: 1",
    "]",
    "}",
    ": :",
    '"unclosed',
    "'unclosed",
    "&anchor",
    "*undefined_alias",
    "!!python/object/apply:os.system ['touch pwned']",
    "!!python/name:os.system",
    "!!set [1]",
    "!!str [1]",
    "%YAML 2.0\n---\nx",
    "@",
    "`",
    "\t- x",
    "a: b: c",
    "- a\nb: c",
    "? [a]\n: 1",
    "\x00",
    "\x07",
    "---\n---",
    "...",
    ".nan",
    "-.inf",
    "1e999",
    "3e-4",
    "0x1F",
    "0o17",
    "1:20",
    "~",
    "",
    " ",
]

# Characters that mean something to YAML, to dotted keys or to a one-line message, drawn often.
SPECIAL_CHARACTERS = "\n\r\t .=:,-?[]{}#&*!|>'\"%@`~\\\x00\x85\u2028"
safe_special = list(SPECIAL_CHARACTERS)
text = st.text(st.characters() | st.sampled_from(SPECIAL_CHARACTERS), max_size=20)
safe_text = st.text(
    st.characters() | st.sampled_from(safe_special),
    max_size=20,
)
# A known key with one character slipped in: `lr `, `l=r`, `lr:`, the typos a user makes.
near_known_keys = st.builds(
    lambda key, char, at: key[:at] + char + key[at:],
    st.sampled_from(KNOWN_KEYS),
    st.sampled_from(safe_special),
    st.integers(0, 20),
)
keys = st.sampled_from(KNOWN_KEYS) | near_known_keys | safe_text | st.integers(-3, 3) | st.booleans() | st.none()
scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(-3, 3)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.sampled_from([math.nan, math.inf, -math.inf, 0.5, 1e4, -1.0])
    | text
    | st.sampled_from(["parent.yaml", "config.yaml", "missing.yaml", ".", "", "SimpleCNN", "AdamW", "accuracy", "cpu"])
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=4),
    max_leaves=12,
)


def containers(node: Any) -> list[dict | list]:
    """`node` and every mapping or list nested in it."""
    found = [node]
    children = node.values() if isinstance(node, dict) else node
    for child in children:
        if isinstance(child, (dict, list)):
            found += containers(child)
    return found


@st.composite
def documents(draw: st.DrawFn) -> dict:
    """tiny_config() with up to 5 random additions, removals and replacements at random depths."""
    document = tiny_config()
    for _ in range(draw(st.integers(0, 5))):
        node = draw(st.just(document) | st.sampled_from(containers(document)))  # the top level half the time
        action = draw(st.sampled_from(["add", "remove", "replace"]))
        slots = list(node) if isinstance(node, dict) else list(range(len(node)))
        if action == "add" or not slots:
            if isinstance(node, dict):
                node[draw(keys)] = draw(values)
            else:
                node.append(draw(values))
        elif action == "remove":
            del node[draw(st.sampled_from(slots))]
        else:
            node[draw(st.sampled_from(slots))] = draw(values)
    return document


def value_text(value: Any) -> str:
    """`value` as an override writes it: YAML flow style on one line."""
    return yaml.safe_dump(value, default_flow_style=True, width=math.inf).removesuffix("\n").removesuffix("\n...")


override_keys = (
    st.sampled_from(KNOWN_PATHS)
    | near_known_keys
    | safe_text
    | st.builds(lambda path, extra: f"{path}.{extra}", st.sampled_from(KNOWN_PATHS), safe_text)
    | st.lists(st.sampled_from(KNOWN_KEYS) | near_known_keys | safe_text, min_size=1, max_size=4).map(".".join)
)
override_values = st.sampled_from(GARBAGE_VALUES) | values.map(value_text) | text
# Values that are right for some keys, so that overrides also reach the merge and validate.
plausible_values = st.sampled_from(
    ["1", "10", "0.5", "3e-4", "true", "false", "null", "cpu", "auto", "max", "SimpleCNN", "accuracy", "[0.9, 0.999]", "[]"]
    + ["{type: SGD, lr: 0.1}", "{type: MLP, hidden: 8}", "{type: Digits, split: val}", "[accuracy]", "weights/x.pt"]
)
known_override = st.builds(
    lambda key, value: f"{key}={value}", st.sampled_from(KNOWN_PATHS), plausible_values | values.map(value_text)
)
any_override = st.builds(lambda key, value: f"{key}={value}", override_keys, override_values)
overrides = st.just([]) | st.lists(known_override | known_override | known_override | any_override | safe_text, max_size=3)


# ---------------------------------------------------------------------------------------------
# The properties


ERROR_KINDS = ("not valid YAML", "has no '='", "is unknown", "required but missing", "expected", "cycle", "does not exist")


def kind_of(message: str) -> str:
    """A coarse label of an InputError message, for hypothesis' statistics (--hypothesis-show-statistics)."""
    return next((kind for kind in ERROR_KINDS if kind in message), "other")


def assert_config_or_one_line_error(path: Path, overrides: list[str] = ()) -> None:
    """load_config returns a Config or raises a one-line InputError; anything else propagates."""
    try:
        config = load_config(path, overrides)
    except InputError as error:
        message = str(error)
        outcome = f"InputError: {kind_of(message)}"
        assert message, "an InputError needs a message"
        assert "\n" not in message and "\r" not in message, f"the message must be one line: {message!r}"
    else:
        outcome = "Config"
        assert isinstance(config, Config)
    if currently_in_test_context():
        event(outcome)


@pytest.fixture
def parent_file(tmp_path: Path) -> Path:
    """A valid parent.yaml beside the generated config, for `base: parent.yaml`."""
    return write_config(tmp_path / "parent.yaml", tiny_config())


@PROPERTY_SETTINGS
@given(document=documents(), overrides=overrides)
def test_any_document_and_overrides_give_a_config_or_one_line_error(
    tmp_path: Path, parent_file: Path, document: dict, overrides: list[str]
) -> None:
    text = yaml.safe_dump(document, sort_keys=False)
    path = tmp_path / "config.yaml"
    path.write_text(text, encoding="utf-8")
    assert_config_or_one_line_error(path, overrides)


@PROPERTY_SETTINGS
@given(raw=st.text())
def test_any_text_as_config_file_gives_a_config_or_one_line_error(tmp_path: Path, parent_file: Path, raw: str) -> None:
    path = tmp_path / "config.yaml"
    path.write_bytes(raw.encode("utf-8"))
    assert_config_or_one_line_error(path)


# Strings a YAML reader could take for something else: numbers in either YAML version, keywords.
number_like = st.from_regex(r"[-+]?(?:[0-9][0-9_]*\.?[0-9_]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?", fullmatch=True) | st.sampled_from(
    ["yes", "no", "on", "off", "null", "~", "true", "NaN", ".inf", "1:20", "0x1F", "0o17", "2024-01-01", "<<", "="]
)
kwarg_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | text | number_like,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(text | number_like, inner, max_size=3),
    max_leaves=8,
)


@settings(max_examples=100, deadline=None)
@given(kwargs=st.dictionaries((text | number_like).filter(lambda key: key != "type"), kwarg_values, max_size=5))
def test_dumped_config_reloads_to_an_equal_config_whatever_the_kwargs(kwargs: dict) -> None:
    config = config_from_dict(tiny_config(model={"type": "SimpleCNN", **kwargs}))
    again = config_from_dict(parse_yaml(dump_config(config), "dumped config.yaml"))
    assert again == config
    assert again.to_dict() == config.to_dict()


def test_the_check_fails_on_a_multi_line_message_or_another_exception(tmp_path: Path, monkeypatch) -> None:
    """The properties can fail: what they accept and what they reject."""
    path = write_config(tmp_path / "config.yaml", tiny_config())
    assert_config_or_one_line_error(path)  # a valid config
    assert_config_or_one_line_error(path, ["train.total_iters=[1,"])  # a one-line InputError

    def raising(error: Exception):
        def load(*args):
            raise error

        return load

    monkeypatch.setattr(__name__ + ".load_config", raising(InputError("two\nlines")))
    with pytest.raises(AssertionError, match="one line"):
        assert_config_or_one_line_error(path)
    monkeypatch.setattr(__name__ + ".load_config", raising(KeyError("type")))
    with pytest.raises(KeyError):
        assert_config_or_one_line_error(path)
    monkeypatch.setattr(__name__ + ".load_config", lambda *args: {"name": "tiny"})
    with pytest.raises(AssertionError):
        assert_config_or_one_line_error(path)


def test_the_strategies_know_the_config_keys() -> None:
    assert {"checkpoint.async", "train.total_iters", "data.train.split", "val.metric", "base"} <= set(KNOWN_PATHS)
    assert "async_" not in KNOWN_KEYS


# ---------------------------------------------------------------------------------------------
# Inputs the properties found that once crashed the loader (regression tests)


def one_line_input_error(call) -> str:
    """Run `call`, require an InputError whose message is one line, return the message."""
    with pytest.raises(InputError) as caught:
        call()
    message = str(caught.value)
    assert "\n" not in message and "\r" not in message, f"the message must be one line: {message!r}"
    return message


@pytest.mark.parametrize(
    "call",
    [
        pytest.param(lambda tmp: load_config(write_config(tmp / "c.yaml", tiny_config(**{"a\nb": 1}))), id="file-key"),
        pytest.param(lambda tmp: load_config(write_config(tmp / "c.yaml", tiny_config()), ["a\nb=1"]), id="override-key"),
        pytest.param(lambda tmp: load_config(write_config(tmp / "c.yaml", tiny_config()), ["a\nb=[1,"]), id="override-bad-yaml"),
    ],
)
def test_unknown_key_with_a_line_break_is_named_on_one_line(tmp_path: Path, call) -> None:
    one_line_input_error(lambda: call(tmp_path))


def test_kiln_float_rule_needs_a_digit_after_the_dot() -> None:
    assert parse_yaml("x: ._e5", "config.yaml") == {"x": "._e5"}
    assert parse_yaml("x: .5e5", "config.yaml") == {"x": 50000.0}


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("2024-13-01", id="impossible-date"),
        pytest.param("2024-02-30 10:00:00", id="impossible-day"),
        pytest.param("0x_", id="hex-without-digits"),
        pytest.param("1" * 5000, id="int-over-4300-digits"),
        pytest.param("!!int abc", id="int-tag-on-text"),
        pytest.param("!!float abc", id="float-tag-on-text"),
        pytest.param("!!bool maybe", id="bool-tag-on-text"),
        pytest.param("!!timestamp xyz", id="timestamp-tag-on-text"),
        pytest.param("!!int +", id="int-tag-on-sign"),
        pytest.param("[" * 2000, id="deep-nesting"),
    ],
)
def test_yaml_that_fails_while_constructing_is_an_input_error(tmp_path: Path, value: str) -> None:
    message = one_line_input_error(lambda: parse_yaml(f"x: {value}", "config.yaml"))
    assert "config.yaml" in message


def test_base_path_too_long_is_an_input_error(tmp_path: Path) -> None:
    path = write_config(tmp_path / "c.yaml", {"base": "x" * 300, **tiny_config()})
    assert "base" in one_line_input_error(lambda: load_config(path))


def test_revise_regex_with_huge_repeat_is_an_input_error() -> None:
    document = tiny_config(pretrain_revise_keys=[["a{99999999999}", ""]])
    assert "pretrain_revise_keys[0]" in one_line_input_error(lambda: config_from_dict(document))


@pytest.mark.parametrize(("key", "value"), [("name", "tiny\n"), ("device", "cpu\n")])
def test_name_or_device_with_a_trailing_line_break_is_rejected(key: str, value: str) -> None:
    assert f"config key {key}" in one_line_input_error(lambda: config_from_dict(tiny_config(**{key: value})))
