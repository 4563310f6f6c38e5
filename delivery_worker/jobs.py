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
    created_at: datetime | None = None  # the row's created_at: delivery latency is measured from it
    integration_id: str | None = None  # delivery_jobs only (a UUID), also when the integration is gone

    @property
    def key(self) -> str:
        """Stable across retries; receivers may use it to drop duplicates."""
        return f"{self.table}:{self.job_id}"

    @property
    def attempt(self) -> int:
        """The 1-based number of the attempt now running."""
        return self.attempts + 1

    def log_fields(self) -> dict[str, Any]:
        """What every log line about this job names: ``channel_id`` (a number) for notification_jobs,
        ``integration_id`` (a UUID string) for delivery_jobs; ``channel_type`` None when it is gone."""
        fields: dict[str, Any] = {
            "job_id": self.job_id,
            "table": self.table.value,
            "tenant_id": self.tenant_id,
            "alert_id": self.alert_id,
        }
        if self.table is Table.NOTIFICATION_JOBS:
            fields["channel_id"] = self.channel_id
        else:
            fields["integration_id"] = self.integration_id or (
                self.destination.destination_id if self.destination else None
            )
        fields["channel_type"] = self.destination.channel_type if self.destination else None
        return fields


class Verdict(enum.StrEnum):
    COMPLETED = "completed"
    RETRY = "retry"  # a failed attempt: attempts + 1, PENDING after the backoff
    FAILED = "failed"  # final: attempts + 1, FAILED
    DEFERRED = "deferred"  # not attempted (shutdown, open circuit): PENDING again, attempts unchanged


class DeferralReason(enum.StrEnum):
    """Why a claimed job went back unattempted (the ``reason`` label of jobs_deferred_total)."""

    SHUTDOWN = "shutdown"  # claimed, not started before the stop signal
    RATE_LIMITED = "rate_limited"  # its destination's rate limit had no slot within a second
    CIRCUIT_OPEN = "circuit_open"  # its destination's circuit breaker is open (or being probed)
    # Reserved by the metric names' contract: the per-destination cap is applied by the claim itself
    # (queues/claim_order.py), so no claimed job is ever put back for it and this stays 0.
    DESTINATION_BUSY = "destination_busy"


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
    deferral: DeferralReason | None = None  # DEFERRED only: why
    quick_retries: int = 0  # in-attempt retries tenacity made (a digest counts them on its first job)

    @property
    def latency_ms(self) -> int:
        return int((self.finished_at - self.started_at).total_seconds() * 1000)
