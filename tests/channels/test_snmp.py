"""SNMP channel: config parsing, the trap layout, and real v2c/v3 traps and informs on 127.0.0.1."""

from __future__ import annotations

import dataclasses
import errno
import os
import re
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from channels import snmp, snmp_engine, snmp_transport, snmp_trap
from channels.context import ChannelContext
from channels.errors import (
    BlockedAddress,
    DeadlineExceeded,
    InvalidChannelConfig,
    PermanentError,
    TransientError,
)
from channels.http import HttpClient
from channels.netguard import AddressPolicy
from channels.snmp import DEFAULT_OID_PREFIX, OBJECT_COLUMNS, SnmpChannel, SnmpConfig
from tests.servers.snmp_receiver import (
    SNMP_TRAP_OID,
    SYS_UPTIME,
    ReceivedTrap,
    SnmpReceiver,
    UsmUser,
    free_udp_socket,
    snmp_receiver,
)
from tests.support import SAMPLE_PAYLOAD, make_delivery, make_settings

COMMUNITY = "c0mmunity-s3cret"
ENGINE_ID = bytes.fromhex("80001f8804707573652d74657374")  # the sender's engine ID the receiver trusts
AUTH = "auth-pa55phrase"
PRIV = "priv-pa55phrase"
USERS = [
    UsmUser("pulse-sha-aes", "SHA", AUTH, "AES", PRIV),
    UsmUser("pulse-sha256-aes256", "SHA-256", AUTH, "AES-256", PRIV),
    UsmUser("pulse-sha512-auth", "SHA-512", AUTH),
    UsmUser("pulse-noauth"),
]
MIB_PATH = Path(__file__).resolve().parents[2] / "channels" / "mibs" / "PULSE-ALERT-MIB.txt"


def make_channel(timeout: float = 1.0, retries: int = 0) -> SnmpChannel:
    settings = make_settings(snmp={"timeout": timeout, "retries": retries})
    http = HttpClient(connect_timeout=1, read_timeout=1, user_agent="test", pool_size=1)
    return SnmpChannel(ChannelContext(settings=settings, http=http))


@pytest.fixture(scope="module")
def receiver() -> Iterator[SnmpReceiver]:
    with snmp_receiver(community=COMMUNITY, users=USERS, sender_engine_id=ENGINE_ID) as server:
        yield server


@pytest.fixture
def rx(receiver: SnmpReceiver) -> SnmpReceiver:
    receiver.clear()
    return receiver


@pytest.fixture(scope="module")
def channel() -> Iterator[SnmpChannel]:
    shared = make_channel()
    yield shared
    shared.close()


def v2c(rx: SnmpReceiver, **extra: Any) -> dict[str, Any]:
    return {"host": rx.host, "port": rx.port, "community": COMMUNITY, **extra}


def v3(rx: SnmpReceiver, user: str = "pulse-sha-aes", **extra: Any) -> dict[str, Any]:
    config = {
        "host": rx.host,
        "port": rx.port,
        "version": "3",
        "username": user,
        "auth_protocol": "SHA",
        "auth_password": AUTH,
        "priv_protocol": "AES",
        "priv_password": PRIV,
        "engine_id": "0x" + ENGINE_ID.hex(),
    }
    config.update(extra)
    return {key: value for key, value in config.items() if value is not None}


def expected_varbinds(prefix: str = DEFAULT_OID_PREFIX, **overrides: Any) -> dict[str, Any]:
    values = {
        "alert_id": "1001",
        "device_id": "sensor-17",
        "tenant_id": "tenant-a",
        "severity": 4,
        "severity_label": "CRITICAL",
        "message": "Temperature 92.5C above 85C",
        "triggered_at": "2026-11-29T03:00:00Z",
        "alert_type": "THRESHOLD",
        "site_id": "plant-3",
        "event": "OPEN",
        **overrides,
    }
    return {f"{prefix}.1.{index}.0": values[column] for index, column in enumerate(OBJECT_COLUMNS, start=1)}


