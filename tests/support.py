"""Small builders shared by tests: settings without any file or environment, and deliveries."""

from __future__ import annotations

import dataclasses
import ipaddress
from typing import Any

from channels.alert import alert_from_payload
from channels.base import Delivery
from delivery_worker.config import Settings, load_settings

SAMPLE_PAYLOAD: dict[str, Any] = {
    "alert_id": 1001,
    "tenant_id": "tenant-a",
    "device_id": "sensor-17",
    "site_id": "plant-3",
    "alert_type": "THRESHOLD",
    "severity": 4,
    "message": "Temperature 92.5C above 85C",
    "details": {"metric": "temp_c", "value": 92.5},
    "triggered_at": "2026-11-29T03:00:00Z",
    "event_type": "OPEN",
    "channel_type": "webhook",
}


# The test servers listen on loopback, which the SSRF guard refuses by default: tests keep the guard on
# and open only loopback (override with make_settings(http={"allowed_networks": ()})).
LOOPBACK_NETWORKS = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))


def make_settings(**sections: dict[str, Any]) -> Settings:
    """Defaults (no file, no environment), with per-section overrides: make_settings(smtp={"timeout": 2}).

    Unlike the worker's defaults, ``[http] allowed_networks`` opens loopback (LOOPBACK_NETWORKS).
    """
    settings = load_settings("/dev/null", environ={})
    settings = dataclasses.replace(
        settings, http=dataclasses.replace(settings.http, allowed_networks=LOOPBACK_NETWORKS)
    )
    for section, values in sections.items():
        current = getattr(settings, section)
        settings = dataclasses.replace(settings, **{section: dataclasses.replace(current, **values)})
    return settings


def make_delivery(
    payload: dict[str, Any] | None = None, *, event: str = "OPEN", key: str = "notification_jobs:1"
) -> Delivery:
    body = dict(SAMPLE_PAYLOAD if payload is None else payload)
    alert = alert_from_payload(
        body, tenant_id=str(body.get("tenant_id", "tenant-a")), alert_id=body.get("alert_id", 1), event=event
    )
    return Delivery(key=key, tenant_id=alert.tenant_id, alert=alert, payload=body)
