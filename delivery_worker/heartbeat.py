"""The heartbeat: the leases of the jobs a worker holds are renewed while it holds them.

Once a third of ``lease_seconds`` has passed since the last renewal, one UPDATE per table renews
every claim the worker holds (jobs running, and jobs whose outcome is not written yet), inside the
poll cycle's transaction and its own savepoint. A job running longer than its lease is therefore
never reaped while its worker lives; the lease only bounds how long a dead worker's jobs wait.

The renewed lease is also the claim's new token (see claims.py). Renewals are believed only once
their transaction commits. When the connection breaks during that transaction, the commit may or may
not have happened: those claims are uncertain until the next cycle reads their leases back.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import structlog
from psycopg2.extensions import cursor

from delivery_worker.claims import Claims
from delivery_worker.jobs import Table
from delivery_worker.queues import JobQueue
from delivery_worker.queues.status import renew_leases, resync_leases, still_held
from delivery_worker.savepoint import Refused, savepoint

log = structlog.get_logger("delivery_worker.heartbeat")

RETRY_SECONDS = 1.0  # rows locked elsewhere stay due: try again this soon, not on every cycle


@dataclass(frozen=True)
class Renewal:
    """What one renewal statement did; applied to the claims once its transaction commits."""

    table: Table
    leases: dict[int, datetime]  # job_id -> new lease
    lost: list[str]  # job keys no longer held under the lease this worker knew


class Heartbeat:
    def __init__(self, queues: Sequence[JobQueue], claims: Claims, lease_seconds: float) -> None:
        self.queues = list(queues)
        self.claims = claims
        self.lease_seconds = lease_seconds
        self.next_try = 0.0
        self.renewing: set[str] = set()  # claims renewed in the transaction under way
        self.uncertain: set[str] = set()  # renewed in a transaction whose commit is unknown

    def seconds_to_next(self) -> float | None:
        due = self.claims.seconds_to_renewal()
        return None if due is None else max(due, self.next_try - time.monotonic())

    def renew(self, cur: cursor, *, skip: set[str]) -> list[Renewal]:
        """Renew every claim held (but those in ``skip``, just written) once renewal is due."""
        now = time.monotonic()
        if now < self.next_try or not self.claims.renewal_due():
            return []
        self.next_try = now + min(RETRY_SECONDS, self.claims.renew_every)
        renewals = []
        for job_queue in self.queues:
            table = job_queue.table
            held = [c for c in self.claims.to_renew(table) if f"{table}:{c[0]}" not in skip]
            if not held:
                continue
            self.renewing.update(f"{table}:{job_id}" for job_id, _ in held)
            try:
                with savepoint(cur, "renew"):
                    leases = renew_leases(cur, table, held, self.lease_seconds)
                    missed = [(job_id, lease) for job_id, lease in held if job_id not in leases]
                    locked = still_held(cur, table, missed)
            except Refused as exc:
                log.error("leases.renew_refused", table=table.value, error=str(exc), jobs=len(held))
                continue
            lost = [f"{table}:{job_id}" for job_id, _ in missed if job_id not in locked]
            renewals.append(Renewal(table, leases, lost))
        return renewals

    def committed(self, renewals: list[Renewal], at: float) -> None:
        self.renewing = set()
        for renewal in renewals:
            self.claims.renewed(renewal.table, renewal.leases, at)
            lost = self.claims.mark_lost(renewal.lost)
            if lost:
                log.warning("lease.lost", table=renewal.table.value, jobs=lost, count=len(lost))

    def broke_off(self) -> None:
        """The transaction failed: its renewals may or may not have committed."""
        self.uncertain |= self.renewing
        self.renewing = set()

    def resync(self, cur: cursor) -> None:
        """Learn the leases the database holds for uncertain claims (see status.RESYNC_LEASES)."""
        if not self.uncertain:
            return
        for job_queue in self.queues:
            table = job_queue.table
            mine = [c for c in self.claims.to_renew(table) if f"{table}:{c[0]}" in self.uncertain]
            try:
                with savepoint(cur, "resync"):
                    leases = resync_leases(cur, table, mine)
            except Refused as exc:
                log.error("leases.resync_refused", table=table.value, error=str(exc))
                continue
            # Read from committed rows: true whatever becomes of this transaction. Renewed again now.
            self.claims.renewed(table, leases, time.monotonic() - self.claims.renew_every)
            self.uncertain.difference_update(f"{table}:{job_id}" for job_id, _ in mine)
