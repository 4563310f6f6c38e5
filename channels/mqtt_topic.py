"""MQTT topics: the configured template checked at parse time, and alert values made safe in it.

A broker drops the connection of a client that publishes to a topic with a control character (C0,
DEL, C1: mosquitto does), ignores or refuses ``$``-topics (``$SYS/...`` is the broker's own tree,
and ``$``-topics are invisible to ``#`` subscribers), and treats ``+`` ``#`` as wildcards. So:

* A configured topic must not start with ``$`` nor contain ``+``, ``#``, NUL, control characters,
  Unicode line/paragraph separators or non-characters: refused at config parse (permanent).
* A placeholder value loses ``/`` (it cannot add levels), ``+``, ``#``, NUL, every control character
  (Unicode category Cc: tab, newline, U+0085 ...), U+2028, U+2029 and non-characters: each becomes
  ``_``. A lone surrogate becomes ``?``.
* A rendered topic that would start with ``$`` (a placeholder value at the start) gets ``_`` in
  its place.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Mapping

from channels.errors import InvalidChannelConfig, PermanentError
from channels.templating import render

DEFAULT_TOPIC = "pulse/alerts"
MAX_TOPIC_BYTES = 65535
REPLACEMENT = "_"
_LEVEL_AND_WILDCARDS = frozenset("/+#\x00")
_SEPARATORS = frozenset("\u2028\u2029")


def _is_noncharacter(char: str) -> bool:
    code = ord(char)
    return 0xFDD0 <= code <= 0xFDEF or (code & 0xFFFE) == 0xFFFE


def _is_unsafe(char: str) -> bool:
    """Characters brokers refuse or mis-handle in any topic (MQTT 3.1.1 1.5.3, 5.0 1.5.4)."""
    return unicodedata.category(char) == "Cc" or char in _SEPARATORS or _is_noncharacter(char)


def sanitise_topic_value(value: str) -> str:
    """A placeholder value made safe for one topic level (see the module docstring)."""
    safe = "".join(
        REPLACEMENT if char in _LEVEL_AND_WILDCARDS or _is_unsafe(char) else char for char in value
    )
    return safe.encode("utf-8", "replace").decode("utf-8")  # lone surrogates from JSON become "?"


def check_topic_template(template: str, where: str = "config.topic") -> None:
    """Refuse a configured topic whose own text (placeholders aside) no broker would accept."""
    literal = render(template, {}, where=where)
    if "+" in literal or "#" in literal:
        raise InvalidChannelConfig(f"{where} must not contain the MQTT wildcards + or #")
    if "\x00" in literal:
        raise InvalidChannelConfig(f"{where} contains a NUL byte")
    bad = next((char for char in literal if _is_unsafe(char)), None)
    if bad is not None:
        raise InvalidChannelConfig(
            f"{where} contains the control or separator character U+{ord(bad):04X}, which brokers refuse"
        )
    if template.startswith("$"):
        raise InvalidChannelConfig(
            f"{where} must not start with $: $-topics ($SYS/...) belong to the broker, which refuses "
            "or hides them from # subscribers"
        )


def render_topic(template: str, values: Mapping[str, str]) -> str:
    """The topic for one alert; values cannot add levels, wildcards, unsafe characters or a leading $."""
    topic = render(template, values, escape=sanitise_topic_value, where="config.topic")
    if topic.startswith("$"):
        topic = REPLACEMENT + topic[1:]
    if not topic:
        raise PermanentError("config.topic renders an empty MQTT topic for this alert")
    if len(topic.encode("utf-8", "surrogatepass")) > MAX_TOPIC_BYTES:
        raise PermanentError(f"config.topic renders a topic longer than {MAX_TOPIC_BYTES} bytes")
    return topic