def assert_layout(trap: ReceivedTrap, *, prefix: str = DEFAULT_OID_PREFIX, cleared: bool = False) -> None:
    names = [name for name, _ in trap.all_varbinds]
    assert names[:2] == [SYS_UPTIME, SNMP_TRAP_OID]
    assert isinstance(trap.uptime, int)
    assert trap.trap_oid == f"{prefix}.0.{2 if cleared else 1}"
    assert names[2:] == [f"{prefix}.1.{index}.0" for index in range(1, 11)]


# --- real traps ----------------------------------------------------------------------------------


def test_v2c_trap_carries_every_alert_field(channel: SnmpChannel, rx: SnmpReceiver) -> None:
    receipt = channel.send(channel.parse_config(v2c(rx)), make_delivery())

    trap = rx.wait_for_traps(1)[0]
    assert receipt.detail == f"SNMPv2c trap sent to 127.0.0.1:{rx.port}"
    assert receipt.http_status is None
    assert (trap.pdu_type, trap.version, trap.community) == ("trap", "2c", COMMUNITY)
    assert_layout(trap)
    assert trap.varbinds == expected_varbinds()


@pytest.mark.parametrize(("event", "cleared"), [("OPEN", False), ("ACKNOWLEDGED", False), ("CLOSED", True)])
def test_trap_oid_tells_cleared_alerts_apart(
    channel: SnmpChannel, rx: SnmpReceiver, event: str, cleared: bool
) -> None:
    channel.send(channel.parse_config(v2c(rx)), make_delivery(event=event))

    trap = rx.wait_for_traps(1)[0]
    assert_layout(trap, cleared=cleared)
    assert trap.varbinds[f"{DEFAULT_OID_PREFIX}.1.10.0"] == event


CUSTOM_PREFIX = "1.3.6.1.4.1.424242.7"


@pytest.mark.parametrize("configured", [CUSTOM_PREFIX, "." + CUSTOM_PREFIX, f" {CUSTOM_PREFIX} "])
def test_custom_oid_prefix_moves_the_whole_layout(
    channel: SnmpChannel, rx: SnmpReceiver, configured: str
) -> None:
    channel.send(channel.parse_config(v2c(rx, oid_prefix=configured)), make_delivery(event="CLOSED"))

    trap = rx.wait_for_traps(1)[0]
    assert_layout(trap, prefix=CUSTOM_PREFIX, cleared=True)
    assert trap.varbinds == expected_varbinds(CUSTOM_PREFIX, event="CLOSED")


def test_missing_values_are_empty_and_unknown_severity_is_minus_one(
    channel: SnmpChannel, rx: SnmpReceiver
) -> None:
    channel.send(channel.parse_config(v2c(rx)), make_delivery({"alert_id": 5, "severity": None}))

    trap = rx.wait_for_traps(1)[0]
    assert trap.varbinds == expected_varbinds(
        alert_id="5",
        device_id="",
        severity=-1,
        severity_label="UNKNOWN",
        message="",
        triggered_at="",
        alert_type="",
        site_id="",
    )


@pytest.mark.parametrize("severity", [-1, -7, "-3", "severe"])
def test_negative_or_unknown_severity_is_labelled_unknown_not_low(
    channel: SnmpChannel, rx: SnmpReceiver, severity: Any
) -> None:
    channel.send(channel.parse_config(v2c(rx)), make_delivery({**SAMPLE_PAYLOAD, "severity": severity}))

    values = rx.wait_for_traps(1)[0].varbinds
    assert values[f"{DEFAULT_OID_PREFIX}.1.4.0"] == -1
    assert values[f"{DEFAULT_OID_PREFIX}.1.5.0"] == "UNKNOWN"


def test_every_alert_object_is_sent_as_its_scalar_instance() -> None:
    varbinds = snmp_trap.build_varbinds(make_delivery().alert, snmp.parse_oid_prefix(None))

    names = [".".join(map(str, oid)) for oid, _value in varbinds]
    assert names[0] == "1.3.6.1.6.3.1.1.4.1.0"  # snmpTrapOID.0
    assert names[1:] == [f"{DEFAULT_OID_PREFIX}.1.{index}.0" for index in range(1, 11)]


