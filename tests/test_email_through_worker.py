"""Email through the worker: the default sender ([smtp] from_address/from_name) with both config
spellings, and hostile alert values delivered at once as valid mail."""

from __future__ import annotations

import pytest

from channels.email import DefaultSender, default_sender_address, parse_email_config
from channels.errors import InvalidChannelConfig
from delivery_worker.config import ConfigError, load_settings
from tests.rows import (
    attempt_rows,
    drain,
    insert_channel,
    insert_delivery_job,
    insert_integration,
    insert_notification_job,
    job,
    log_rows,
)
from tests.servers.smtp import HOST, smtp_config, smtp_server
from tests.support import SAMPLE_PAYLOAD

SMTP_PASSWORD = "ui-spelling-pa55"
NO_SENDER = {"smtp_host": "mail.example.com", "smtp_tls": False}
RECIPIENTS = {"to": ["oncall@acme.test"]}


@pytest.mark.parametrize(
    ("host", "sender"),
    [
        ("worker-1.prod.example.com", "delivery-worker@worker-1.prod.example.com"),
        ("Worker-1.Example.COM.", "delivery-worker@worker-1.example.com"),
        ("localhost", "delivery-worker@localhost"),
        ("", "delivery-worker@localhost"),
        ("bad host_name", "delivery-worker@localhost"),
        ("ünï.example", "delivery-worker@localhost"),
    ],
)
def test_default_sender_address_from_the_host_name(host: str, sender: str) -> None:
    assert default_sender_address(host) == sender


def test_a_config_without_sender_takes_the_default_and_its_own_wins() -> None:
    default = DefaultSender("noc@pulse.example", "Pulse NOC")
    raw = {"smtp": NO_SENDER, "recipients": RECIPIENTS}
    config = parse_email_config(raw, default)
    assert (config.from_address, config.from_name) == ("noc@pulse.example", "Pulse NOC")
    own = {"smtp": {**NO_SENDER, "from_address": "a@acme.test"}, "recipients": RECIPIENTS}
    assert parse_email_config(own, default).from_address == "a@acme.test"
    assert parse_email_config(own, default).from_name == "Pulse NOC"  # the name fills in on its own
    named = {"smtp": {**NO_SENDER, "from_name": "Acme"}, "recipients": RECIPIENTS}
    assert parse_email_config(named, default).from_name == "Acme"
    assert parse_email_config(raw, DefaultSender("noc@pulse.example")).from_name is None
    with pytest.raises(InvalidChannelConfig, match="config.smtp.from_address is missing"):
        parse_email_config(raw)  # without a default (direct callers), the address is required


def test_smtp_sender_settings_are_validated_at_load() -> None:
    settings = load_settings("/dev/null", environ={})
    assert (settings.smtp.from_address, settings.smtp.from_name) == ("", "Pulse Alerts")
    custom = load_settings(
        "/dev/null",
        environ={
            "DELIVERY_WORKER_SMTP_FROM_ADDRESS": "Alerts <alerts@pulse.example>",
            "DELIVERY_WORKER_SMTP_FROM_NAME": "",
        },
    )
    assert (custom.smtp.from_address, custom.smtp.from_name) == ("Alerts <alerts@pulse.example>", "")
    for key, value, message in [
        ("FROM_ADDRESS", "not-an-address", "[smtp] from_address: is not a single email address"),
        ("FROM_ADDRESS", "a@b.test, c@d.test", "[smtp] from_address: is not a single email address"),
        ("FROM_NAME", "Pulse\u2028Alerts", "[smtp] from_name: contains a line break or control character"),
    ]:
        with pytest.raises(ConfigError) as caught:
            load_settings("/dev/null", environ={f"DELIVERY_WORKER_SMTP_{key}": value})
        assert str(caught.value).startswith(message)


def test_ui_spelled_channel_without_sender_is_delivered(database: str) -> None:
    with smtp_server(users={"ui-user": SMTP_PASSWORD}, auth_require_tls=False) as server:
        ui_smtp = {
            "host": HOST,
            "port": server.port,
            "username": "ui-user",
            "password": SMTP_PASSWORD,
            "use_tls": False,
        }
        channel = insert_channel(database, "email", {"smtp": ui_smtp, "recipients": RECIPIENTS})
        job_id = insert_notification_job(database, channel)

        drain(database, smtp={"from_address": "noc@pulse.example", "from_name": "Pulse NOC"})

        (received,) = server.messages
    assert received.login == "ui-user"
    assert received.mail_from == "noc@pulse.example"
    assert received.strict_message()["From"] == "Pulse NOC <noc@pulse.example>"
    assert job(database, "notification_jobs", job_id)["status"] == "COMPLETED"
    assert [r["success"] for r in log_rows(database, job_id)] == [True]


def test_integration_without_from_address_is_delivered_from_the_host_default(database: str) -> None:
    with smtp_server() as server:
        integration = insert_integration(
            database,
            "email",
            email_config={"smtp_host": HOST, "smtp_port": server.port, "smtp_tls": False},
            email_recipients=RECIPIENTS,
        )
        job_id = insert_delivery_job(database, integration)

        drain(database)  # [smtp] defaults: from_address empty, from_name "Pulse Alerts"

        (received,) = server.messages
    local_part, _, domain = received.mail_from.partition("@")
    assert local_part == "delivery-worker" and domain
    from_header = received.strict_message()["From"]
    assert from_header.addresses[0].display_name == "Pulse Alerts"
    assert from_header.addresses[0].addr_spec == received.mail_from
    assert job(database, "delivery_jobs", job_id)["status"] == "COMPLETED"
    assert [a["ok"] for a in attempt_rows(database, job_id)] == [True]


def test_hostile_subject_values_are_delivered_at_once_as_valid_mail(database: str) -> None:
    hostile = 'Überhitzung\u2028line\x0bvt\x0cff\x1cfs\x85nel\u2029"q" \\ <x> ' + "温度" * 300
    with smtp_server() as server:
        channel = insert_channel(
            database,
            "email",
            {
                "smtp": smtp_config(server.port),
                "recipients": RECIPIENTS,
                "template": {"subject_template": "[{severity}] {message}", "body_template": "{message}"},
            },
        )
        job_id = insert_notification_job(database, channel, {**SAMPLE_PAYLOAD, "message": hostile})

        drain(database, worker={"max_attempts": 1})

        (received,) = server.messages
    row = job(database, "notification_jobs", job_id)
    assert (row["status"], row["last_error"]) == ("COMPLETED", None)
    assert [r["success"] for r in log_rows(database, job_id)] == [True]  # first attempt, no retry
    message = received.strict_message()
    assert message["Subject"].startswith('[CRITICAL] Überhitzung line vt ff fs nel "q" \\ <x> 温度')
    assert message["Subject"].endswith("…") and len(message["Subject"]) == 200
    assert "温度" * 300 in message.get_content()
