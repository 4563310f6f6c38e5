"""The retry policy without a network: contract backoff, Retry-After, quick retries."""

from __future__ import annotations

import threading

import pytest

from channels.errors import PermanentError, TransientError
from delivery_worker.jobs import Verdict
from delivery_worker.retry import RetryPolicy

POLICY = RetryPolicy(
    max_attempts=5,
    backoff_base_seconds=30,
    backoff_max_seconds=7200,
    quick_retries=2,
    quick_retry_budget_seconds=10,
)


@pytest.mark.parametrize(
    ("attempts", "delay"), [(0, 30), (1, 60), (2, 120), (3, 240), (8, 7200), (500, 7200)]
)
def test_contract_backoff(attempts, delay):
    assert POLICY.backoff_seconds(attempts) == delay


def test_transient_error_retries_until_max_attempts():
    assert POLICY.decide(0, TransientError("x")) == (Verdict.RETRY, 30)
    assert POLICY.decide(3, TransientError("x")) == (Verdict.RETRY, 240)
    assert POLICY.decide(4, TransientError("x")) == (Verdict.FAILED, 0)


def test_permanent_error_fails_at_once():
    assert POLICY.decide(0, PermanentError("x")) == (Verdict.FAILED, 0)


def test_retry_after_replaces_backoff_and_is_capped():
    assert POLICY.decide(0, TransientError("x", retry_after=5)) == (Verdict.RETRY, 5)
    assert POLICY.decide(0, TransientError("x", retry_after=99999)) == (Verdict.RETRY, 7200)


def test_zero_base_means_immediate_retry():
    policy = RetryPolicy(5, 0, 7200, 0, 0)
    assert policy.decide(2, TransientError("x")) == (Verdict.RETRY, 0)


def run_quick(policy: RetryPolicy, errors: list[Exception]) -> tuple[str, int, list[float]]:
    calls = 0
    sleeps: list[float] = []

    def send() -> str:
        nonlocal calls
        calls += 1
        if errors:
            raise errors.pop(0)
        return "sent"

    for attempt in policy.quick_retrying(threading.Event(), sleep=sleeps.append):
        with attempt:
            return send(), calls, sleeps
    raise AssertionError


def test_quick_retries_recover_a_transient_error_in_process():
    result, calls, sleeps = run_quick(POLICY, [TransientError("blip"), TransientError("blip")])
    assert (result, calls) == ("sent", 3)
    assert len(sleeps) == 2 and all(0 <= s <= 2 for s in sleeps)


def test_quick_retries_stop_after_their_count():
    with pytest.raises(TransientError):
        run_quick(POLICY, [TransientError("x")] * 3)


def test_permanent_error_is_not_retried_in_process():
    with pytest.raises(PermanentError):
        run_quick(POLICY, [PermanentError("no")])


def test_long_retry_after_is_left_to_the_durable_backoff():
    with pytest.raises(TransientError):
        run_quick(POLICY, [TransientError("slow down", retry_after=60)])


def test_timeouts_are_not_retried_in_process():
    with pytest.raises(TransientError):
        run_quick(POLICY, [TransientError("timed out waiting for h", slow=True), TransientError("x")])


def send_lazily(policy: RetryPolicy, errors: list[Exception]) -> tuple[str, int, list[float]]:
    """The Deliverer's path: the tenacity loop is only built after a first quick-retryable failure."""
    calls = 0
    sleeps: list[float] = []

    def send() -> str:
        nonlocal calls
        calls += 1
        if errors:
            raise errors.pop(0)
        return "sent"

    result = policy.send_with_quick_retries(send, threading.Event(), deadline=None, sleep=sleeps.append)
    return result, calls, sleeps


def test_first_try_outside_the_loop_counts_as_the_loops_first():
    assert send_lazily(POLICY, []) == ("sent", 1, [])
    result, calls, sleeps = send_lazily(POLICY, [TransientError("blip"), TransientError("blip")])
    assert (result, calls, len(sleeps)) == ("sent", 3, 2)
    with pytest.raises(TransientError, match="third"):
        send_lazily(POLICY, [TransientError("first"), TransientError("second"), TransientError("third")])


def test_errors_not_worth_a_quick_retry_end_the_attempt_at_once():
    for error in (
        PermanentError("no"),
        TransientError("slow", slow=True),
        TransientError("x", retry_after=60),
    ):
        errors: list[Exception] = [error]
        with pytest.raises(type(error)):
            send_lazily(POLICY, errors)
        assert errors == []  # tried once
    no_quick = RetryPolicy(5, 30, 7200, quick_retries=0, quick_retry_budget_seconds=10)
    with pytest.raises(TransientError):
        send_lazily(no_quick, [TransientError("blip")])