def test_long_text_is_cut_on_a_character_boundary(channel: SnmpChannel, rx: SnmpReceiver) -> None:
    payload = {**SAMPLE_PAYLOAD, "message": "é" * 1000 + "tail", "device_id": "d" * 300 + "ü"}
    channel.send(channel.parse_config(v2c(rx)), make_delivery(payload))

    values = rx.wait_for_traps(1)[0].varbinds
    assert values[f"{DEFAULT_OID_PREFIX}.1.6.0"] == "é" * 512  # 1024 bytes
    assert values[f"{DEFAULT_OID_PREFIX}.1.2.0"] == "d" * 255


@pytest.mark.parametrize(
    ("user", "auth_protocol", "priv_protocol", "level"),
    [
        ("pulse-sha-aes", "SHA", "AES", "authPriv"),
        ("pulse-sha256-aes256", "sha256", "aes-256", "authPriv"),
        ("pulse-sha512-auth", "SHA-512", None, "authNoPriv"),
        ("pulse-noauth", None, None, "noAuthNoPriv"),
    ],
)
def test_v3_trap_is_accepted_and_decoded(
    channel: SnmpChannel,
    rx: SnmpReceiver,
    user: str,
    auth_protocol: str | None,
    priv_protocol: str | None,
    level: str,
) -> None:
    raw = v3(
        rx,
        user,
        auth_protocol=auth_protocol,
        auth_password=AUTH if auth_protocol else None,
        priv_protocol=priv_protocol,
        priv_password=PRIV if priv_protocol else None,
    )
    receipt = channel.send(channel.parse_config(raw), make_delivery())

    trap = rx.wait_for_traps(1)[0]
    assert receipt.detail == f"SNMPv3 trap sent to 127.0.0.1:{rx.port}"
    assert (trap.version, trap.security_name, trap.security_level) == ("3", user, level)
    assert_layout(trap)
    assert trap.varbinds == expected_varbinds()


def test_v3_trap_with_wrong_auth_password_is_rejected_by_the_receiver(
    channel: SnmpChannel, rx: SnmpReceiver
) -> None:
    before = rx.usm_stats()["wrong_digests"]
    wrong = channel.parse_config(v3(rx, auth_password="not-the-pa55phrase"))
    good = channel.parse_config(v3(rx))

    # A trap is unacknowledged: the sender cannot tell, so the send itself succeeds.
    channel.send(wrong, make_delivery({**SAMPLE_PAYLOAD, "alert_id": 1}))
    channel.send(good, make_delivery({**SAMPLE_PAYLOAD, "alert_id": 2}))

    traps = rx.wait_for_traps(1)
    assert traps[0].varbinds[f"{DEFAULT_OID_PREFIX}.1.1.0"] == "2"  # the good one, after the rejected one
    assert rx.usm_stats()["wrong_digests"] == before + 1
    assert len(rx.traps) == 1


def test_v2c_trap_with_wrong_community_is_dropped_by_the_receiver(
    channel: SnmpChannel, rx: SnmpReceiver
) -> None:
    channel.send(
        channel.parse_config(v2c(rx, community="wrong")), make_delivery({**SAMPLE_PAYLOAD, "alert_id": 1})
    )
    channel.send(channel.parse_config(v2c(rx)), make_delivery({**SAMPLE_PAYLOAD, "alert_id": 2}))

    traps = rx.wait_for_traps(1)
    assert traps[0].varbinds[f"{DEFAULT_OID_PREFIX}.1.1.0"] == "2"
    assert len(rx.traps) == 1


def test_ipv6_receiver() -> None:
    try:
        free_udp_socket("::1").close()
    except OSError:
        pytest.skip("no IPv6 loopback here")
    channel = make_channel()
    try:
        with snmp_receiver(host="::1", community=COMMUNITY) as server:
            receipt = channel.send(channel.parse_config(v2c(server, host="[::1]")), make_delivery())
            assert server.wait_for_traps(1)[0].varbinds == expected_varbinds()
        assert receipt.detail == f"SNMPv2c trap sent to [::1]:{server.port}"
    finally:
        channel.close()


# --- informs -------------------------------------------------------------------------------------


def test_v2c_inform_is_acknowledged(channel: SnmpChannel, rx: SnmpReceiver) -> None:
    receipt = channel.send(channel.parse_config(v2c(rx, inform=True)), make_delivery())

    assert receipt.detail == f"SNMPv2c inform acknowledged by 127.0.0.1:{rx.port}"
    trap = rx.wait_for_traps(1)[0]
    assert trap.pdu_type == "inform"
    assert trap.varbinds == expected_varbinds()


