"""Teams: both card formats checked against the required fields of their documented schemas.

The checks below follow the published schemas rather than our own builder: an Adaptive Card
(adaptivecards.io/schemas/adaptive-card.json) requires ``type`` = AdaptiveCard and ``version``; each
body element requires ``type``; a TextBlock requires ``text``; a FactSet requires ``facts`` whose
items require ``title`` and ``value``; a Container requires ``items``. A Workflows webhook takes a
``message`` whose attachments have the Adaptive Card content type. A MessageCard requires ``@type``,
``@context`` and ``summary`` or ``text``.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from channels.context import ChannelContext
from channels.errors import InvalidChannelConfig
from channels.http import HttpClient
from channels.teams import TeamsChannel, build_adaptive_message, build_message_card
from tests.rows import drain, insert_channel, insert_notification_job, job
from tests.support import SAMPLE_PAYLOAD, make_delivery, make_settings

ADAPTIVE = "application/vnd.microsoft.card.adaptive"
CONTAINER_STYLES = {"default", "emphasis", "good", "attention", "warning", "accent"}
TEXT_COLOURS = {"default", "dark", "light", "accent", "good", "warning", "attention"}
TEAMS_CARD_BYTES = 28 * 1024

PAYLOADS = {
    "sample": dict(SAMPLE_PAYLOAD),
    "empty": {},
    "nulls": {key: None for key in SAMPLE_PAYLOAD},
    "long message": dict(SAMPLE_PAYLOAD, message="x" * 100_000),
    "markup": dict(SAMPLE_PAYLOAD, message="**bold** <at>x</at> & [link](https://evil.test)"),
}


def check_adaptive_element(element: Any, where: str) -> None:
    assert isinstance(element, dict), where
    assert isinstance(element.get("type"), str), f"{where}.type is required"
    kind = element["type"]
    if kind == "TextBlock":
        assert isinstance(element.get("text"), str), f"{where}.text is required"
        assert element.get("color", "default").lower() in TEXT_COLOURS, where
    elif kind == "FactSet":
        facts = element.get("facts")
        assert isinstance(facts, list) and facts, f"{where}.facts is required"
        for i, fact in enumerate(facts):
            assert isinstance(fact.get("title"), str), f"{where}.facts[{i}].title is required"
            assert isinstance(fact.get("value"), str), f"{where}.facts[{i}].value is required"
    elif kind == "RichTextBlock":
        inlines = element.get("inlines")
        assert isinstance(inlines, list) and inlines, f"{where}.inlines is required"
        for i, run in enumerate(inlines):
            assert run.get("type") == "TextRun" and isinstance(run.get("text"), str), f"{where}.inlines[{i}]"
    elif kind == "Container":
        assert element.get("style", "default") in CONTAINER_STYLES, f"{where}.style"
        items = element.get("items")
        assert isinstance(items, list), f"{where}.items is required"
        for i, item in enumerate(items):
            check_adaptive_element(item, f"{where}.items[{i}]")
    else:
        pytest.fail(f"{where}: unexpected element type {kind}")


def check_adaptive_card(card: Any) -> None:
    assert card.get("type") == "AdaptiveCard"
    assert re.fullmatch(r"1\.[0-6]", card.get("version", "")), "version is required"
    assert card.get("$schema", "http://adaptivecards.io/schemas/adaptive-card.json").startswith(
        "http://adaptivecards.io/schemas/adaptive-card.json"
    )
    assert isinstance(card.get("body", []), list)
    for i, element in enumerate(card.get("body", [])):
        check_adaptive_element(element, f"body[{i}]")


def check_workflows_message(message: Any) -> None:
    assert message.get("type") == "message"
    attachments = message.get("attachments")
    assert isinstance(attachments, list) and len(attachments) == 1
    for attachment in attachments:
        assert attachment["contentType"] == ADAPTIVE
        assert attachment.get("contentUrl") is None
        check_adaptive_card(attachment["content"])


def check_message_card(card: Any) -> None:
    assert card.get("@type") == "MessageCard"
    assert card.get("@context") in ("http://schema.org/extensions", "https://schema.org/extensions")
    assert card.get("summary") or card.get("text"), "summary or text is required"
    assert re.fullmatch(r"[0-9a-fA-F]{6}", card.get("themeColor", "000000"))
    for section in card.get("sections", []):
        for fact in section.get("facts", []):
            assert isinstance(fact.get("name"), str) and isinstance(fact.get("value"), str)


def card_of(message: dict[str, Any]) -> dict[str, Any]:
    content: dict[str, Any] = message["attachments"][0]["content"]
    return content


def facts_of(card: dict[str, Any]) -> dict[str, str]:
    (fact_set,) = [element for element in card["body"] if element["type"] == "FactSet"]
    return {fact["title"]: fact["value"] for fact in fact_set["facts"]}


def texts_of(node: Any) -> list[str]:
    if isinstance(node, dict):
        own = [node["text"]] if node.get("type") in ("TextBlock", "TextRun") else []
        return own + [t for value in node.values() for t in texts_of(value)]
    if isinstance(node, list):
        return [t for item in node for t in texts_of(item)]
    return []


@pytest.fixture
def channel() -> TeamsChannel:
    http = HttpClient(connect_timeout=1, read_timeout=1, user_agent="test", pool_size=1)
    return TeamsChannel(ChannelContext(settings=make_settings(), http=http))


@pytest.mark.parametrize("event", ["OPEN", "ACKNOWLEDGED", "CLOSED"])
@pytest.mark.parametrize("payload", PAYLOADS.values(), ids=PAYLOADS.keys())
def test_both_formats_satisfy_their_schemas(payload, event):
    delivery = make_delivery(payload, event=event)
    adaptive = build_adaptive_message(delivery.alert)
    check_workflows_message(adaptive)
    assert len(json.dumps(adaptive)) < TEAMS_CARD_BYTES
    check_message_card(build_message_card(delivery.alert))


def test_adaptive_card_shows_the_alert():
    card = card_of(build_adaptive_message(make_delivery().alert))
    assert card["version"] == "1.4"
    assert card["msteams"] == {"width": "Full"}
    headline = card["body"][0]
    assert headline["type"] == "Container" and headline["style"] == "attention"
    assert texts_of(headline) == ["🔴 CRITICAL: Temperature 92.5C above 85C"]
    assert texts_of(card["body"][1:]) == []  # the one-line message is in the headline, not repeated
    assert facts_of(card) == {
        "Severity": "CRITICAL",
        "Status": "Open",
        "Device": "sensor-17",
        "Type": "THRESHOLD",
        "Site": "plant-3",
        "Time": "2026-11-29T03:00:00Z",
        "Alert ID": "1001",
    }


@pytest.mark.parametrize(
    ("severity", "style"), [(5, "attention"), (4, "attention"), (3, "warning"), (2, "warning"), (1, "accent")]
)
def test_severity_sets_the_headline_style(severity, style):
    card = card_of(build_adaptive_message(make_delivery(dict(SAMPLE_PAYLOAD, severity=severity)).alert))
    assert card["body"][0]["style"] == style


def test_closed_alert_shows_as_resolved_in_both_formats():
    alert = make_delivery(event="CLOSED").alert
    card = card_of(build_adaptive_message(alert))
    assert card["body"][0]["style"] == "good"
    assert texts_of(card["body"][0]) == ["✅ Resolved (critical): Temperature 92.5C above 85C"]
    assert facts_of(card)["Status"] == "Resolved"
    message_card = build_message_card(alert)
    assert message_card["themeColor"] == "2eb67d"
    assert message_card["title"].startswith("✅ Resolved")


def test_message_card_facts_include_site_and_alert_id():
    card = build_message_card(make_delivery().alert)
    facts = {fact["name"]: fact["value"] for fact in card["sections"][0]["facts"]}
    assert facts["Site"] == "plant-3" and facts["Alert ID"] == "1001" and facts["Device"] == "sensor-17"


def test_format_defaults_to_adaptive_and_accepts_messagecard(channel):
    url = "https://example.test/workflows/abc"
    assert channel.parse_config({"webhook_url": url}).format == "adaptive"
    assert channel.parse_config({"webhook_url": url, "format": "MessageCard"}).format == "messagecard"
    assert channel.parse_config({"webhook_url": url, "format": ""}).format == "adaptive"


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"format": "xml"}, "config.format must be one of adaptive, messagecard, got 'xml'"),
        ({"format": 3}, "config.format must be a string, got int"),
        ({"webhook_url": None}, "config.webhook_url is missing"),
    ],
)
def test_bad_config_names_the_key(channel, config, message):
    with pytest.raises(InvalidChannelConfig) as caught:
        channel.parse_config({"webhook_url": "https://example.test/hook", **config})
    assert str(caught.value) == message


def test_adaptive_card_through_the_worker(database, http_server):
    channel_id = insert_channel(database, "teams", {"webhook_url": http_server.url("/workflows/xyz")})
    job_id = insert_notification_job(database, channel_id, dict(SAMPLE_PAYLOAD), alert_id=1001)

    drain(database)

    (request,) = http_server.received("/workflows/xyz")
    assert request.method == "POST"
    assert request.header("Content-Type") == "application/json"
    assert request.body == json.dumps(build_adaptive_message(make_delivery().alert)).encode()
    message = json.loads(request.body)
    check_workflows_message(message)
    assert facts_of(card_of(message))["Device"] == "sensor-17"
    assert job(database, "notification_jobs", job_id)["status"] == "COMPLETED"
