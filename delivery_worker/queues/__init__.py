"""The two job tables. Each module owns its table's SQL: claim a batch, record outcomes.

Only the poller's thread calls these, on its own connection; worker threads never touch the database.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from psycopg2.extensions import cursor

from delivery_worker.config import Settings
from delivery_worker.jobs import Job, Outcome, Table
from delivery_worker.retry import RetryPolicy


class JobQueue(Protocol):
    table: Table

    def claim(self, cur: cursor, limit: int) -> list[Job]:
        """Move up to ``limit`` due PENDING jobs to PROCESSING and return them."""
        ...

    def record(self, cur: cursor, outcomes: Sequence[Outcome]) -> set[int]:
        """Write the outcomes (status, attempts, log rows) of finished jobs still held under their
        claim's lease; return the ids written (a row locked by another session is skipped)."""
        ...

    def reap(self, cur: cursor, *, mine: Sequence[int] = (), only: int | None = None) -> int:
        """Take back jobs whose lease expired (their worker died), counting the lost attempt; never
        the jobs in ``mine`` (held by this worker); with ``only``, just that job."""
        ...

    def expired_jobs(self, cur: cursor, *, mine: Sequence[int] = (), limit: int = 1000) -> list[int]:
        """Ids of jobs whose lease ran out, not yet taken back."""
        ...


def build_queues(settings: Settings) -> list[JobQueue]:
    """Both tables, polled in turn by one loop."""
    from delivery_worker.queues.delivery_jobs import DeliveryJobs
    from delivery_worker.queues.notification_jobs import NotificationJobs

    policy = RetryPolicy.from_settings(settings.worker)
    lease = settings.worker.lease_seconds
    return [
        NotificationJobs(lease_seconds=lease, policy=policy),
        DeliveryJobs(lease_seconds=lease, policy=policy),
    ]
