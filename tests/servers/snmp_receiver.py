"""A real SNMP notification receiver on 127.0.0.1 (pysnmp's ntfrcv in its own thread) that records traps.

    users = [UsmUser("pulse", auth_password="auth-pass-1", priv_password="priv-pass-1")]
    with snmp_receiver(community="s3cret", users=users, sender_engine_id=ENGINE_ID) as receiver:
        ...send to receiver.host:receiver.port...
        trap = receiver.wait_for_traps(1)[0]
        trap.trap_oid, trap.varbinds["1.3.6.1.4.1.99999.1.1"], trap.version, trap.security_name

It accepts SNMPv2c with ``community`` and SNMPv3 for each ``UsmUser`` (keys localised to
``sender_engine_id``, as a trap receiver must), answers informs, and records each accepted
notification as a ``ReceivedTrap`` whose ``varbinds`` map dotted OIDs to plain Python values
(str for OCTET STRING, int for INTEGER/TimeTicks/counters, dotted str for OIDs).
Messages it rejects (wrong community is dropped silently; bad v3 digest, unknown user or engine)
are counted in ``usm_stats()``.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from pyasn1.type import univ
from pysnmp.carrier.asyncio.dgram import udp, udp6
from pysnmp.entity import config, engine
from pysnmp.entity.rfc3413 import ntfrcv
from pysnmp.proto import rfc1902
from pysnmp.proto.api import v2c

HOST = "127.0.0.1"
SYS_UPTIME = "1.3.6.1.2.1.1.3.0"
SNMP_TRAP_OID = "1.3.6.1.6.3.1.1.4.1.0"

AUTH = {
    "MD5": config.USM_AUTH_HMAC96_MD5,
    "SHA": config.USM_AUTH_HMAC96_SHA,
    "SHA-224": config.USM_AUTH_HMAC128_SHA224,
    "SHA-256": config.USM_AUTH_HMAC192_SHA256,
    "SHA-384": config.USM_AUTH_HMAC256_SHA384,
    "SHA-512": config.USM_AUTH_HMAC384_SHA512,
}
PRIV = {
    "AES": config.USM_PRIV_CFB128_AES,
    "AES-192": config.USM_PRIV_CFB192_AES_BLUMENTHAL,
    "AES-256": config.USM_PRIV_CFB256_AES_BLUMENTHAL,
    "AES-192-C": config.USM_PRIV_CFB192_AES,
    "AES-256-C": config.USM_PRIV_CFB256_AES,
    "DES": config.USM_PRIV_CBC56_DES,
    "3DES": config.USM_PRIV_CBC168_3DES,
}
USM_STATS = {
    "unknown_engine_ids": "usmStatsUnknownEngineIDs",
    "unknown_user_names": "usmStatsUnknownUserNames",
    "wrong_digests": "usmStatsWrongDigests",
    "decryption_errors": "usmStatsDecryptionErrors",
    "not_in_time_windows": "usmStatsNotInTimeWindows",
    "unsupported_sec_levels": "usmStatsUnsupportedSecLevels",
}


@dataclass(frozen=True)
class UsmUser:
    """A v3 user the receiver accepts; protocol names as in channels.snmp (SHA, SHA-256, AES, ...)."""

    name: str
    auth_protocol: str = "SHA"
    auth_password: str | None = None
    priv_protocol: str = "AES"
    priv_password: str | None = None


@dataclass(frozen=True)
class ReceivedTrap:
    pdu_type: str  # "trap" or "inform"
    version: str  # "1", "2c" or "3"
    security_name: str  # the v3 user name; for v2c the receiver's community index
    security_level: str  # noAuthNoPriv / authNoPriv / authPriv
    community: str | None  # v1/v2c only
    source: tuple[str, int]
    trap_oid: str
    uptime: int | None
    varbinds: dict[str, Any]  # every varbind but sysUpTime.0 and snmpTrapOID.0, in order
    all_varbinds: list[tuple[str, Any]]  # every varbind as sent, in order


@dataclass
class SnmpReceiver:
    host: str
    port: int
    traps: list[ReceivedTrap] = field(default_factory=list)
    _loop: asyncio.AbstractEventLoop | None = None
    _engine: Any = None
    _condition: threading.Condition = field(default_factory=threading.Condition)

    def wait_for_traps(self, count: int = 1, timeout: float = 3.0) -> list[ReceivedTrap]:
        """The first ``count`` traps; AssertionError if fewer arrive within ``timeout`` seconds."""
        with self._condition:
            arrived = self._condition.wait_for(lambda: len(self.traps) >= count, timeout)
            assert arrived, f"expected {count} notification(s), got {len(self.traps)}"
            return list(self.traps[:count])

    def clear(self) -> None:
        """Forget the traps received so far (for a receiver shared by several tests)."""
        with self._condition:
            self.traps.clear()

    def usm_stats(self) -> dict[str, int]:
        """The receiver engine's USM error counters (wrong_digests, unknown_user_names, ...)."""
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(self._usm_stats(), self._loop).result(3.0)

    async def _usm_stats(self) -> dict[str, int]:
        builder = self._engine.get_mib_builder()
        stats = {}
        for key, name in USM_STATS.items():
            (symbol,) = builder.import_symbols("__SNMP-USER-BASED-SM-MIB", name)
            stats[key] = int(symbol.syntax)
        return stats

    def _record(self, trap: ReceivedTrap) -> None:
        with self._condition:
            self.traps.append(trap)
            self._condition.notify_all()


