"""Microsoft Teams incoming webhooks: an Office 365 MessageCard with a severity colour."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from channels.alert import Alert
from channels.base import ChannelContext, Delivery, Receipt, config_object, require_str
from channels.http import check_url

COLOURS = {"CRITICAL": "e94560", "HIGH": "ff9800", "MEDIUM": "ffc107"}
DEFAULT_COLOUR = "2196f3"
RESOLVED_COLOUR = "2eb67d"


@dataclass(frozen=True)
class TeamsConfig:
    webhook_url: str

    def secrets(self) -> tuple[str, ...]:
        return (self.webhook_url,)


def build_message_card(alert: Alert) -> dict[str, Any]:
    label = "RESOLVED" if alert.is_resolved else alert.severity_label
    title = f"[{label}] {alert.message or 'Alert'}"
    colour = RESOLVED_COLOUR if alert.is_resolved else COLOURS.get(alert.severity_label, DEFAULT_COLOUR)
    facts = [
        {"name": "Device", "value": alert.device_id or "unknown"},
        {"name": "Type", "value": alert.alert_type or "-"},
        {"name": "Severity", "value": alert.severity_label},
        {"name": "Time", "value": alert.triggered_at or "-"},
    ]
    return {
        "@type": "MessageCard",
        "@context": "http://schema.org/extensions",
        "themeColor": colour,
        "summary": title[:200],
        "title": title,
        "text": f"Device: {alert.device_id or 'unknown'} | Type: {alert.alert_type or '-'}",
        "sections": [{"activityTitle": title, "facts": facts}],
    }


class TeamsChannel:
    channel_type = "teams"

    def __init__(self, context: ChannelContext) -> None:
        self.http = context.http

    def parse_config(self, raw: Mapping[str, Any]) -> TeamsConfig:
        url = require_str(config_object(raw), "webhook_url")
        return TeamsConfig(webhook_url=check_url(url, where="config.webhook_url"))

    def send(self, config: TeamsConfig, delivery: Delivery) -> Receipt:
        body = json.dumps(build_message_card(delivery.alert)).encode()
        headers = {"Content-Type": "application/json"}
        return self.http.send(config.webhook_url, body, headers=headers, service="Teams")

    def close(self) -> None:
        pass
