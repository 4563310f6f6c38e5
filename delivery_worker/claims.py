"""The claims a worker holds: jobs it runs, or has finished and not yet written, with their current lease.

``lease_expires_at`` is both the lease and the claim's token (an outcome is written only while the
job is PROCESSING under that exact value). The heartbeat moves it, so the current value is kept here
and outcomes are written with it rather than with the value of the original claim. A separate token
column would need the claim statements and a migration to change for nothing the poller cannot do:
the poller is the only writer of its own claims, so it always knows their current token.

A job is held once: claiming a job this worker already holds (its lease was lost and it came back)
takes the new claim over instead of starting a second delivery.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from delivery_worker.jobs import Job, Outcome, Table


@dataclass
class Claim:
    job: Job  # as the database holds it now: attempts and lease of the latest claim or renewal
    renewed_at: float  # time.monotonic() of the claim or the last renewal
    lost: bool = False  # the database no longer shows it under this lease (reaped meanwhile)


class Claims:
    def __init__(self, lease_seconds: float) -> None:
        self.lease_seconds = lease_seconds
        self.renew_every = lease_seconds / 3
        self.by_key: dict[str, Claim] = {}

    def __contains__(self, key: str) -> bool:
        return key in self.by_key

    def __len__(self) -> int:
        return len(self.by_key)

    def hold(self, job: Job, *, renewed_at: float | None = None) -> None:
        """Hold a new claim, or take over a new claim of a job already held (same key)."""
        self.by_key[job.key] = Claim(job, time.monotonic() if renewed_at is None else renewed_at)

    def release(self, key: str) -> None:
        self.by_key.pop(key, None)

    def current(self, outcome: Outcome) -> Outcome:
        """The outcome as it must be written: for the job's current claim (attempts and lease)."""
        claim = self.by_key.get(outcome.job.key)
        if claim is None or claim.job is outcome.job:
            return outcome
        return dataclasses.replace(outcome, job=claim.job)

    def maybe_reaped(self, key: str) -> bool:
        """True if the claim may have been taken back (lost, or not renewed within a lease)."""
        claim = self.by_key.get(key)
        if claim is None:
            return False
        return claim.lost or time.monotonic() - claim.renewed_at >= self.lease_seconds * 0.9

    def renewal_due(self) -> bool:
        now = time.monotonic()
        return any(not c.lost and now - c.renewed_at >= self.renew_every for c in self.by_key.values())

    def seconds_to_renewal(self) -> float | None:
        held = [c.renewed_at for c in self.by_key.values() if not c.lost]
        if not held:
            return None
        return max(0.0, min(held) + self.renew_every - time.monotonic())

    def to_renew(self, table: Table) -> list[tuple[int, datetime | None]]:
        """(job_id, lease) of every claim of the table still believed held."""
        return [
            (c.job.job_id, c.job.lease) for c in self.by_key.values() if c.job.table is table and not c.lost
        ]

    def job_ids(self, table: Table) -> list[int]:
        return [c.job.job_id for c in self.by_key.values() if c.job.table is table]

    def renewed(self, table: Table, leases: dict[int, datetime], at: float) -> None:
        for job_id, lease in leases.items():
            claim = self.by_key.get(f"{table}:{job_id}")
            if claim is not None:
                claim.job = dataclasses.replace(claim.job, lease=lease)
                claim.renewed_at = at
                claim.lost = False

    def mark_lost(self, keys: Iterable[str]) -> list[str]:
        """Mark claims lost; return the keys that were not already marked."""
        newly = []
        for key in keys:
            claim = self.by_key.get(key)
            if claim is not None and not claim.lost:
                claim.lost = True
                newly.append(key)
        return newly
