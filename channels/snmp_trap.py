"""The SNMP notification layout: which OIDs and values one alert event becomes (PULSE-ALERT-MIB).

Notification layout (``channels/mibs/PULSE-ALERT-MIB.txt`` describes it for the default prefix
``1.3.6.1.4.1.99999``; with another ``oid_prefix`` every OID below moves under that prefix). Each
notification is an SNMPv2-Trap PDU (or InformRequest) whose varbinds are, in order: ``sysUpTime.0``
(the sending engine's uptime, added by pysnmp), ``snmpTrapOID.0`` and the ten alert objects.

==================== ========================= =========== =========================================
OID                  PULSE-ALERT-MIB name      type        value
==================== ========================= =========== =========================================
``<prefix>.0.1``     pulseAlertNotification    (trap OID)  snmpTrapOID.0 for OPEN and ACKNOWLEDGED
``<prefix>.0.2``     pulseAlertCleared         (trap OID)  snmpTrapOID.0 for CLOSED (resolved)
``<prefix>.1.1.0``   pulseAlertId.0            OctetString alert_id
``<prefix>.1.2.0``   pulseAlertDeviceId.0      OctetString device_id
``<prefix>.1.3.0``   pulseAlertTenantId.0      OctetString tenant_id
``<prefix>.1.4.0``   pulseAlertSeverity.0      Integer32   level 0-5 (>=4 critical); -1 when unknown
``<prefix>.1.5.0``   pulseAlertSeverityLabel.0 OctetString CRITICAL, HIGH, MEDIUM, LOW or UNKNOWN
``<prefix>.1.6.0``   pulseAlertMessage.0       OctetString message, cut to 1024 bytes
``<prefix>.1.7.0``   pulseAlertTriggeredAt.0   OctetString triggered_at as sent (ISO 8601)
``<prefix>.1.8.0``   pulseAlertType.0          OctetString alert_type
``<prefix>.1.9.0``   pulseAlertSiteId.0        OctetString site_id
``<prefix>.1.10.0``  pulseAlertEvent.0         OctetString OPEN, CLOSED or ACKNOWLEDGED
==================== ========================= =========== =========================================

The alert objects are scalars, so each varbind names the object's instance ``<object OID>.0``
(RFC 2578 7.7, RFC 3416 4.2.6), as sysUpTime.0 and snmpTrapOID.0 do. A severity that is missing,
not a number or negative is unknown: -1 and UNKNOWN.
Text values are UTF-8; missing values are empty strings; every text value except the message is
cut to 255 bytes (on a character boundary).
"""

from __future__ import annotations

from typing import Any

from pysnmp.proto import rfc1902

from channels.alert import Alert, severity_label

DEFAULT_OID_PREFIX = "1.3.6.1.4.1.99999"
MAX_MESSAGE_BYTES = 1024
MAX_TEXT_BYTES = 255
UNKNOWN_SEVERITY = -1
INTEGER32_MAX = 2**31 - 1

# Sub-identifiers under the prefix.
NOTIFICATIONS_ARC = 0
OBJECTS_ARC = 1
ALERT_EVENT = 1  # <prefix>.0.1: OPEN / ACKNOWLEDGED
ALERT_CLEARED = 2  # <prefix>.0.2: CLOSED
OBJECT_COLUMNS = (
    "alert_id",
    "device_id",
    "tenant_id",
    "severity",
    "severity_label",
    "message",
    "triggered_at",
    "alert_type",
    "site_id",
    "event",
)  # <prefix>.1.1 ... <prefix>.1.10, in this order

SCALAR_INSTANCE = 0  # the one instance of a scalar object: <object OID>.0
SNMP_TRAP_OID = (1, 3, 6, 1, 6, 3, 1, 1, 4, 1, 0)  # SNMPv2-MIB::snmpTrapOID.0


def truncate_utf8(text: str, limit: int) -> bytes:
    """UTF-8 bytes of text, cut to at most ``limit`` bytes without splitting a character."""
    data = text.encode("utf-8", "replace")
    if len(data) <= limit:
        return data
    return data[:limit].decode("utf-8", "ignore").encode("utf-8")


def notification_oid(alert: Alert, prefix: tuple[int, ...]) -> tuple[int, ...]:
    """snmpTrapOID.0: ``<prefix>.0.2`` for a cleared alert, ``<prefix>.0.1`` for every other event."""
    return (*prefix, NOTIFICATIONS_ARC, ALERT_CLEARED if alert.is_resolved else ALERT_EVENT)


def alert_values(alert: Alert) -> dict[str, Any]:
    """The ten alert objects as Python values, by column name (OBJECT_COLUMNS order).

    A negative severity is not on the platform's scale: it is sent as unknown (-1, UNKNOWN), never
    as LOW, whatever channels.alert makes of it."""
    known = alert.severity if alert.severity is not None and alert.severity >= 0 else None
    return {
        "alert_id": alert.alert_id,
        "device_id": alert.device_id,
        "tenant_id": alert.tenant_id,
        "severity": UNKNOWN_SEVERITY if known is None else min(INTEGER32_MAX, known),
        "severity_label": severity_label(known),
        "message": alert.message,
        "triggered_at": alert.triggered_at,
        "alert_type": alert.alert_type,
        "site_id": alert.site_id,
        "event": alert.event,
    }


def build_varbinds(alert: Alert, prefix: tuple[int, ...]) -> list[tuple[tuple[int, ...], Any]]:
    """snmpTrapOID.0 and the alert objects' ``.0`` instances as (OID, pysnmp value); pysnmp
    prepends sysUpTime.0."""
    varbinds: list[tuple[tuple[int, ...], Any]] = [
        (SNMP_TRAP_OID, rfc1902.ObjectIdentifier(notification_oid(alert, prefix)))
    ]
    for index, (column, value) in enumerate(alert_values(alert).items(), start=1):
        oid = (*prefix, OBJECTS_ARC, index, SCALAR_INSTANCE)
        if isinstance(value, int):
            varbinds.append((oid, rfc1902.Integer32(value)))
        else:
            limit = MAX_MESSAGE_BYTES if column == "message" else MAX_TEXT_BYTES
            varbinds.append((oid, rfc1902.OctetString(truncate_utf8(value, limit))))
    return varbinds
