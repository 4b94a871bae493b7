"""Kiln's two exception types, and the one copy of the helpers that turn errors into messages.

- `InputError` (exit code 2) and `TrainingError` (exit code 1): what train.py and the tools report
  as one `error:` line (`report_error`) instead of a traceback.
- `first_line`: an exception as one line, for a message that quotes why something failed.
- `did_you_mean`: the "did you mean X?" hint of an unknown name.

A leaf: imports nothing from trainer (utils.console only inside `report_error`).
"""

from __future__ import annotations

import difflib
import sys
from collections.abc import Sequence


class InputError(Exception):
    """A mistake in the config, the command line or an input file.

    The message is one line that names the key or file and says how to fix it; train.py prints
    it without a traceback and exits with code 2.
    """


class TrainingError(Exception):
    """A run that cannot go on (a failed checkpoint write, a non-finite loss under nan_policy stop).

    train.py prints its one-line message and exits with code 1; earlier files stay intact.
    """


# The errors train.py and the tools report as one line: `except REPORTED_ERRORS as error: return report_error(error)`.
REPORTED_ERRORS: tuple[type[Exception], ...] = (InputError, TrainingError)


def exit_code(error: InputError | TrainingError) -> int:
    """The process exit code of a reported error: 2 for an InputError, 1 for a TrainingError."""
    return 2 if isinstance(error, InputError) else 1


def report_error(error: InputError | TrainingError) -> int:
    """Write `error: <message>` and a newline on stderr and return `exit_code(error)`.

    Written through utils.console.write, so a closed stderr (`2>&-`, a reader that went away)
    drops the line instead of turning the exit code into a BrokenPipeError traceback.
    """
    from utils import console

    console.write(sys.stderr, f"error: {error}\n")
    return exit_code(error)


def first_line(error: BaseException | str, *, strip: bool = False, with_type: bool = False) -> str:
    """The first line of `str(error)`; the type's name instead when that text is empty.

    - strip=False: `str(error).splitlines()[0]`, so a message that starts with a newline gives "";
      only an empty message gives `type(error).__name__`.
    - strip=True: the text is stripped first: leading blank lines are skipped, and a message of
      whitespace only counts as empty (gives the type's name).
    - with_type=True: `"<TypeName>: <first line>"`, or the bare type name when the first line is
      empty (with strip=False also for a message that starts with a newline).

    A string passed as `error` is its own message (its "type name" is then `str`).
    """
    text = str(error).strip() if strip else str(error)
    line = text.splitlines()[0] if text else ""
    if with_type:
        return f"{type(error).__name__}: {line}" if line else type(error).__name__
    return line if text else type(error).__name__


def did_you_mean(
    word: str, candidates: Sequence[str], *, n: int = 1, cutoff: float = 0.6, ignore_case: bool = False, prefix: str = ""
) -> str:
    """`"did you mean A?"` (or `"did you mean A or B?"`) for the candidates nearest to `word`; "" if none is near.

    The nearest are difflib.get_close_matches(word, candidates, n, cutoff), each written with
    `prefix` in front (a key's parent path, a namespace such as `timm/`). ignore_case=True
    compares lowercased names and writes the matches as `candidates` spell them (of candidates
    differing only in case, the last one).
    """
    if ignore_case:
        by_lower = {candidate.lower(): candidate for candidate in candidates}
        close = [by_lower[match] for match in difflib.get_close_matches(word.lower(), list(by_lower), n=n, cutoff=cutoff)]
    else:
        close = difflib.get_close_matches(word, candidates, n=n, cutoff=cutoff)
    return f"did you mean {' or '.join(prefix + match for match in close)}?" if close else ""
