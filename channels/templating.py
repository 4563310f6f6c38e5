"""``{placeholder}`` rendering for operator-written templates (email, MQTT topics, body templates).

Only bare names are allowed: ``{device_id}`` renders, ``{device_id.__class__}`` or ``{0}`` is an
error in the template, and a name the alert lacks renders as an empty string.
"""

from __future__ import annotations

import string
from collections.abc import Callable, Mapping

from channels.errors import InvalidChannelConfig

_FORMATTER = string.Formatter()


def render(
    template: str,
    values: Mapping[str, str],
    *,
    escape: Callable[[str], str] | None = None,
    where: str = "template",
) -> str:
    """Fill ``{name}`` fields from values; unknown names render empty; ``{{`` is a literal brace."""
    out: list[str] = []
    try:
        parsed = list(_FORMATTER.parse(template))
    except ValueError as exc:
        raise InvalidChannelConfig(f"{where} is not a valid template: {exc}") from None
    for literal, name, spec, conversion in parsed:
        out.append(literal)
        if name is None:
            continue
        if not name.isidentifier() or spec or conversion:
            raise InvalidChannelConfig(f"{where}: unsupported placeholder {{{name}}}")
        value = values.get(name, "")
        out.append(escape(value) if escape else value)
    return "".join(out)
