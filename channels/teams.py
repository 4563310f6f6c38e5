"""Microsoft Teams: an Adaptive Card for a Workflows webhook (default), or a legacy MessageCard.

Office 365 connectors (the ``...webhook.office.com`` URLs that took a MessageCard) are being retired;
their replacement is a Teams Workflows webhook ("Post to a channel when a webhook request is
received"), which expects a message whose attachments hold Adaptive Cards. ``config.format`` picks
the shape: ``adaptive`` (default) or ``messagecard`` for a connector URL that still works.

Both show the state (channels/presentation.py: OPEN by severity colour, ACKNOWLEDGED grey,
RESOLVED green, each with its own wording and emoji), severity, device, type, site, time and alert
id. Teams reads Markdown in card text, so alert text never goes where Markdown is parsed unescaped:
the headline and the message are Adaptive Card ``TextRun`` s (never Markdown), fact values are
backslash-escaped (``markdown_literal``), and the MessageCard section has Markdown off. A
``[link](https://evil.example)`` in a message shows literally.
"""

from __future__ import annotations

import re
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
from channels.presentation import ACKNOWLEDGED, RESOLVED, cut, look, one_line
from channels.secrets import url_secrets

FORMATS = ("adaptive", "messagecard")
DEFAULT_FORMAT = "adaptive"

# MessageCard themeColor: by severity label when OPEN, else by state.
COLOURS = {"CRITICAL": "e94560", "HIGH": "ff9800", "MEDIUM": "ffc107"}
DEFAULT_COLOUR = "2196f3"
RESOLVED_COLOUR = "2eb67d"
STATE_COLOURS = {RESOLVED: RESOLVED_COLOUR, ACKNOWLEDGED: "9e9e9e"}

# Adaptive Card Container styles (the only colours a card may name): by severity when OPEN, else by state.
STYLES = {"CRITICAL": "attention", "HIGH": "warning", "MEDIUM": "warning"}
DEFAULT_STYLE = "accent"
RESOLVED_STYLE = "good"
STATE_STYLES = {RESOLVED: RESOLVED_STYLE, ACKNOWLEDGED: "emphasis"}

ADAPTIVE_CARD_SCHEMA = "http://adaptivecards.io/schemas/adaptive-card.json"
ADAPTIVE_CARD_VERSION = "1.4"  # rendered by Teams desktop, web and mobile
ADAPTIVE_CARD_CONTENT_TYPE = "application/vnd.microsoft.card.adaptive"
MESSAGE_LIMIT = 2000  # Teams refuses cards over ~28 KB; an alert message is never worth that
TITLE_LIMIT = 200
FACT_LIMIT = 300


@dataclass(frozen=True)
class TeamsConfig:
    webhook_url: str
    format: str = DEFAULT_FORMAT

    def secrets(self) -> tuple[str, ...]:
        """The URL and each credential-bearing part of it (path segments, query values)."""
        return tuple(sorted(url_secrets(self.webhook_url)))

    def destination(self) -> str:
        return self.webhook_url


_MARKDOWN = re.compile(r"([\\`*_~\[\]()<>#|!])")


def markdown_literal(text: str) -> str:
    """Text that Teams' Markdown shows as written: each Markdown character backslash-escaped."""
    return _MARKDOWN.sub(r"\\\1", text)


def _facts(alert: Alert, status: str) -> list[tuple[str, str]]:
    return [
        ("Status", status),
        ("Severity", alert.severity_label),
        ("Device", alert.device_id or "unknown"),
        ("Type", alert.alert_type or "-"),
        ("Site", alert.site_id or "-"),
        ("Time", alert.triggered_at or "-"),
        ("Alert ID", alert.alert_id or "-"),
    ]


def _fact_value(value: str) -> str:
    return markdown_literal(cut(one_line(value), FACT_LIMIT)) or "-"


def _text_run(text: str, **style: str) -> dict[str, Any]:
    """A RichTextBlock of one TextRun: TextRuns are never read as Markdown."""
    return {"type": "RichTextBlock", "inlines": [{"type": "TextRun", "text": text, **style}]}


def build_adaptive_message(alert: Alert) -> dict[str, Any]:
    """A Workflows webhook message carrying one Adaptive Card."""
    shown = look(alert, TITLE_LIMIT)
    style = STATE_STYLES.get(shown.state) or STYLES.get(alert.severity_label, DEFAULT_STYLE)
    headline = {
        "type": "Container",
        "style": style,
        "bleed": True,
        "items": [_text_run(shown.headline, weight="Bolder", size="Medium")],
    }
    body: list[dict[str, Any]] = [headline]
    if shown.details:
        body.append(_text_run(cut(shown.details, MESSAGE_LIMIT)))
    facts = [{"title": name, "value": _fact_value(value)} for name, value in _facts(alert, shown.status)]
    body.append({"type": "FactSet", "facts": facts})
    return adaptive_message(body)


def adaptive_message(body: list[dict[str, Any]]) -> dict[str, Any]:
    """A Workflows-webhook message holding one full-width Adaptive Card with ``body``."""
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
    """The legacy Office 365 connector card (Markdown off in its section, values escaped anyway)."""
    shown = look(alert, TITLE_LIMIT)
    colour = STATE_COLOURS.get(shown.state) or COLOURS.get(alert.severity_label, DEFAULT_COLOUR)
    title = markdown_literal(shown.headline)
    section: dict[str, Any] = {
        "activityTitle": title,
        "facts": [{"name": name, "value": _fact_value(value)} for name, value in _facts(alert, shown.status)],
        "markdown": False,
    }
    if shown.details:
        section["text"] = markdown_literal(cut(shown.details, MESSAGE_LIMIT))
    return {
        "@type": "MessageCard",
        "@context": "http://schema.org/extensions",
        "themeColor": colour,
        "summary": cut(shown.headline, 200),
        "title": title,
        "text": _fact_value(f"Device: {alert.device_id or 'unknown'} · Type: {alert.alert_type or '-'}"),
        "sections": [section],
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
        return self.http.post_json(
            config.webhook_url,
            BUILDERS[config.format](delivery.alert),
            service="Teams",
            delivery=delivery,
            secrets=config.secrets(),
        )

    def close(self) -> None:
        pass

    def send_digest(self, config: TeamsConfig, digest: Digest) -> Receipt:
        return self.http.post_json(
            config.webhook_url,
            DIGEST_BUILDERS[config.format](digest),
            service="Teams",
            delivery=digest,
            secrets=config.secrets(),
        )


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
    body += [{"type": "TextBlock", "text": line, "wrap": True} for line in digest.count_lines()]
    return adaptive_message(body)


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
        "text": " | ".join(digest.count_lines()) or headline,
        "sections": [{"markdown": False, "facts": facts}] if facts else [],
    }


DIGEST_BUILDERS = {"adaptive": build_adaptive_digest, "messagecard": build_digest_message_card}
