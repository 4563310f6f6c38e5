"""Payload shapes and error mapping of the HTTP channels (unit tests with `responses`)."""

from __future__ import annotations

import json

import pytest
import requests
import responses

from channels.context import ChannelContext
from channels.errors import InvalidChannelConfig, PermanentError, TransientError
from channels.http import HttpClient, parse_retry_after
from channels.pagerduty import PagerDutyChannel
from channels.slack import SlackChannel
from channels.teams import TeamsChannel
from channels.webhook import WebhookChannel
from tests.support import make_delivery, make_settings

URL = "https://hooks.example.test/services/T000/B000/SECRETPATH"


@pytest.fixture
def context() -> ChannelContext:
    settings = make_settings()
    http = HttpClient(connect_timeout=1, read_timeout=1, user_agent="test", pool_size=2)
    return ChannelContext(settings=settings, http=http)


@pytest.mark.parametrize(
    ("status", "error", "http_status"),
    [
        (200, None, 200),
        (202, None, 202),
        (400, PermanentError, 400),
        (401, PermanentError, 401),
        (404, PermanentError, 404),
        (408, TransientError, 408),
        (410, PermanentError, 410),
        (429, TransientError, 429),
        (500, TransientError, 500),
        (502, TransientError, 502),
        (503, TransientError, 503),
        (301, PermanentError, 301),
    ],
)
@responses.activate
def test_status_codes_map_to_error_classes(context, status, error, http_status):
    responses.post(URL, status=status, body="nope", headers={"Location": "https://elsewhere.test/"})
    channel = SlackChannel(context)
    config = channel.parse_config({"webhook_url": URL})
    if error is None:
        assert channel.send(config, make_delivery()).http_status == http_status
        return
    with pytest.raises(error) as caught:
        channel.send(config, make_delivery())
    assert caught.value.http_status == http_status
    assert "SECRETPATH" not in str(caught.value)
    assert len(responses.calls) == 1  # never followed a redirect


@responses.activate
def test_429_retry_after_is_reported(context):
    responses.post(URL, status=429, headers={"Retry-After": "17"}, body="slow down")
    channel = TeamsChannel(context)
    with pytest.raises(TransientError) as caught:
        channel.send(channel.parse_config({"webhook_url": URL}), make_delivery())
    assert caught.value.retry_after == 17
    assert str(caught.value) == "Teams returned HTTP 429: slow down"


def test_retry_after_http_date():
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0) == pytest.approx(10)
    assert parse_retry_after("soon") is None


@responses.activate
def test_long_error_body_is_excerpted(context):
    responses.post(URL, status=500, body="x" * 5000)
    channel = WebhookChannel(context)
    with pytest.raises(TransientError) as caught:
        channel.send(channel.parse_config({"url": URL}), make_delivery())
    assert len(str(caught.value)) < 260


@responses.activate
def test_connection_errors_and_timeouts_are_transient_and_hide_the_path(context):
    channel = WebhookChannel(context)
    config = channel.parse_config({"url": URL})
    responses.post(
        URL, body=requests.ConnectionError("HTTPSConnectionPool ... /services/T000/B000/SECRETPATH")
    )
    with pytest.raises(TransientError) as refused:
        channel.send(config, make_delivery())
    assert str(refused.value).startswith("cannot connect to hooks.example.test")
    assert "SECRETPATH" not in str(refused.value)
    responses.replace(responses.POST, URL, body=requests.ReadTimeout("read timed out"))
    with pytest.raises(
        TransientError, match=r"^read timeout after \d+\.\d s waiting for hooks.example.test$"
    ):
        channel.send(config, make_delivery())
    responses.replace(responses.POST, URL, body=requests.ConnectTimeout("connect timed out"))
    with pytest.raises(
        TransientError, match=r"^connect timeout after \d+\.\d s connecting to hooks.example.test$"
    ):
        channel.send(config, make_delivery())


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({}, "config.url is missing"),
        ({"url": 42}, "config.url must be a string, got int"),
        ({"url": "not a url"}, "config.url must be an absolute http(s) URL"),
        ({"url": "https://h.test/x", "method": "DELETE"}, "config.method must be one of POST, PUT, PATCH"),
        ({"url": "https://h.test/x", "headers": ["a"]}, "config.headers must be an object"),
        (
            {"url": "https://h.test/x", "headers": {"X": "a\r\nInjected: 1"}},
            "config.headers.X contains a line break",
        ),
    ],
)
def test_webhook_config_errors_name_the_key(context, config, message):
    with pytest.raises(InvalidChannelConfig) as caught:
        WebhookChannel(context).parse_config(config)
    assert message in str(caught.value)


def test_non_object_config_is_rejected(context):
    with pytest.raises(InvalidChannelConfig, match="config must be a JSON object, got list"):
        SlackChannel(context).parse_config(["x"])  # type: ignore[arg-type]


@responses.activate
def test_webhook_body_template_renders_placeholders(context):
    responses.post(URL, status=200)
    channel = WebhookChannel(context)
    config = channel.parse_config(
        {"url": URL, "body_template": {"text": "{severity} on {device_id}: {message}", "n": 1, "x": "{nope}"}}
    )
    channel.send(config, make_delivery())
    body = json.loads(responses.calls[0].request.body)
    assert body == {"text": "CRITICAL on sensor-17: Temperature 92.5C above 85C", "n": 1, "x": ""}


@pytest.mark.parametrize(
    ("severity", "expected"),
    [
        (5, "critical"),
        (4, "critical"),
        (3, "error"),
        (2, "warning"),
        (1, "info"),
        (0, "info"),
        ("4", "critical"),
        (None, "info"),
    ],
)
@responses.activate
def test_pagerduty_severity_mapping(context, severity, expected):
    responses.post("https://events.pagerduty.com/v2/enqueue", status=202)
    channel = PagerDutyChannel(context)
    channel.send(
        channel.parse_config({"integration_key": "k" * 32}),
        make_delivery({"severity": severity, "alert_id": 5}),
    )
    event = json.loads(responses.calls[0].request.body)
    assert event["payload"]["severity"] == expected
    assert event["dedup_key"] == "pulse-alert-5"


@pytest.mark.parametrize(
    ("event", "action"), [("OPEN", "trigger"), ("ACKNOWLEDGED", "acknowledge"), ("CLOSED", "resolve")]
)
@responses.activate
def test_pagerduty_event_actions_share_the_dedup_key(context, event, action):
    responses.post("https://events.pagerduty.com/v2/enqueue", status=202)
    channel = PagerDutyChannel(context)
    channel.send(channel.parse_config({"integration_key": "k" * 32}), make_delivery(event=event))
    body = json.loads(responses.calls[0].request.body)
    assert body["event_action"] == action
    assert body["dedup_key"] == "pulse-alert-1001"
    assert ("payload" in body) is (action == "trigger")


@responses.activate
def test_slack_resolved_event(context):
    responses.post(URL, status=200)
    channel = SlackChannel(context)
    channel.send(channel.parse_config({"webhook_url": URL}), make_delivery(event="CLOSED"))
    message = json.loads(responses.calls[0].request.body)
    assert message["text"].startswith("✅ Resolved")
    assert message["attachments"][0]["color"] == "#2eb67d"
