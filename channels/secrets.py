"""What counts as a secret in a channel's config, and masking secrets in any form they take in text.

A tenant's webhook URL carries credentials in its path (Slack's token is the last segment) or
query (Teams Workflows' ``sig``), and headers carry API keys, cookies and ``Authorization``. So every
URL path segment, query value and header value is a secret unless it is known to be harmless. A
receiver echoing one back may show it URL-encoded or JSON-escaped (``\\/`` for ``/`` included), so
``redact`` masks those forms too. Text must be redacted *before* it is cut: a cut secret no longer
matches. ``delivery_worker/redaction.py`` builds on this module for the worker's own errors.
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
import re
from collections.abc import Iterable, Mapping
from urllib.parse import parse_qsl, quote, quote_plus, unquote, urlsplit

MASK = "[REDACTED]"
MIN_SECRET_CHARS = 4  # shorter values would mask ordinary words in every message

# Header values that name a format, never a credential.
HARMLESS_HEADERS = frozenset(
    {"content-type", "accept", "accept-encoding", "accept-language", "content-language", "user-agent"}
)
# URL path segments and query parameters that are API vocabulary, never a credential.
HARMLESS_SEGMENTS = frozenset(
    {
        "api", "apis", "hook", "hooks", "webhook", "webhooks", "services", "service", "workflows",
        "triggers", "manual", "paths", "invoke", "run", "events", "enqueue", "alerts", "alert",
        "notify", "notifications", "incoming", "messages", "message", "json", "post", "send",
    }
)  # fmt: skip
HARMLESS_QUERY_KEYS = frozenset({"api-version", "sp", "sv"})
_VERSION = re.compile(r"v?\d{1,4}(\.\d{1,4})*", re.I)
URL_CACHE_SIZE = 4096  # destinations


def _matters(value: str) -> bool:
    return len(value) >= MIN_SECRET_CHARS and value.lower() not in HARMLESS_SEGMENTS


@functools.lru_cache(maxsize=URL_CACHE_SIZE)
def url_secrets(url: str) -> frozenset[str]:
    """The credential-bearing parts of a URL: userinfo, path, each path segment, query and values.

    Cached: every job asks it of its destination's URL, some channels twice."""
    try:
        parts = urlsplit(url)
        username, password = parts.username, parts.password
    except ValueError:
        return frozenset({url})
    found = {url}
    for value in (username, password, parts.fragment):
        if value:
            found.add(value)
    if parts.path not in ("", "/"):
        found.add(parts.path)
        found.update(unquote(s) for s in parts.path.split("/") if not _VERSION.fullmatch(s))
        found.update(s for s in parts.path.split("/") if not _VERSION.fullmatch(s))
    if parts.query:
        found.add(parts.query)
        for key, value in parse_qsl(parts.query, keep_blank_values=True):
            if key.lower() not in HARMLESS_QUERY_KEYS:
                found.add(value)
    return frozenset(value for value in found if _matters(value))


def header_secrets(headers: Mapping[str, str]) -> set[str]:
    """Every header value but a few format headers; cookies and Authorization also in their parts."""
    found: set[str] = set()
    for name, value in headers.items():
        if name.lower() in HARMLESS_HEADERS:
            continue
        found.add(value)
        found.update(piece.strip() for piece in value.split(";"))  # cookies: "a=1; b=2"
        found.update(piece.partition("=")[2] for piece in value.split(";"))
        scheme, _, credentials = value.partition(" ")
        if credentials:  # "Bearer abc", "Basic dXNlcjpwYXNz"
            found.add(credentials.strip())
            if scheme.lower() == "basic":
                found.update(_basic_parts(credentials.strip()))
    return {value for value in found if _matters(value)}


def _basic_parts(encoded: str) -> set[str]:
    try:
        user, _, password = base64.b64decode(encoded, validate=True).decode().partition(":")
    except (binascii.Error, ValueError):
        return set()
    return {user, password, f"{user}:{password}"}


def forms(secret: str) -> set[str]:
    """The ways a secret shows up in an error text: raw, URL-encoded, JSON-escaped."""
    encoded = {quote(secret, safe=""), quote(secret, safe="/"), quote_plus(secret)}
    encoded |= {re.sub(r"%[0-9A-F]{2}", lambda m: m.group(0).lower(), e) for e in encoded}
    escaped = {json.dumps(secret)[1:-1], json.dumps(secret, ensure_ascii=False)[1:-1]}
    escaped |= {e.replace("/", "\\/") for e in escaped}
    return {secret, *encoded, *escaped, repr(secret)[1:-1]}


def redact(text: str, secrets: Iterable[str]) -> str:
    """Replace every occurrence of each secret, in each of its forms, longest first, with MASK."""
    wanted = {
        form for secret in secrets if secret and len(secret) >= MIN_SECRET_CHARS for form in forms(secret)
    }
    if not wanted:
        return text
    pattern = re.compile("|".join(re.escape(f) for f in sorted(wanted, key=len, reverse=True)))
    return pattern.sub(MASK, text)