def test_v3_inform_discovers_the_receiver_engine(channel: SnmpChannel, rx: SnmpReceiver) -> None:
    raw = v3(rx, inform=True, engine_id=None)  # informs need no engine_id: the receiver is authoritative
    receipt = channel.send(channel.parse_config(raw), make_delivery())

    assert receipt.detail == f"SNMPv3 inform acknowledged by 127.0.0.1:{rx.port}"
    trap = rx.wait_for_traps(1)[0]
    assert (trap.pdu_type, trap.security_level) == ("inform", "authPriv")


def test_v3_inform_with_wrong_password_is_permanent(channel: SnmpChannel, rx: SnmpReceiver) -> None:
    raw = v3(rx, inform=True, auth_password="not-the-pa55phrase", engine_id=None)

    with pytest.raises(PermanentError, match="rejected: Wrong SNMP PDU digest") as caught:
        channel.send(channel.parse_config(raw), make_delivery())
    assert "not-the-pa55phrase" not in str(caught.value) and PRIV not in str(caught.value)


def test_unanswered_inform_is_transient_and_bounded() -> None:
    channel = make_channel(timeout=0.2, retries=1)
    silent = free_udp_socket()  # bound, never read: the inform is never answered
    try:
        raw = {"host": "127.0.0.1", "port": silent.getsockname()[1], "community": COMMUNITY, "inform": True}
        started = time.monotonic()
        with pytest.raises(TransientError, match="not acknowledged|No SNMP response") as caught:
            channel.send(channel.parse_config(raw), make_delivery())
        assert time.monotonic() - started < 2.0
        assert COMMUNITY not in str(caught.value)
    finally:
        silent.close()
        channel.close()


# --- resolution, deadlines, threads --------------------------------------------------------------


def test_unresolvable_host_is_transient(monkeypatch: pytest.MonkeyPatch, channel: SnmpChannel) -> None:
    asked: list[str] = []

    def no_such_host(host: str, *args: Any, **kwargs: Any) -> Any:
        asked.append(host)
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_such_host)
    config = channel.parse_config({"host": "nms.example.invalid", "community": COMMUNITY})

    with pytest.raises(TransientError) as caught:
        channel.send(config, make_delivery())
    assert str(caught.value) == "cannot resolve host nms.example.invalid: Name or service not known"
    assert asked == ["nms.example.invalid"]


def test_slow_resolver_is_cut_off_at_the_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    release = threading.Event()

    def hanging_resolver(host: str, port: int, policy: object) -> tuple[str, bool]:
        release.wait(5)
        return "127.0.0.1", False

    monkeypatch.setattr(snmp_engine, "resolve_host", hanging_resolver)
    channel = make_channel(timeout=0.3)
    try:
        started = time.monotonic()
        expected = r"resolving SNMP host 'nms\.example\.com' timed out after 0\.3s"
        with pytest.raises(TransientError, match=expected):
            channel.send(channel.parse_config({"host": "nms.example.com"}), make_delivery())
        assert time.monotonic() - started < 1.5
    finally:
        release.set()
        channel.close()


def test_host_names_are_resolved(
    monkeypatch: pytest.MonkeyPatch, channel: SnmpChannel, rx: SnmpReceiver
) -> None:
    real_getaddrinfo = socket.getaddrinfo
    asked: list[str] = []

    def loopback(host: str, port: int, *args: Any, **kwargs: Any) -> Any:
        if host == "127.0.0.1":  # pysnmp's own (numeric) lookup of the address we resolved
            return real_getaddrinfo(host, port, *args, **kwargs)
        asked.append(host)
        return [(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP, "", ("127.0.0.1", port))]

    monkeypatch.setattr(socket, "getaddrinfo", loopback)
    receipt = channel.send(channel.parse_config(v2c(rx, host="nms.example.com")), make_delivery())

    assert asked == ["nms.example.com"]
    assert receipt.detail == f"SNMPv2c trap sent to nms.example.com:{rx.port}"
    assert rx.wait_for_traps(1)[0].varbinds == expected_varbinds()


