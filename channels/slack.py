"""Slack incoming webhooks: a coloured attachment with Block Kit content and a plain-text fallback.

The top-level ``text`` is what notifications and clients without Block Kit show; the blocks sit in
a secondary attachment because only an attachment carries the colour bar (by severity when OPEN,
grey when ACKNOWLEDGED, green when RESOLVED; see channels/presentation.py for the wording). Slack
reads ``&``, ``<`` and ``>`` as control characters in ``text``, so the fallback is escaped as Slack's
formatting reference requires (``&amp;``, ``&lt;``, ``&gt;``), which also keeps an alert message from
injecting ``<!channel>`` mentions or links. In the blocks every alert value is a ``plain_text``
object: a header (one line, so the bold headline survives any message), the message, the fields and
the context. Texts are cut to Slack's block limits, since an over-long block makes Slack refuse the
whole message with HTTP 400.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from channels.alert import Alert
from channels.base import Delivery, Receipt, config_object, require_str
from channels.context import ChannelContext
from channels.digest import Digest
from channels.digest import cut as digest_cut
from channels.http import check_url
from channels.presentation import ACKNOWLEDGED, RESOLVED, cut, look, one_line
from channels.secrets import url_secrets

COLOURS = {"CRITICAL": "#e94560", "HIGH": "#ff9800", "MEDIUM": "#ffc107"}  # OPEN, by severity
DEFAULT_COLOUR = "#2196f3"
RESOLVED_COLOUR = "#2eb67d"
ACKNOWLEDGED_COLOUR = "#9e9e9e"
STATE_COLOURS = {RESOLVED: RESOLVED_COLOUR, ACKNOWLEDGED: ACKNOWLEDGED_COLOUR}
HEADER_TEXT_LIMIT = 150  # Block Kit: a header's text

SECTION_TEXT_LIMIT = 3000  # Block Kit: a section's text
FIELD_TEXT_LIMIT = 2000  # Block Kit: each section field
CONTEXT_TEXT_LIMIT = 2000
FALLBACK_TEXT_LIMIT = 4000  # Slack truncates longer top-level text
_ESCAPES = {"&": "&amp;", "<": "&lt;", ">": "&gt;"}


@dataclass(frozen=True)
class SlackConfig:
    webhook_url: str

    def secrets(self) -> tuple[str, ...]:
        """The URL and each credential-bearing part of it (path segments, query values)."""
        return tuple(sorted(url_secrets(self.webhook_url)))

    def destination(self) -> str:
        return self.webhook_url


def escape(text: str, limit: int | None = None) -> str:
    """Text made literal for Slack; cut with "…" (never inside an entity) to at most ``limit`` chars."""
    escaped = "".join(_ESCAPES.get(ch, ch) for ch in text)
    if limit is None or len(escaped) <= limit:
        return escaped
    pieces: list[str] = []
    size = 0
    for ch in text:
        piece = _ESCAPES.get(ch, ch)
        if size + len(piece) > limit - 1:
            break
        pieces.append(piece)
        size += len(piece)
    return "".join(pieces) + "…"


def build_message(alert: Alert) -> dict[str, Any]:
    """The webhook message: fallback text, and an attachment with the state's colour and the blocks.

    Alert values go into ``plain_text`` objects only (header, message, fields, context), which Slack
    shows literally: no mrkdwn, links or mentions from an alert, and a headline that stays whole
    whatever the message holds."""
    shown = look(alert, HEADER_TEXT_LIMIT)
    colour = STATE_COLOURS.get(shown.state) or COLOURS.get(alert.severity_label, DEFAULT_COLOUR)
    fields = [
        ("Status", shown.status),
        ("Severity", alert.severity_label),
        ("Device", alert.device_id or "unknown"),
        ("Type", alert.alert_type or "-"),
        ("Site", alert.site_id or "-"),
    ]
    context = " · ".join(
        part for part in (f"Alert {alert.alert_id}", shown.status, alert.triggered_at) if part
    )
    blocks: list[dict[str, Any]] = [{"type": "header", "text": plain(shown.headline, HEADER_TEXT_LIMIT)}]
    if shown.details:
        blocks.append({"type": "section", "text": plain(shown.details, SECTION_TEXT_LIMIT)})
    blocks.append(
        {"type": "section", "fields": [plain(f"{name}: {value}", FIELD_TEXT_LIMIT) for name, value in fields]}
    )
    blocks.append({"type": "context", "elements": [plain(one_line(context), CONTEXT_TEXT_LIMIT)]})
    fallback = escape(shown.headline, FALLBACK_TEXT_LIMIT)
    return {"text": fallback, "attachments": [{"color": colour, "fallback": fallback, "blocks": blocks}]}


def plain(text: str, limit: int) -> dict[str, str]:
    """A Block Kit plain_text object (shown literally), cut to ``limit``; never empty."""
    return {"type": "plain_text", "text": cut(text, limit) or "-"}


class SlackChannel:
    channel_type = "slack"

    def __init__(self, context: ChannelContext) -> None:
        self.http = context.http

    def parse_config(self, raw: Mapping[str, Any]) -> SlackConfig:
        raw = config_object(raw)
        url = require_str(raw, "webhook_url")
        return SlackConfig(webhook_url=check_url(url, where="config.webhook_url"))

    def send(self, config: SlackConfig, delivery: Delivery) -> Receipt:
        return self.http.post_json(
            config.webhook_url,
            build_message(delivery.alert),
            service="Slack",
            delivery=delivery,
            secrets=config.secrets(),
        )

    def close(self) -> None:
        pass

    def send_digest(self, config: SlackConfig, digest: Digest) -> Receipt:
        return self.http.post_json(
            config.webhook_url,
            build_digest_message(digest),
            service="Slack",
            delivery=digest,
            secrets=config.secrets(),
        )


# --- storm digests (channels/digest.py) ----------------------------------------------------------


DIGEST_HEADER_LIMIT = 150  # Block Kit: a header's text


def _digest_text(text: str, limit: int) -> dict[str, str]:
    """A ``plain_text`` object: Slack shows it literally (no mrkdwn, mentions or links from alerts)."""
    return {"type": "plain_text", "text": text if len(text) <= limit else text[: limit - 1] + "…"}


def _digest_line(alert: Alert) -> str:
    """One listed alert: ``[CRITICAL] message`` over ``device · type · site``, each on one line."""
    where = " · ".join((alert.device_id or "unknown device", alert.alert_type or "-", alert.site_id or "-"))
    return f"[{alert.severity_label}] {digest_cut(alert.message) or 'Alert'}\n{digest_cut(where)}"


def build_digest_message(digest: Digest) -> dict[str, Any]:
    """One message for a storm: a header with the counts, a section per listed alert, the rest counted.

    At most 3 + ``[digest] max_listed`` (<= 40) blocks, within Block Kit's 50. Alert values only go
    into ``plain_text`` objects, each far below a section's 3000 characters; the fallback ``text``
    holds counts only."""
    top = digest.top_severity
    colour = COLOURS.get(top, DEFAULT_COLOUR) if top else RESOLVED_COLOUR
    headline = digest.headline()
    blocks: list[dict[str, Any]] = [{"type": "header", "text": _digest_text(headline, DIGEST_HEADER_LIMIT)}]
    blocks += [
        {"type": "section", "text": _digest_text(_digest_line(alert), SECTION_TEXT_LIMIT)}
        for alert in digest.listed
    ]
    if more := digest.more_open_line():
        blocks.append({"type": "section", "text": _digest_text(more, SECTION_TEXT_LIMIT)})
    if closed := digest.closed_line():
        blocks.append({"type": "context", "elements": [_digest_text(closed, CONTEXT_TEXT_LIMIT)]})
    fallback = escape(headline, FALLBACK_TEXT_LIMIT)
    return {"text": fallback, "attachments": [{"color": colour, "fallback": fallback, "blocks": blocks}]}
