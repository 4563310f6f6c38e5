"""How a chat message looks for each alert event, shared by Slack and Teams.

OPEN, ACKNOWLEDGED and RESOLVED must be told apart at a glance: each has its own wording, emoji
and colour, and only an OPEN event shows the severity as its headline. An acknowledgement is grey
and says "Acknowledged", so it never looks like a new critical alert.

The headline is one line of plain text: the alert message's first non-empty line, whitespace and
control characters collapsed (a multi-line or padded message cannot break it). The full message is
shown below it only when the headline does not already hold all of it, so nothing is repeated.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from channels.alert import Alert

OPEN, ACKNOWLEDGED, RESOLVED = "OPEN", "ACKNOWLEDGED", "RESOLVED"
STATES = {"OPEN": OPEN, "ACKNOWLEDGED": ACKNOWLEDGED, "CLOSED": RESOLVED}
SEVERITY_EMOJI = {"CRITICAL": "🔴", "HIGH": "🟠", "MEDIUM": "🟡"}
DEFAULT_EMOJI = "🔵"
STATE_EMOJI = {ACKNOWLEDGED: "👀", RESOLVED: "✅"}
STATUS_WORDS = {OPEN: "Open", ACKNOWLEDGED: "Acknowledged", RESOLVED: "Resolved"}

# C0/C1 controls and Unicode line/paragraph separators: never in a one-line headline.
_CONTROLS = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


@dataclass(frozen=True)
class Look:
    state: str  # OPEN | ACKNOWLEDGED | RESOLVED
    emoji: str
    headline: str  # one line, plain text, at most the limit given to look()
    details: str  # the whole message when the headline does not hold all of it, else ""

    @property
    def status(self) -> str:
        return STATUS_WORDS[self.state]


def one_line(text: str) -> str:
    """Text on one line: controls and line breaks become spaces, runs of whitespace one space."""
    return " ".join(_CONTROLS.sub(" ", text).split())


def cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def look(alert: Alert, headline_limit: int) -> Look:
    state = STATES.get(alert.event, OPEN)
    lines = [one_line(line) for line in alert.message.splitlines()]
    first = next((line for line in lines if line), "")
    subject = first or alert.alert_type or "Alert"
    if state == OPEN:
        emoji = SEVERITY_EMOJI.get(alert.severity_label, DEFAULT_EMOJI)
        prefix = f"{emoji} {alert.severity_label}: "
    else:
        emoji = STATE_EMOJI[state]
        prefix = f"{emoji} {STATUS_WORDS[state]} ({alert.severity_label.lower()}): "
    headline = cut(prefix + subject, headline_limit)
    whole = alert.message.strip()
    shown_whole = bool(first) and headline.endswith(first) and first == one_line(whole)
    return Look(
        state=state, emoji=emoji, headline=headline, details="" if shown_whole or not whole else whole
    )
