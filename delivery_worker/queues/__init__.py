"""The two job tables. Each module owns its table's SQL: claim a batch, record outcomes.

Only the poller's thread calls these, on its own connection; worker threads never touch the database.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

from psycopg2.extensions import cursor

from delivery_worker.config import Settings
from delivery_worker.jobs import Job, Outcome, Table
from delivery_worker.retry import RetryPolicy


class JobQueue(Protocol):
    table: Table

    def claim(self, cur: cursor, limit: int, running: Mapping[str, int] | None = None) -> list[Job]:
        """Move up to ``limit`` due PENDING jobs to PROCESSING, in claim order, and return them.

        ``running``: how many jobs this worker runs now per destination (queues/claim_order.py)."""
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

    def has_due(self, cur: cursor) -> bool:
        """Whether any PENDING job is due now."""
        ...


def build_queues(settings: Settings) -> list[JobQueue]:
    """Both tables, polled in turn by one loop."""
    from delivery_worker.claim_ahead import ClaimAhead
    from delivery_worker.queues.claim_order import ClaimOrder
    from delivery_worker.queues.delivery_jobs import DeliveryJobs
    from delivery_worker.queues.notification_jobs import NotificationJobs

    worker = settings.worker
    policy = RetryPolicy.from_settings(worker)
    lease = worker.lease_seconds
    # 0: no share, i.e. as many as this worker holds, tasks claimed ahead of the threads included (the
    # cap counts those too; capped at the threads alone, one busy destination got no claim-ahead).
    everything = ClaimAhead(worker.threads, worker.batch_size).held_at_most
    order = ClaimOrder(
        max_priority_wait_seconds=worker.max_priority_wait_seconds,
        max_in_flight_per_destination=worker.max_in_flight_per_destination or everything,
    )
    return [
        NotificationJobs(lease_seconds=lease, policy=policy, order=order),
        DeliveryJobs(lease_seconds=lease, policy=policy, order=order),
    ]