def test_many_threads_send_at_once(channel: SnmpChannel, rx: SnmpReceiver) -> None:
    configs = [channel.parse_config(v2c(rx)), channel.parse_config(v3(rx))]

    def send(number: int) -> None:
        channel.send(configs[number % 2], make_delivery({**SAMPLE_PAYLOAD, "alert_id": number}))

    with ThreadPoolExecutor(max_workers=16) as pool:
        list(pool.map(send, range(40)))

    traps = rx.wait_for_traps(40)
    assert sorted(int(trap.varbinds[f"{DEFAULT_OID_PREFIX}.1.1.0"]) for trap in traps) == list(range(40))


def test_no_thread_until_first_send_and_close_stops_it(rx: SnmpReceiver) -> None:
    channel = make_channel()
    assert channel._notifier is None
    channel.send(channel.parse_config(v2c(rx)), make_delivery())
    notifier = channel._notifier
    assert notifier is not None and notifier._thread.is_alive()

    channel.close()

    assert not notifier._thread.is_alive()
    with pytest.raises(TransientError, match="shut down"):
        channel.send(channel.parse_config(v2c(rx)), make_delivery())
    channel.close()  # twice is fine


def test_close_without_any_send() -> None:
    make_channel().close()


# --- config --------------------------------------------------------------------------------------


def test_v2c_defaults() -> None:
    config = snmp.parse_config({"host": "nms.example.com"})

    assert config == SnmpConfig(host="nms.example.com")
    assert (config.port, config.version, config.community, config.inform) == (162, "2c", "public", False)
    assert config.oid_prefix == (1, 3, 6, 1, 4, 1, 99999)
    assert config.secrets() == ("public",)


@pytest.mark.parametrize("version", ["2c", "v2c", "V2C", 2, "2"])
def test_v2c_spellings(version: Any) -> None:
    assert snmp.parse_config({"host": "h", "version": version}).version == "2c"


@pytest.mark.parametrize("version", ["3", "v3", 3])
def test_v3_spellings(version: Any) -> None:
    assert snmp.parse_config({"host": "h", "version": version, "username": "u"}).version == "3"


def test_v3_config_and_secrets() -> None:
    config = snmp.parse_config(
        {
            "host": "nms.example.com",
            "port": "1162",
            "version": "3",
            "username": "pulse",
            "auth_protocol": "sha-256",
            "auth_password": AUTH,
            "priv_protocol": "aes128",
            "priv_password": PRIV,
            "engine_id": "80:00:1F:88:04:70:75:6c:73:65",
            "community": "ignored-for-v3",
            "inform": "true",
        }
    )

    assert config.port == 1162
    assert (config.auth_protocol, config.priv_protocol) == ("SHA-256", "AES")
    assert config.engine_id == bytes.fromhex("80001f880470756c7365")
    assert config.security_level == "authPriv"
    assert config.inform is True
    assert config.secrets() == (AUTH, PRIV)
    assert AUTH not in repr(config) and PRIV not in repr(config)


def test_v3_protocols_default_to_sha_and_aes() -> None:
    config = snmp.parse_config(
        {"host": "h", "version": "3", "username": "u", "auth_password": AUTH, "priv_password": PRIV}
    )
    assert (config.auth_protocol, config.priv_protocol) == ("SHA", "AES")
    no_auth = snmp.parse_config({"host": "h", "version": "3", "username": "u", "auth_protocol": "none"})
    assert (no_auth.auth_protocol, no_auth.security_level, no_auth.secrets()) == (None, "noAuthNoPriv", ())


