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

from trainer.errors import InputError, first_line


def yaml_type_name(value: Any) -> str:
    """A reader's name for the YAML type of `value`."""
    names = {bool: "boolean", int: "integer", float: "number", str: "string", list: "list", dict: "mapping"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def with_article(noun: str) -> str:
    """'an integer', 'a string': the noun with its indefinite article."""
    return f"an {noun}" if noun[:1] in "aeiou" else f"a {noun}"


# YAML 1.2's float rule: PyYAML implements YAML 1.1, whose float pattern needs a dot, so it reads
# `3e-4` as the string "3e-4", which then fails far from the config (torch.optim's "'<=' not
# supported"). The loader reads such numbers as floats; the dumper must know the same rule, or it
# writes the string "1e3" unquoted and the loader reads it back as the number 1000.0.
_YAML12_FLOAT = re.compile(r"^[-+]?(?:[0-9][0-9_]*\.?[0-9_]*|\.[0-9][0-9_]*)[eE][-+]?[0-9]+$")
_FLOAT_TAG = "tag:yaml.org,2002:float"
_MERGE_TAG = "tag:yaml.org,2002:merge"


class _DuplicateKey(Exception):
    """A mapping repeats a key; the message lacks the source, which parse_yaml adds."""


class _Loader(yaml.SafeLoader):
    """SafeLoader plus the YAML 1.2 float rule, refusing a mapping that repeats a key.

    PyYAML keeps the last of two equal keys silently: a second `train:` block would drop every
    key of the first one.
    """

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._path: list = []  # the index of every node being composed: a key node, a list position or None

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        """Compose one node, remembering where it sits for the duplicate-key message."""
        self._path.append(index)
        try:
            return super().compose_node(parent, index)
        finally:
            self._path.pop()

    def compose_mapping_node(self, anchor: str | None) -> yaml.MappingNode:
        """Compose a mapping and refuse it if it repeats a key."""
        node = super().compose_mapping_node(anchor)
        # Checked here, before construction: `<<:` merges are still one pair each, so the keys
        # they bring in (which a mapping may override by design) are never taken for repeats.
        seen: dict[tuple[str, str], tuple[yaml.Node, yaml.Node]] = {}
        for key, value in node.value:
            if not isinstance(key, yaml.ScalarNode) or key.tag == _MERGE_TAG:
                continue  # merge keys and complex keys (`? [a, b]`) are left to PyYAML
            if (key.tag, key.value) in seen:
                raise _DuplicateKey(_duplicate_message(self._path, seen[(key.tag, key.value)], (key, value)))
            seen[(key.tag, key.value)] = (key, value)
        return node


class _Dumper(yaml.SafeDumper):
    """SafeDumper that quotes what _Loader would read as a YAML 1.2 float (the string "1e3")."""


for _yaml_class in (_Loader, _Dumper):  # add_implicit_resolver copies the table: PyYAML's own classes keep theirs
    _yaml_class.add_implicit_resolver(_FLOAT_TAG, _YAML12_FLOAT, list("-+0123456789."))


def _duplicate_message(path: list, first: tuple[yaml.Node, yaml.Node], second: tuple[yaml.Node, yaml.Node]) -> str:
    """The message for a repeated key: its dotted path, the lines of both, and the fix."""
    dotted = ""
    for index in (*path, second[0]):
        if isinstance(index, int):
            dotted += f"[{index}]"
        elif isinstance(index, yaml.ScalarNode):
            dotted += f".{index.value}" if dotted else index.value
    start, end = first[0].start_mark, second[0].start_mark
    if start.line != end.line:
        where = f"lines {start.line + 1} and {end.line + 1}"
    else:  # a flow mapping such as an override's `{a: 1, a: 2}`
        where = f"line {start.line + 1}, columns {start.column + 1} and {end.column + 1}"
    both_blocks = isinstance(first[1], yaml.MappingNode) and isinstance(second[1], yaml.MappingNode)
    fix = "merge the two blocks into one" if both_blocks else "keep only one of them"
    return f"key {dotted!r} appears twice ({where}); {fix}"


def parse_yaml(text: str, source: str) -> Any:
    """Parse YAML text with the safe loader; a syntax error or a repeated key names the line."""
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader
    except _DuplicateKey as error:
        raise InputError(f"{source}: {error}") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(error, "problem", None) or first_line(error)
        raise InputError(f"{source}: not valid YAML{where}: {problem}; fix the syntax there") from None
    except (ValueError, TypeError, KeyError, IndexError, AttributeError, OverflowError, RecursionError) as error:
        # PyYAML's constructors raise these for values such as `2024-13-01` or `!!int abc`.
        reason = first_line(error)
        value = f" {text.strip()!r}" if len(text) <= 80 else ""  # an override's value is short: show it
        raise InputError(f"{source}: the value{value} cannot be read ({reason}); quote it if it is meant as a string") from None


def dump_yaml(document: Any) -> str:
    """`document` as block YAML that parse_yaml reads back to an equal document."""
    return yaml.dump(document, Dumper=_Dumper, sort_keys=False, default_flow_style=None, width=100)


def _read_mapping(path: Path) -> dict:
    """Read one config file, which must hold a non-empty mapping."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"config file {path} does not exist; check the path given to -c or base") from None
    except IsADirectoryError:
        raise InputError(f"config file {path} is a directory, not a YAML file; pass the path of a .yaml file") from None
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
    return merge(load_document(_base_path(path, base), (*chain, resolved)), document)


def _base_path(path: Path, base: str) -> Path:
    """The file that `base` in the config file `path` names (relative to it), which must exist."""
    base_path = path.parent / base
    try:
        is_file, is_dir = base_path.is_file(), base_path.is_dir()
    except OSError as error:  # e.g. a name too long for the filesystem
        raise InputError(f"config key base in {path}: {base!r} is not a usable path ({error.strerror})") from None
    if is_dir:
        raise InputError(
            f"config key base in {path}: {base_path} is a directory, not a YAML file; "
            f"give the path of a .yaml file, relative to {path}"
        )
    if not is_file:
        raise InputError(f"config key base in {path}: {base_path} does not exist; the path is relative to {path}")
    return base_path


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
