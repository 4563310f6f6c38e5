"""Customer HTTP webhooks: the alert payload as JSON, signed the way the receiver chose.

Used by ``webhook``/``http`` channels and by ``webhook`` integrations (which may carry a
``body_template``). ``Idempotency-Key`` is the job's stable key, the same on every retry, so
receivers can drop duplicates. ``config.signature`` picks the signature headers (all need ``secret``):

- ``hmac-sha256`` (default): ``X-Signature-SHA256`` = hex HMAC-SHA256 of exactly the bytes sent,
  keyed with the UTF-8 bytes of ``secret``; without a secret nothing is signed (as before).
- ``standard``: Standard Webhooks (standardwebhooks.com): ``webhook-id`` (``msg_`` + the job key,
  the same on every retry), ``webhook-timestamp`` (unix seconds at send time) and
  ``webhook-signature`` = ``v1,`` + base64 HMAC-SHA256 of ``"{id}.{timestamp}.{body}"``. The key is
  the base64 part of a ``whsec_...`` secret, as the spec defines; a secret without that prefix is
  used as its raw UTF-8 bytes (receivers then verify with ``Webhook(secret.encode())``, or with
  ``"whsec_" + base64(secret)``).
- ``both``: all of the above; ``none``: no signature headers even when a secret is set.

A ``body_template`` object has its string values rendered and is sent as JSON. A string template that
is a JSON document (``{{"text": "{message}"}}``) gets every value JSON-escaped and is sent as
``application/json``: an alert value can never end a string, add a field or repeat a key. A bare
placeholder (``{{"level": {severity_level}}}``) becomes a JSON number when its value is one, else a
JSON string. A string template that looks like JSON but cannot render valid JSON (a placeholder in a
key, after a backslash, a key twice, a syntax error) is refused at config parse; any other string is
sent as ``text/plain``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
import string
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from channels.base import Delivery, Receipt, config_object, optional_str
from channels.base import require_str as _require_str
from channels.context import ChannelContext
from channels.errors import InvalidChannelConfig
from channels.http import check_headers, check_url
from channels.secrets import header_secrets, url_secrets
from channels.templating import render

ALLOWED_METHODS = frozenset({"POST", "PUT", "PATCH"})
SIGNATURE_HEADER = "X-Signature-SHA256"
SIGNATURE_MODES = ("hmac-sha256", "standard", "both", "none")
DEFAULT_SIGNATURE = "hmac-sha256"
STANDARD_SECRET_PREFIX = "whsec_"  # noqa: S105 - the spec's prefix, not a secret
_NOT_HEADER_SAFE = re.compile(r"[^A-Za-z0-9_-]")
_PLACEHOLDER_MARK = "\ue000"  # private use: valid JSON only inside a string
_JSON_NUMBER = re.compile(r"-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?")
_FORMATTER = string.Formatter()


@dataclass(frozen=True)
class WebhookConfig:
    url: str
    method: str = "POST"
    headers: Mapping[str, str] = field(default_factory=dict)
    secret: str | None = None
    body_template: Any = None  # str or object with {placeholders}; None sends the payload
    signature: str = DEFAULT_SIGNATURE
    json_template: bool = False  # a string body_template that is a JSON document (template_is_json)

    def secrets(self) -> tuple[str, ...]:
        """The signing secret, the URL's path/query parts and every non-format header value."""
        found = url_secrets(self.url) | header_secrets(self.headers)
        if self.secret:
            found |= {self.secret, self.secret.removeprefix(STANDARD_SECRET_PREFIX)}
        return tuple(sorted(found))

    def destination(self) -> str:
        return self.url


