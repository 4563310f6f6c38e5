"""Email, MQTT and SNMP through the whole worker, on both pipelines, into real servers on 127.0.0.1."""

from __future__ import annotations

import json
import uuid

from tests.rows import (
    attempt_rows,
    drain,
    insert_channel,
    insert_delivery_job,
    insert_email_integration,
    insert_integration,
    insert_notification_job,
    job,
    log_rows,
)
from tests.servers.mqtt_subscriber import Subscriber
from tests.servers.smtp import closed_port, smtp_config, smtp_server
from tests.servers.snmp_receiver import UsmUser, snmp_receiver
from tests.support import SAMPLE_PAYLOAD

SMTP_PASSWORD = "smtp-pa55word-xyz"


def test_email_channel_through_notification_jobs(database):
    with smtp_server(users={"pulse": SMTP_PASSWORD}, auth_require_tls=False) as server:
        channel = insert_channel(
            database,
            "email",
            {
                "smtp": smtp_config(server.port, smtp_user="pulse", smtp_password=SMTP_PASSWORD),
                "recipients": {
                    "to": ["oncall@acme.test"],
                    "cc": ["lead@acme.test"],
                    "bcc": ["audit@acme.test"],
                },
                "template": {
                    "subject_template": "[{severity}] {alert_type} on {device_id}",
                    "body_template": "{message} at {site_id} (alert {alert_id}, {missing_key})",
                    "format": "text",
                },
            },
        )
        job_id = insert_notification_job(database, channel, alert_id=1001)

        drain(database)

        (received,) = server.messages
    assert received.login == "pulse"
    assert sorted(received.rcpt_tos) == ["audit@acme.test", "lead@acme.test", "oncall@acme.test"]
    message = received.message()
    assert message["Subject"] == "[CRITICAL] THRESHOLD on sensor-17"
    assert message["From"] == "Pulse Alerts <alerts@pulse.test>"
    assert message["To"] == "oncall@acme.test" and message["Cc"] == "lead@acme.test"
    assert message["Bcc"] is None
    assert message.get_content().strip() == "Temperature 92.5C above 85C at plant-3 (alert 1001, )"
    assert job(database, "notification_jobs", job_id)["status"] == "COMPLETED"
    assert [r["success"] for r in log_rows(database, job_id)] == [True]


def test_email_integration_with_web_ui_spelling(database):
    with smtp_server() as server:
        integration = insert_email_integration(database, server.port, email_template={"format": "html"})
        job_id = insert_delivery_job(database, integration)

        drain(database)

        (received,) = server.messages
    message = received.message()
    assert message.get_content_type() == "multipart/alternative"
    assert [part.get_content_type() for part in message.iter_parts()] == ["text/plain", "text/html"]
    assert "Device offline for 10 minutes" in message.get_body(("plain",)).get_content()
    assert job(database, "delivery_jobs", job_id)["status"] == "COMPLETED"
    assert [a["ok"] for a in attempt_rows(database, job_id)] == [True]


def test_unreachable_smtp_host_retries_then_fails_readably(database):
    port = closed_port()
    channel = insert_channel(
        database,
        "email",
        {
            "smtp": smtp_config(port, smtp_password=SMTP_PASSWORD, smtp_user="u"),
            "recipients": {"to": ["a@b.test"]},
        },
    )
    job_id = insert_notification_job(database, channel)

    drain(database, worker={"max_attempts": 2})

    row = job(database, "notification_jobs", job_id)
    assert row["status"] == "FAILED" and row["attempts"] == 2
    assert f"127.0.0.1:{port}" in row["last_error"]
    assert SMTP_PASSWORD not in row["last_error"]


def test_mqtt_channel_through_notification_jobs(database):
    prefix = f"test/{uuid.uuid4().hex[:8]}"
    subscriber = Subscriber()
    try:
        subscriber.subscribe(f"{prefix}/#")
        channel = insert_channel(
            database,
            "mqtt",
            {"broker_url": "mqtt://127.0.0.1:1883", "topic": prefix + "/{tenant_id}/{device_id}", "qos": 2},
        )
        job_id = insert_notification_job(database, channel)

        drain(database)

        message = subscriber.get()
    finally:
        subscriber.close()
    assert message.topic == f"{prefix}/tenant-a/sensor-17"
    assert message.qos == 2 and message.retain is False
    assert json.loads(message.payload) == {
        **SAMPLE_PAYLOAD,
        "alert_id": json.loads(message.payload)["alert_id"],
    }
    assert job(database, "notification_jobs", job_id)["status"] == "COMPLETED"


