"""How many tasks the poll loop claims beyond its free threads.

Tasks claimed ahead wait in the thread pool's queue, so a thread that finishes starts its next job
at once instead of idling until the next claim's round trip. How many are worth it depends on how
long a claim cycle takes against how long a job takes: enough to keep every thread busy for about
one cycle. More would only make a more urgent job, claimed next cycle, wait behind them (the claim
order, docs/storms-claim.md); with that amount it waits about one cycle, as it would for the claim
itself. Against slow endpoints that is few (a quarter of the threads is the floor); against fast
ones up to ``batch_size``, and never more than the threads themselves.
"""

from __future__ import annotations

import math

WEIGHT = 0.1  # of the newest figure in the moving averages


class ClaimAhead:
    def __init__(self, threads: int, batch_size: int) -> None:
        self.threads = threads
        self.least = threads // 4
        self.most = max(self.least, min(batch_size, threads))
        self.job_seconds: float | None = None
        self.cycle_seconds: float | None = None

    def job_took(self, seconds: float) -> None:
        self.job_seconds = _average(self.job_seconds, max(seconds, 0.0))

    def cycle_took(self, seconds: float) -> None:
        self.cycle_seconds = _average(self.cycle_seconds, max(seconds, 0.0))

    @property
    def held_at_most(self) -> int:
        """Tasks this worker can hold at once: one per thread plus the most it claims ahead."""
        return self.threads + self.most

    @property
    def tasks(self) -> int:
        if self.job_seconds is None or self.cycle_seconds is None:
            return self.least
        wanted = math.ceil(self.threads * self.cycle_seconds / max(self.job_seconds, 1e-4))
        return max(self.least, min(self.most, wanted))


def _average(current: float | None, new: float) -> float:
    return new if current is None else current + WEIGHT * (new - current)
