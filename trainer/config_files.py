"""Reading config files: YAML (safe loader) with `base` inheritance and KEY=VALUE overrides.

What comes out is a raw document (nested dicts); trainer/config.py turns it into the typed
Config. Every problem is an InputError with one line that names the file or override and the fix.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import yaml

from trainer.errors import InputError


def yaml_type_name(value: Any) -> str:
    """A reader's name for the YAML type of `value`."""
    names = {bool: "boolean", int: "integer", float: "number", str: "string", list: "list", dict: "mapping"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def with_article(noun: str) -> str:
    """'an integer', 'a string': the noun with its indefinite article."""
    return f"an {noun}" if noun[:1] in "aeiou" else f"a {noun}"


class _Loader(yaml.SafeLoader):
    """SafeLoader plus the YAML 1.2 float rule, so that `3e-4` and `1e12` are floats.

    PyYAML implements YAML 1.1, whose float pattern needs a dot: it reads `3e-4` as the string
    "3e-4", which then fails far from the config (torch.optim's "'<=' not supported").
    """


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*\.?[0-9_]*|\.[0-9][0-9_]*)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def parse_yaml(text: str, source: str) -> Any:
    """Parse YAML text with the safe loader; a syntax error names the line and column."""
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise InputError(f"{source}: not valid YAML{where}: {problem}; fix the syntax there") from None
    except (ValueError, TypeError, KeyError, IndexError, AttributeError, OverflowError, RecursionError) as error:
        # PyYAML's constructors raise these for values such as `2024-13-01` or `!!int abc`.
        reason = (str(error).splitlines() or [type(error).__name__])[0]
        value = f" {text.strip()!r}" if len(text) <= 80 else ""  # an override's value is short: show it
        raise InputError(f"{source}: the value{value} cannot be read ({reason}); quote it if it is meant as a string") from None


def _read_mapping(path: Path) -> dict:
    """Read one config file, which must hold a non-empty mapping."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"config file {path} does not exist; check the path given to -c or base") from None
    except (OSError, UnicodeDecodeError) as error:
        raise InputError(f"config file {path} cannot be read ({error}); pass a readable UTF-8 YAML file") from None
    document = parse_yaml(text, str(path))
    if document is None:
        raise InputError(f"config file {path} is empty; it needs at least the required keys (see configs/digits_cnn.yaml)")
    if not isinstance(document, dict):
        raise InputError(
            f"config file {path}: the top level is {with_article(yaml_type_name(document))}, expected a mapping of keys "
            "such as `name:` and `model:`"
        )
    return document


def merge(parent: Any, child: Any) -> Any:
    """Deep-merge `child` over `parent`: mappings key by key (child wins), lists replaced.

    A component mapping (one with `type`) is replaced whole when the child names a different
    type, so that an SGD child does not inherit AdamW's kwargs.
    """
    if not (isinstance(parent, dict) and isinstance(child, dict)):
        return copy.deepcopy(child)
    if "type" in child and "type" in parent and child["type"] != parent["type"]:
        return copy.deepcopy(child)
    merged = copy.deepcopy(parent)
    for key, value in child.items():
        merged[key] = merge(parent[key], value) if key in parent else copy.deepcopy(value)
    return merged


def load_document(path: Path, chain: tuple[Path, ...] = ()) -> dict:
    """Read `path` and, recursively, the `base` it extends (relative to the file)."""
    resolved = path.resolve()
    if resolved in chain:
        cycle = " -> ".join(str(p) for p in (*chain, resolved))
        raise InputError(f"config `base` cycle: {cycle}; remove one of these base links")
    document = _read_mapping(path)
    base = document.pop("base", None)
    if base is None:
        return document
    if not isinstance(base, str):
        raise InputError(f"config key base in {path}: got {base!r}, expected a path to another YAML file")
    base_path = path.parent / base
    try:
        found = base_path.is_file()
    except OSError as error:  # e.g. a name too long for the filesystem
        raise InputError(f"config key base in {path}: {base!r} is not a usable path ({error.strerror})") from None
    if not found:
        raise InputError(f"config key base in {path}: {base_path} does not exist; the path is relative to {path}")
    return merge(load_document(base_path, (*chain, resolved)), document)


def apply_override(document: dict, override: str) -> dict:
    """Apply one `dotted.key=yaml_value` override to a raw config document (returns a new one)."""
    if "=" not in override:
        raise InputError(f"override {override!r} has no '='; write KEY=VALUE, for example train.total_iters=100")
    key, text = override.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise InputError(f"override {override!r}: {key!r} is not a dotted key path such as optimizer.lr")
    if parts[0] == "base":
        raise InputError(f"override {override!r}: base cannot be overridden; write a child config with `base:` instead")
    shown = key if key.isprintable() else repr(key)  # a line break in a key must not split the message
    value = parse_yaml(text, f"override {shown}") if text.strip() else ""
    node = document
    for depth, part in enumerate(parts[:-1]):
        node = node.get(part)
        if node is None:
            break  # merge() builds the missing levels
        if not isinstance(node, dict):
            where = ".".join(parts[: depth + 1])
            raise InputError(f"override {override!r}: {where} is {with_article(yaml_type_name(node))}, not a mapping with keys")
    nested = value
    for part in reversed(parts):
        nested = {part: nested}
    return merge(document, nested)
