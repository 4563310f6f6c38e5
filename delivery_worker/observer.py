"""Hooks the poll loop calls so metrics, health and the systemd watchdog can watch it.

The poller calls these on its own thread; implementations must be quick and must not raise.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from delivery_worker.jobs import Job, Outcome


class PollObserver(Protocol):
    def poll_ticked(self, *, database_ok: bool, in_flight: int) -> None:
        """Once per loop iteration, after recording and claiming."""
        ...

    def jobs_claimed(self, jobs: Sequence[Job]) -> None: ...

    def outcomes_recorded(self, outcomes: Sequence[Outcome]) -> None:
        """Outcomes just written to the database (each exactly once)."""
        ...

    def stopping(self) -> None:
        """The loop stopped claiming (signal received or drained)."""
        ...


class Observers:
    """Fans each call out to several observers."""

    def __init__(self, *observers: PollObserver) -> None:
        self.observers = list(observers)

    def poll_ticked(self, *, database_ok: bool, in_flight: int) -> None:
        for observer in self.observers:
            observer.poll_ticked(database_ok=database_ok, in_flight=in_flight)

    def jobs_claimed(self, jobs: Sequence[Job]) -> None:
        for observer in self.observers:
            observer.jobs_claimed(jobs)

    def outcomes_recorded(self, outcomes: Sequence[Outcome]) -> None:
        for observer in self.observers:
            observer.outcomes_recorded(outcomes)

    def stopping(self) -> None:
        for observer in self.observers:
            observer.stopping()
