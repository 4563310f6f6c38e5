"""Storm digests: the summary model, and the Slack and Teams messages built from it."""

from __future__ import annotations

import json
from typing import Any

from channels.alert import Alert, alert_from_payload
from channels.digest import Digest, summarise
from channels.slack import build_digest_message
from channels.teams import build_adaptive_digest, build_digest_message_card
from tests.channels.test_slack import mrkdwn_texts
from tests.support import SAMPLE_PAYLOAD


def alert(severity: Any, *, event: str = "OPEN", n: int = 1, **values: Any) -> Alert:
    payload = {
        **SAMPLE_PAYLOAD,
        "severity": severity,
        "message": f"alert {n}",
        "device_id": f"dev-{n}",
        **values,
    }
    return alert_from_payload(payload, tenant_id="tenant-a", alert_id=n, event=event)


def storm(counts: dict[Any, int], **kwargs: Any) -> list[Alert]:
    alerts: list[Alert] = []
    for severity, count in counts.items():
        for _ in range(count):
            alerts.append(alert(severity, n=len(alerts) + 1, **kwargs))
    return alerts


def digest_of(alerts: list[Alert], max_listed: int = 10) -> Digest:
    return summarise(alerts, key="notification_jobs:1+9", tenant_id="tenant-a", max_listed=max_listed)


def test_most_severe_open_alerts_are_listed_first_and_the_rest_counted_by_severity():
    alerts = storm({1: 30, 5: 1, 3: 2, None: 2, "critical": 2, 2: 23})

    digest = digest_of(alerts)

    assert digest.total == 60
    assert [a.severity for a in digest.listed] == [5, 4, 4, 3, 3, 2, 2, 2, 2, 2]
    assert digest.listed[0].message == "alert 31"
    assert digest.unlisted == (("MEDIUM", 18), ("LOW", 30), ("UNKNOWN", 2))
    assert digest.open_counts == (("CRITICAL", 3), ("HIGH", 2), ("MEDIUM", 23), ("LOW", 30), ("UNKNOWN", 2))
    assert digest.headline() == "60 alerts: 3 critical, 2 high, 23 medium, 30 low, 2 unknown"


def test_equal_severity_keeps_the_oldest_first():
    alerts = storm({2: 5})
    assert [a.alert_id for a in digest_of(alerts, max_listed=3).listed] == ["1", "2", "3"]


def test_acknowledged_and_resolved_events_are_counted_apart_never_listed():
    alerts = [alert(5, n=1, event="CLOSED"), alert(4, n=2, event="ACKNOWLEDGED"), alert(1, n=3)]
    alerts += [alert(1, n=4, event="CLOSED")]

    digest = digest_of(alerts)

    assert [a.alert_id for a in digest.listed] == ["3"]
    assert (digest.acknowledged, digest.resolved) == (1, 2)
    assert digest.open_counts == (("LOW", 1),)
    assert digest.headline() == "4 alerts: 1 low, 1 acknowledged, 2 resolved"


def test_a_digest_of_only_resolved_events_has_no_top_severity():
    digest = digest_of([alert(5, n=1, event="CLOSED"), alert(3, n=2, event="CLOSED")])
    assert digest.top_severity is None and digest.listed == ()
    assert digest.headline() == "2 alerts: 2 resolved"


def blocks_of(message: dict[str, Any]) -> list[dict[str, Any]]:
    (attachment,) = message["attachments"]
    blocks: list[dict[str, Any]] = attachment["blocks"]
    return blocks


def test_slack_digest_names_the_listed_alerts_and_counts_the_rest():
    digest = digest_of(storm({5: 1, 1: 59}))

    message = build_digest_message(digest)

    assert message["text"] == "60 alerts: 1 critical, 59 low"
    assert message["attachments"][0]["color"] == "#e94560"
    header, *sections = blocks_of(message)
    assert header == {
        "type": "header",
        "text": {"type": "plain_text", "text": "60 alerts: 1 critical, 59 low"},
    }
    texts = [b["text"]["text"] for b in sections]
    assert texts[0] == "[CRITICAL] alert 1\ndev-1 · THRESHOLD · plant-3"
    assert len(texts) == 10 + 1
    assert texts[-1] == "…and 50 more open: 50 low"


