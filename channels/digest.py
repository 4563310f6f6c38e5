"""Storm digests: many waiting alerts for one chat destination summarised in one message.

``summarise`` builds the model every digest renderer reads: the most severe open alerts named
individually, the other open alerts counted by severity, and acknowledged / resolved events counted
apart. It is pure (no I/O), so each channel's ``render_digest`` only decides how the summary looks.

A channel that can summarise offers ``send_digest(config, digest)`` (the ``DigestChannel`` protocol);
channels for machines (PagerDuty, webhooks, SNMP, MQTT) do not, since their receivers de-duplicate
by key and need every event.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from channels.alert import Alert
from channels.base import Receipt
from channels.deadline import time_left

# Most severe first; an alert without a readable severity ranks last.
SEVERITY_ORDER = ("CRITICAL", "HIGH", "MEDIUM", "LOW", "UNKNOWN")
LISTED_MESSAGE_LIMIT = 300  # a digest names alerts; the full text is one click away in the platform


def _rank(alert: Alert) -> int:
    """Sort key: lower is more severe."""
    return -alert.severity if alert.severity is not None else 1_000_000


@dataclass(frozen=True)
class Digest:
    """One summary message for ``total`` alerts of one tenant to one destination."""

    key: str  # names the covered jobs, e.g. "notification_jobs:42+59"; receivers may log it
    tenant_id: str
    total: int
    listed: tuple[Alert, ...]  # open alerts, most severe first
    unlisted: tuple[tuple[str, int], ...]  # (severity label, count) of open alerts not listed
    open_counts: tuple[tuple[str, int], ...]  # (severity label, count) of every open alert
    acknowledged: int
    resolved: int
    deadline: float | None = None  # time.monotonic() by which the send must have ended

    @property
    def top_severity(self) -> str | None:
        """The label of the most severe open alert, or None when every event is ack/resolved."""
        return self.open_counts[0][0] if self.open_counts else None

    @property
    def unlisted_total(self) -> int:
        return sum(count for _, count in self.unlisted)

    def headline(self) -> str:
        """``60 alerts: 3 critical, 57 low, 2 acknowledged, 4 resolved``: counts only, no alert text."""
        parts = [f"{count} {label.lower()}" for label, count in self.open_counts]
        if self.acknowledged:
            parts.append(f"{self.acknowledged} acknowledged")
        if self.resolved:
            parts.append(f"{self.resolved} resolved")
        return f"{self.total} alerts: {', '.join(parts)}"

    def more_open_line(self) -> str | None:
        """``…and 50 more open: 2 high, 48 low`` for the open alerts not listed, if any."""
        if not self.unlisted:
            return None
        counts = ", ".join(f"{count} {label.lower()}" for label, count in self.unlisted)
        return f"…and {self.unlisted_total} more open: {counts}"

    def closed_line(self) -> str | None:
        """``2 acknowledged · 4 resolved``, if the digest covers such events."""
        if not (self.acknowledged or self.resolved):
            return None
        return f"{self.acknowledged} acknowledged · {self.resolved} resolved"

    def count_lines(self) -> list[str]:
        """What the digest counts without naming: more open alerts, then acknowledged/resolved."""
        return [line for line in (self.more_open_line(), self.closed_line()) if line]

    def time_left(self, limit: float) -> float:
        """As ``Delivery.time_left``: ``limit`` cut to the time left; DeadlineExceeded once past."""
        return time_left(self.deadline, limit)


def _by_severity(alerts: Sequence[Alert]) -> tuple[tuple[str, int], ...]:
    counts = Counter(alert.severity_label for alert in alerts)
    return tuple((label, counts[label]) for label in SEVERITY_ORDER if counts[label])


def summarise(alerts: Sequence[Alert], *, key: str, tenant_id: str, max_listed: int) -> Digest:
    """The digest of ``alerts`` (given oldest first): ties in severity keep that order."""
    opened = [alert for alert in alerts if alert.event not in ("ACKNOWLEDGED", "CLOSED")]
    ranked = sorted(opened, key=_rank)  # stable: equal severity stays oldest first
    listed = tuple(ranked[:max_listed])
    return Digest(
        key=key,
        tenant_id=tenant_id,
        total=len(alerts),
        listed=listed,
        unlisted=_by_severity(ranked[max_listed:]),
        open_counts=_by_severity(opened),
        acknowledged=sum(1 for alert in alerts if alert.event == "ACKNOWLEDGED"),
        resolved=sum(1 for alert in alerts if alert.event == "CLOSED"),
    )


def cut(text: str, limit: int = LISTED_MESSAGE_LIMIT) -> str:
    """``text`` on one line, at most ``limit`` characters (with "…" when cut)."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


@runtime_checkable
class DigestChannel(Protocol):
    """A channel that can deliver a ``Digest`` as one message."""

    def send_digest(self, config: Any, digest: Digest) -> Receipt: ...