def test_mqtt_integration_columns_and_broker_host_spelling(database):
    prefix = f"test/{uuid.uuid4().hex[:8]}"
    subscriber = Subscriber()
    try:
        subscriber.subscribe(f"{prefix}/#")
        integration = insert_integration(
            database,
            "mqtt",
            mqtt_topic=prefix + "/{site_id}/{alert_type}",
            mqtt_qos=1,
            mqtt_retain=False,
            mqtt_config={"broker_host": "127.0.0.1", "broker_port": 1883},
        )
        job_id = insert_delivery_job(database, integration)

        drain(database)

        message = subscriber.get()
    finally:
        subscriber.close()
    assert message.topic == f"{prefix}/plant-1/OFFLINE"
    assert message.qos == 1
    assert json.loads(message.payload)["summary"] == "Device offline for 10 minutes"
    assert job(database, "delivery_jobs", job_id)["status"] == "COMPLETED"
    assert [a["ok"] for a in attempt_rows(database, job_id)] == [True]


def test_unreachable_mqtt_broker_retries_then_fails_readably(database):
    port = closed_port()
    channel = insert_channel(
        database,
        "mqtt",
        {"broker_url": f"mqtt://127.0.0.1:{port}", "password": "mqtt-secret-99", "username": "u"},
    )
    job_id = insert_notification_job(database, channel)

    drain(database, worker={"max_attempts": 2})

    row = job(database, "notification_jobs", job_id)
    assert row["status"] == "FAILED" and row["attempts"] == 2
    assert f"127.0.0.1:{port}" in row["last_error"]
    assert "mqtt-secret-99" not in row["last_error"]


def test_snmp_v2c_channel_through_notification_jobs(database):
    with snmp_receiver(community="c0mmunity-s3cret") as receiver:
        channel = insert_channel(
            database,
            "snmp",
            {"host": "127.0.0.1", "port": receiver.port, "version": "2c", "community": "c0mmunity-s3cret"},
        )
        job_id = insert_notification_job(database, channel, alert_id=4242)

        drain(database)

        (trap,) = receiver.wait_for_traps(1)
    prefix = "1.3.6.1.4.1.99999"
    assert trap.version == "2c" and trap.trap_oid == f"{prefix}.0.1"
    assert trap.varbinds[f"{prefix}.1.1.0"] == "4242"
    assert trap.varbinds[f"{prefix}.1.2.0"] == "sensor-17"
    assert trap.varbinds[f"{prefix}.1.3.0"] == "tenant-a"
    assert trap.varbinds[f"{prefix}.1.4.0"] == 4
    assert trap.varbinds[f"{prefix}.1.6.0"] == "Temperature 92.5C above 85C"
    assert trap.varbinds[f"{prefix}.1.7.0"] == "2026-11-29T03:00:00Z"
    assert job(database, "notification_jobs", job_id)["status"] == "COMPLETED"


def test_snmp_v3_integration_through_delivery_jobs(database):
    engine_id = "80001f8804707573652d74657374"
    user = UsmUser("pulse-sha-aes", "SHA", "auth-pa55phrase", "AES", "priv-pa55phrase")
    with snmp_receiver(community=None, users=[user], sender_engine_id=bytes.fromhex(engine_id)) as receiver:
        integration = insert_integration(
            database,
            "snmp",
            snmp_host="127.0.0.1",
            snmp_port=receiver.port,
            snmp_oid_prefix="1.3.6.1.4.1.55555",
            snmp_config={
                "version": "3",
                "username": "pulse-sha-aes",
                "auth_protocol": "SHA",
                "auth_password": "auth-pa55phrase",
                "priv_protocol": "AES",
                "priv_password": "priv-pa55phrase",
                "engine_id": engine_id,
            },
        )
        job_id = insert_delivery_job(database, integration, event="CLOSED")

        drain(database)

        (trap,) = receiver.wait_for_traps(1)
    assert trap.version == "3" and trap.security_level == "authPriv"
    assert trap.trap_oid == "1.3.6.1.4.1.55555.0.2"  # cleared
    assert trap.varbinds["1.3.6.1.4.1.55555.1.6.0"] == "Device offline for 10 minutes"
    assert trap.varbinds["1.3.6.1.4.1.55555.1.10.0"] == "CLOSED"
    assert job(database, "delivery_jobs", job_id)["status"] == "COMPLETED"
    assert [a["ok"] for a in attempt_rows(database, job_id)] == [True]


def test_unresolvable_snmp_host_retries_then_fails_readably(database, monkeypatch):
    import socket

    def no_such_host(*_args: object, **_kwargs: object) -> object:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_such_host)
    channel = insert_channel(database, "snmp", {"host": "nms.unknown.test", "community": "c0mmunity-s3cret"})
    job_id = insert_notification_job(database, channel)

    drain(database, worker={"max_attempts": 2})

    row = job(database, "notification_jobs", job_id)
    assert row["status"] == "FAILED" and row["attempts"] == 2
    assert "nms.unknown.test" in row["last_error"]
    assert "c0mmunity-s3cret" not in row["last_error"]
