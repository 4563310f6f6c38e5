"""SNMP notifications: one SNMPv2c or SNMPv3 (USM) trap, or acknowledged inform, per alert event.

Config keys (``notification_channels.config``; the integrations pipeline passes ``snmp_host``,
``snmp_port``, ``snmp_oid_prefix`` and ``snmp_config`` merged into the same shape):

- ``host`` (required): receiver host name or IP address.
- ``port``: UDP port, default 162.
- ``version``: ``"2c"`` (default; ``"v2c"``, ``2``, ``"2"`` also accepted) or ``"3"`` (``"v3"``, ``3``).
- ``community``: v2c community string, default ``"public"``.
- ``username``: v3 USM user name (required for v3).
- ``auth_protocol``: v3 ``MD5``, ``SHA`` (SHA-1), ``SHA-224``, ``SHA-256``, ``SHA-384`` or ``SHA-512``
  (case and dashes do not matter: ``sha256`` works); default ``SHA`` when ``auth_password`` is set.
- ``auth_password``: v3 authentication pass phrase, at least 8 characters. Without both passwords the
  user is noAuthNoPriv; with ``auth_password`` only, authNoPriv; with both, authPriv.
- ``priv_protocol``: v3 ``AES`` (= ``AES-128``), ``AES-192``, ``AES-256`` (Blumenthal key extension, as
  Net-SNMP), ``AES-192-C``, ``AES-256-C`` (Reeder "Cisco" key extension), ``DES`` or ``3DES``; default
  ``AES`` when ``priv_password`` is set.
- ``priv_password``: v3 privacy pass phrase, at least 8 characters; requires ``auth_password``.
- ``engine_id``: v3, this sender's snmpEngineID in hex (5-32 octets, e.g. ``"0x80001f88045075736c6531"``).
  A v3 trap receiver must know the sender's engine ID (Net-SNMP snmptrapd:
  ``createUser -e <engine_id> <username> SHA <auth> AES <priv>``). Without it the worker uses an ID
  generated per process, which changes on every restart: set it for v3 traps. (Informs discover the
  receiver's engine ID and need no ``engine_id``.)
- ``oid_prefix``: the OID the layout below hangs under, default ``1.3.6.1.4.1.99999``; a dotted numeric
  OID under ``1.3.6.1`` (a leading dot is allowed).
- ``inform``: ``true`` sends an acknowledged InformRequest instead of a trap (see "Delivered" below).

Secrets (scrubbed from every error): ``community``, ``auth_password``, ``priv_password``.

Notification layout (``channels/mibs/PULSE-ALERT-MIB.txt`` describes it for the default prefix
``1.3.6.1.4.1.99999``; with another ``oid_prefix`` every OID below moves under that prefix). Each
notification is an SNMPv2-Trap PDU (or InformRequest) whose varbinds are, in order: ``sysUpTime.0``
(the sending engine's uptime, added by pysnmp), ``snmpTrapOID.0`` and the ten alert objects.

================== ======================= =========== =====================================================
OID                PULSE-ALERT-MIB name    type        value
================== ======================= =========== =====================================================
``<prefix>.0.1``   pulseAlertNotification  (trap OID)  snmpTrapOID.0 for OPEN and ACKNOWLEDGED events
``<prefix>.0.2``   pulseAlertCleared       (trap OID)  snmpTrapOID.0 for CLOSED (resolved) events
``<prefix>.1.1``   pulseAlertId            OctetString alert_id
``<prefix>.1.2``   pulseAlertDeviceId      OctetString device_id
``<prefix>.1.3``   pulseAlertTenantId      OctetString tenant_id
``<prefix>.1.4``   pulseAlertSeverity      Integer32   severity level (0-5, >=4 critical); -1 when unknown
``<prefix>.1.5``   pulseAlertSeverityLabel OctetString CRITICAL, HIGH, MEDIUM, LOW or UNKNOWN
``<prefix>.1.6``   pulseAlertMessage       OctetString message, cut to 1024 bytes
``<prefix>.1.7``   pulseAlertTriggeredAt   OctetString triggered_at as the producer sent it (ISO 8601)
``<prefix>.1.8``   pulseAlertType          OctetString alert_type
``<prefix>.1.9``   pulseAlertSiteId        OctetString site_id
``<prefix>.1.10``  pulseAlertEvent         OctetString OPEN, CLOSED or ACKNOWLEDGED
================== ======================= =========== =====================================================

The object varbinds are named by the object OIDs themselves, without a ``.0`` instance suffix.
Text values are UTF-8; missing values are empty strings; every text value except the message is
cut to 255 bytes (on a character boundary).

"Delivered" means: for a trap (fire-and-forget UDP) that pysnmp built, secured and handed the datagram
to the operating system without error; nothing tells whether the receiver accepted it. For an inform,
that the receiver acknowledged it within ``[snmp] timeout`` seconds, retried ``[snmp] retries`` times.

Threads: pysnmp 7 is asyncio-only, so one daemon thread ("snmp-notifier", started on the first send)
runs an event loop that owns every pysnmp engine; ``send()`` hands it a coroutine and waits for the
result with a deadline, so any number of worker threads can send at once and none waits longer than
the deadline. ``close()`` stops the loop and joins the thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import ipaddress
import re
import socket
import threading
from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any

import structlog
from pysnmp.carrier.asyncio.dgram import udp, udp6
from pysnmp.carrier.error import CarrierError
from pysnmp.entity import config as lcd
from pysnmp.error import PySnmpError
from pysnmp.hlapi.v3arch.asyncio import (
    CommunityData,
    ContextData,
    SnmpEngine,
    Udp6TransportTarget,
    UdpTransportTarget,
    UsmUserData,
    send_notification,
)
from pysnmp.proto import errind, rfc1902

from channels.alert import Alert
from channels.base import Delivery, Receipt, config_object, optional_str, require_str
from channels.context import ChannelContext
from channels.errors import DeliveryError, InvalidChannelConfig, PermanentError, TransientError
from channels.netguard import AddressPolicy

log = structlog.get_logger("channels.snmp")

DEFAULT_PORT = 162
DEFAULT_COMMUNITY = "public"
DEFAULT_OID_PREFIX = "1.3.6.1.4.1.99999"
REQUIRED_OID_ROOT = (1, 3, 6, 1)  # pysnmp's notification view covers 1.3.6; we keep to internet(1)
MIN_PASSWORD_LENGTH = 8  # RFC 3414 11.2; Net-SNMP refuses shorter pass phrases
MAX_MESSAGE_BYTES = 1024
MAX_TEXT_BYTES = 255
MAX_OID_ARCS = 100  # prefix + .1.10 stays far below SNMP's limit of 128 sub-identifiers
UNKNOWN_SEVERITY = -1
INTEGER32_MAX = 2**31 - 1
RESOLVER_THREADS = 4
CLOSE_TIMEOUT = 5.0

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

SNMP_TRAP_OID = (1, 3, 6, 1, 6, 3, 1, 1, 4, 1, 0)  # SNMPv2-MIB::snmpTrapOID.0

VERSIONS = {"2c": "2c", "v2c": "2c", "2": "2c", "3": "3", "v3": "3"}

# Canonical name -> pysnmp protocol OID. Lookup keys drop case, "-", "_" and spaces.
AUTH_PROTOCOLS: dict[str, Any] = {
    "MD5": lcd.USM_AUTH_HMAC96_MD5,
    "SHA": lcd.USM_AUTH_HMAC96_SHA,
    "SHA-224": lcd.USM_AUTH_HMAC128_SHA224,
    "SHA-256": lcd.USM_AUTH_HMAC192_SHA256,
    "SHA-384": lcd.USM_AUTH_HMAC256_SHA384,
    "SHA-512": lcd.USM_AUTH_HMAC384_SHA512,
}
AUTH_ALIASES = {"SHA1": "SHA"}
PRIV_PROTOCOLS: dict[str, Any] = {
    "AES": lcd.USM_PRIV_CFB128_AES,
    "AES-192": lcd.USM_PRIV_CFB192_AES_BLUMENTHAL,
    "AES-256": lcd.USM_PRIV_CFB256_AES_BLUMENTHAL,
    "AES-192-C": lcd.USM_PRIV_CFB192_AES,
    "AES-256-C": lcd.USM_PRIV_CFB256_AES,
    "DES": lcd.USM_PRIV_CBC56_DES,
    "3DES": lcd.USM_PRIV_CBC168_3DES,
}
PRIV_ALIASES = {"AES128": "AES", "3DESEDE": "3DES", "DES3": "3DES"}

# errorIndications that no retry can fix: the receiver rejects these credentials or this message.
PERMANENT_INDICATIONS: tuple[type[Exception], ...] = (
    errind.UnknownUserName,
    errind.UnknownSecurityName,
    errind.WrongDigest,
    errind.AuthenticationFailure,
    errind.AuthenticationError,
    errind.DecryptionError,
    errind.EncryptionError,
    errind.UnsupportedSecurityLevel,
    errind.UnsupportedAuthProtocol,
    errind.UnsupportedPrivProtocol,
    errind.UnknownCommunityName,
    errind.TooBig,
    errind.SerializationError,
)


# --- config --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SnmpConfig:
    host: str
    port: int = DEFAULT_PORT
    version: str = "2c"  # "2c" or "3"
    community: str = field(default=DEFAULT_COMMUNITY, repr=False)
    username: str | None = None
    auth_protocol: str | None = None  # a key of AUTH_PROTOCOLS, None for noAuth
    auth_password: str | None = field(default=None, repr=False)
    priv_protocol: str | None = None  # a key of PRIV_PROTOCOLS, None for noPriv
    priv_password: str | None = field(default=None, repr=False)
    engine_id: bytes | None = None
    oid_prefix: tuple[int, ...] = tuple(int(arc) for arc in DEFAULT_OID_PREFIX.split("."))
    inform: bool = False

    def secrets(self) -> tuple[str, ...]:
        values = (self.community if self.version == "2c" else None, self.auth_password, self.priv_password)
        return tuple(value for value in values if value)

    def destination(self) -> str:
        return f"snmp://{self.host}:{self.port}"

    @property
    def security_level(self) -> str:
        if self.version == "2c":
            return "community"
        if self.priv_password:
            return "authPriv"
        return "authNoPriv" if self.auth_password else "noAuthNoPriv"

    @property
    def target(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_config(raw: Any) -> SnmpConfig:
    """Validate a raw config object; every error names the key (``config.port must be ...``)."""
    raw = config_object(raw)
    host = _host(raw)
    port = _port(raw)
    version = _version(raw)
    oid_prefix = parse_oid_prefix(raw.get("oid_prefix"))
    inform = _flag(raw, "inform")
    if version == "2c":
        community = optional_str(raw, "community") or DEFAULT_COMMUNITY
        return SnmpConfig(
            host=host, port=port, version=version, community=community, oid_prefix=oid_prefix, inform=inform
        )
    username = require_str(raw, "username")
    auth_password = _password(raw, "auth_password")
    priv_password = _password(raw, "priv_password")
    auth_protocol = _protocol(raw, "auth_protocol", AUTH_PROTOCOLS, AUTH_ALIASES)
    priv_protocol = _protocol(raw, "priv_protocol", PRIV_PROTOCOLS, PRIV_ALIASES)
    if auth_protocol and not auth_password:
        raise InvalidChannelConfig(
            f"config.auth_password is missing (config.auth_protocol is {auth_protocol})"
        )
    if priv_protocol and not priv_password:
        raise InvalidChannelConfig(
            f"config.priv_password is missing (config.priv_protocol is {priv_protocol})"
        )
    if priv_password and not auth_password:
        raise InvalidChannelConfig(
            "config.priv_password needs config.auth_password: SNMPv3 has no privacy without authentication"
        )
    return SnmpConfig(
        host=host,
        port=port,
        version=version,
        username=username,
        auth_protocol=(auth_protocol or "SHA") if auth_password else None,
        auth_password=auth_password,
        priv_protocol=(priv_protocol or "AES") if priv_password else None,
        priv_password=priv_password,
        engine_id=_engine_id(raw),
        oid_prefix=oid_prefix,
        inform=inform,
    )


def parse_oid_prefix(value: Any, *, where: str = "config.oid_prefix") -> tuple[int, ...]:
    """A dotted numeric OID under 1.3.6.1 (a leading dot is allowed), as a tuple of sub-identifiers."""
    if value is None or value == "":
        value = DEFAULT_OID_PREFIX
    if not isinstance(value, str):
        raise InvalidChannelConfig(f"{where} must be a dotted numeric OID string, got {type(value).__name__}")
    text = value.strip().removeprefix(".")
    if not re.fullmatch(r"\d+(\.\d+)+", text):
        raise InvalidChannelConfig(f"{where} must be a dotted numeric OID like {DEFAULT_OID_PREFIX}")
    arcs = tuple(int(arc) for arc in text.split("."))
    if any(arc > 2**32 - 1 for arc in arcs):
        raise InvalidChannelConfig(f"{where} has a sub-identifier above 4294967295")
    if len(arcs) > MAX_OID_ARCS:
        raise InvalidChannelConfig(f"{where} has more than {MAX_OID_ARCS} sub-identifiers")
    if arcs[: len(REQUIRED_OID_ROOT)] != REQUIRED_OID_ROOT or len(arcs) <= len(REQUIRED_OID_ROOT):
        raise InvalidChannelConfig(f"{where} must be under 1.3.6.1 (e.g. 1.3.6.1.4.1.<enterprise number>)")
    return arcs


def _host(raw: Mapping[str, Any]) -> str:
    host = require_str(raw, "host").strip()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not host or any(ch.isspace() or ch in "/@" for ch in host):
        raise InvalidChannelConfig("config.host must be a host name or IP address")
    if ":" in host:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise InvalidChannelConfig(
                "config.host must be a host name or IP address (give the port in config.port)"
            ) from None
    return host


def _port(raw: Mapping[str, Any]) -> int:
    value = raw.get("port")
    if value is None or value == "":
        return DEFAULT_PORT
    port: int | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        port = value
    elif isinstance(value, str) and value.strip().isdigit():
        port = int(value.strip())
    if port is None or not 1 <= port <= 65535:
        raise InvalidChannelConfig("config.port must be an integer between 1 and 65535")
    return port


def _version(raw: Mapping[str, Any]) -> str:
    value = raw.get("version")
    if value is None or value == "":
        return "2c"
    key = str(value).strip().lower() if isinstance(value, str | int) and not isinstance(value, bool) else None
    if key is None or key not in VERSIONS:
        raise InvalidChannelConfig(f"config.version must be '2c' or '3', got {value!r}")
    return VERSIONS[key]


def _flag(raw: Mapping[str, Any], key: str) -> bool:
    value = raw.get(key)
    if value is None or value == "":
        return False
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise InvalidChannelConfig(f"config.{key} must be true or false")


def _password(raw: Mapping[str, Any], key: str) -> str | None:
    value = optional_str(raw, key)
    if value is not None and len(value) < MIN_PASSWORD_LENGTH:
        raise InvalidChannelConfig(f"config.{key} must be at least {MIN_PASSWORD_LENGTH} characters")
    return value


def _protocol(
    raw: Mapping[str, Any], key: str, known: Mapping[str, Any], aliases: Mapping[str, str]
) -> str | None:
    value = optional_str(raw, key)
    if value is None:
        return None
    squashed = re.sub(r"[-_\s]", "", value).upper()
    if squashed == "NONE":
        return None
    by_squashed = {name.replace("-", ""): name for name in known}
    name = by_squashed.get(squashed) or aliases.get(squashed)
    if name is None:
        raise InvalidChannelConfig(f"config.{key} must be one of {', '.join(known)}, got {value!r}")
    return name


def _engine_id(raw: Mapping[str, Any]) -> bytes | None:
    value = optional_str(raw, "engine_id")
    if value is None:
        return None
    text = value.strip().lower().removeprefix("0x").replace(":", "")
    try:
        engine_id = bytes.fromhex(text)
    except ValueError:
        raise InvalidChannelConfig("config.engine_id must be a hex string like 0x80001f8804...") from None
    if not 5 <= len(engine_id) <= 32 or engine_id in (bytes(len(engine_id)), b"\xff" * len(engine_id)):
        raise InvalidChannelConfig("config.engine_id must be 5 to 32 octets, not all zeros or all ff")
    return engine_id


# --- the notification ----------------------------------------------------------------------------


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
    """The ten alert objects as Python values, by column name (OBJECT_COLUMNS order)."""
    severity = UNKNOWN_SEVERITY if alert.severity is None else alert.severity
    return {
        "alert_id": alert.alert_id,
        "device_id": alert.device_id,
        "tenant_id": alert.tenant_id,
        "severity": max(-INTEGER32_MAX - 1, min(INTEGER32_MAX, severity)),
        "severity_label": alert.severity_label,
        "message": alert.message,
        "triggered_at": alert.triggered_at,
        "alert_type": alert.alert_type,
        "site_id": alert.site_id,
        "event": alert.event,
    }


def build_varbinds(alert: Alert, prefix: tuple[int, ...]) -> list[tuple[tuple[int, ...], Any]]:
    """snmpTrapOID.0 and the alert objects as (OID, pysnmp value); pysnmp prepends sysUpTime.0."""
    varbinds: list[tuple[tuple[int, ...], Any]] = [
        (SNMP_TRAP_OID, rfc1902.ObjectIdentifier(notification_oid(alert, prefix)))
    ]
    for index, (column, value) in enumerate(alert_values(alert).items(), start=1):
        oid = (*prefix, OBJECTS_ARC, index)
        if isinstance(value, int):
            varbinds.append((oid, rfc1902.Integer32(value)))
        else:
            limit = MAX_MESSAGE_BYTES if column == "message" else MAX_TEXT_BYTES
            varbinds.append((oid, rfc1902.OctetString(truncate_utf8(value, limit))))
    return varbinds


# --- host resolution -----------------------------------------------------------------------------


def resolve_host(host: str, port: int) -> tuple[str, bool]:
    """(IP address, is_ipv6) for host; IPv4 preferred. Raises socket.gaierror (or OSError)."""
    try:
        literal = ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        return str(literal), literal.version == 6
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM, proto=socket.IPPROTO_UDP)
    for family in (socket.AF_INET, socket.AF_INET6):
        for info in infos:
            if info[0] == family:
                return str(info[4][0]), family == socket.AF_INET6
    raise socket.gaierror(socket.EAI_NONAME, "no IPv4 or IPv6 address")


# --- the event-loop thread -----------------------------------------------------------------------


@dataclass(frozen=True)
class _Budget:
    resolve: float  # seconds for the name lookup
    total: float  # seconds for the whole notification, lookup included


class SnmpNotifier:
    """One daemon thread running an asyncio loop that owns the pysnmp engines (one per engine ID).

    ``notify()`` is thread-safe and blocking: it runs one notification on the loop and waits for it
    with a deadline. ``close()`` cancels what is in flight, closes the sockets and joins the thread.
    """

    def __init__(self, *, timeout: float, retries: int, address_policy: AddressPolicy) -> None:
        self.address_policy = address_policy
        self.timeout = timeout
        self.retries = retries
        self._loop = asyncio.new_event_loop()
        self._loop.set_exception_handler(self._loop_error)
        self._resolver = concurrent.futures.ThreadPoolExecutor(
            max_workers=RESOLVER_THREADS, thread_name_prefix="snmp-resolve"
        )
        self._engines: dict[bytes | None, Any] = {}
        self._sockets: dict[tuple[int, tuple[int, ...]], asyncio.Future[None]] = {}
        self._users: dict[tuple[int, str], _UserGate] = {}
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="snmp-notifier", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_forever()

    def _loop_error(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        log.warning("snmp.loop_error", message=context.get("message"), error=repr(exc) if exc else None)

    def budget(self, config: SnmpConfig) -> _Budget:
        """The name lookup gets ``timeout``; then a trap gets ``timeout`` more to be built and sent, an
        inform ``timeout`` per attempt plus one exchange for v3 engine discovery and some slack."""
        sending = self.timeout * (self.retries + 2) + 0.5 if config.inform else self.timeout
        return _Budget(resolve=self.timeout, total=self.timeout + sending)

    def notify(self, config: SnmpConfig, varbinds: list[tuple[tuple[int, ...], Any]]) -> str:
        """Send one notification; returns a one-line receipt or raises Transient/PermanentError."""
        budget = self.budget(config)
        if self._closed:
            raise TransientError("SNMP sender is shut down")
        try:
            future = asyncio.run_coroutine_threadsafe(self._notify(config, varbinds, budget), self._loop)
        except RuntimeError:  # the loop was closed under us
            raise TransientError("SNMP sender is shut down") from None
        try:
            return future.result(budget.total + 1.0)  # the coroutine has its own deadline; this is a backstop
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise TransientError(
                f"SNMP notification to {config.target} timed out after {budget.total:g}s"
            ) from None
        except concurrent.futures.CancelledError:
            raise TransientError("SNMP sender is shut down") from None

    async def _notify(
        self, config: SnmpConfig, varbinds: list[tuple[tuple[int, ...], Any]], budget: _Budget
    ) -> str:
        try:
            return await asyncio.wait_for(self._notify_unbounded(config, varbinds, budget), budget.total)
        except TimeoutError:
            if config.inform:
                raise TransientError(
                    f"SNMP inform to {config.target} not acknowledged within {budget.total:g}s"
                ) from None
            raise TransientError(f"SNMP trap to {config.target} timed out after {budget.total:g}s") from None

    async def _notify_unbounded(
        self, config: SnmpConfig, varbinds: list[tuple[tuple[int, ...], Any]], budget: _Budget
    ) -> str:
        address, ipv6 = await self._resolve(config.host, config.port, budget.resolve)
        self.address_policy.check(address, host=config.host)  # tenants write SNMP hosts too
        engine = self._engine(config.engine_id if config.version == "3" else None)
        await self._open_socket(engine, ipv6)
        target_class = Udp6TransportTarget if ipv6 else UdpTransportTarget
        target = await target_class.create((address, config.port), timeout=self.timeout, retries=self.retries)
        kind = "inform" if config.inform else "trap"
        if config.version == "3":
            assert config.username is not None
            async with self._user_gate(engine, config):
                result = await send_notification(
                    engine, _usm_user(config), target, ContextData(), kind, *varbinds, lookupMib=False
                )
        else:
            auth = CommunityData(config.community, mpModel=1)  # noqa: S508 - v2c is a supported choice
            result = await send_notification(
                engine, auth, target, ContextData(), kind, *varbinds, lookupMib=False
            )
        error_indication, error_status, _index, _varbinds = result
        version = f"SNMPv{config.version}"
        if error_indication:
            reason = str(error_indication)
            if isinstance(error_indication, PERMANENT_INDICATIONS):
                raise PermanentError(f"{version} {kind} to {config.target} rejected: {reason}")
            raise TransientError(f"{version} {kind} to {config.target} failed: {reason}")
        if error_status:
            status = error_status.prettyPrint() if hasattr(error_status, "prettyPrint") else str(error_status)
            raise TransientError(f"{version} inform to {config.target} answered with error {status}")
        if config.inform:
            return f"{version} inform acknowledged by {config.target}"
        return f"{version} trap sent to {config.target}"

    async def _resolve(self, host: str, port: int, timeout: float) -> tuple[str, bool]:
        loop = asyncio.get_running_loop()
        try:
            return await asyncio.wait_for(
                loop.run_in_executor(self._resolver, resolve_host, host, port), timeout
            )
        except TimeoutError:
            raise TransientError(f"resolving SNMP host {host!r} timed out after {timeout:g}s") from None
        except socket.gaierror as exc:
            reason = exc.strerror or str(exc)
            raise TransientError(f"cannot resolve SNMP host {host!r}: {reason}") from None
        except OSError as exc:
            raise TransientError(f"cannot resolve SNMP host {host!r}: {exc.strerror or exc}") from None

    def _engine(self, engine_id: bytes | None) -> Any:
        engine = self._engines.get(engine_id)
        if engine is None:
            engine = SnmpEngine() if engine_id is None else SnmpEngine(rfc1902.OctetString(engine_id))
            self._engines[engine_id] = engine
        return engine

    def engine_id(self, configured: bytes | None = None) -> bytes:
        """The snmpEngineID notifications for ``configured`` go out with (the default engine's for None)."""
        future = asyncio.run_coroutine_threadsafe(self._engine_id(configured), self._loop)
        return future.result(CLOSE_TIMEOUT)

    async def _engine_id(self, configured: bytes | None) -> bytes:
        return bytes(self._engine(configured).snmpEngineID.asOctets())

    async def _open_socket(self, engine: Any, ipv6: bool) -> None:
        """Open the engine's client socket for the family once and wait until it is bound."""
        domain = udp6.DOMAIN_NAME if ipv6 else udp.DOMAIN_NAME
        key = (id(engine), domain)
        ready = self._sockets.get(key)
        if ready is None:
            transport = (udp6.Udp6AsyncioTransport if ipv6 else udp.UdpAsyncioTransport)().open_client_mode()
            lcd.add_transport(engine, domain, transport)
            ready = asyncio.ensure_future(_bound(transport))
            self._sockets[key] = ready
        try:
            await asyncio.shield(ready)
        except OSError as exc:
            if self._sockets.get(key) is ready:
                del self._sockets[key]
                lcd.delete_transport(engine, domain)
            family = "IPv6" if ipv6 else "IPv4"
            raise TransientError(f"cannot open an {family} UDP socket: {exc.strerror or exc}") from None

    def _user_gate(self, engine: Any, config: SnmpConfig) -> AbstractAsyncContextManager[None]:
        assert config.username is not None
        key = (id(engine), config.username)
        gate = self._users.get(key)
        if gate is None:
            gate = self._users[key] = _UserGate()
        return gate.holding(_credentials(config))

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._thread.is_alive():
            with contextlib.suppress(concurrent.futures.TimeoutError, RuntimeError, PySnmpError):
                asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(CLOSE_TIMEOUT)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(CLOSE_TIMEOUT)
        if not self._thread.is_alive():
            self._loop.close()
        self._resolver.shutdown(wait=False, cancel_futures=True)

    async def _shutdown(self) -> None:
        current = asyncio.current_task()
        pending = [task for task in asyncio.all_tasks() if task is not current]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        for engine in self._engines.values():
            with contextlib.suppress(PySnmpError):
                engine.close_dispatcher()
        self._engines.clear()
        self._sockets.clear()
        await self._loop.shutdown_default_executor()


async def _bound(transport: Any) -> None:
    """Wait for pysnmp's create_datagram_endpoint to finish, so the first datagram is not just queued."""
    pending = getattr(transport, "_lport", None)
    if isinstance(pending, asyncio.Future):
        await pending


def _credentials(config: SnmpConfig) -> tuple[Any, ...]:
    return (config.auth_protocol, config.auth_password, config.priv_protocol, config.priv_password)


def _usm_user(config: SnmpConfig) -> Any:
    auth = AUTH_PROTOCOLS[config.auth_protocol] if config.auth_protocol else lcd.USM_AUTH_NONE
    priv = PRIV_PROTOCOLS[config.priv_protocol] if config.priv_protocol else lcd.USM_PRIV_NONE
    return UsmUserData(
        config.username,
        authKey=config.auth_password,
        privKey=config.priv_password,
        authProtocol=auth,
        privProtocol=priv,
    )


class _UserGate:
    """Lets notifications for one USM user name run together only while they share credentials.

    pysnmp keeps one row per user name in an engine, and re-keys it when another channel uses the same
    name with other passwords; an inform in flight (engine discovery, retries) must not see its keys
    change underneath it. Used only on the loop thread.
    """

    def __init__(self) -> None:
        self._condition = asyncio.Condition()
        self._credentials: tuple[Any, ...] | None = None
        self._holders = 0

    @contextlib.asynccontextmanager
    async def holding(self, credentials: tuple[Any, ...]) -> AsyncIterator[None]:
        async with self._condition:
            await self._condition.wait_for(lambda: self._holders == 0 or self._credentials == credentials)
            self._credentials = credentials
            self._holders += 1
        try:
            yield
        finally:
            async with self._condition:
                self._holders -= 1
                if self._holders == 0:
                    self._credentials = None
                    self._condition.notify_all()


# --- the channel ---------------------------------------------------------------------------------


class SnmpChannel:
    channel_type = "snmp"

    def __init__(self, context: ChannelContext) -> None:
        self.timeout = context.settings.snmp.timeout
        self.retries = context.settings.snmp.retries
        self.address_policy = context.address_policy
        self._lock = threading.Lock()
        self._notifier: SnmpNotifier | None = None
        self._closed = False

    def parse_config(self, raw: Mapping[str, Any]) -> SnmpConfig:
        return parse_config(raw)

    def send(self, config: SnmpConfig, delivery: Delivery) -> Receipt:
        varbinds = build_varbinds(delivery.alert, config.oid_prefix)
        try:
            detail = self.notifier().notify(config, varbinds)
        except DeliveryError as exc:
            raise type(exc)(_scrub(str(exc), config.secrets())) from None
        except CarrierError as exc:
            raise TransientError(
                _scrub(f"SNMP transport error to {config.target}: {exc}", config.secrets())
            ) from None
        except PySnmpError as exc:
            message = f"SNMP notification to {config.target} could not be built: {exc}"
            raise PermanentError(_scrub(message, config.secrets())) from None
        return Receipt(detail=detail)

    def notifier(self) -> SnmpNotifier:
        """The loop thread, started on first use."""
        with self._lock:
            if self._closed:
                raise TransientError("SNMP sender is shut down")
            if self._notifier is None:
                self._notifier = SnmpNotifier(
                    timeout=self.timeout, retries=self.retries, address_policy=self.address_policy
                )
            return self._notifier

    def close(self) -> None:
        with self._lock:
            self._closed = True
            notifier, self._notifier = self._notifier, None
        if notifier is not None:
            notifier.close()


def _scrub(message: str, secrets: tuple[str, ...]) -> str:
    for secret in sorted(secrets, key=len, reverse=True):
        message = message.replace(secret, "***")
    return message
