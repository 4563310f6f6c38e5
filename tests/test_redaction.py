"""Redaction holds: secrets found in URLs and headers, masked in every form, before any cut."""

from __future__ import annotations

import dataclasses
import json
import threading
from urllib.parse import quote, quote_plus

import pytest
import responses
import structlog

from channels.errors import TransientError
from channels.http import EXCERPT_CHARS, HttpClient
from channels.registry import build_registry
from channels.secrets import MASK, header_secrets, redact, url_secrets
from channels.slack import SlackChannel
from channels.teams import TeamsChannel
from channels.webhook import WebhookChannel
from delivery_worker.config import redact_dsn
from delivery_worker.delivery import Deliverer
from delivery_worker.destinations import DestinationGuard
from delivery_worker.jobs import Destination, Job, Table
from delivery_worker.redaction import LazySecrets, secret_values
from delivery_worker.retry import RetryPolicy
from tests.support import SAMPLE_PAYLOAD, make_delivery, make_settings

SLACK = "https://hooks.slack.com/services/T0AAAA1/B0BBBB2/slackTokenXyz123"
TEAMS = (
    "https://prod-12.westus.logic.azure.com:443/workflows/0a1b2c3d4e5f/triggers/manual/paths/invoke"
    "?api-version=2016-06-01&sp=%2Ftriggers%2Fmanual%2Frun&sv=1.0&sig=teamsSigQ9w8e7R6t5Y4"
)


def test_url_secrets_name_each_credential_part():
    slack = url_secrets(SLACK)
    assert {"slackTokenXyz123", "T0AAAA1", "B0BBBB2", "/services/T0AAAA1/B0BBBB2/slackTokenXyz123"} <= slack
    assert "services" not in slack and "hooks.slack.com" not in slack
    teams = url_secrets(TEAMS)
    assert {"teamsSigQ9w8e7R6t5Y4", "0a1b2c3d4e5f"} <= teams
    assert "2016-06-01" not in teams and "manual" not in teams
    assert {"tok3n-in-query", "us3r", "pa55-word"} <= url_secrets(
        "https://us3r:pa55-word@h.test/x?token=tok3n-in-query"
    )


def test_header_secrets_include_cookie_and_authorization_parts():
    found = header_secrets(
        {
            "Authorization": "Basic dXNlcm5hbWU6cGFzc3dvcmQx",
            "Cookie": "session=abcd1234; theme=dark-mode",
            "X-Api-Key": "k-123456",
            "Content-Type": "application/json",
        }
    )
    assert {"dXNlcm5hbWU6cGFzc3dvcmQx", "password1", "abcd1234", "session=abcd1234", "k-123456"} <= found
    assert "application/json" not in found


@pytest.mark.parametrize(
    "form",
    [
        "slackTokenXyz123",
        quote("/services/T0AAAA1/B0BBBB2/slackTokenXyz123", safe=""),
        json.dumps("/services/T0AAAA1/B0BBBB2/slackTokenXyz123").replace("/", "\\/"),
        "%2fservices%2fT0AAAA1%2fB0BBBB2%2fslackTokenXyz123",
    ],
)
def test_redact_masks_encoded_forms(form):
    text = f"receiver said: no such hook {form} here"
    redacted = redact(text, url_secrets(SLACK))
    assert "slackTokenXyz123" not in redacted and "T0AAAA1" not in redacted, redacted
    assert MASK in redacted


def test_redact_masks_url_encoded_and_json_escaped_values():
    secret = 'p@ss w/rd"\\+'
    for form in (secret, quote(secret, safe=""), quote_plus(secret), json.dumps(secret)[1:-1]):
        assert redact(f"x {form} y", {secret}) == f"x {MASK} y"


def test_raw_config_scan_finds_url_and_header_secrets():
    found = secret_values(
        {
            "url": "https://h.test/hooks/abc-DEF-123?key=qwerty99",
            "headers": {"X-Token": "hdr-val-1"},
            "n": "plain",
        }
    )
    assert {"abc-DEF-123", "qwerty99", "hdr-val-1"} <= found
    assert "plain" not in found


