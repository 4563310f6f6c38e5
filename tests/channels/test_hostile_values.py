"""Hostile alert values through every HTTP channel: each receiver still gets valid output.

References we did not write check the shapes: ``slack_sdk``'s Block Kit models (Slack), Microsoft's
``adaptivecards`` library (Teams; needs node and the npm package, see ADAPTIVECARDS_NODE_MODULES) and
PagerDuty's Events API v2 event schema as its documentation states it (transcribed below).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from slack_sdk.models.attachments import BlockAttachment
from slack_sdk.models.blocks import Block

from channels.errors import InvalidChannelConfig
from channels.pagerduty import build_event
from channels.presentation import one_line
from channels.slack import build_message
from channels.teams import build_adaptive_message, build_message_card, markdown_literal
from channels.webhook import WebhookChannel, render_body
from tests.support import SAMPLE_PAYLOAD, make_delivery, make_settings

HOSTILE = {
    "tab": "temp\thigh",
    "newline": "line one\nline two",
    "u2028": "before\u2028after\u2029end",
    "sys topic": "$SYS/broker/clients",
    "markdown link": "[link](https://evil.example)",
    "quote": 'say "hi", "sev": "LOW',
    "backslash": "C:\\temp\\x\\",
    "html": "<b>bold</b> & <script>x</script>",
    "mrkdwn": "*bold* _it_ ~strike~ `code` <!channel>",
    "padded": "   padded headline   \n\n   second line  ",
    "controls": "bell\x07 esc\x1b[31m nul-free \x0b\x0c\x1c\x85",
    "very long": "long " * 20_000,
    "empty": "",
}
EVENTS = ("OPEN", "ACKNOWLEDGED", "CLOSED")


def hostile_delivery(value: str, event: str = "OPEN") -> Any:
    payload = dict(SAMPLE_PAYLOAD, message=value, device_id=value[:300] or "dev", site_id=value[:100])
    return make_delivery(payload, event=event)


# --- webhook body_template --------------------------------------------------------------------------

JSON_TEMPLATE = '{{"text": "{message}", "device": "{device_id}", "sev": "{severity}", "n": 1}}'


@pytest.fixture
def webhook() -> WebhookChannel:
    from channels.registry import build_registry

    return WebhookChannel(build_registry(make_settings()).context)


@pytest.mark.parametrize("value", HOSTILE.values(), ids=HOSTILE.keys())
def test_json_string_template_renders_valid_json_with_values_intact(webhook, value):
    config = webhook.parse_config({"url": "https://h.test/x", "body_template": JSON_TEMPLATE})
    body, content_type = render_body(config, hostile_delivery(value))
    assert content_type == "application/json"
    assert json.loads(body) == {"text": value, "device": value[:300] or "dev", "sev": "CRITICAL", "n": 1}


def test_a_crafted_message_cannot_inject_fields_or_repeat_a_key(webhook):
    config = webhook.parse_config({"url": "https://h.test/x", "body_template": JSON_TEMPLATE})
    crafted = 'x", "sev": "LOW", "admin": true, "text": "y'
    body, _ = render_body(config, hostile_delivery(crafted))
    pairs = json.loads(body, object_pairs_hook=lambda p: p)
    assert [key for key, _ in pairs] == ["text", "device", "sev", "n"]
    assert dict(pairs)["sev"] == "CRITICAL" and dict(pairs)["text"] == crafted


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ('{{"text": "{message}",}}', "cannot render valid JSON"),
        ('{{"a": 1, "a": "{message}"}}', "no key may repeat"),
        ('{{"{device_id}": "x"}}', "cannot be used in JSON object keys"),
        ("{{{device_id}: 1}}", "cannot be used in JSON object keys"),
        ('{{"path": "C:\\{device_id}"}}', "follows a backslash"),
        ('[{{"t": "{message}"}} {message}]', "cannot render valid JSON"),
    ],
)
def test_templates_that_cannot_render_valid_json_are_refused_at_parse(webhook, template, message):
    with pytest.raises(InvalidChannelConfig, match="config.body_template") as caught:
        webhook.parse_config({"url": "https://h.test/x", "body_template": template})
    assert message in str(caught.value)


@pytest.mark.parametrize(
    ("value", "expected"),
    [("4", 4), ("-2.5e3", -2500.0), ("", ""), ('1, "admin": true', '1, "admin": true'), ("NaN", "NaN")],
)
def test_a_bare_placeholder_is_a_number_or_a_string(webhook, value, expected):
    config = webhook.parse_config(
        {"url": "https://h.test/x", "body_template": '{{"level": {message}, "n": 1}}'}
    )
    body, content_type = render_body(config, hostile_delivery(value))
    assert content_type == "application/json"
    assert json.loads(body) == {"level": expected, "n": 1}


def test_a_plain_text_template_is_sent_as_text(webhook):
    config = webhook.parse_config({"url": "https://h.test/x", "body_template": "Alert: {message}"})
    body, content_type = render_body(config, hostile_delivery('a "b" {c}'))
    assert content_type.startswith("text/plain") and body == b'Alert: a "b" {c}'


# --- Slack --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("event", EVENTS)
@pytest.mark.parametrize("value", HOSTILE.values(), ids=HOSTILE.keys())
def test_slack_message_is_valid_block_kit_with_a_whole_headline(value, event):
    message = build_message(hostile_delivery(value, event).alert)
    attachment = message["attachments"][0]
    for block in attachment["blocks"]:
        parsed = Block.parse(block)
        assert parsed is not None
        parsed.validate_json()
        assert parsed.to_dict() == block
    BlockAttachment(
        blocks=attachment["blocks"], color=attachment["color"], fallback=attachment["fallback"]
    ).validate_json()
    header = attachment["blocks"][0]
    assert header["type"] == "header" and header["text"]["type"] == "plain_text"
    assert "\n" not in header["text"]["text"] and header["text"]["text"] == header["text"]["text"].strip()
    first_line = next((one_line(line) for line in value.splitlines() if line.strip()), "")
    assert first_line[:100] in header["text"]["text"]
    assert len(message["text"]) <= 4000 and "<" not in message["text"]


# --- Teams --------------------------------------------------------------------------------------------


def _adaptive_modules() -> str | None:
    modules = os.environ.get("ADAPTIVECARDS_NODE_MODULES", "")
    if shutil.which("node") and modules and Path(modules, "adaptivecards").is_dir():
        return modules
    return None


def official_card_problems(card: dict[str, Any]) -> list[str]:
    modules = _adaptive_modules()
    if modules is None:
        message = "Microsoft's adaptivecards npm package not installed (`make test-tools` sets it up)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    script = Path(__file__).parents[1] / "tools" / "adaptive_card_check.js"
    env = {"PATH": os.environ.get("PATH", ""), "NODE_PATH": modules}
    result = subprocess.run(
        ["node", str(script)],
        input=json.dumps(card),
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=True,
    )
    report = json.loads(result.stdout)
    assert report["version"] == card["version"]
    problems: list[str] = report["problems"]
    return problems


@pytest.mark.parametrize("event", EVENTS)
@pytest.mark.parametrize("value", HOSTILE.values(), ids=HOSTILE.keys())
def test_teams_card_is_accepted_by_the_adaptive_cards_library(value, event):
    card = build_adaptive_message(hostile_delivery(value, event).alert)["attachments"][0]["content"]
    assert official_card_problems(card) == []


def _strings(node: Any) -> list[str]:
    if isinstance(node, dict):
        return [s for value in node.values() for s in _strings(value)]
    if isinstance(node, list):
        return [s for item in node for s in _strings(item)]
    return [node] if isinstance(node, str) else []


def _markdown_strings(card: dict[str, Any]) -> list[str]:
    """The texts Teams reads as Markdown: TextBlock texts and fact values (TextRuns never are)."""
    found: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if node.get("type") == "TextBlock":
                found.append(node["text"])
            if node.get("type") == "FactSet":
                found.extend(fact["value"] for fact in node["facts"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(card)
    return found


@pytest.mark.parametrize("value", ["[link](https://evil.example)", "**bold** _x_ ![img](https://e.x/i.png)"])
def test_teams_never_renders_alert_markdown(value):
    card = build_adaptive_message(hostile_delivery(value).alert)["attachments"][0]["content"]
    for text in _markdown_strings(card):
        assert "](" not in text.replace("\\](", "").replace("\\]\\(", ""), text
    runs = [
        run["text"] for block in card["body"][:2] for run in block.get("items", [block])[0].get("inlines", [])
    ]
    assert runs and value in runs[0]  # a TextRun carries the text as written: it is never Markdown
    assert markdown_literal("[a](b)") == "\\[a\\]\\(b\\)"


def test_teams_message_is_not_repeated():
    card = build_adaptive_message(make_delivery().alert)["attachments"][0]["content"]
    assert sum("Temperature 92.5C" in s for s in _strings(card)) == 1
    multi_line = make_delivery(dict(SAMPLE_PAYLOAD, message="first\nsecond"))
    multi = build_adaptive_message(multi_line.alert)["attachments"][0]["content"]
    assert sum("second" in s for s in _strings(multi)) == 1


@pytest.mark.parametrize("value", HOSTILE.values(), ids=HOSTILE.keys())
def test_message_card_has_markdown_off_and_escaped_values(value):
    card = build_message_card(hostile_delivery(value).alert)
    assert card["sections"][0]["markdown"] is False
    assert "](" not in card["title"].replace("\\]\\(", "")
    json.dumps(card)


# --- OPEN / ACKNOWLEDGED / RESOLVED at a glance -------------------------------------------------------


def test_each_state_looks_different_in_slack_and_teams():
    alerts = {event: make_delivery(event=event).alert for event in EVENTS}
    slack = {event: build_message(alert) for event, alert in alerts.items()}
    teams = {
        event: build_adaptive_message(alert)["attachments"][0]["content"] for event, alert in alerts.items()
    }
    slack_heads = {e: m["attachments"][0]["blocks"][0]["text"]["text"] for e, m in slack.items()}
    teams_heads = {e: c["body"][0]["items"][0]["inlines"][0]["text"] for e, c in teams.items()}
    for heads in (slack_heads, teams_heads):
        assert heads["OPEN"].startswith("🔴 CRITICAL")
        assert heads["ACKNOWLEDGED"].startswith("👀 Acknowledged") and "CRITICAL" not in heads["ACKNOWLEDGED"]
        assert heads["CLOSED"].startswith("✅ Resolved") and "CRITICAL" not in heads["CLOSED"]
    assert len({m["attachments"][0]["color"] for m in slack.values()}) == 3
    assert len({c["body"][0]["style"] for c in teams.values()}) == 3
    assert teams["ACKNOWLEDGED"]["body"][0]["style"] not in ("attention", "warning")


# --- PagerDuty ------------------------------------------------------------------------------------------

# PagerDuty Events API v2 (developer.pagerduty.com, "Send an Alert Event"), as documented.
PAGERDUTY_EVENT = {
    "type": "object",
    "required": ["routing_key", "event_action"],
    "properties": {
        "routing_key": {"type": "string", "minLength": 32, "maxLength": 32},
        "event_action": {"enum": ["trigger", "acknowledge", "resolve"]},
        "dedup_key": {"type": "string", "maxLength": 255},
        "client": {"type": "string"},
        "client_url": {"type": "string"},
        "payload": {
            "type": "object",
            "required": ["summary", "source", "severity"],
            "properties": {
                "summary": {"type": "string", "minLength": 1, "maxLength": 1024},
                "source": {"type": "string", "minLength": 1},
                "severity": {"enum": ["critical", "error", "warning", "info"]},
                "timestamp": {"type": "string", "format": "date-time"},
                "component": {"type": "string"},
                "group": {"type": "string"},
                "class": {"type": "string"},
                "custom_details": {"type": "object"},
            },
        },
    },
    "if": {"properties": {"event_action": {"const": "trigger"}}},
    "then": {"required": ["payload"]},
    "else": {"required": ["dedup_key"]},
}
ROUTING_KEY = "r" * 32


@pytest.mark.parametrize("event", EVENTS)
@pytest.mark.parametrize("value", HOSTILE.values(), ids=HOSTILE.keys())
def test_pagerduty_events_match_the_events_v2_schema(value, event):
    delivery = hostile_delivery(value, event)
    body = json.loads(json.dumps(build_event(ROUTING_KEY, delivery.alert, delivery.payload.get("details"))))
    jsonschema.validate(body, PAGERDUTY_EVENT, format_checker=jsonschema.FormatChecker())


def test_pagerduty_keeps_the_producers_details_whole():
    details = {
        "alert_id": "producer-own-id",
        "tenant_id": "theirs",
        "metric": "temp_c",
        "nested": {"a": [1, 2]},
    }
    delivery = make_delivery(dict(SAMPLE_PAYLOAD, details=details))
    custom = build_event(ROUTING_KEY, delivery.alert, details)["payload"]["custom_details"]
    assert {key: custom[key] for key in details} == details  # none of the producer's keys overwritten
    assert custom["site_id"] == "plant-3" and custom["alert_type"] == "THRESHOLD"  # ours, beside them


@pytest.mark.parametrize("details", [["a", 1], "free text", 42, 1.5, True])
def test_pagerduty_keeps_non_object_details(details):
    delivery = make_delivery(dict(SAMPLE_PAYLOAD, details=details))
    custom = build_event(ROUTING_KEY, delivery.alert, details)["payload"]["custom_details"]
    assert custom["details"] == details and custom["alert_id"] == "1001"
