"""PagerDuty Events API v2: trigger on OPEN, acknowledge and resolve with the same dedup_key.

PagerDuty answers 202 when it accepted an event, 400 for an event it will never accept (a permanent
error), 429 when throttled and 5xx on its own failures (both worth retrying); ``channels/http.py``
classifies them so. A trigger carries PD-CEF fields: summary (<= 1024 chars), severity, source
(device), class (alert type), group (site), timestamp (``triggered_at`` when it is ISO 8601) and
custom_details (the producer's ``details`` whole, our fields beside them: see ``custom_details``);
acknowledge and resolve need only the dedup_key, and PagerDuty ignores a payload on them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from channels.alert import Alert
from channels.base import Delivery, Receipt, config_object, require_str
from channels.context import ChannelContext
from channels.presentation import cut, one_line

SUMMARY_LIMIT = 1024
SOURCE_LIMIT = 255
CLIENT = "delivery-worker"  # shown in PagerDuty as the monitoring tool that sent the event
ACTIONS = {"OPEN": "trigger", "ACKNOWLEDGED": "acknowledge", "CLOSED": "resolve"}


@dataclass(frozen=True)
class PagerDutyConfig:
    routing_key: str

    def secrets(self) -> tuple[str, ...]:
        return (self.routing_key,)

    def destination(self) -> str:
        return f"pagerduty:{self.routing_key}"


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


def iso_timestamp(value: str) -> str | None:
    """``value`` as an ISO 8601 timestamp with a zone (UTC when it has none), or None if it is not one."""
    try:
        when = datetime.fromisoformat(value.strip())
    except ValueError:
        return None
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).isoformat()


def custom_details(alert: Alert, details: Any) -> dict[str, Any]:
    """The producer's ``details`` kept whole, our fields beside them (never over a producer's key).

    An object is used as it is, with alert_id, tenant_id, site_id and alert_type added only under
    keys it does not have; anything else a producer sent (a list, a string, a number) is kept
    under ``details``."""
    ours = {
        "alert_id": alert.alert_id,
        "tenant_id": alert.tenant_id,
        "site_id": alert.site_id,
        "alert_type": alert.alert_type,
    }
    if isinstance(details, Mapping):
        kept = dict(details)
    elif details is None:
        kept = {}
    else:
        kept = {"details": details}
    return {**ours, **kept}


def build_event(routing_key: str, alert: Alert, details: Any = None) -> dict[str, Any]:
    """The Events API v2 body; ``details`` is the producer's own ``payload.details``, any JSON type."""
    action = ACTIONS.get(alert.event, "trigger")
    event: dict[str, Any] = {
        "routing_key": routing_key,
        "event_action": action,
        "dedup_key": dedup_key(alert),
    }
    if action == "trigger":
        summary = one_line(f"[{alert.severity_label}] {alert.message or alert.alert_type or 'Alert'}")
        payload: dict[str, Any] = {
            "summary": cut(summary, SUMMARY_LIMIT),
            "severity": pagerduty_severity(alert.severity),
            "source": cut(one_line(alert.device_id), SOURCE_LIMIT) or "unknown",
            "custom_details": custom_details(alert, details),
        }
        if alert.alert_type:
            payload["class"] = alert.alert_type
        if alert.site_id:
            payload["group"] = alert.site_id
        timestamp = iso_timestamp(alert.triggered_at) if alert.triggered_at else None
        if timestamp:
            payload["timestamp"] = timestamp
        event["payload"] = payload
        event["client"] = CLIENT
    return event


class PagerDutyChannel:
    channel_type = "pagerduty"

    def __init__(self, context: ChannelContext) -> None:
        self.http = context.http
        self.events_url = context.settings.pagerduty.events_url

    def parse_config(self, raw: Mapping[str, Any]) -> PagerDutyConfig:
        return PagerDutyConfig(routing_key=require_str(config_object(raw), "integration_key"))

    def send(self, config: PagerDutyConfig, delivery: Delivery) -> Receipt:
        details = delivery.payload.get("details")
        return self.http.post_json(
            self.events_url,
            build_event(config.routing_key, delivery.alert, details),
            service="PagerDuty",
            delivery=delivery,
            secrets=config.secrets(),
        )

    def close(self) -> None:
        pass