H = {"host": "h"}
V3 = {"host": "h", "version": "3", "username": "u"}


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({}, "config.host is missing"),
        ({"host": ""}, "config.host is missing"),
        ({"host": 12}, "config.host must be a string"),
        ({"host": "nms.example.com:162"}, "config.host must be a host name or IP address"),
        ({"host": "nms example"}, "config.host must be a host name or IP address"),
        ({**H, "port": "abc"}, "config.port must be an integer between 1 and 65535"),
        ({**H, "port": 0}, "config.port must be an integer between 1 and 65535"),
        ({**H, "port": 65536}, "config.port must be an integer between 1 and 65535"),
        ({**H, "port": True}, "config.port must be an integer between 1 and 65535"),
        ({**H, "port": 16.5}, "config.port must be an integer between 1 and 65535"),
        ({**H, "version": "1"}, "config.version must be '2c' or '3'"),
        ({**H, "version": True}, "config.version must be '2c' or '3'"),
        ({**H, "community": 5}, "config.community must be a string"),
        ({**H, "oid_prefix": "enterprise"}, "config.oid_prefix must be a dotted numeric OID"),
        ({**H, "oid_prefix": "1.3.6.1.4.1.x"}, "config.oid_prefix must be a dotted numeric OID"),
        ({**H, "oid_prefix": "1.3.6.1..4"}, "config.oid_prefix must be a dotted numeric OID"),
        ({**H, "oid_prefix": "1"}, "config.oid_prefix must be a dotted numeric OID"),
        ({**H, "oid_prefix": "2.25.1234"}, "config.oid_prefix must be under 1.3.6.1"),
        ({**H, "oid_prefix": "1.3.6.1"}, "config.oid_prefix must be under 1.3.6.1"),
        ({**H, "oid_prefix": "1.3.6.1.4.1.4294967296"}, "config.oid_prefix has a sub-identifier above"),
        ({**H, "oid_prefix": 1.3}, "config.oid_prefix must be a dotted numeric OID string"),
        ({**H, "inform": "maybe"}, "config.inform must be true or false"),
        ({**H, "version": "3"}, "config.username is missing"),
        ({**V3, "auth_protocol": "SHA3"}, "config.auth_protocol must be one of MD5, SHA, SHA-224"),
        (
            {**V3, "auth_password": AUTH, "priv_protocol": "BLOWFISH"},
            "config.priv_protocol must be one of AES",
        ),
        ({**V3, "auth_protocol": "SHA"}, "config.auth_password is missing"),
        ({**V3, "auth_password": AUTH, "priv_protocol": "AES"}, "config.priv_password is missing"),
        ({**V3, "priv_password": PRIV}, "config.priv_password needs config.auth_password"),
        ({**V3, "auth_password": "short"}, "config.auth_password must be at least 8 characters"),
        ({**V3, "auth_password": AUTH, "priv_password": "short"}, "config.priv_password must be at least 8"),
        ({**V3, "engine_id": "xyz"}, "config.engine_id must be a hex string"),
        ({**V3, "engine_id": "0x0000000000"}, "config.engine_id must be 5 to 32 octets"),
        ({**V3, "engine_id": "0x8000"}, "config.engine_id must be 5 to 32 octets"),
    ],
)
def test_invalid_config_names_the_key(raw: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidChannelConfig) as caught:
        snmp.parse_config(raw)
    assert message in str(caught.value)
    for secret in (AUTH, PRIV, "short"):
        assert secret not in str(caught.value)


def test_non_object_config_is_rejected() -> None:
    with pytest.raises(InvalidChannelConfig, match="config must be a JSON object"):
        make_channel().parse_config(["host"])  # type: ignore[arg-type]


# --- the MIB -------------------------------------------------------------------------------------


MIB_OBJECTS = [
    "pulseAlertId",
    "pulseAlertDeviceId",
    "pulseAlertTenantId",
    "pulseAlertSeverity",
    "pulseAlertSeverityLabel",
    "pulseAlertMessage",
    "pulseAlertTriggeredAt",
    "pulseAlertType",
    "pulseAlertSiteId",
    "pulseAlertEvent",
]


def mib_children(text: str, macro: str, parent: str) -> dict[str, int]:
    pattern = rf"^(\w+) {macro}\b.*?::= \{{ {parent} (\d+) \}}"
    return {name: int(arc) for name, arc in re.findall(pattern, text, re.S | re.M)}


def test_mib_describes_the_default_layout() -> None:
    text = MIB_PATH.read_text()

    assert DEFAULT_OID_PREFIX == "1.3.6.1.4.1.99999"
    assert "::= { enterprises 99999 }" in text
    objects = mib_children(text, "OBJECT-TYPE", "pulseAlertObjects")
    assert objects == {name: index for index, name in enumerate(MIB_OBJECTS, start=1)}
    assert len(OBJECT_COLUMNS) == len(MIB_OBJECTS)
    notifications = mib_children(text, "NOTIFICATION-TYPE", "pulseAlertNotifications")
    assert notifications == {
        "pulseAlertNotification": snmp.ALERT_EVENT,
        "pulseAlertCleared": snmp.ALERT_CLEARED,
    }


