"""The job a worker thread runs and the outcome it hands back: small frozen dataclasses."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


class Table(enum.StrEnum):
    NOTIFICATION_JOBS = "notification_jobs"
    DELIVERY_JOBS = "delivery_jobs"


class Status(enum.StrEnum):
    PENDING = "PENDING"
    PROCESSING = "PROCESSING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"


@dataclass(frozen=True)
class Destination:
    """A channel (unified pipeline) or an integration (older pipeline), mapped to one shape."""

    destination_id: str  # channel_id, or integration_id
    tenant_id: str
    channel_type: str
    enabled: bool
    config: Any  # the channel module's config shape; validated by the channel


@dataclass(frozen=True)
class Job:
    table: Table
    job_id: int
    tenant_id: str
    alert_id: int
    event: str
    attempts: int  # finished attempts before this one
    payload: Any  # payload_json as stored: usually an object, sometimes a JSON string
    destination: Destination | None  # None when the channel/integration row does not exist
    channel_id: int | None = None  # notification_jobs only, for notification_log
    lease: datetime | None = None  # lease_expires_at set by this claim; identifies the claim
    unreadable: str | None = None  # why a JSON column of the row could not be read: fail at once

    @property
    def key(self) -> str:
        """Stable across retries; receivers may use it to drop duplicates."""
        return f"{self.table}:{self.job_id}"

    @property
    def attempt(self) -> int:
        """The 1-based number of the attempt now running."""
        return self.attempts + 1


class Verdict(enum.StrEnum):
    COMPLETED = "completed"
    RETRY = "retry"  # a failed attempt: attempts + 1, PENDING after the backoff
    FAILED = "failed"  # final: attempts + 1, FAILED
    DEFERRED = "deferred"  # not attempted (shutdown, open circuit): PENDING again, attempts unchanged


@dataclass(frozen=True)
class Outcome:
    job: Job
    verdict: Verdict
    started_at: datetime
    finished_at: datetime
    error: str | None = None
    http_status: int | None = None
    retry_delay_seconds: float = 0.0
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def latency_ms(self) -> int:
        return int((self.finished_at - self.started_at).total_seconds() * 1000)
