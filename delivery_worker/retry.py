"""The retry policy as data: quick in-process retries, then the durable backoff of the contract.

Durable backoff (shared/schema-contract.md): after a failed attempt, if ``attempts + 1 >=
max_attempts`` the job is FAILED, otherwise PENDING again after ``min(base * 2**attempts, max)``
seconds. A receiver's Retry-After replaces that delay, capped by ``max``. Before a failure counts,
a transient error is retried a few times in-process with jittered waits inside a short budget.

One attempt, quick retries included, ends by a wall-clock deadline (``[worker] job_timeout_seconds``):
channels cut their connection at it, and a quick retry whose wait would reach it is not taken.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import tenacity

from channels.errors import DeliveryError, PermanentError, TransientError
from delivery_worker.config import WorkerSettings
from delivery_worker.jobs import Verdict

QUICK_WAIT_INITIAL = 0.2
QUICK_WAIT_MAX = 2.0
# A quick retry needs at least this long before the attempt's deadline to be worth starting.
QUICK_RETRY_MIN_WINDOW = 0.5

T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int
    backoff_base_seconds: float
    backoff_max_seconds: float
    quick_retries: int
    quick_retry_budget_seconds: float
    attempt_timeout_seconds: float = 60.0  # [worker] job_timeout_seconds: the whole attempt's wall clock

    @classmethod
    def from_settings(cls, worker: WorkerSettings) -> RetryPolicy:
        return cls(
            max_attempts=worker.max_attempts,
            backoff_base_seconds=worker.backoff_base_seconds,
            backoff_max_seconds=worker.backoff_max_seconds,
            quick_retries=worker.quick_retries,
            quick_retry_budget_seconds=worker.quick_retry_budget_seconds,
            attempt_timeout_seconds=worker.job_timeout_seconds,
        )

    def attempt_deadline(self, clock: Callable[[], float] = time.monotonic) -> float:
        """The ``time.monotonic()`` by which an attempt starting now must have ended."""
        return clock() + self.attempt_timeout_seconds

    def backoff_seconds(self, attempts: int) -> float:
        """The contract's delay after a failure when ``attempts`` attempts had finished before it."""
        exponent = min(attempts, 62)
        return float(min(self.backoff_base_seconds * 2**exponent, self.backoff_max_seconds))

    def decide(self, attempts: int, error: DeliveryError) -> tuple[Verdict, float]:
        """FAILED or RETRY (with its delay) for a failed attempt."""
        if isinstance(error, PermanentError) or attempts + 1 >= self.max_attempts:
            return Verdict.FAILED, 0.0
        delay = self.backoff_seconds(attempts)
        if isinstance(error, TransientError) and error.retry_after is not None:
            delay = min(max(error.retry_after, 0.0), self.backoff_max_seconds)
        return Verdict.RETRY, delay

    def send_with_quick_retries(
        self,
        send: Callable[[], T],
        stopping: threading.Event,
        *,
        deadline: float | None,
        sleep: Callable[[float], None] | None = None,
        before_retry: Callable[[tenacity.RetryCallState], None] | None = None,
    ) -> T:
        """``send()``, retried in-process as ``quick_retrying`` says.

        Nearly every send succeeds or fails for good at once, so the tenacity loop (a few dozen
        objects) is only built after a first quick-retryable failure; that failure then counts as
        its first try and its duration against the budget, exactly as if the loop had run it."""
        started = time.monotonic()
        try:
            return send()
        except TransientError as exc:
            if self.quick_retries == 0 or not quick_retryable(exc):
                raise
            first: TransientError | None = exc
        retrying = self.quick_retrying(
            stopping,
            deadline=deadline,
            sleep=sleep,
            before_retry=before_retry,
            spent=time.monotonic() - started,
        )

        def replay_first_then_send() -> T:
            nonlocal first
            if first is not None:
                error, first = first, None
                raise error
            return send()

        return retrying(replay_first_then_send)

    def quick_retrying(
        self,
        stopping: threading.Event,
        *,
        deadline: float | None = None,
        sleep: Callable[[float], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        before_retry: Callable[[tenacity.RetryCallState], None] | None = None,
        spent: float = 0.0,
    ) -> tenacity.Retrying:
        """Tenacity loop for one attempt: retries TransientErrors whose Retry-After fits the budget,
        and never waits past ``deadline`` (a ``time.monotonic()`` value; None: no deadline).
        ``before_retry`` is called before each quick retry's wait (to log and count it); ``spent``:
        seconds of the budget already used (by a first try made outside the loop)."""

        def retryable(state: tenacity.RetryCallState) -> bool:
            if state.outcome is None or not state.outcome.failed:
                return False
            return quick_retryable(state.outcome.exception())

        return tenacity.Retrying(
            retry=retryable,
            stop=(
                tenacity.stop_after_attempt(self.quick_retries + 1)
                | tenacity.stop_after_delay(max(0.0, self.quick_retry_budget_seconds - spent))
                | tenacity.stop_when_event_set(stopping)
                | StopBeforeDeadline(deadline, clock)
            ),
            wait=tenacity.wait_random_exponential(multiplier=QUICK_WAIT_INITIAL, max=QUICK_WAIT_MAX),
            sleep=sleep or tenacity.sleep_using_event(stopping),
            before_sleep=before_retry,
            reraise=True,
        )


def quick_retryable(error: BaseException | None) -> bool:
    """A TransientError worth retrying within the attempt: not a slow one (a timeout), and any
    Retry-After short enough to wait for."""
    if not isinstance(error, TransientError) or error.slow:
        return False
    return error.retry_after is None or error.retry_after <= QUICK_WAIT_MAX


class StopBeforeDeadline(tenacity.stop.stop_base):
    """Stop when the wait before the next try would leave less than QUICK_RETRY_MIN_WINDOW before
    the deadline: a retry that cannot finish in time would only be cut."""

    def __init__(self, deadline: float | None, clock: Callable[[], float]) -> None:
        self.deadline = deadline
        self.clock = clock

    def __call__(self, retry_state: tenacity.RetryCallState) -> bool:
        if self.deadline is None:
            return False
        return self.clock() + retry_state.upcoming_sleep + QUICK_RETRY_MIN_WINDOW >= self.deadline
