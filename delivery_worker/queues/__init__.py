"""The two job tables. Each module owns its table's SQL: claim a batch, record outcomes.

Only the poller's thread calls these, on its own connection; worker threads never touch the database.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from psycopg2.extensions import cursor

from delivery_worker.jobs import Job, Outcome, Table


class JobQueue(Protocol):
    table: Table

    def claim(self, cur: cursor, limit: int) -> list[Job]:
        """Move up to ``limit`` due PENDING jobs to PROCESSING and return them."""
        ...

    def record(self, cur: cursor, outcomes: Sequence[Outcome]) -> None:
        """Write the outcomes (status, attempts, log rows) of finished jobs."""
        ...
