"""Webhook signatures: X-Signature-SHA256, Standard Webhooks (checked by the `standardwebhooks`
library's own verifier), both, or none; stable webhook-id and Idempotency-Key across retries."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Iterator

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from channels.errors import InvalidChannelConfig
from channels.registry import ChannelRegistry, build_registry
from channels.webhook import WebhookChannel, webhook_id
from tests.rows import drain, insert_channel, insert_notification_job, job
from tests.servers.http import RecordingServer, Reply
from tests.support import SAMPLE_PAYLOAD, make_delivery, make_settings

WHSEC = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()
STANDARD_HEADERS = ("webhook-id", "webhook-timestamp", "webhook-signature")


@pytest.fixture
def registry() -> Iterator[ChannelRegistry]:
    registry = build_registry(make_settings())
    yield registry
    registry.close()


def send(registry: ChannelRegistry, server: RecordingServer, config: dict[str, object], **kwargs: object):
    channel = WebhookChannel(registry.context, **kwargs)  # type: ignore[arg-type]
    channel.send(channel.parse_config({"url": server.url("/hook"), **config}), make_delivery())
    return server.received("/hook")[-1]


def hex_signature(secret: str, body: bytes) -> str:
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def test_standard_signature_verifies_with_the_reference_library(registry, http_server):
    request = send(registry, http_server, {"secret": WHSEC, "signature": "standard"})

    assert Webhook(WHSEC).verify(request.body, request.headers) == SAMPLE_PAYLOAD
    assert request.header("webhook-id") == "msg_notification_jobs_1"
    assert abs(int(request.header("webhook-timestamp")) - time.time()) < 60
    assert request.header("webhook-signature").startswith("v1,")
    assert request.header("X-Signature-SHA256") is None
    assert request.header("Idempotency-Key") == "notification_jobs:1"


def test_standard_signature_fails_verification_for_another_secret_or_body(registry, http_server):
    request = send(registry, http_server, {"secret": WHSEC, "signature": "standard"})
    other = "whsec_" + base64.b64encode(b"another secret of enough length!").decode()
    with pytest.raises(WebhookVerificationError):
        Webhook(other).verify(request.body, request.headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(WHSEC).verify(request.body.replace(b"sensor-17", b"sensor-18"), request.headers)


def test_secret_without_whsec_prefix_is_used_as_raw_bytes(registry, http_server):
    secret = "plain-shared-secret"
    request = send(registry, http_server, {"secret": secret, "signature": "standard"})

    Webhook(secret.encode()).verify(request.body, request.headers)
    Webhook("whsec_" + base64.b64encode(secret.encode()).decode()).verify(request.body, request.headers)


def test_both_sends_both_signatures(registry, http_server):
    request = send(registry, http_server, {"secret": WHSEC, "signature": "both"})

    assert request.header("X-Signature-SHA256") == hex_signature(WHSEC, request.body)
    Webhook(WHSEC).verify(request.body, request.headers)


def test_none_sends_no_signature_even_with_a_secret(registry, http_server):
    request = send(registry, http_server, {"secret": WHSEC, "signature": "none"})

    assert request.header("X-Signature-SHA256") is None
    assert all(request.header(name) is None for name in STANDARD_HEADERS)
    assert request.header("Idempotency-Key") == "notification_jobs:1"


@pytest.mark.parametrize("config", [{}, {"signature": "hmac-sha256"}, {"signature": "HMAC-SHA256"}])
def test_default_is_the_hex_body_signature(registry, http_server, config):
    request = send(registry, http_server, {"secret": "s3cret", **config})

    assert request.header("X-Signature-SHA256") == hex_signature("s3cret", request.body)
    assert all(request.header(name) is None for name in STANDARD_HEADERS)


def test_default_without_secret_signs_nothing(registry, http_server):
    request = send(registry, http_server, {})
    assert request.header("X-Signature-SHA256") is None
    assert all(request.header(name) is None for name in STANDARD_HEADERS)


def test_webhook_id_is_stable_and_timestamp_is_the_send_time(registry, http_server):
    clock = iter([1_767_225_600.9, 1_767_225_660.2])
    first = send(registry, http_server, {"secret": WHSEC, "signature": "standard"}, clock=lambda: next(clock))
    channel = WebhookChannel(registry.context, clock=lambda: next(clock))
    config = channel.parse_config({"url": http_server.url("/hook"), "secret": WHSEC, "signature": "standard"})
    channel.send(config, make_delivery())
    second = http_server.received("/hook")[-1]

    assert first.header("webhook-id") == second.header("webhook-id") == "msg_notification_jobs_1"
    assert (first.header("webhook-timestamp"), second.header("webhook-timestamp")) == (
        "1767225600",
        "1767225660",
    )
    assert first.header("webhook-signature") != second.header("webhook-signature")


def test_webhook_id_is_header_safe_and_distinct_per_job():
    assert webhook_id("notification_jobs:42") == "msg_notification_jobs_42"
    assert webhook_id("delivery_jobs:42") != webhook_id("notification_jobs:42")
    assert webhook_id("a b.c\r\n") == "msg_a_b_c__"


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (
            {"signature": "md5"},
            "config.signature must be one of hmac-sha256, standard, both, none, got 'md5'",
        ),
        ({"signature": 1}, "config.signature must be a string, got int"),
        ({"signature": "standard"}, "config.secret is missing (config.signature is standard)"),
        ({"signature": "both", "secret": ""}, "config.secret is missing (config.signature is both)"),
        (
            {"signature": "standard", "secret": "whsec_not*base64!"},
            "config.secret starts with whsec_ but the rest is not base64",
        ),
        ({"signature": "standard", "secret": "whsec_"}, "config.secret is an empty whsec_ secret"),
    ],
)
def test_signature_config_errors_name_the_key(registry, config, message):
    with pytest.raises(InvalidChannelConfig) as caught:
        WebhookChannel(registry.context).parse_config({"url": "https://h.test/x", **config})
    assert str(caught.value) == message


def test_whsec_secret_and_its_key_part_are_declared_secret(registry):
    config = WebhookChannel(registry.context).parse_config(
        {"url": "https://h.test/x", "secret": WHSEC, "signature": "standard"}
    )
    assert {WHSEC, WHSEC.removeprefix("whsec_")} <= set(config.secrets())


def test_retry_through_the_worker_keeps_webhook_id_and_idempotency_key(database, http_server):
    http_server.script("/hook", Reply(500, b"try again"), Reply(200))
    channel_id = insert_channel(
        database, "webhook", {"url": http_server.url("/hook"), "secret": WHSEC, "signature": "both"}
    )
    job_id = insert_notification_job(database, channel_id, dict(SAMPLE_PAYLOAD))

    drain(database)

    first, second = http_server.received("/hook")
    assert first.body == second.body and json.loads(first.body) == SAMPLE_PAYLOAD
    key = f"notification_jobs:{job_id}"
    assert first.header("Idempotency-Key") == second.header("Idempotency-Key") == key
    assert first.header("webhook-id") == second.header("webhook-id") == f"msg_notification_jobs_{job_id}"
    for request in (first, second):
        assert Webhook(WHSEC).verify(request.body, request.headers) == SAMPLE_PAYLOAD
        assert request.header("X-Signature-SHA256") == hex_signature(WHSEC, request.body)
    row = job(database, "notification_jobs", job_id)
    assert row["status"] == "COMPLETED" and row["attempts"] == 1
