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

    def record(self, cur: cursor, outcomes: Sequence[Outcome]) -> None:
        """Write the outcomes (status, attempts, log rows) of finished jobs."""
        ...

    def reap(self, cur: cursor) -> int:
        """Take back jobs whose lease expired (their worker died), counting the lost attempt."""
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