def sign(secret: str, body: bytes) -> str:
    """The ``X-Signature-SHA256`` value: hex HMAC-SHA256 of the body keyed with the secret's UTF-8."""
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def standard_key(secret: str) -> bytes:
    """The Standard Webhooks HMAC key: base64-decoded after ``whsec_``, else the raw UTF-8 bytes."""
    if not secret.startswith(STANDARD_SECRET_PREFIX):
        return secret.encode()
    encoded = secret.removeprefix(STANDARD_SECRET_PREFIX)
    try:
        key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise InvalidChannelConfig("config.secret starts with whsec_ but the rest is not base64") from None
    if not key:
        raise InvalidChannelConfig("config.secret is an empty whsec_ secret")
    return key


def webhook_id(delivery_key: str) -> str:
    """A header-safe id, stable for the job: "notification_jobs:42" -> "msg_notification_jobs_42"."""
    return "msg_" + _NOT_HEADER_SAFE.sub("_", delivery_key)


def sign_standard(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` value: ``v1,`` + base64 HMAC-SHA256 of ``"{id}.{timestamp}.{body}"``."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


def signature_headers(config: WebhookConfig, delivery_key: str, body: bytes, *, now: float) -> dict[str, str]:
    """The signature headers config.signature asks for (none without a secret)."""
    if not config.secret or config.signature == "none":
        return {}
    headers: dict[str, str] = {}
    if config.signature in ("hmac-sha256", "both"):
        headers[SIGNATURE_HEADER] = sign(config.secret, body)
    if config.signature in ("standard", "both"):
        msg_id, timestamp = webhook_id(delivery_key), int(now)
        headers["webhook-id"] = msg_id
        headers["webhook-timestamp"] = str(timestamp)
        headers["webhook-signature"] = sign_standard(standard_key(config.secret), msg_id, timestamp, body)
    return headers


def _signature(raw: Mapping[str, Any], secret: str | None) -> str:
    mode = (optional_str(raw, "signature") or DEFAULT_SIGNATURE).lower()
    if mode not in SIGNATURE_MODES:
        raise InvalidChannelConfig(
            f"config.signature must be one of {', '.join(SIGNATURE_MODES)}, got {mode[:40]!r}"
        )
    if mode in ("standard", "both"):
        if not secret:
            raise InvalidChannelConfig(f"config.secret is missing (config.signature is {mode})")
        standard_key(secret)  # a bad whsec_ secret is a config error now, not at every send
    return mode


def json_fragment(value: str) -> str:
    """``value`` escaped for the inside of a JSON string (quotes, backslashes, control characters)."""
    return json.dumps(value)[1:-1]


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [key for key, _ in pairs]
    if len(set(keys)) != len(keys):
        duplicate = next(key for key in keys if keys.count(key) > 1)
        raise ValueError(f"duplicate key {duplicate[:40]!r}")
    return dict(pairs)


def _keys(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            yield key
            yield from _keys(value)
    elif isinstance(node, list):
        for item in node:
            yield from _keys(item)


def json_scalar(value: str) -> str:
    """A value standing outside any JSON string: a JSON number if it is one, else a JSON string."""
    return value if _JSON_NUMBER.fullmatch(value) else json.dumps(value)


def _inside_strings(template: str) -> list[bool]:
    """For each {placeholder} of a JSON template, in order: whether it sits inside a JSON string."""
    flags: list[bool] = []
    in_string = escaped = False
    for literal, name, _, _ in _FORMATTER.parse(template):
        for ch in literal:
            if escaped:
                escaped = False
            elif in_string and ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = not in_string
        if name is not None:
            if escaped:  # "\{x}": the value's first character would be read as an escape
                raise InvalidChannelConfig("config.body_template: a {placeholder} follows a backslash")
            flags.append(in_string)
    return flags


def json_inserter(template: str, *, probe: bool = False) -> Callable[[str], str]:
    """An escape for render(): JSON-escaped inside strings, json_scalar outside (once per placeholder)."""
    flags = iter(_inside_strings(template))

    def insert(value: str) -> str:
        inside = next(flags, True)
        if probe:
            return _PLACEHOLDER_MARK if inside else f'"{_PLACEHOLDER_MARK}"'
        return json_fragment(value) if inside else json_scalar(value)

    return insert


def template_is_json(template: str) -> bool:
    """Whether a string body_template is a JSON document (values then go in JSON-escaped).

    Every placeholder is rendered as a marker (a raw private-use character inside a string, a
    string of it outside one): a template that looks like JSON (starts with ``{``/``[`` once
    rendered) must then parse, without placeholders in keys and without a key twice; otherwise
    InvalidChannelConfig. A template that does not look like JSON is plain text."""
    render(template, {}, where="config.body_template")  # a malformed template fails here, by name
    try:
        probe = render(template, {}, escape=json_inserter(template, probe=True), where="config.body_template")
        parsed = json.loads(probe, object_pairs_hook=_no_duplicate_keys)
    except (ValueError, InvalidChannelConfig) as exc:
        looks_like_json = template.lstrip().startswith(("{{", "["))
        if isinstance(exc, InvalidChannelConfig) and looks_like_json:
            raise
        if looks_like_json:
            raise InvalidChannelConfig(
                "config.body_template looks like JSON but cannot render valid JSON "
                f"(no key may repeat; {str(exc)[:80]})"
            ) from None
        return False
    if any(_PLACEHOLDER_MARK in key for key in _keys(parsed)):
        raise InvalidChannelConfig("config.body_template: {placeholders} cannot be used in JSON object keys")
    return True


def render_body(config: WebhookConfig, delivery: Delivery) -> tuple[bytes, str]:
    """The exact body bytes and their content type."""
    template = config.body_template
    if template is None:
        return json.dumps(dict(delivery.payload), default=str).encode(), "application/json"
    values = delivery.alert.placeholders()
    if isinstance(template, str):
        if not config.json_template:
            return render(
                template, values, where="config.body_template"
            ).encode(), "text/plain; charset=utf-8"
        text = render(template, values, escape=json_inserter(template), where="config.body_template")
        return text.encode(), "application/json"
    return json.dumps(_render_values(template, values)).encode(), "application/json"


def _render_values(node: Any, values: Mapping[str, str]) -> Any:
    if isinstance(node, str):
        return render(node, values, where="config.body_template")
    if isinstance(node, list):
        return [_render_values(item, values) for item in node]
    if isinstance(node, dict):
        return {key: _render_values(item, values) for key, item in node.items()}
    return node


class WebhookChannel:
    channel_type = "webhook"

    def __init__(self, context: ChannelContext, *, clock: Callable[[], float] = time.time) -> None:
        self.http = context.http
        self.clock = clock

    def parse_config(self, raw: Mapping[str, Any]) -> WebhookConfig:
        raw = config_object(raw)
        url = check_url(_require_str(raw, "url"), where="config.url")
        method = (optional_str(raw, "method") or "POST").upper()
        if method not in ALLOWED_METHODS:
            raise InvalidChannelConfig(f"config.method must be one of POST, PUT, PATCH, got {method}")
        template = raw.get("body_template")
        if template is not None and not isinstance(template, str | dict | list):
            raise InvalidChannelConfig("config.body_template must be a string or an object")
        secret = optional_str(raw, "secret")
        if template == "":
            template = None
        return WebhookConfig(
            url=url,
            method=method,
            headers=check_headers(raw.get("headers")),
            secret=secret,
            body_template=template,
            signature=_signature(raw, secret),
            json_template=isinstance(template, str) and template_is_json(template),
        )

    def send(self, config: WebhookConfig, delivery: Delivery) -> Receipt:
        body, content_type = render_body(config, delivery)
        headers = {"Content-Type": content_type, **config.headers}
        headers["Idempotency-Key"] = delivery.key
        headers.update(signature_headers(config, delivery.key, body, now=self.clock()))
        return self.http.send(
            config.url,
            body,
            headers=headers,
            method=config.method,
            service="webhook",
            delivery=delivery,
            secrets=config.secrets(),
        )

    def close(self) -> None:
        pass
