"""PagerDuty Events API v2: trigger on OPEN, acknowledge and resolve with the same dedup_key."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from channels.alert import Alert
from channels.base import ChannelContext, Delivery, Receipt, config_object, require_str

SUMMARY_LIMIT = 1024
ACTIONS = {"OPEN": "trigger", "ACKNOWLEDGED": "acknowledge", "CLOSED": "resolve"}


@dataclass(frozen=True)
class PagerDutyConfig:
    routing_key: str

    def secrets(self) -> tuple[str, ...]:
        return (self.routing_key,)


def pagerduty_severity(severity: int | None) -> str:
    if severity is None:
        return "info"
    if severity >= 4:
        return "critical"
    if severity == 3:
        return "error"
    if severity == 2:
        return "warning"
    return "info"


def dedup_key(alert: Alert) -> str:
    return f"pulse-alert-{alert.alert_id}"


def build_event(routing_key: str, alert: Alert) -> dict[str, Any]:
    action = ACTIONS.get(alert.event, "trigger")
    event: dict[str, Any] = {
        "routing_key": routing_key,
        "event_action": action,
        "dedup_key": dedup_key(alert),
    }
    if action == "trigger":
        summary = f"[{alert.severity_label}] {alert.message or alert.alert_type or 'Alert'}"
        payload: dict[str, Any] = {
            "summary": summary[:SUMMARY_LIMIT],
            "severity": pagerduty_severity(alert.severity),
            "source": alert.device_id or "unknown",
            "custom_details": {
                **alert.details,
                "alert_id": alert.alert_id,
                "tenant_id": alert.tenant_id,
                "site_id": alert.site_id,
                "alert_type": alert.alert_type,
            },
        }
        if alert.alert_type:
            payload["class"] = alert.alert_type
        if alert.site_id:
            payload["group"] = alert.site_id
        event["payload"] = payload
    return event


class PagerDutyChannel:
    channel_type = "pagerduty"

    def __init__(self, context: ChannelContext) -> None:
        self.http = context.http
        self.events_url = context.settings.pagerduty.events_url

    def parse_config(self, raw: Mapping[str, Any]) -> PagerDutyConfig:
        return PagerDutyConfig(routing_key=require_str(config_object(raw), "integration_key"))

    def send(self, config: PagerDutyConfig, delivery: Delivery) -> Receipt:
        body = json.dumps(build_event(config.routing_key, delivery.alert)).encode()
        headers = {"Content-Type": "application/json"}
        return self.http.send(self.events_url, body, headers=headers, service="PagerDuty")

    def close(self) -> None:
        pass
