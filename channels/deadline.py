"""One wall-clock deadline per attempt, enforced by closing the connection when it passes.

Socket timeouts bound each single wait, so a peer that trickles a byte every few seconds is never
cut by them. ``closing_at`` arms one shared watchdog thread: at the deadline it calls the given
``close`` (shut the socket, disconnect the client), the blocked call in the worker thread fails,
and the channel turns that into ``DeadlineExceeded``. The watchdog never runs channel code other
than ``close``, and one thread serves every worker thread.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import structlog

from channels.errors import DeadlineExceeded

log = structlog.get_logger("channels.deadline")


def time_left(deadline: float | None, limit: float) -> float:
    """``limit``, cut to what is left before ``deadline`` (``time.monotonic()``; None: no deadline).

    Raises DeadlineExceeded once the deadline has passed."""
    if deadline is None:
        return limit
    left = deadline - time.monotonic()
    if left <= 0:
        raise DeadlineExceeded("attempt deadline reached")
    return min(limit, left)


class _Armed:
    """One armed deadline; ``fired`` tells the channel that the watchdog closed its connection."""

    def __init__(self, close: Callable[[], None]) -> None:
        self.close = close
        self.cancelled = False
        self.fired = False


class Watchdog:
    """A single daemon thread that calls ``close`` callbacks whose deadline has passed."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.lock = threading.Condition()
        self.heap: list[tuple[float, int, _Armed]] = []
        self.counter = itertools.count()
        self.thread: threading.Thread | None = None

    def arm(self, deadline: float, close: Callable[[], None]) -> _Armed:
        armed = _Armed(close)
        with self.lock:
            heapq.heappush(self.heap, (deadline, next(self.counter), armed))
            if self.thread is None or not self.thread.is_alive():
                self.thread = threading.Thread(target=self._run, name="deadline-watchdog", daemon=True)
                self.thread.start()
            # Only a deadline earlier than every other changes what the thread waits for. Deadlines
            # are mostly "now + the same timeout", so this spares a thread wake-up (and a GIL
            # hand-off) per attempt.
            if self.heap[0][2] is armed:
                self.lock.notify()
        return armed

    def _run(self) -> None:
        while True:
            with self.lock:
                while self.heap and self.heap[0][2].cancelled:
                    heapq.heappop(self.heap)
                if not self.heap:
                    self.lock.wait(30.0)
                    if not self.heap:
                        self.thread = None
                        return
                    continue
                deadline, _, armed = self.heap[0]
                wait = deadline - self.clock()
                if wait > 0:
                    self.lock.wait(wait)
                    continue
                heapq.heappop(self.heap)
                armed.fired = True
            try:
                armed.close()
            except Exception as exc:  # closing an already-broken connection must not stop the watchdog
                log.debug("deadline.close_failed", error_type=type(exc).__name__)


WATCHDOG = Watchdog()


@contextmanager
def closing_at(deadline: float | None, close: Callable[[], None]) -> Iterator[_Armed]:
    """Within the block, ``close()`` is called if the block is still running at ``deadline``
    (``time.monotonic()``; None: never). Check ``.fired`` afterwards to tell a deadline hit from
    another connection failure."""
    armed = WATCHDOG.arm(deadline, close) if deadline is not None else _Armed(close)
    try:
        yield armed
    finally:
        with WATCHDOG.lock:
            armed.cancelled = True
