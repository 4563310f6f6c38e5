"""Refusing a lease shorter than the longest possible attempt.

A job's lease (``[worker] lease_seconds``) is how long other workers wait before they claim it
again. The poll loop renews the leases of the jobs it holds every third of a lease (the heartbeat,
delivery_worker/heartbeat.py), while they run and while their outcomes wait to be written. This
check is the floor under that: even a worker whose renewals fail (its poll loop stuck on the
database) never has a lease run out in the middle of an attempt, because an attempt is cut at
``job_timeout_seconds`` and ``LEASE_MARGIN_SECONDS`` leaves time to hand its outcome to the loop.
"""

from __future__ import annotations

from delivery_worker.config import WorkerSettings

LEASE_MARGIN_SECONDS = 2.0


def longest_attempt_seconds(worker: WorkerSettings) -> float:
    """The longest one attempt can hold a job, plus the time to hand its outcome over."""
    return worker.job_timeout_seconds + LEASE_MARGIN_SECONDS


def lease_problem(worker: WorkerSettings) -> str | None:
    """One line naming the key when the lease is too short, else None."""
    needed = longest_attempt_seconds(worker)
    if worker.lease_seconds >= needed:
        return None
    return (
        f"[worker] lease_seconds: must be >= job_timeout_seconds + {LEASE_MARGIN_SECONDS:g} s "
        f"= {needed:g}, got {worker.lease_seconds:g} (a job still being sent would be claimed "
        "again by another worker and sent twice)"
    )