@responses.activate
def test_an_excerpt_is_redacted_before_it_is_cut():
    url = "https://h.test/hooks/abcdefghij-secret-path-0123456789"
    secret_part = "abcdefghij-secret-path-0123456789"
    # The secret straddles the excerpt's cut: characters 180..213.
    responses.post(url, status=500, body="e" * (EXCERPT_CHARS - 20) + secret_part + "tail")
    http = HttpClient(connect_timeout=1, read_timeout=1, user_agent="t", pool_size=1)
    channel = WebhookChannel(type("Ctx", (), {"http": http})())  # type: ignore[arg-type]
    with pytest.raises(TransientError) as caught:
        channel.send(channel.parse_config({"url": url}), make_delivery())
    message = str(caught.value)
    for size in range(6, len(secret_part) + 1):  # no prefix of it long enough to mean anything
        assert secret_part[:size] not in message, message
    assert message.startswith("webhook returned HTTP 500: eee")


def test_slack_and_teams_declare_their_url_credentials():
    settings = make_settings()
    http = HttpClient(connect_timeout=1, read_timeout=1, user_agent="t", pool_size=1)
    context = type("Ctx", (), {"http": http, "settings": settings})()
    assert "slackTokenXyz123" in SlackChannel(context).parse_config({"webhook_url": SLACK}).secrets()  # type: ignore[arg-type]
    assert "teamsSigQ9w8e7R6t5Y4" in TeamsChannel(context).parse_config({"webhook_url": TEAMS}).secrets()  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("dsn", "password"),
    [
        ("postgresql://pulse:Xq9 Yv8 Zw7@db.test:5432/pulse", "Xq9 Yv8 Zw7"),
        ("postgresql://pulse:Xq9@Yv8/Zw7:Wu6@db.test/pulse", "Xq9 Yv8 Zw7 Wu6"),
        ("host=db.test user=pulse password='Xq9 Yv8\\' Zw7' dbname=pulse", "Xq9 Yv8 Zw7"),
        ('host=db.test password = "Xq9 Yv8" dbname=pulse', "Xq9 Yv8"),
        ("postgresql://pulse@db.test/pulse?password=Xq9-Yv8&sslmode=require", "Xq9-Yv8"),
    ],
)
def test_redact_dsn_masks_any_password(dsn, password):
    masked = redact_dsn(dsn)
    for piece in password.split():
        assert piece not in masked
    assert "***" in masked and "db.test" in masked


def test_an_internal_error_is_logged_without_traceback_or_secret(monkeypatch):
    secret_path = "/hooks/int3rnal-err0r-path"
    registry = build_registry(make_settings())
    channel = registry.get("webhook")

    def broken_send(config: object, delivery: object) -> None:
        raise ValueError(f"Invalid header value b' hdr-s3cret-value' for {secret_path}")

    monkeypatch.setattr(channel, "send", broken_send)
    destination = Destination(
        "7",
        "tenant-a",
        "webhook",
        True,
        {"url": f"https://h.test{secret_path}", "headers": {"X-K": "hdr-s3cret-value"}},
    )
    job = Job(Table.NOTIFICATION_JOBS, 1, "tenant-a", 1001, "OPEN", 0, dict(SAMPLE_PAYLOAD), destination, 7)
    policy = dataclasses.replace(RetryPolicy.from_settings(make_settings().worker), quick_retries=0)
    deliverer = Deliverer(
        registry,
        policy,
        threading.Event(),
        DestinationGuard(make_settings().rate_limits, make_settings().circuit_breaker),
    )
    with structlog.testing.capture_logs() as logs:
        outcome = deliverer.run(job)
    registry.close()
    text = repr(logs) + str(outcome.error)
    assert "hdr-s3cret-value" not in text and "int3rnal-err0r-path" not in text, text
    internal = [line for line in logs if line["event"] == "job.internal_error"]
    assert internal and "exc_info" not in internal[0] and internal[0]["error"].startswith("ValueError: ")
    assert str(outcome.error).startswith("internal error: ValueError: Invalid header value")


def test_lazy_secrets_read_every_source_once_and_mask_like_the_set():
    calls: list[str] = []
    secrets = LazySecrets()
    secrets.add(lambda: calls.append("raw") or secret_values({"url": SLACK}))
    assert calls == []  # nothing is worked out until a text needs masking
    secrets.add(lambda: calls.append("parsed") or {"parsed-secret-value"})
    text = f"POST {SLACK} said parsed-secret-value"
    assert redact(text, secrets) == f"POST {MASK} said {MASK}"
    assert redact(text, secrets) == redact(text, secret_values({"url": SLACK}) | {"parsed-secret-value"})
    assert calls == ["raw", "parsed"]
