"""Reading JSON text that anyone could have written, with limits that keep a hostile value harmless.

``json.loads`` raises ``RecursionError`` on deeply nested input and ``ValueError`` on integers of
more than 4,300 digits; neither is a message an operator can act on, and both used to escape
during a claim. ``read_json`` checks size, nesting depth and number length first (on the text with
its strings blanked out, so brackets and digits inside strings do not count) and raises
``UnreadableJson`` with a short reason that is safe to store in ``last_error``.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

MAX_CHARS = 1024 * 1024
MAX_DEPTH = 64
MAX_NUMBER_DIGITS = 1000

# A JSON string literal (the unrolled form of "(?:[^"\\]|\\.)*", linear on long strings).
_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"')
_BRACKET = re.compile(r"[\[\]{}]")
_LONG_NUMBER = re.compile(rf"[0-9]{{{MAX_NUMBER_DIGITS + 1},}}")


class UnreadableJson(ValueError):
    """Raised when a text is not JSON this worker will read; the message says why, without the value."""


def read_json(text: str) -> Any:
    """Parse ``text`` as JSON within the limits above; raise UnreadableJson otherwise."""
    if len(text) > MAX_CHARS:
        raise UnreadableJson(f"larger than {MAX_CHARS // 1024} KB")
    # The scans below only matter for texts that could break a limit (the usual payload cannot).
    if text.count("[") + text.count("{") > MAX_DEPTH or len(text) > MAX_NUMBER_DIGITS:
        bare = _STRING.sub('""', text)
        _check_depth(bare)
        if _LONG_NUMBER.search(bare):
            raise UnreadableJson(f"holds a number of more than {MAX_NUMBER_DIGITS} digits")
    try:
        return json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float)
    except UnreadableJson:
        raise
    except json.JSONDecodeError as exc:
        raise UnreadableJson(f"not valid JSON ({exc.msg})") from None
    except (ValueError, RecursionError) as exc:  # the backstop: the checks above should prevent these
        raise UnreadableJson(f"not readable ({type(exc).__name__})") from None


def _check_depth(bare: str) -> None:
    depth = 0
    for bracket in _BRACKET.findall(bare):
        if bracket in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                raise UnreadableJson(f"nested deeper than {MAX_DEPTH} levels")
        else:
            depth -= 1


def _refuse_constant(name: str) -> Any:
    raise UnreadableJson(f"holds {name}, which is not JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise UnreadableJson("holds a number out of range")
    return value
