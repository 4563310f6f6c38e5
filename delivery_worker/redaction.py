"""Scrubbing secrets out of error text before it reaches a log line or a database row.

Channel configs declare their secrets (``config.secrets()``); as a second line of defence the raw
config is scanned too, so an error raised before the config parsed cannot leak one either: strings
under secret-sounding keys, every header value (channels/secrets.py ``header_secrets``) and the
path and query parts of every URL (``url_secrets``). Matching (raw, URL-encoded, JSON-escaped forms)
is channels/secrets.py ``redact``; redact a text before cutting it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from channels.secrets import MASK, MIN_SECRET_CHARS, header_secrets, redact, url_secrets

__all__ = ["MASK", "MIN_SECRET_CHARS", "LazySecrets", "redact", "redacted_error", "secret_values"]

SECRET_KEY = re.compile(
    r"secret|password|passwd|token|key|community|webhook_url|auth|priv|cookie|credential|bearer", re.I
)


def secret_values(raw_config: Any) -> set[str]:
    """Every secret a raw (possibly invalid) channel config may hold."""
    found: set[str] = set()

    def walk(node: Any, secret: bool, key: str) -> None:
        if isinstance(node, Mapping):
            if key.lower() == "headers":
                found.update(header_secrets({str(k): str(v) for k, v in node.items() if isinstance(v, str)}))
            for name, value in node.items():
                walk(value, secret or bool(SECRET_KEY.search(str(name))), str(name))
        elif isinstance(node, list):
            for item in node:
                walk(item, secret, key)
        elif isinstance(node, str):
            if "://" in node:
                found.update(url_secrets(node))
            if secret:
                found.add(node)

    walk(raw_config, False, "")
    return {value for value in found if len(value) >= MIN_SECRET_CHARS}


def redacted_error(exc: BaseException, secrets: Iterable[str]) -> str:
    """``Type: message`` of an unexpected exception with secrets masked: what may be logged of it."""
    return redact(f"{type(exc).__name__}: {exc}", secrets)


class LazySecrets:
    """One job's secrets, worked out when an error text first needs masking: a delivery that succeeds
    never needs them, and scanning the raw and the parsed config for every job cost ~3 % of the
    worker's CPU. Iterates like the set it stands for (``redact`` takes any iterable)."""

    def __init__(self) -> None:
        self._sources: list[Callable[[], Iterable[str]]] = []
        self._values: set[str] | None = None

    def add(self, source: Callable[[], Iterable[str]]) -> None:
        """``source`` is called at most once, when the secrets are first read."""
        self._sources.append(source)
        self._values = None

    def __iter__(self) -> Iterator[str]:
        if self._values is None:
            values: set[str] = set()
            for source in self._sources:
                values.update(source())
            self._values = values
        return iter(self._values)
