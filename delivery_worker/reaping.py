"""Taking back the jobs of dead workers (expired leases), so that one bad row never blocks the rest.

Every few seconds, one statement per table reaps the expired jobs, never those this worker holds.
When PostgreSQL refuses that statement (a constraint or trigger rejecting one row), the expired jobs
are reaped one at a time, each in its own savepoint, for a few rounds of a bounded size; a job that
is still refused is logged (``reap.rejected``, at a bounded rate), left out of the next statements
and tried alone on later passes. A refused reap is not a database outage.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import structlog
from psycopg2.extensions import cursor

from delivery_worker.claims import Claims
from delivery_worker.jobs import Table
from delivery_worker.queues import JobQueue
from delivery_worker.savepoint import Refused, savepoint

log = structlog.get_logger("delivery_worker.reaping")

INTERVAL_SECONDS = 5.0
ONE_BY_ONE_LIMIT = 50  # jobs reaped one at a time per round: each is a subtransaction
ROUNDS = 3


class Reaper:
    def __init__(self, queues: Sequence[JobQueue], claims: Claims, lease_seconds: float) -> None:
        self.queues = list(queues)
        self.claims = claims
        self.interval = min(INTERVAL_SECONDS, lease_seconds / 2)
        self.next_reap = 0.0
        self.refusals: dict[tuple[Table, int], int] = {}

    def reap_if_due(self, cur: cursor) -> None:
        now = time.monotonic()
        if now < self.next_reap:
            return
        self.next_reap = now + self.interval
        for job_queue in self.queues:
            reclaimed = self._reap(cur, job_queue)
            if reclaimed:
                log.warning("jobs.reclaimed", table=job_queue.table.value, count=reclaimed)

    def _reap(self, cur: cursor, job_queue: JobQueue) -> int:
        table = job_queue.table
        mine = self.claims.job_ids(table)
        reclaimed = self._one_by_one(cur, job_queue, self._refused(table)[:ONE_BY_ONE_LIMIT], mine)
        for _ in range(ROUNDS):
            excluded = mine + self._refused(table)
            try:
                with savepoint(cur, "reap"):
                    return reclaimed + job_queue.reap(cur, mine=excluded)
            except Refused as exc:
                log.warning("reap.batch_refused", table=table.value, error=str(exc))
            try:
                with savepoint(cur, "reap"):
                    expired = job_queue.expired_jobs(cur, mine=excluded, limit=ONE_BY_ONE_LIMIT)
            except Refused as exc:
                log.error("reap.refused", table=table.value, error=str(exc))
                break
            reclaimed += self._one_by_one(cur, job_queue, expired, mine)
        return reclaimed

    def _refused(self, table: Table) -> list[int]:
        return [job_id for (t, job_id) in self.refusals if t is table]

    def _one_by_one(self, cur: cursor, job_queue: JobQueue, job_ids: list[int], mine: list[int]) -> int:
        table = job_queue.table
        reclaimed = 0
        for job_id in job_ids:
            try:
                with savepoint(cur, "reap_one"):
                    reclaimed += job_queue.reap(cur, mine=mine, only=job_id)
            except Refused as exc:
                refusals = self.refusals[(table, job_id)] = self.refusals.get((table, job_id), 0) + 1
                if refusals & (refusals - 1) == 0:  # the 1st, 2nd, 4th... time
                    log.error(
                        "reap.rejected", table=table.value, job_id=job_id, reason=str(exc), refusals=refusals
                    )
                continue
            self.refusals.pop((table, job_id), None)  # reaped, or no longer expired
        return reclaimed