# --- the outbound-address guard (decisions only: nothing is sent to a non-loopback address) -------


def answers(*ips: str) -> Any:
    """A getaddrinfo stand-in that answers every name with ``ips``."""

    def resolver(host: str, port: int, *args: Any, **kwargs: Any) -> list[Any]:
        family = lambda ip: socket.AF_INET6 if ":" in ip else socket.AF_INET  # noqa: E731
        return [(family(ip), socket.SOCK_STREAM, 6, "", (ip, port)) for ip in ips]

    return resolver


@pytest.mark.parametrize(
    "ips",
    [("93.184.216.34", "10.0.0.5"), ("10.0.0.5", "93.184.216.34"), ("2606:2800:220:1::1", "fd00::5")],
)
def test_a_name_answering_public_and_private_addresses_is_refused(ips: tuple[str, ...]) -> None:
    with pytest.raises(BlockedAddress, match="private"):
        snmp_transport.resolve_host("nms.example.com", 162, AddressPolicy(), answers(*ips))


def test_ipv4_is_preferred_once_every_address_passed() -> None:
    resolver = answers("2606:2800:220:1::1", "93.184.216.34")
    assert snmp_transport.resolve_host("nms.example.com", 162, AddressPolicy(), resolver) == (
        "93.184.216.34",
        False,
    )


def test_channel_refuses_a_mixed_answer_before_sending(
    monkeypatch: pytest.MonkeyPatch, channel: SnmpChannel, rx: SnmpReceiver
) -> None:
    # Loopback is open in tests; 10.1.2.3 is not. The first (allowed) address must not be picked.
    monkeypatch.setattr(socket, "getaddrinfo", answers("127.0.0.1", "10.1.2.3"))
    config = channel.parse_config(v2c(rx, host="nms.example.com"))

    with pytest.raises(BlockedAddress, match=r"10\.1\.2\.3 \(private address\) for nms\.example\.com"):
        channel.send(config, make_delivery())
    with pytest.raises(AssertionError):
        rx.wait_for_traps(1, timeout=0.3)


# --- a trap that did not leave is not delivered --------------------------------------------------


class UnreachableSocket(socket.socket):
    """A real UDP socket whose every send fails as on a host with no route to the receiver."""

    def sendto(self, *args: Any) -> int:  # type: ignore[override]
        raise OSError(errno.ENETUNREACH, "Network is unreachable")


def test_a_trap_whose_datagram_failed_is_not_sent(monkeypatch: pytest.MonkeyPatch, rx: SnmpReceiver) -> None:
    def unreachable_client_mode(self: Any, iface: Any = None, allow_broadcast: bool = False) -> Any:
        sock = UnreachableSocket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        return self.open_server_mode(sock=sock)

    channel = make_channel()
    try:
        with monkeypatch.context() as patch:
            patch.setattr(snmp_transport.UdpTransport, "open_client_mode", unreachable_client_mode)
            with pytest.raises(TransientError, match="was not sent: Network is unreachable") as caught:
                channel.send(channel.parse_config(v2c(rx)), make_delivery())
            assert COMMUNITY not in str(caught.value)
        # The failed socket was dropped: the next attempt opens a working one and is delivered.
        channel.send(channel.parse_config(v2c(rx)), make_delivery())
        assert len(rx.wait_for_traps(1)) == 1
    finally:
        channel.close()


class FullThenUnreachableSocket(socket.socket):
    """A real UDP socket whose buffer stays full for a while (asyncio queues the datagram and
    retries it) and whose eventual write fails: after pysnmp has reported the trap sent."""

    def sendto(self, *args: Any) -> int:  # type: ignore[override]
        self.calls = getattr(self, "calls", 0) + 1
        if self.calls <= 50:
            raise BlockingIOError(errno.EAGAIN, "Resource temporarily unavailable")
        raise OSError(errno.ENETUNREACH, "Network is unreachable")