def test_slack_digest_shows_alert_values_literally_and_fits_block_kit_limits():
    hostile = "<!channel> & <https://evil.test|click> *bold*\n\tsecond line " + "x" * 5000
    alerts = [
        alert_from_payload(
            dict(SAMPLE_PAYLOAD, message=hostile, device_id="<dev>&" * 800, severity=4),
            tenant_id="t",
            alert_id=i,
            event="OPEN",
        )
        for i in range(50)
    ]

    message = build_digest_message(digest_of(alerts, max_listed=40))

    blocks = blocks_of(message)
    assert len(blocks) <= 50
    assert mrkdwn_texts(message) == [message["text"]]  # only the fallback is parsed, and it holds counts
    assert blocks[0]["type"] == "header" and len(blocks[0]["text"]["text"]) <= 150
    assert blocks[-1]["text"]["text"] == "…and 10 more open: 10 critical"
    for block in blocks[1:-1]:
        text = block["text"]
        assert text["type"] == "plain_text" and len(text["text"]) <= 3000
        title, where = text["text"].split("\n")
        assert title.startswith("[CRITICAL] <!channel> & <https://evil.test|click> *bold* second line")
        assert len(title) <= 320 and len(where) <= 300


def test_slack_digest_of_resolved_events_is_green_with_a_context_line():
    events = [alert(5, n=1, event="CLOSED"), alert(2, n=2, event="ACKNOWLEDGED")]
    message = build_digest_message(digest_of(events))
    assert message["attachments"][0]["color"] == "#2eb67d"
    (context,) = [b for b in blocks_of(message) if b["type"] == "context"]
    assert context["elements"] == [{"type": "plain_text", "text": "1 acknowledged · 1 resolved"}]


def test_teams_adaptive_digest_is_a_1_4_card_with_one_container_per_listed_alert():
    digest = digest_of(storm({5: 1, 3: 2, 1: 20}), max_listed=3)

    message = build_adaptive_digest(digest)

    (attachment,) = message["attachments"]
    assert attachment["contentType"] == "application/vnd.microsoft.card.adaptive"
    card = attachment["content"]
    assert card["type"] == "AdaptiveCard" and card["version"] == "1.4"
    headline, *entries, more = card["body"]
    assert headline["style"] == "attention"
    assert headline["items"][0]["text"] == "23 alerts: 1 critical, 2 high, 20 low"
    runs = [[item["inlines"][0] for item in entry["items"]] for entry in entries]
    assert [title["text"] for title, _ in runs] == ["[CRITICAL] alert 1", "[HIGH] alert 2", "[HIGH] alert 3"]
    assert runs[0][0] == {"type": "TextRun", "text": "[CRITICAL] alert 1", "weight": "Bolder"}
    assert runs[0][1] == {"type": "TextRun", "text": "dev-1 · THRESHOLD · plant-3", "isSubtle": True}
    assert {item["type"] for entry in entries for item in entry["items"]} == {"RichTextBlock"}
    assert more == {"type": "TextBlock", "text": "…and 20 more open: 20 low", "wrap": True}
    json.dumps(message)  # serialisable as sent


def test_teams_digest_never_puts_alert_text_where_markdown_is_read():
    hostile = alert(4, n=1, message="[click](https://evil.test) **now**")
    card = build_adaptive_digest(digest_of([hostile, alert(1, n=2)]))["attachments"][0]["content"]

    text_blocks = [b["text"] for b in json_walk(card) if b.get("type") == "TextBlock"]
    assert all("evil" not in text for text in text_blocks)  # TextBlocks (Markdown) hold counts only
    runs = [b["text"] for b in json_walk(card) if b.get("type") == "TextRun"]
    assert "[CRITICAL] [click](https://evil.test) **now**" in runs
    legacy = build_digest_message_card(digest_of([hostile, alert(1, n=2)]))
    assert legacy["sections"][0]["markdown"] is False


def json_walk(node: Any) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    if isinstance(node, dict):
        found.append(node)
        for value in node.values():
            found += json_walk(value)
    elif isinstance(node, list):
        for item in node:
            found += json_walk(item)
    return found


def test_teams_message_card_digest_lists_alerts_as_facts():
    digest = digest_of([*storm({4: 2}), alert(1, n=9, event="CLOSED")])

    card = build_digest_message_card(digest)

    assert card["@type"] == "MessageCard" and card["themeColor"] == "e94560"
    assert card["title"] == "3 alerts: 2 critical, 1 resolved"
    assert [f["name"] for f in card["sections"][0]["facts"]] == ["[CRITICAL] alert 1", "[CRITICAL] alert 2"]
    assert card["text"] == "0 acknowledged · 1 resolved"
