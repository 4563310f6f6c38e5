"""Refusing a lease shorter than the longest possible attempt.

A job's lease (``[worker] lease_seconds``) is how long other workers wait before they claim it
again. An attempt ends by ``job_timeout_seconds`` (the channel is cut at that deadline), but its
outcome is written afterwards by the poll loop, which may at that moment be waiting on a statement
of its own: up to ``statement_timeout`` plus the client-side grace before that statement is cut
(``WORKER_SESSION.client_limit``, 20 s). ``LEASE_MARGIN_SECONDS`` covers that wait plus 10 s for
closing the cut connection and thread scheduling. A shorter lease lets a second worker send a job
the first is still finishing.
"""

from __future__ import annotations

from delivery_worker.config import WorkerSettings
from delivery_worker.db import WORKER_SESSION

LEASE_MARGIN_SECONDS = (WORKER_SESSION.client_limit or 0.0) + 10.0


def longest_attempt_seconds(worker: WorkerSettings) -> float:
    """The longest a claimed job can stay unrecorded by a live worker."""
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
