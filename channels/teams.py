"""Microsoft Teams: an Adaptive Card for a Workflows webhook (default), or a legacy MessageCard.

Office 365 connectors (the ``...webhook.office.com`` URLs that took a MessageCard) are being retired;
their replacement is a Teams Workflows webhook ("Post to a channel when a webhook request is
received"), which expects a message whose attachments hold Adaptive Cards. ``config.format`` picks
the shape: ``adaptive`` (default) or ``messagecard`` for a connector URL that still works.

Both show severity (as a colour), device, type, site, time and alert id; a CLOSED event is shown
as resolved (green).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from channels.alert import Alert
from channels.base import Delivery, Receipt, config_object, optional_str, require_str
from channels.context import ChannelContext
from channels.digest import Digest
from channels.digest import cut as digest_cut
from channels.errors import InvalidChannelConfig
from channels.http import check_url

FORMATS = ("adaptive", "messagecard")
DEFAULT_FORMAT = "adaptive"

# MessageCard themeColor, by severity label.
COLOURS = {"CRITICAL": "e94560", "HIGH": "ff9800", "MEDIUM": "ffc107"}
DEFAULT_COLOUR = "2196f3"
RESOLVED_COLOUR = "2eb67d"

# Adaptive Card Container styles (the only colours a card may name), by severity label.
STYLES = {"CRITICAL": "attention", "HIGH": "warning", "MEDIUM": "warning"}
DEFAULT_STYLE = "accent"
RESOLVED_STYLE = "good"

ADAPTIVE_CARD_SCHEMA = "http://adaptivecards.io/schemas/adaptive-card.json"
ADAPTIVE_CARD_VERSION = "1.4"  # rendered by Teams desktop, web and mobile
ADAPTIVE_CARD_CONTENT_TYPE = "application/vnd.microsoft.card.adaptive"
MESSAGE_LIMIT = 2000  # Teams refuses cards over ~28 KB; an alert message is never worth that


@dataclass(frozen=True)
class TeamsConfig:
    webhook_url: str
    format: str = DEFAULT_FORMAT

    def secrets(self) -> tuple[str, ...]:
        return (self.webhook_url,)

    def destination(self) -> str:
        return self.webhook_url


def _title(alert: Alert) -> str:
    label = "RESOLVED" if alert.is_resolved else alert.severity_label
    return f"[{label}] {_cut(alert.message, 200) or 'Alert'}"


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


STATUSES = {"OPEN": "Open", "ACKNOWLEDGED": "Acknowledged", "CLOSED": "Resolved"}


def _status(alert: Alert) -> str:
    return STATUSES.get(alert.event, alert.event)


def _facts(alert: Alert) -> list[tuple[str, str]]:
    return [
        ("Severity", alert.severity_label),
        ("Status", _status(alert)),
        ("Device", alert.device_id or "unknown"),
        ("Type", alert.alert_type or "-"),
        ("Site", alert.site_id or "-"),
        ("Time", alert.triggered_at or "-"),
        ("Alert ID", alert.alert_id or "-"),
    ]


def build_adaptive_message(alert: Alert) -> dict[str, Any]:
    """A Workflows webhook message carrying one Adaptive Card."""
    style = RESOLVED_STYLE if alert.is_resolved else STYLES.get(alert.severity_label, DEFAULT_STYLE)
    headline = {
        "type": "Container",
        "style": style,
        "bleed": True,
        "items": [
            {"type": "TextBlock", "text": _title(alert), "weight": "Bolder", "size": "Medium", "wrap": True}
        ],
    }
    body: list[dict[str, Any]] = [headline]
    if alert.message:
        body.append({"type": "TextBlock", "text": _cut(alert.message, MESSAGE_LIMIT), "wrap": True})
    facts = [{"title": name, "value": value} for name, value in _facts(alert)]
    body.append({"type": "FactSet", "facts": facts})
    card = {
        "$schema": ADAPTIVE_CARD_SCHEMA,
        "type": "AdaptiveCard",
        "version": ADAPTIVE_CARD_VERSION,
        "body": body,
        "msteams": {"width": "Full"},
    }
    attachment = {"contentType": ADAPTIVE_CARD_CONTENT_TYPE, "contentUrl": None, "content": card}
    return {"type": "message", "attachments": [attachment]}


def build_message_card(alert: Alert) -> dict[str, Any]:
    """The legacy Office 365 connector card."""
    title = _title(alert)
    colour = RESOLVED_COLOUR if alert.is_resolved else COLOURS.get(alert.severity_label, DEFAULT_COLOUR)
    return {
        "@type": "MessageCard",
        "@context": "http://schema.org/extensions",
        "themeColor": colour,
        "summary": title[:200],
        "title": title,
        "text": f"Device: {alert.device_id or 'unknown'} | Type: {alert.alert_type or '-'}",
        "sections": [
            {
                "activityTitle": title,
                "activityText": _cut(alert.message, MESSAGE_LIMIT),
                "facts": [{"name": name, "value": value} for name, value in _facts(alert)],
            }
        ],
    }


BUILDERS = {"adaptive": build_adaptive_message, "messagecard": build_message_card}


class TeamsChannel:
    channel_type = "teams"

    def __init__(self, context: ChannelContext) -> None:
        self.http = context.http

    def parse_config(self, raw: Mapping[str, Any]) -> TeamsConfig:
        raw = config_object(raw)
        url = check_url(require_str(raw, "webhook_url"), where="config.webhook_url")
        fmt = (optional_str(raw, "format") or DEFAULT_FORMAT).lower()
        if fmt not in FORMATS:
            raise InvalidChannelConfig(f"config.format must be one of {', '.join(FORMATS)}, got {fmt!r}")
        return TeamsConfig(webhook_url=url, format=fmt)

    def send(self, config: TeamsConfig, delivery: Delivery) -> Receipt:
        body = json.dumps(BUILDERS[config.format](delivery.alert)).encode()
        headers = {"Content-Type": "application/json"}
        return self.http.send(config.webhook_url, body, headers=headers, service="Teams")

    def close(self) -> None:
        pass

    def send_digest(self, config: TeamsConfig, digest: Digest) -> Receipt:
        body = json.dumps(DIGEST_BUILDERS[config.format](digest)).encode()
        headers = {"Content-Type": "application/json"}
        return self.http.send(config.webhook_url, body, headers=headers, service="Teams")


# --- storm digests (channels/digest.py) ----------------------------------------------------------


def _digest_run(text: str, **style: Any) -> dict[str, Any]:
    """A RichTextBlock of one TextRun: Teams never reads a TextRun as Markdown, so alert text in a
    digest cannot become a link or formatting."""
    return {"type": "RichTextBlock", "inlines": [{"type": "TextRun", "text": text, **style}]}


def _digest_entry(alert: Alert) -> tuple[str, str]:
    """(``[CRITICAL] message``, ``device · type · site``) for one listed alert."""
    title = f"[{alert.severity_label}] {digest_cut(alert.message) or 'Alert'}"
    where = " · ".join((alert.device_id or "unknown device", alert.alert_type or "-", alert.site_id or "-"))
    return title, digest_cut(where)


def _digest_counts(digest: Digest) -> list[str]:
    """Lines counting what the digest does not name: more open alerts, acknowledged, resolved."""
    lines = []
    if digest.unlisted:
        counts = ", ".join(f"{count} {label.lower()}" for label, count in digest.unlisted)
        lines.append(f"…and {digest.unlisted_total} more open: {counts}")
    if digest.acknowledged or digest.resolved:
        lines.append(f"{digest.acknowledged} acknowledged · {digest.resolved} resolved")
    return lines


def build_adaptive_digest(digest: Digest) -> dict[str, Any]:
    """A Workflows webhook message carrying one Adaptive Card (1.4) that summarises a storm."""
    top = digest.top_severity
    style = STYLES.get(top, DEFAULT_STYLE) if top else RESOLVED_STYLE
    body: list[dict[str, Any]] = [
        {
            "type": "Container",
            "style": style,
            "bleed": True,
            "items": [
                {
                    "type": "TextBlock",
                    "text": digest.headline(),
                    "weight": "Bolder",
                    "size": "Medium",
                    "wrap": True,
                }
            ],
        }
    ]
    for alert in digest.listed:
        title, where = _digest_entry(alert)
        body.append(
            {
                "type": "Container",
                "separator": True,
                "items": [
                    _digest_run(title, weight="Bolder"),
                    {**_digest_run(where, isSubtle=True), "spacing": "None"},
                ],
            }
        )
    body += [{"type": "TextBlock", "text": line, "wrap": True} for line in _digest_counts(digest)]
    card = {
        "$schema": ADAPTIVE_CARD_SCHEMA,
        "type": "AdaptiveCard",
        "version": ADAPTIVE_CARD_VERSION,
        "body": body,
        "msteams": {"width": "Full"},
    }
    attachment = {"contentType": ADAPTIVE_CARD_CONTENT_TYPE, "contentUrl": None, "content": card}
    return {"type": "message", "attachments": [attachment]}


def build_digest_message_card(digest: Digest) -> dict[str, Any]:
    """The legacy connector card summarising a storm: one fact per listed alert, Markdown off."""
    top = digest.top_severity
    colour = COLOURS.get(top, DEFAULT_COLOUR) if top else RESOLVED_COLOUR
    headline = digest.headline()
    facts = [{"name": title, "value": where} for title, where in map(_digest_entry, digest.listed)]
    return {
        "@type": "MessageCard",
        "@context": "http://schema.org/extensions",
        "themeColor": colour,
        "summary": headline,
        "title": headline,
        "text": " | ".join(_digest_counts(digest)) or headline,
        "sections": [{"markdown": False, "facts": facts}] if facts else [],
    }


DIGEST_BUILDERS = {"adaptive": build_adaptive_digest, "messagecard": build_digest_message_card}
