"""Writing outcomes so that a refused write never turns into a second send.

All due outcomes are written in one savepoint. When PostgreSQL refuses that batch (a CHECK constraint
on one channel's log rows, a revoked privilege, a lock or statement timeout), each outcome is written
alone in its own savepoint: the others are written, and a refused one is kept in memory and tried
again with backoff, its job's lease renewed by the heartbeat meanwhile. It is never dropped while the
worker runs, so the job stays claimed and is not sent again; at exit it goes to the spool.

An outcome whose claim is gone (the job was reaped and claimed again elsewhere, or already written)
is superseded: it cannot be written any more and is dropped with a log line.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import structlog
from psycopg2.extensions import cursor

from delivery_worker.claims import Claims
from delivery_worker.jobs import Outcome
from delivery_worker.queues import JobQueue
from delivery_worker.queues.status import restore_reaped, still_held
from delivery_worker.savepoint import Refused, savepoint

log = structlog.get_logger("delivery_worker.recording")

RETRY_MIN_SECONDS = 1.0
RETRY_MAX_SECONDS = 30.0
ISOLATE_PER_CYCLE = 50  # each isolated write is a subtransaction; PostgreSQL caches 64 per backend


@dataclass
class Unwritten:
    """A finished job's outcome waiting to be written, and how the database answered so far."""

    outcome: Outcome
    refusals: int = 0
    next_try: float = 0.0  # time.monotonic()
    reason: str | None = None

    def refused(self, reason: str) -> bool:
        """Back off after a refusal; True when this refusal is worth a log line (1st, 2nd, 4th...)."""
        self.refusals += 1
        self.next_try = time.monotonic() + min(
            RETRY_MAX_SECONDS, RETRY_MIN_SECONDS * 2 ** (self.refusals - 1)
        )
        changed, self.reason = reason != self.reason, reason
        return changed or self.refusals & (self.refusals - 1) == 0


@dataclass
class WriteReport:
    """What one transaction did with the outcomes; applied only once it commits."""

    written: list[Outcome] = field(default_factory=list)
    superseded: list[Outcome] = field(default_factory=list)
    locked: list[Outcome] = field(default_factory=list)  # row locked by another session: next cycle

    def merge(self, other: WriteReport) -> None:
        self.written += other.written
        self.superseded += other.superseded
        self.locked += other.locked

    @property
    def done_keys(self) -> set[str]:
        return {o.job.key for o in self.written + self.superseded}


class OutcomeWriter:
    def __init__(self, queues: Sequence[JobQueue], claims: Claims) -> None:
        self.queues = list(queues)
        self.claims = claims

    def write(self, cur: cursor, due: Sequence[Unwritten]) -> WriteReport:
        """Write the due outcomes, isolating the ones PostgreSQL refuses."""
        if not due:
            return WriteReport()
        try:
            with savepoint(cur, "outcomes"):
                return self._write(cur, [u.outcome for u in due])
        except Refused as batch:
            if len(due) == 1:
                self._refused(due[0], str(batch))
                return WriteReport()
            log.warning("outcomes.batch_refused", error=str(batch), count=len(due))
        report = WriteReport()
        for unwritten in due[:ISOLATE_PER_CYCLE]:  # the rest next cycle: bounded subtransactions
            try:
                with savepoint(cur, "outcome"):
                    report.merge(self._write(cur, [unwritten.outcome]))
            except Refused as single:
                self._refused(unwritten, str(single))
        return report

    def _refused(self, unwritten: Unwritten, reason: str) -> None:
        if unwritten.refused(reason):
            job = unwritten.outcome.job
            log.error(
                "outcome.rejected",
                job=job.key,
                **job.log_fields(),
                verdict=unwritten.outcome.verdict.value,
                reason=reason,
                refusals=unwritten.refusals,
                retry_in_s=round(unwritten.next_try - time.monotonic(), 1),
            )

    def _write(self, cur: cursor, outcomes: Sequence[Outcome]) -> WriteReport:
        report = WriteReport()
        for queue in self.queues:
            originals = {o.job.job_id: o for o in outcomes if o.job.table is queue.table}
            if not originals:
                continue
            current = [self.claims.current(o) for o in originals.values()]
            suspects = [o.job for o in current if self.claims.maybe_reaped(o.job.key)]
            restore_reaped(cur, queue.table, suspects)
            written = queue.record(cur, current)
            missed = [(o.job.job_id, o.job.lease) for o in current if o.job.job_id not in written]
            held = still_held(cur, queue.table, missed)
            for job_id, outcome in originals.items():
                if job_id in written:
                    report.written.append(outcome)
                elif job_id in held:
                    report.locked.append(outcome)
                else:
                    report.superseded.append(outcome)
        return report
