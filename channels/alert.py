"""The alert a job carries, normalised from either pipeline's ``payload_json``.

Producers disagree on key names (``message`` vs ``summary``, ``triggered_at`` vs ``created_at``,
``event_type`` vs ``status``), any key may be missing or null, and ``severity`` may be an int or a
string. Everything a channel renders comes from here, so each channel sees one shape.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from channels.errors import InvalidPayload

MAX_PAYLOAD_BYTES = 512 * 1024
EVENTS = ("OPEN", "CLOSED", "ACKNOWLEDGED")


def severity_label(severity: int | None) -> str:
    """Platform convention: >=4 critical, 3 high, 2 medium, anything else low."""
    if severity is None:
        return "UNKNOWN"
    if severity >= 4:
        return "CRITICAL"
    if severity == 3:
        return "HIGH"
    if severity == 2:
        return "MEDIUM"
    return "LOW"


def _parse_severity(value: Any) -> int | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value)
    if isinstance(value, str):
        text = value.strip()
        named = {"critical": 4, "high": 3, "medium": 2, "low": 1, "info": 0}
        if text.lower() in named:
            return named[text.lower()]
        try:
            return int(float(text))
        except ValueError:
            return None
    return None


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return json.dumps(value) if isinstance(value, dict | list) else str(value)


@dataclass(frozen=True)
class Alert:
    alert_id: str
    tenant_id: str
    device_id: str
    site_id: str
    alert_type: str
    severity: int | None
    message: str
    triggered_at: str
    event: str
    details: Mapping[str, Any] = field(default_factory=dict)

    @property
    def severity_label(self) -> str:
        return severity_label(self.severity)

    @property
    def is_resolved(self) -> bool:
        return self.event == "CLOSED"

    def placeholders(self) -> dict[str, str]:
        """Values for ``{placeholder}`` templates (email, MQTT topics, webhook body templates)."""
        return {
            "alert_id": self.alert_id,
            "tenant_id": self.tenant_id,
            "device_id": self.device_id,
            "site_id": self.site_id,
            "alert_type": self.alert_type,
            "severity": self.severity_label,
            "severity_level": "" if self.severity is None else str(self.severity),
            "message": self.message,
            "summary": self.message,
            "created_at": self.triggered_at,
            "triggered_at": self.triggered_at,
            "status": self.event,
            "event_type": self.event,
        }


def decode_payload(raw: Any) -> dict[str, Any]:
    """Return the payload as an object; a JSON string holding an object is accepted too."""
    if isinstance(raw, str):
        if len(raw.encode("utf-8", "surrogatepass")) > MAX_PAYLOAD_BYTES:
            raise InvalidPayload(f"payload larger than {MAX_PAYLOAD_BYTES // 1024} KB")
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise InvalidPayload(f"payload is a string that is not valid JSON ({exc.msg})") from None
    if not isinstance(raw, dict):
        raise InvalidPayload(f"payload must be a JSON object, got {type(raw).__name__}")
    if len(json.dumps(raw, default=str)) > MAX_PAYLOAD_BYTES:
        raise InvalidPayload(f"payload larger than {MAX_PAYLOAD_BYTES // 1024} KB")
    return raw


def alert_from_payload(
    payload: Mapping[str, Any], *, tenant_id: str, alert_id: int | str, event: str
) -> Alert:
    """Build the normalised alert; the job row's tenant, alert id and event win over the payload's."""
    details = payload.get("details")
    return Alert(
        alert_id=_text(alert_id if alert_id is not None else payload.get("alert_id")),
        tenant_id=tenant_id or _text(payload.get("tenant_id")),
        device_id=_text(payload.get("device_id")),
        site_id=_text(payload.get("site_id")),
        alert_type=_text(payload.get("alert_type")),
        severity=_parse_severity(payload.get("severity")),
        message=_text(payload.get("message") or payload.get("summary")),
        triggered_at=_text(payload.get("triggered_at") or payload.get("created_at")),
        event=(event or _text(payload.get("event_type") or payload.get("status")) or "OPEN").upper(),
        details=details if isinstance(details, dict) else {},
    )
