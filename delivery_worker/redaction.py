"""Scrubbing secrets out of error text before it reaches a log line or a database row.

Channel configs declare their secrets (``config.secrets()``); as a second line of defence every
string in the raw config under a secret-sounding key is scrubbed too, so an error raised before the
config parsed cannot leak one either.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

MASK = "[REDACTED]"
SECRET_KEY = re.compile(r"secret|password|passwd|token|key|community|webhook_url|auth|priv", re.I)
MIN_SECRET_CHARS = 4


def secret_values(raw_config: Any) -> set[str]:
    """Strings under secret-sounding keys anywhere in a config, plus the path/query of their URLs."""
    found: set[str] = set()

    def walk(node: Any, secret: bool) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value, secret or bool(SECRET_KEY.search(str(key))))
        elif isinstance(node, list):
            for item in node:
                walk(item, secret)
        elif isinstance(node, str) and secret:
            found.update(_with_url_parts(node))

    walk(raw_config, False)
    return found


def _with_url_parts(value: str) -> set[str]:
    parts = {value}
    if "://" in value:
        split = urlsplit(value)
        if split.path not in ("", "/"):
            parts.add(split.path)
        if split.query:
            parts.add(split.query)
        if split.password:
            parts.add(split.password)
    return parts


def redact(text: str, secrets: Iterable[str]) -> str:
    """Replace every occurrence of each secret (longest first) with a mask."""
    for secret in sorted({s for s in secrets if s and len(s) >= MIN_SECRET_CHARS}, key=len, reverse=True):
        text = text.replace(secret, MASK)
    return text
