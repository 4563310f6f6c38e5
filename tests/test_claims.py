"""The claims a worker holds and the backoff of refused outcome writes: pure pieces, no database."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

from delivery_worker.claims import Claims
from delivery_worker.jobs import Job, Outcome, Table, Verdict
from delivery_worker.recording import RETRY_MAX_SECONDS, Unwritten

NOW = datetime(2026, 12, 2, 6, 0, tzinfo=UTC)


def claimed(job_id: int = 1, *, attempts: int = 0, lease: datetime = NOW) -> Job:
    return Job(Table.NOTIFICATION_JOBS, job_id, "tenant-a", 10, "OPEN", attempts, {}, None, 5, lease)


def test_outcomes_are_written_with_the_current_lease_after_a_renewal():
    claims = Claims(lease_seconds=30)
    job = claimed()
    claims.hold(job)
    renewed = NOW + timedelta(seconds=30)
    claims.renewed(Table.NOTIFICATION_JOBS, {1: renewed}, time.monotonic())

    outcome = claims.current(Outcome(job, Verdict.COMPLETED, NOW, NOW))

    assert outcome.job.lease == renewed
    assert outcome.job.attempts == 0


def test_a_job_claimed_again_is_written_under_the_new_claim():
    claims = Claims(lease_seconds=30)
    first = claimed()
    claims.hold(first)
    again = claimed(attempts=1, lease=NOW + timedelta(minutes=5))
    claims.hold(again)

    outcome = claims.current(Outcome(first, Verdict.COMPLETED, NOW, NOW))

    assert len(claims) == 1
    assert (outcome.job.attempts, outcome.job.lease) == (1, again.lease)


def test_renewal_is_due_after_a_third_of_the_lease_and_lost_claims_are_not_renewed():
    claims = Claims(lease_seconds=30)
    claims.hold(claimed(1))
    assert not claims.renewal_due()
    claims.hold(claimed(2), renewed_at=time.monotonic() - 11)
    assert claims.renewal_due()
    assert claims.mark_lost(["notification_jobs:2", "notification_jobs:2"]) == ["notification_jobs:2"]
    assert not claims.renewal_due()
    assert claims.to_renew(Table.NOTIFICATION_JOBS) == [(1, NOW)]
    assert claims.maybe_reaped("notification_jobs:2") and not claims.maybe_reaped("notification_jobs:1")


def test_refused_writes_back_off_and_log_on_the_first_second_fourth_refusal():
    unwritten = Unwritten(Outcome(claimed(), Verdict.COMPLETED, NOW, NOW))
    logged = [unwritten.refused("permission denied for table notification_log") for _ in range(9)]

    assert logged == [True, True, False, True, False, False, False, True, False]
    assert unwritten.next_try - time.monotonic() <= RETRY_MAX_SECONDS
    assert unwritten.refused("another reason") is True
