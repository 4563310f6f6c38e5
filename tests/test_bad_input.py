"""Bad input ends as a FAILED job with a readable error, and the worker keeps going."""

from __future__ import annotations

import json

from tests.rows import drain, insert_channel, insert_notification_job, job
from tests.servers.http import Reply


def test_every_kind_of_bad_input_fails_readably_and_the_good_job_still_goes_out(database, http_server):
    http_server.script("/nul", Reply(400, b"bad\x00byte in reply"))
    cases = {
        "non-object config": (
            "webhook",
            ["http://127.0.0.1/x"],
            None,
            "config must be a JSON object, got list",
        ),
        "port as text": (
            "email",
            {
                "smtp": {"smtp_host": "127.0.0.1", "smtp_port": "abc", "from_address": "a@b.test"},
                "recipients": {"to": ["x@y.test"]},
            },
            None,
            "config.smtp.smtp_port must be an integer",
        ),
        "missing key": ("pagerduty", {}, None, "config.integration_key is missing"),
        "invalid URL": ("webhook", {"url": "http://"}, None, "config.url must be an absolute http(s) URL"),
        "unknown type": ("sms", {"to": "+100"}, None, "unknown channel type 'sms'"),
        "oversized payload": (
            "webhook",
            {"url": http_server.url("/big")},
            {"message": "x" * (600 * 1024)},
            "payload larger than 512 KB",
        ),
        "string payload that is not JSON": (
            "webhook",
            {"url": http_server.url("/str")},
            "{oops",
            "payload is a string",
        ),
        "NUL in the reply": (
            "webhook",
            {"url": http_server.url("/nul")},
            None,
            "webhook returned HTTP 400: bad byte in reply",  # controls flattened in the excerpt
        ),
        "mqtt bad qos": ("mqtt", {"broker_url": "mqtt://127.0.0.1:1883", "qos": 7}, None, "config.qos"),
        "snmp bad version": ("snmp", {"host": "127.0.0.1", "version": "9"}, None, "config.version"),
    }
    ids = {}
    for name, (kind, config, payload, _) in cases.items():
        channel = insert_channel(database, kind, config)
        ids[name] = insert_notification_job(database, channel, payload)
    good = insert_notification_job(
        database, insert_channel(database, "webhook", {"url": http_server.url("/ok")})
    )

    drain(database)

    for name, (_, _, _, expected) in cases.items():
        row = job(database, "notification_jobs", ids[name])
        assert row["status"] == "FAILED", name
        assert expected in row["last_error"], (name, row["last_error"])
        assert row["attempts"] == 1, name
    assert job(database, "notification_jobs", good)["status"] == "COMPLETED"
    assert http_server.received("/big") == [] and http_server.received("/str") == []
    assert json.loads(http_server.received("/ok")[0].body)["device_id"] == "sensor-17"


def test_cross_tenant_job_fails_and_its_endpoint_receives_nothing(database, http_server):
    theirs = insert_channel(database, "webhook", {"url": http_server.url("/tenant-b")}, tenant_id="tenant-b")
    job_id = insert_notification_job(database, theirs, tenant_id="tenant-a")

    drain(database)

    row = job(database, "notification_jobs", job_id)
    assert row["status"] == "FAILED"
    assert row["last_error"] == "Channel belongs to another tenant"
    assert http_server.received() == []
