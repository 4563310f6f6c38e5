"""SNMP channel against the real Net-SNMP snmptrapd on 127.0.0.1 (issue 13): what a receiver nobody
here wrote accepts and logs. Skipped when snmptrapd is not installed, unless env CI is set."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from channels.context import ChannelContext
from channels.http import HttpClient
from channels.snmp import DEFAULT_OID_PREFIX, SnmpChannel
from tests.servers.snmptrapd import LoggedTrap, Snmptrapd, TrapUser, require_snmptrapd, snmptrapd
from tests.support import SAMPLE_PAYLOAD, make_delivery, make_settings

COMMUNITY = "trapd-c0mmunity"
ENGINE_ID = bytes.fromhex("80001f880470756c73652d7472617064")
USER = TrapUser("pulse-trapd", ENGINE_ID, auth_password="auth-pa55phrase", priv_password="priv-pa55phrase")
SYS_UPTIME = "1.3.6.1.2.1.1.3.0"
SNMP_TRAP_OID = "1.3.6.1.6.3.1.1.4.1.0"
OBJECTS = [f"{DEFAULT_OID_PREFIX}.1.{index}.0" for index in range(1, 11)]
PAYLOAD = {**SAMPLE_PAYLOAD, "message": "Température 92.5°C > 85°C", "severity": 4}


@pytest.fixture(scope="module")
def trapd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Snmptrapd]:
    require_snmptrapd()
    with snmptrapd(tmp_path_factory.mktemp("snmptrapd"), community=COMMUNITY, users=[USER]) as server:
        yield server


def make_channel(**snmp: Any) -> SnmpChannel:
    settings = make_settings(snmp={"timeout": 1.0, "retries": 1, **snmp})
    http = HttpClient(connect_timeout=1, read_timeout=1, user_agent="test", pool_size=1)
    return SnmpChannel(ChannelContext(settings=settings, http=http))


@pytest.fixture(scope="module")
def channel() -> Iterator[SnmpChannel]:
    shared = make_channel()
    yield shared
    shared.close()


def v2c(trapd: Snmptrapd, **extra: Any) -> dict[str, Any]:
    return {"host": trapd.host, "port": trapd.port, "community": COMMUNITY, **extra}


def v3(trapd: Snmptrapd, **extra: Any) -> dict[str, Any]:
    return {
        "host": trapd.host,
        "port": trapd.port,
        "version": "3",
        "username": USER.name,
        "auth_protocol": "SHA",
        "auth_password": USER.auth_password,
        "priv_protocol": "AES",
        "priv_password": USER.priv_password,
        "engine_id": "0x" + ENGINE_ID.hex(),
        **extra,
    }


def new_traps(trapd: Snmptrapd, before: int, count: int = 1) -> list[LoggedTrap]:
    return trapd.wait_for_traps(before + count)[before:]


def assert_alert(trap: LoggedTrap, *, event: str = "OPEN", alert_id: str = "1001") -> None:
    assert trap.names == [SYS_UPTIME, SNMP_TRAP_OID, *OBJECTS]  # every object as its .0 instance
    assert trap.trap_oid == f"{DEFAULT_OID_PREFIX}.0.{2 if event == 'CLOSED' else 1}"
    assert isinstance(trap.values[SYS_UPTIME], int)
    assert [trap.values[name] for name in OBJECTS] == [
        alert_id,
        "sensor-17",
        "tenant-a",
        4,
        "CRITICAL",
        "Température 92.5°C > 85°C",
        "2026-11-29T03:00:00Z",
        "THRESHOLD",
        "plant-3",
        event,
    ]


def test_v2c_trap_is_logged_with_scalar_instances(channel: SnmpChannel, trapd: Snmptrapd) -> None:
    before = len(trapd.traps())
    channel.send(channel.parse_config(v2c(trapd)), make_delivery(PAYLOAD))

    (trap,) = new_traps(trapd, before)
    assert trap.security == f"TRAP2, SNMP v2c, community {COMMUNITY}"
    assert_alert(trap)


def test_v3_authpriv_trap_is_decrypted_and_logged(channel: SnmpChannel, trapd: Snmptrapd) -> None:
    before = len(trapd.traps())
    channel.send(channel.parse_config(v3(trapd)), make_delivery(PAYLOAD, event="CLOSED"))

    (trap,) = new_traps(trapd, before)
    assert trap.security.startswith(f"TRAP2, SNMP v3, user {USER.name}")
    assert_alert(trap, event="CLOSED")


@pytest.mark.parametrize("config", [v2c, v3], ids=["v2c", "v3-authPriv"])
def test_informs_are_acknowledged_by_snmptrapd(channel: SnmpChannel, trapd: Snmptrapd, config: Any) -> None:
    before = len(trapd.traps())
    raw = config(trapd, inform=True)
    raw.pop("engine_id", None)  # an inform discovers snmptrapd's engine ID

    receipt = channel.send(channel.parse_config(raw), make_delivery(PAYLOAD))

    assert "inform acknowledged" in receipt.detail
    (trap,) = new_traps(trapd, before)
    assert trap.security.startswith("INFORM")
    assert_alert(trap)


def test_unknown_and_negative_severity_reach_snmptrapd_as_unknown(
    channel: SnmpChannel, trapd: Snmptrapd
) -> None:
    before = len(trapd.traps())
    for severity in (-1, None):
        channel.send(channel.parse_config(v2c(trapd)), make_delivery({**PAYLOAD, "severity": severity}))

    for trap in new_traps(trapd, before, 2):
        assert trap.values[f"{DEFAULT_OID_PREFIX}.1.4.0"] == -1
        assert trap.values[f"{DEFAULT_OID_PREFIX}.1.5.0"] == "UNKNOWN"


def test_wrong_privacy_password_is_dropped_by_snmptrapd(channel: SnmpChannel, trapd: Snmptrapd) -> None:
    before = len(trapd.traps())
    wrong = channel.parse_config(v3(trapd, priv_password="not-the-pa55phrase"))
    channel.send(wrong, make_delivery({**PAYLOAD, "alert_id": 1}))
    channel.send(channel.parse_config(v3(trapd)), make_delivery({**PAYLOAD, "alert_id": 2}))

    traps = new_traps(trapd, before)
    assert [trap.values[OBJECTS[0]] for trap in traps] == ["2"]
    assert len(trapd.traps()) == before + 1


def test_an_evicted_engine_comes_back_and_is_still_accepted(trapd: Snmptrapd) -> None:
    channel = make_channel(max_engines=1)
    try:
        before = len(trapd.traps())
        channel.send(channel.parse_config(v3(trapd)), make_delivery({**PAYLOAD, "alert_id": 1}))
        other = v3(trapd, engine_id="0x80001f8804" + "6f74686572")  # evicts ours (unknown to snmptrapd)
        channel.send(channel.parse_config(other), make_delivery({**PAYLOAD, "alert_id": 2}))
        assert channel.notifier().engines.evicted >= 1
        channel.send(channel.parse_config(v3(trapd)), make_delivery({**PAYLOAD, "alert_id": 3}))

        traps = new_traps(trapd, before, 2)
        assert [trap.values[OBJECTS[0]] for trap in traps] == ["1", "3"]
    finally:
        channel.close()
