"""Customer HTTP webhooks: the alert payload as JSON, optional HMAC-SHA256 signature of the body.

Used by ``webhook``/``http`` channels and by ``webhook`` integrations (which may carry a
``body_template``). The signature header is ``X-Signature-SHA256``: the hex HMAC-SHA256 of exactly
the bytes sent, keyed with ``secret``. ``Idempotency-Key`` is the job's stable key, the same on every
retry, so receivers can drop duplicates.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from channels.base import ChannelContext, Delivery, Receipt, config_object, optional_str
from channels.base import require_str as _require_str
from channels.errors import InvalidChannelConfig
from channels.http import check_url
from channels.templating import render

ALLOWED_METHODS = frozenset({"POST", "PUT", "PATCH"})
SIGNATURE_HEADER = "X-Signature-SHA256"


@dataclass(frozen=True)
class WebhookConfig:
    url: str
    method: str = "POST"
    headers: Mapping[str, str] = field(default_factory=dict)
    secret: str | None = None
    body_template: Any = None  # str or object with {placeholders}; None sends the payload

    def secrets(self) -> tuple[str, ...]:
        return (self.secret,) if self.secret else ()


def sign(secret: str, body: bytes) -> str:
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def _headers(raw: Any) -> dict[str, str]:
    if raw in (None, ""):
        return {}
    if not isinstance(raw, Mapping):
        raise InvalidChannelConfig("config.headers must be an object of header names to strings")
    headers: dict[str, str] = {}
    for name, value in raw.items():
        if not isinstance(value, str | int | float) or isinstance(value, bool):
            raise InvalidChannelConfig(f"config.headers.{name} must be a string")
        text = str(value)
        if any(ch in f"{name}{text}" for ch in "\r\n\x00"):
            raise InvalidChannelConfig(f"config.headers.{name} contains a line break")
        headers[str(name)] = text
    return headers


def render_body(config: WebhookConfig, delivery: Delivery) -> tuple[bytes, str]:
    """The exact body bytes and their content type."""
    template = config.body_template
    if template is None:
        return json.dumps(dict(delivery.payload), default=str).encode(), "application/json"
    values = delivery.alert.placeholders()
    if isinstance(template, str):
        text = render(template, values, where="config.body_template")
        try:
            json.loads(text)
            return text.encode(), "application/json"
        except ValueError:
            return text.encode(), "text/plain; charset=utf-8"
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

    def __init__(self, context: ChannelContext) -> None:
        self.http = context.http

    def parse_config(self, raw: Mapping[str, Any]) -> WebhookConfig:
        raw = config_object(raw)
        url = check_url(_require_str(raw, "url"), where="config.url")
        method = (optional_str(raw, "method") or "POST").upper()
        if method not in ALLOWED_METHODS:
            raise InvalidChannelConfig(f"config.method must be one of POST, PUT, PATCH, got {method}")
        template = raw.get("body_template")
        if template is not None and not isinstance(template, str | dict | list):
            raise InvalidChannelConfig("config.body_template must be a string or an object")
        return WebhookConfig(
            url=url,
            method=method,
            headers=_headers(raw.get("headers")),
            secret=optional_str(raw, "secret"),
            body_template=template if template != "" else None,
        )

    def send(self, config: WebhookConfig, delivery: Delivery) -> Receipt:
        body, content_type = render_body(config, delivery)
        headers = {"Content-Type": content_type, **config.headers}
        headers["Idempotency-Key"] = delivery.key
        if config.secret:
            headers[SIGNATURE_HEADER] = sign(config.secret, body)
        return self.http.send(config.url, body, headers=headers, method=config.method, service="webhook")

    def close(self) -> None:
        pass