def test_a_queued_datagram_that_fails_later_is_not_sent(
    monkeypatch: pytest.MonkeyPatch, rx: SnmpReceiver
) -> None:
    def full_client_mode(self: Any, iface: Any = None, allow_broadcast: bool = False) -> Any:
        sock = FullThenUnreachableSocket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        return self.open_server_mode(sock=sock)

    channel = make_channel()
    try:
        monkeypatch.setattr(snmp_transport.UdpTransport, "open_client_mode", full_client_mode)
        with pytest.raises(TransientError, match="was not sent: Network is unreachable"):
            channel.send(channel.parse_config(v2c(rx)), make_delivery())
    finally:
        channel.close()


def test_a_socket_closed_under_the_engine_is_replaced(rx: SnmpReceiver) -> None:
    channel = make_channel()
    try:
        config = channel.parse_config(v2c(rx))
        channel.send(config, make_delivery())
        notifier = channel.notifier()
        (state,) = notifier.engines.values()
        (transport,) = state.transports.values()
        notifier._loop.call_soon_threadsafe(transport.transport.close)
        assert wait_until(lambda: transport.transport.is_closing())

        channel.send(config, make_delivery())

        assert len(rx.wait_for_traps(2)) == 2
        assert list(state.transports.values()) != [transport]
    finally:
        channel.close()


# --- deadline and bounded engine state -----------------------------------------------------------


def test_inform_unanswered_by_the_attempt_deadline_is_deadline_exceeded() -> None:
    channel = make_channel(timeout=3.0, retries=2)  # alone, these would allow ~13 s
    silent = free_udp_socket()
    try:
        raw = {"host": "127.0.0.1", "port": silent.getsockname()[1], "community": COMMUNITY, "inform": True}
        delivery = dataclasses.replace(make_delivery(), deadline=time.monotonic() + 0.5)
        started = time.monotonic()
        with pytest.raises(DeadlineExceeded, match="not acknowledged: attempt deadline reached"):
            channel.send(channel.parse_config(raw), delivery)
        assert time.monotonic() - started < 2.5
    finally:
        silent.close()
        channel.close()


def test_an_attempt_already_past_its_deadline_sends_nothing(channel: SnmpChannel, rx: SnmpReceiver) -> None:
    delivery = dataclasses.replace(make_delivery(), deadline=time.monotonic() - 1)
    with pytest.raises(DeadlineExceeded):
        channel.send(channel.parse_config(v2c(rx)), delivery)
    with pytest.raises(AssertionError):
        rx.wait_for_traps(1, timeout=0.3)


def test_engines_for_many_engine_ids_stay_bounded(rx: SnmpReceiver) -> None:
    settings = make_settings(snmp={"timeout": 1.0, "retries": 0, "max_engines": 4})
    http = HttpClient(connect_timeout=1, read_timeout=1, user_agent="test", pool_size=1)
    channel = SnmpChannel(ChannelContext(settings=settings, http=http))
    try:
        channel.send(channel.parse_config(v3(rx, engine_id="0x80001f8804ffffffff")), make_delivery())
        fds_before = len(os.listdir("/proc/self/fd"))  # the loop thread and one engine are running
        for number in range(16):
            engine_id = "0x80001f8804" + f"{number:08x}"
            channel.send(channel.parse_config(v3(rx, engine_id=engine_id)), make_delivery())
        engines = channel.notifier().engines
        assert len(engines) <= 4
        assert engines.evicted >= 13
        # Evicted engines closed their sockets (closing happens on the loop thread: wait for it).
        assert wait_until(lambda: len(os.listdir("/proc/self/fd")) - fds_before <= 3 + 2)
        # An evicted engine ID comes back as a fresh engine and its traps are still accepted.
        channel.send(channel.parse_config(v3(rx)), make_delivery({**SAMPLE_PAYLOAD, "alert_id": 7}))
        for number in range(4):
            channel.send(channel.parse_config(v3(rx, engine_id=f"0x80001f8805{number:08x}")), make_delivery())
        channel.send(channel.parse_config(v3(rx)), make_delivery({**SAMPLE_PAYLOAD, "alert_id": 8}))
        accepted = [trap for trap in rx.wait_for_traps(2) if trap.security_name == "pulse-sha-aes"]
        assert [trap.varbinds[f"{DEFAULT_OID_PREFIX}.1.1.0"] for trap in accepted] == ["7", "8"]
    finally:
        channel.close()


def wait_until(predicate: Any, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return bool(predicate())
