"""Slack incoming webhooks: a coloured attachment with Block Kit content and a plain-text fallback."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from channels.alert import Alert
from channels.base import ChannelContext, Delivery, Receipt, config_object, require_str
from channels.http import check_url

COLOURS = {"CRITICAL": "#e94560", "HIGH": "#ff9800", "MEDIUM": "#ffc107"}
DEFAULT_COLOUR = "#2196f3"
RESOLVED_COLOUR = "#2eb67d"


@dataclass(frozen=True)
class SlackConfig:
    webhook_url: str

    def secrets(self) -> tuple[str, ...]:
        return (self.webhook_url,)


def build_message(alert: Alert) -> dict[str, Any]:
    label = "RESOLVED" if alert.is_resolved else alert.severity_label
    headline = f"[{label}] {alert.message or 'Alert'}"
    colour = RESOLVED_COLOUR if alert.is_resolved else COLOURS.get(alert.severity_label, DEFAULT_COLOUR)
    fields = [
        ("Device", alert.device_id or "unknown"),
        ("Type", alert.alert_type or "-"),
        ("Severity", alert.severity_label),
        ("Site", alert.site_id or "-"),
    ]
    blocks: list[dict[str, Any]] = [
        {"type": "section", "text": {"type": "mrkdwn", "text": f"*{headline}*"}},
        {
            "type": "section",
            "fields": [{"type": "mrkdwn", "text": f"*{name}:*\n{value}"} for name, value in fields],
        },
    ]
    if alert.triggered_at:
        context = f"Alert {alert.alert_id} · {alert.event} · {alert.triggered_at}"
        blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": context}]})
    return {"text": headline, "attachments": [{"color": colour, "blocks": blocks}]}


class SlackChannel:
    channel_type = "slack"

    def __init__(self, context: ChannelContext) -> None:
        self.http = context.http

    def parse_config(self, raw: Mapping[str, Any]) -> SlackConfig:
        raw = config_object(raw)
        url = require_str(raw, "webhook_url")
        return SlackConfig(webhook_url=check_url(url, where="config.webhook_url"))

    def send(self, config: SlackConfig, delivery: Delivery) -> Receipt:
        body = json.dumps(build_message(delivery.alert)).encode()
        headers = {"Content-Type": "application/json"}
        return self.http.send(config.webhook_url, body, headers=headers, service="Slack")

    def close(self) -> None:
        pass
