"""Every widget value of a UCE node checked before any work, in one place.

The same checks run when ComfyUI validates a queued prompt (so a bad value is
an HTTP 400 naming the node and the input) and when the node runs (values that
arrive through links, or a direct call). They read the node's own input
declarations: types, ranges and choices come from one source.

Numbers must be finite (ComfyUI's own min/max check lets NaN through: every
comparison with NaN is false). Texts are bounded by their size in characters,
which costs nothing, before any tokenizer sees them: a line longer than any
supported text encoder can read in one prompt is refused quoting only its start.
"""

from __future__ import annotations

import math
from typing import Mapping

# UCE reads at most 512 tokens of one prompt, and no token of the supported text encoders'
# vocabularies is longer than 128 characters (the LLMs' runs of spaces): a longer line is never one prompt.
MAX_LINE_CHARS = 512 * 128
# A text input holds one prompt per line; 1,000,000 characters is some 50,000 typical prompts,
# far more than an edit can use (the art preset's preserve list has about 1,700).
MAX_TEXT_CHARS = 1_000_000
QUOTE_CHARS = 80


class InputError(ValueError):
    """A node input with a value the node cannot use; the message starts with the input's name."""

    def __init__(self, name: str, problem: str):
        super().__init__(f"{name}: {problem}")
        self.input_name = name


def quote(text: str, limit: int = QUOTE_CHARS) -> str:
    """``text`` quoted, cut to its first ``limit`` characters."""
    return repr(text) if len(text) <= limit else repr(text[:limit]) + f"… ({len(text):,} characters)"


def validation_answer(check, values: Mapping):
    """What a node's validate_inputs answers ComfyUI: True, or the message of the ValueError ``check(values)``
    raises (ComfyUI answers the queued prompt with it, HTTP 400)."""
    try:
        check(values)
    except ValueError as error:
        return str(error)
    return True


def declared_inputs(input_types: Mapping) -> dict:
    """name -> (type, options) for the required and optional inputs of an INPUT_TYPES declaration."""
    declared = {}
    for section in ("required", "optional"):
        for name, spec in input_types.get(section, {}).items():
            declared[name] = (spec[0], spec[1] if len(spec) > 1 else {})
    return declared


def check_inputs(input_types: Mapping, values: Mapping) -> None:
    """Raise InputError for the first value that does not fit its declaration; None (a link) is skipped."""
    declared = declared_inputs(input_types)
    for name, value in values.items():
        if value is None or name not in declared:
            continue
        kind, options = declared[name]
        if kind in ("FLOAT", "INT"):
            check_number(name, value, options, kind)
        elif kind == "STRING":
            check_text(name, value)
        elif kind == "BOOLEAN":
            if not isinstance(value, bool):
                raise InputError(name, f"must be true or false, got {type(value).__name__} {quote(str(value))}")
        else:
            choices = kind if isinstance(kind, (list, tuple)) else options.get("options") if kind == "COMBO" else None
            if choices is not None and value not in choices:
                raise InputError(name, f"{quote(str(value))} is not one of {', '.join(map(str, choices))}")


def check_number(name: str, value, options: Mapping, kind: str = "FLOAT") -> float:
    """A finite number within the declared min and max; strings such as "0.5" are read as ComfyUI does."""
    bounds = _bounds_text(options)
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise InputError(name, f"must be a number{bounds}, got {type(value).__name__}")
    try:
        number = float(value)
    except ValueError:
        raise InputError(name, f"must be a number{bounds}, got {quote(value)}") from None
    if not math.isfinite(number):
        raise InputError(name, f"must be a finite number{bounds}, got {number}")
    if kind == "INT" and number != int(number):
        raise InputError(name, f"must be a whole number{bounds}, got {number}")
    low, high = options.get("min"), options.get("max")
    if (low is not None and number < low) or (high is not None and number > high):
        raise InputError(name, f"{number:g} is out of range: use a number{bounds}")
    return number


def check_text(name: str, value) -> str:
    """A string of bounded size whose lines could each be one prompt."""
    if not isinstance(value, str):
        what = "a list" if isinstance(value, (list, tuple)) else type(value).__name__
        raise InputError(name, f"must be text with one entry per line, got {what}: join the entries with new lines")
    if len(value) > MAX_TEXT_CHARS:
        raise InputError(
            name,
            f"is {len(value):,} characters, more than the {MAX_TEXT_CHARS:,} a text input may hold: split the list "
            "over several UCE nodes, or shorten it",
        )
    for number, line in enumerate(value.splitlines(), 1):
        if len(line) > MAX_LINE_CHARS and len(" ".join(line.split())) > MAX_LINE_CHARS:
            raise InputError(
                name,
                f"line {number} is {len(line):,} characters, longer than any text encoder reads as one prompt "
                f"({MAX_LINE_CHARS:,} at most): {quote(line)}; put one prompt per line",
            )
    return value


def _bounds_text(options: Mapping) -> str:
    low, high = options.get("min"), options.get("max")
    if low is not None and high is not None:
        return f" from {low:g} to {high:g}"
    if low is not None:
        return f" of at least {low:g}"
    if high is not None:
        return f" of at most {high:g}"
    return ""
