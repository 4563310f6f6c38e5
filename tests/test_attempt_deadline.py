"""One wall-clock deadline per attempt ([worker] job_timeout_seconds), quick retries included."""

from __future__ import annotations

import threading
import time

import pytest

from channels.errors import TransientError
from delivery_worker.retry import RetryPolicy
from tests.rows import drain, insert_channel, insert_notification_job, job
from tests.servers.http import Reply

POLICY = RetryPolicy(
    max_attempts=5,
    backoff_base_seconds=30,
    backoff_max_seconds=7200,
    quick_retries=5,
    quick_retry_budget_seconds=60,
    attempt_timeout_seconds=60,
)


def quick_calls(deadline: float | None) -> int:
    """How many sends one attempt makes against an endpoint that always fails transiently (clock at 0)."""
    calls = 0
    retrying = POLICY.quick_retrying(
        threading.Event(), deadline=deadline, sleep=lambda _s: None, clock=lambda: 0.0
    )
    with pytest.raises(TransientError):
        for attempt in retrying:
            with attempt:
                calls += 1
                raise TransientError("HTTP 503")
    return calls


def test_quick_retries_never_wait_past_the_deadline():
    assert quick_calls(deadline=None) == 6  # the first try and five quick retries
    assert quick_calls(deadline=100.0) == 6
    # Any wait would leave less than the minimum useful window before the deadline: no retry at all.
    assert quick_calls(deadline=0.4) == 1


def test_attempt_deadline_is_job_timeout_from_now():
    assert POLICY.attempt_deadline(clock=lambda: 1000.0) == 1060.0


def test_a_failing_endpoint_gets_no_quick_retry_that_would_pass_the_deadline(database, http_server):
    """Without the deadline, ten quick retries of a slow 503 would run for seconds; with a 1 s
    attempt the worker stops retrying in time and schedules the durable retry."""
    http_server.script("/busy", *[Reply(503, delay=0.4)] * 20)
    channel = insert_channel(database, "webhook", {"url": http_server.url("/busy")})
    job_id = insert_notification_job(database, channel)

    started = time.monotonic()
    drain(
        database,
        worker={
            "job_timeout_seconds": 1.0,
            "quick_retries": 10,
            "quick_retry_budget_seconds": 60.0,
            "backoff_base_seconds": 3600.0,
        },
    )
    elapsed = time.monotonic() - started

    row = job(database, "notification_jobs", job_id)
    assert (row["status"], row["attempts"]) == ("PENDING", 1)
    assert 1 <= len(http_server.received("/busy")) <= 2
    assert elapsed < 10