def python_value(value: Any) -> Any:
    if isinstance(value, rfc1902.IpAddress):
        return value.prettyPrint()
    if isinstance(value, univ.OctetString):
        return bytes(value.asOctets()).decode("utf-8", "surrogateescape")
    if isinstance(value, univ.ObjectIdentifier):
        return ".".join(str(arc) for arc in value)
    if isinstance(value, univ.Integer):
        return int(value)
    return value.prettyPrint()


def free_udp_socket(host: str = HOST) -> socket.socket:
    """A UDP socket bound to a free port of host (127.0.0.1 or ::1); nothing reads it unless you do."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((host, 0))
    return sock


@contextmanager
def snmp_receiver(
    *,
    host: str = HOST,
    community: str | None = "public",
    users: Sequence[UsmUser] = (),
    sender_engine_id: bytes | None = None,
) -> Iterator[SnmpReceiver]:
    """Listen on a free UDP port of ``host`` (127.0.0.1, or ::1 for IPv6) until the block ends."""
    sock = free_udp_socket(host)
    receiver = SnmpReceiver(host=host, port=sock.getsockname()[1])
    loop = asyncio.new_event_loop()
    receiver._loop = loop
    started = threading.Event()
    failure: list[BaseException] = []

    def run() -> None:
        asyncio.set_event_loop(loop)
        try:
            receiver._engine = _start_engine(receiver, sock, community, users, sender_engine_id)
        except BaseException as exc:
            failure.append(exc)
            started.set()
            return
        loop.call_soon(started.set)
        loop.run_forever()

    thread = threading.Thread(target=run, name="snmp-receiver", daemon=True)
    thread.start()
    started.wait(10)
    if failure:
        raise failure[0]
    try:
        yield receiver
    finally:

        async def shutdown() -> None:
            receiver._engine.close_dispatcher()

        asyncio.run_coroutine_threadsafe(shutdown(), loop).result(5)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()
        sock.close()


def _start_engine(
    receiver: SnmpReceiver,
    sock: socket.socket,
    community: str | None,
    users: Sequence[UsmUser],
    sender_engine_id: bytes | None,
) -> Any:
    snmp_engine = engine.SnmpEngine()
    if sock.family == socket.AF_INET6:
        config.add_transport(
            snmp_engine, udp6.DOMAIN_NAME, udp6.Udp6AsyncioTransport().open_server_mode(sock=sock)
        )
    else:
        config.add_transport(
            snmp_engine, udp.DOMAIN_NAME, udp.UdpAsyncioTransport().open_server_mode(sock=sock)
        )
    if community is not None:
        config.add_v1_system(snmp_engine, "receiver-area", community)
    for user in users:
        # Traps are secured with the sender's engine ID, informs with the receiver's own (None).
        _add_user(snmp_engine, user, sender_engine_id)
        if sender_engine_id is not None:
            _add_user(snmp_engine, user, None)

    def on_notification(
        snmp_engine: Any,
        state_reference: Any,
        context_engine_id: Any,
        context_name: Any,
        varbinds: Any,
        cb_ctx: Any,
    ) -> None:
        context = snmp_engine.observer.get_execution_context("rfc3412.receiveMessage:request")
        pairs = [(".".join(str(arc) for arc in name), python_value(value)) for name, value in varbinds]
        values = dict(pairs)
        version = {0: "1", 1: "2c", 3: "3"}.get(int(context["messageProcessingModel"]), "?")
        pdu = context["pdu"]
        receiver._record(
            ReceivedTrap(
                pdu_type="inform" if pdu.tagSet == v2c.InformRequestPDU.tagSet else "trap",
                version=version,
                security_name=python_value(context["securityName"]),
                security_level={1: "noAuthNoPriv", 2: "authNoPriv", 3: "authPriv"}.get(
                    int(context["securityLevel"]), "?"
                ),
                community=communities.pop("last", None) if version in ("1", "2c") else None,
                source=(str(context["transportAddress"][0]), int(context["transportAddress"][1])),
                trap_oid=str(values.get(SNMP_TRAP_OID, "")),
                uptime=values.get(SYS_UPTIME),
                varbinds={k: v for k, v in pairs if k not in (SYS_UPTIME, SNMP_TRAP_OID)},
                all_varbinds=pairs,
            )
        )

    communities: dict[str, str] = {}

    def remember_community(snmp_engine: Any, execpoint: Any, variables: Any, cb_ctx: Any) -> None:
        communities["last"] = python_value(variables["communityName"])

    snmp_engine.observer.register_observer(remember_community, "rfc2576.processIncomingMsg")
    ntfrcv.NotificationReceiver(snmp_engine, on_notification)
    return snmp_engine


def _add_user(snmp_engine: Any, user: UsmUser, engine_id: bytes | None) -> None:
    auth_protocol, priv_protocol = config.USM_AUTH_NONE, config.USM_PRIV_NONE
    if user.auth_password is not None:
        auth_protocol = AUTH[user.auth_protocol]
        if user.priv_password is not None:
            priv_protocol = PRIV[user.priv_protocol]
    config.add_v3_user(
        snmp_engine,
        user.name,
        auth_protocol,
        user.auth_password,
        priv_protocol,
        user.priv_password,
        securityEngineId=None if engine_id is None else rfc1902.OctetString(engine_id),
    )
