"""One sample alert delivery for channel benches (the shape producers send)."""

from __future__ import annotations

from channels.alert import alert_from_payload
from channels.base import Delivery

SAMPLE_PAYLOAD = {
    "alert_id": 1001,
    "tenant_id": "bench-tenant",
    "device_id": "sensor-17",
    "site_id": "plant-3",
    "alert_type": "THRESHOLD",
    "severity": 4,
    "message": "Temperature 92.5C above 85C",
    "triggered_at": "2026-11-29T03:00:00Z",
}


def sample_delivery() -> Delivery:
    alert = alert_from_payload(SAMPLE_PAYLOAD, tenant_id="bench-tenant", alert_id=1001, event="OPEN")
    return Delivery(key="bench:1", tenant_id=alert.tenant_id, alert=alert, payload=SAMPLE_PAYLOAD)
