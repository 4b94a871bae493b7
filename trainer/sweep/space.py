"""One searched config key and its distribution: `{log_float: [lo, hi]}`, `{float: [lo, hi]}`,
`{int: [lo, hi]}` or `{int: [lo, hi, step]}`, `{choice: [v1, v2, ...]}`.

Parsing checks the distribution alone (its name, its range); whether the key and its values fit
the base config is spec.py's job. Everything is one-line InputErrors that name the key.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Literal

from trainer.errors import InputError, did_you_mean

Kind = Literal["log_float", "float", "int", "choice"]
KINDS: tuple[Kind, ...] = ("log_float", "float", "int", "choice")


@dataclass(frozen=True)
class Dimension:
    """A searched dotted config key, its distribution kind and that distribution's arguments."""

    key: str
    kind: Kind
    args: tuple  # (lo, hi) | (lo, hi, step) for int | the choices

    def suggest(self, trial: Any) -> Any:
        """Draw this key's value for an Optuna trial (the key is the Optuna parameter name)."""
        if self.kind == "choice":
            return trial.suggest_categorical(self.key, list(self.args))
        if self.kind == "int":
            lo, hi, step = self.args
            return trial.suggest_int(self.key, lo, hi, step=step)
        lo, hi = self.args
        return trial.suggest_float(self.key, lo, hi, log=self.kind == "log_float")

    def candidates(self) -> list[Any]:
        """The values checked against the base config at the door: both ends of a range, or every choice."""
        return list(self.args) if self.kind == "choice" else list(self.args[:2])

    def grid(self) -> list[Any] | None:
        """Every value, for the grid sampler; None for a continuous (float) distribution."""
        if self.kind == "choice":
            return list(self.args)
        if self.kind == "int":
            lo, hi, step = self.args
            return list(range(lo, hi + 1, step))
        return None

    def to_dict(self) -> dict:
        """The sweep file's form, `{kind: [args]}` (stored with the study to recognise a changed space)."""
        return {self.kind: list(self.args)}


def override(key: str, value: Any) -> str:
    """The KEY=VALUE override that sets `key` to `value` (JSON is YAML: 1e-05, null, true, "text")."""
    return f"{key}={json.dumps(value)}"


def parse_dimension(key: str, spec: Any, where: str) -> Dimension:
    """Validate one `space` entry; `where` prefixes the errors (the sweep file)."""
    path = f"{where}: space {key}"
    if not isinstance(spec, dict) or len(spec) != 1:
        raise InputError(
            f"{path}: got {spec!r}, expected one distribution such as {{log_float: [1.0e-4, 1.0e-2]}}, "
            "{float: [lo, hi]}, {int: [lo, hi, step]} or {choice: [a, b]}"
        )
    (kind, args), = spec.items()
    if kind not in KINDS:
        near = did_you_mean(str(kind), KINDS, cutoff=0.5)
        hint = f"{near} " if near else ""
        raise InputError(f"{path}: unknown distribution {kind!r}; {hint}(known: {', '.join(KINDS)})")
    if kind == "choice":
        return Dimension(key, kind, _choices(args, path))
    if kind == "int":
        return Dimension(key, kind, _int_range(args, path))
    return Dimension(key, kind, _float_range(kind, args, path))


def _is_number(value: Any) -> bool:
    """An int or float, not a bool (YAML's true is not 1 here)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _finite(value: Any) -> float | None:
    """`value` as a finite float; None for nan, inf and an integer too large for a float."""
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def _float_range(kind: Kind, args: Any, path: str) -> tuple[float, float]:
    """[lo, hi] of two finite numbers with lo <= hi (and lo > 0 on a log scale) whose width a float holds."""
    if not isinstance(args, list) or len(args) != 2 or not all(_is_number(a) for a in args):
        raise InputError(f"{path}: {kind} takes [lo, hi], two numbers; got {args!r}")
    lo, hi = _finite(args[0]), _finite(args[1])
    if lo is None or hi is None:
        shown = ", ".join(str(a) if isinstance(a, float) else f"{a:.3g}" for a in args)
        raise InputError(
            f"{path}: {kind} range [{shown}] has an end that is not a finite number; write [lo, hi] with two finite numbers"
        )
    if lo > hi:
        raise InputError(f"{path}: {kind} range [{lo:g}, {hi:g}] has lo > hi; write [lo, hi] with lo <= hi")
    if not math.isfinite(hi - lo):  # numpy's uniform draws over hi - lo
        raise InputError(f"{path}: {kind} range [{lo:g}, {hi:g}] is wider than a float holds (hi - lo overflows); narrow it")
    if kind == "log_float" and lo <= 0:
        raise InputError(f"{path}: log_float needs lo > 0 (a log scale), got {lo:g}; use float for a range that reaches 0")
    return lo, hi


def _int_range(args: Any, path: str) -> tuple[int, int, int]:
    """[lo, hi] or [lo, hi, step] of integers, lo <= hi, step >= 1 dividing hi - lo."""
    whole = isinstance(args, list) and all(isinstance(a, int) and not isinstance(a, bool) for a in args)
    if not whole or len(args) not in (2, 3):
        raise InputError(f"{path}: int takes [lo, hi] or [lo, hi, step], integers; got {args!r}")
    lo, hi, step = (*args, 1) if len(args) == 2 else args
    if lo > hi:
        raise InputError(f"{path}: int range [{lo}, {hi}] has lo > hi; write [lo, hi, step] with lo <= hi")
    if step < 1 or (hi - lo) % step:
        raise InputError(
            f"{path}: int step {step} does not divide the range [{lo}, {hi}] into whole steps; "
            "use a step >= 1 that divides hi - lo"
        )
    return lo, hi, step


def _choices(args: Any, path: str) -> tuple:
    """A non-empty list of distinct scalars (what Optuna's categorical distribution stores)."""
    if not isinstance(args, list) or not args:
        raise InputError(f"{path}: choice takes a non-empty list of values, such as [null, 0.999]; got {args!r}")
    for value in args:
        if value is not None and not isinstance(value, (bool, int, float, str)):
            raise InputError(
                f"{path}: choice value {value!r} is not null, a boolean, a number or a string "
                "(Optuna stores only those); search a scalar key instead"
            )
        if isinstance(value, float) and not math.isfinite(value):
            raise InputError(
                f"{path}: choice value {value} is not a finite number (a trial's KEY=VALUE cannot carry it, and nan "
                "equals no choice); list finite numbers, or null to switch the key off"
            )
    if len({json.dumps(value) for value in args}) != len(args):
        raise InputError(f"{path}: choice {args!r} repeats a value; list each value once")
    return tuple(args)
