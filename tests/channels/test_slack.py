"""Slack: control characters in alert values are escaped, and texts fit Block Kit's limits."""

from __future__ import annotations

import json
from typing import Any

import pytest

from channels.slack import build_message, escape
from tests.rows import drain, insert_channel, insert_notification_job, job
from tests.support import SAMPLE_PAYLOAD, make_delivery


def mrkdwn_texts(message: dict[str, Any]) -> list[str]:
    """Every string Slack parses as mrkdwn: the top-level text and each mrkdwn text object."""
    found = [message["text"]]

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if node.get("type") == "mrkdwn":
                found.append(node["text"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(message["attachments"])
    return found


def test_escape_replaces_only_the_three_control_characters():
    assert escape("a & b < c > d 'q' \"x\" *y*") == "a &amp; b &lt; c &gt; d 'q' \"x\" *y*"


@pytest.mark.parametrize("limit", [5, 6, 7, 8, 9, 10])
def test_escape_never_cuts_inside_an_entity(limit):
    cut = escape("ab&&&&&&", limit)
    assert len(cut) <= limit and cut.endswith("…")
    assert cut[:-1].replace("&amp;", "") in ("a", "ab")


def test_alert_values_are_escaped_everywhere_slack_parses_mrkdwn():
    payload = dict(
        SAMPLE_PAYLOAD,
        message="Pressure <!channel> > 5 bar & rising <https://evil.test|click>",
        device_id="pump<1>&2",
        alert_type="A&B",
        site_id="<site>",
    )
    message = build_message(make_delivery(payload).alert)

    assert message["text"] == (
        "🔴 CRITICAL: Pressure &lt;!channel&gt; &gt; 5 bar &amp; rising &lt;https://evil.test|click&gt;"
    )
    # In the blocks alert values are plain_text, which Slack shows literally: no mrkdwn object at all.
    assert mrkdwn_texts(message) == [message["text"]]
    rendered = json.dumps(message["attachments"], ensure_ascii=False)
    assert "Device: pump<1>&2" in rendered and "Type: A&B" in rendered and "Site: <site>" in rendered
    for text in mrkdwn_texts(message):
        literal = text.replace("&amp;", "").replace("&lt;", "").replace("&gt;", "")
        assert not {"&", "<", ">"} & set(literal), text


def test_long_message_fits_block_limits():
    message = build_message(make_delivery(dict(SAMPLE_PAYLOAD, message="<" * 10_000)).alert)
    header, section, fields, context = message["attachments"][0]["blocks"]
    assert len(header["text"]["text"]) <= 150
    assert len(section["text"]["text"]) <= 3000
    assert all(len(field["text"]) <= 2000 for field in fields["fields"])
    assert len(context["elements"][0]["text"]) <= 2000
    assert len(message["text"]) <= 4000


def test_context_names_alert_event_and_time_even_without_time():
    message = build_message(make_delivery(dict(SAMPLE_PAYLOAD, triggered_at=None), event="CLOSED").alert)
    context = message["attachments"][0]["blocks"][-1]["elements"][0]["text"]
    assert context == "Alert 1001 · Resolved"
    assert message["text"].startswith("✅ Resolved (critical): ")


def test_escaped_message_through_the_worker(database, http_server):
    channel_id = insert_channel(database, "slack", {"webhook_url": http_server.url("/services/T0/B0/x")})
    job_id = insert_notification_job(
        database, channel_id, dict(SAMPLE_PAYLOAD, message="temp > 85 & <rising>")
    )

    drain(database)

    (request,) = http_server.received("/services/T0/B0/x")
    message = json.loads(request.body)
    assert message["text"] == "🔴 CRITICAL: temp &gt; 85 &amp; &lt;rising&gt;"
    assert message["attachments"][0]["fallback"] == message["text"]
    assert job(database, "notification_jobs", job_id)["status"] == "COMPLETED"
