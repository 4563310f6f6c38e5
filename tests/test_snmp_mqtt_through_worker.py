"""SNMP and MQTT through the whole worker (issue 13): an SNMPv3 authPriv trap logged by the real
snmptrapd; hostile alert values become MQTT topics the broker accepts, and a broker that drops the
connection over a message costs one connection per attempt."""

from __future__ import annotations

import contextlib
import queue
import time
import uuid

from tests.rows import drain, insert_channel, insert_notification_job, job, log_rows
from tests.servers.mqtt_subscriber import WAIT, Subscriber
from tests.servers.mqtt_tls_broker import CONNACK_ACCEPTED, FakeBroker
from tests.servers.snmptrapd import TrapUser, snmptrapd
from tests.support import SAMPLE_PAYLOAD

HOSTILE_DEVICES = ["$SYS", "pump\t7", "line1\nline2", "valve\u20282", "+", "#"]


def test_hostile_alert_values_are_delivered_on_topics_a_hash_subscriber_sees(database):
    marker = uuid.uuid4().hex
    subscriber = Subscriber()
    try:
        subscriber.subscribe("#", qos=1)
        channel = insert_channel(
            database,
            "mqtt",
            {"broker_url": "mqtt://127.0.0.1:1883", "topic": "{device_id}/" + marker, "qos": 0},
        )
        jobs = [
            insert_notification_job(database, channel, {**SAMPLE_PAYLOAD, "alert_id": n, "device_id": device})
            for n, device in enumerate(HOSTILE_DEVICES, start=9100)
        ]

        drain(database)

        received: set[str] = set()
        deadline = time.monotonic() + WAIT
        while len(received) < 5 and time.monotonic() < deadline:
            with contextlib.suppress(queue.Empty):
                msg = subscriber.get(timeout=max(0.1, deadline - time.monotonic()))
                if msg.topic.endswith(marker):
                    received.add(msg.topic)
    finally:
        subscriber.close()
    assert [job(database, "notification_jobs", job_id)["status"] for job_id in jobs] == ["COMPLETED"] * 6
    assert received == {f"{level}/{marker}" for level in ("_SYS", "pump_7", "line1_line2", "valve_2", "_")}


def test_a_broker_dropping_the_connection_over_each_message_is_not_hammered(database):
    with FakeBroker(connack=CONNACK_ACCEPTED, answer_pings=True, drop_on_publish=True) as fake:
        channel = insert_channel(database, "mqtt", {"broker_url": f"mqtt://127.0.0.1:{fake.port}", "qos": 1})
        jobs = [insert_notification_job(database, channel) for _ in range(3)]

        drain(database, worker={"max_attempts": 2, "quick_retries": 2})

        # At most one connection per attempt (3 jobs x 2 attempts; parallel attempts may share one),
        # not one per quick retry as well (18).
        assert 2 <= fake.connections <= 6
    for job_id in jobs:
        row = job(database, "notification_jobs", job_id)
        assert row["status"] == "FAILED" and row["attempts"] == 2
        assert "connection lost before the PUBACK" in row["last_error"]


def test_snmpv3_authpriv_trap_through_the_worker_is_logged_by_snmptrapd(database, tmp_path):
    engine_id = bytes.fromhex("80001f88047075736c652d776f726b6572")
    user = TrapUser(
        "pulse-worker", engine_id, auth_password="auth-pa55phrase", priv_password="priv-pa55phrase"
    )
    with snmptrapd(tmp_path, users=[user]) as trapd:
        config = {
            "host": "127.0.0.1",
            "port": trapd.port,
            "version": "3",
            "username": user.name,
            "auth_password": user.auth_password,
            "priv_password": user.priv_password,
            "engine_id": "0x" + engine_id.hex(),
        }
        job_id = insert_notification_job(database, insert_channel(database, "snmp", config), alert_id=4711)

        drain(database)

        (trap,) = trapd.wait_for_traps(1)
    assert trap.security.startswith("TRAP2, SNMP v3, user pulse-worker")
    assert trap.values["1.3.6.1.4.1.99999.1.1.0"] == "4711"
    assert job(database, "notification_jobs", job_id)["status"] == "COMPLETED"
    assert len(log_rows(database, job_id)) == 1
