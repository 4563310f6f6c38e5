"""The alert a job carries, normalised from either pipeline's ``payload_json``.

Producers disagree on key names (``message`` vs ``summary``, ``triggered_at`` vs ``created_at``,
``event_type`` vs ``status``), any key may be missing or null, and ``severity`` may be an int or a
string. Everything a channel renders comes from here, so each channel sees one shape.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from channels.errors import InvalidPayload
from channels.safe_json import UnreadableJson, read_json

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


# How far a severity may be from the 0-5 scale before it is refused as absurd (1e308, "inf", a
# 5,000-digit integer): larger values are not a scale anyone uses, only a broken or hostile producer.
SEVERITY_LIMIT = 1000
NAMED_SEVERITIES = {"critical": 4, "high": 3, "medium": 2, "low": 1, "info": 0}
# Only ASCII whitespace and plain decimal numbers, so that migration 006's SQL twin
# (delivery_worker_severity_rank) reads every string exactly as this does.
_WHITESPACE = " \t\n\r\f\v"
_PLAIN_NUMBER = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]{1,3})?")
_MAX_NUMBER_CHARS = 64
TOP_SEVERITY_RANK = 6  # severity 5 and above; unknown ranks 0


def _parse_severity(value: Any) -> int | None:
    """The payload's severity as an integer (truncated toward zero), None when unknown or negative.

    Raises InvalidPayload for absurd values (not finite, or beyond +-SEVERITY_LIMIT): they cannot
    get better by retrying, and must not surface as an internal error.
    """
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        if abs(value) > SEVERITY_LIMIT:
            raise InvalidPayload(f"severity is out of range (an integer of {value.bit_length()} bits)")
        return value if value >= 0 else None
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidPayload(f"severity {value!r} is not a finite number")
        return _whole(Decimal(value), repr(value))  # exact: the float's own value, truncated
    if isinstance(value, str):
        return _parse_severity_text(value)
    return None


def _parse_severity_text(value: str) -> int | None:
    text = value.strip(_WHITESPACE)
    if text.lower() in NAMED_SEVERITIES:
        return NAMED_SEVERITIES[text.lower()]
    shown = repr(text[:20] + ("..." if len(text) > 20 else ""))
    if len(text) > _MAX_NUMBER_CHARS:
        if _PLAIN_NUMBER.fullmatch(text[:_MAX_NUMBER_CHARS]):
            raise InvalidPayload(f"severity {shown} is not a usable number ({len(text)} characters)")
        return None
    if _PLAIN_NUMBER.fullmatch(text):
        return _whole(Decimal(text), shown)
    try:
        number = float(text)
    except ValueError:
        return None
    if not math.isfinite(number):
        raise InvalidPayload(f"severity {shown} is not a finite number")
    return None  # numeric only to Python's float() (underscores, non-ASCII digits): unknown


def _whole(number: Decimal, shown: str) -> int | None:
    if abs(number) > SEVERITY_LIMIT:
        raise InvalidPayload(f"severity {shown} is out of range (expected 0-5)")
    if number < 0:
        return None
    return int(number)


def severity_rank(raw_payload: Any) -> int:
    """The claim's order key for a payload: 0 when the severity is unknown, else min(severity, 5) + 1.

    The Python twin of migration 006's ``delivery_worker_severity_rank``; a table-driven test runs
    both over the same payloads. A payload the worker refuses to deliver ranks 0.
    """
    try:
        severity = _parse_severity(decode_payload(raw_payload).get("severity"))
    except InvalidPayload:
        return 0
    return 0 if severity is None else min(severity, TOP_SEVERITY_RANK - 1) + 1


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
            raw = read_json(raw)
        except UnreadableJson as exc:
            raise InvalidPayload(f"payload is a string that is {exc}") from None
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
