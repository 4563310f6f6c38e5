"""SIGTERM, SIGINT and SIGHUP: each asks for a graceful stop; the handlers only set flags.

SIGHUP is a graceful stop too, not an in-process reload: the configuration is read once at start
into frozen settings, and under systemd (``Restart=always``) the stopped worker is started again at
once with the configuration re-read, so "reload" and "restart" are the same safe path. A second
SIGTERM/SIGINT while stopping exits at once (exit 1); a repeated SIGHUP is ignored, so a log-rotation
hook cannot turn a graceful stop into a forced one.

Nothing is logged inside a handler (a log call could deadlock on the lock the interrupted code holds):
the poll loop logs ``signal.received`` on its next tick, through ``poll_ticked``.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Sequence
from types import FrameType
from typing import Any

import structlog

from delivery_worker.jobs import Job, Outcome

log = structlog.get_logger("delivery_worker.signals")

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


class StopSignals:
    """Installs the handlers; also a PollObserver that logs the signal from the poll loop's thread."""

    def __init__(self, stopping: threading.Event) -> None:
        self.stop_requested = stopping
        self.wakes: list[threading.Event] = []
        self.received: str | None = None
        self._logged = False
        self._previous: dict[int, Any] = {}

    def install(self) -> StopSignals:
        for signum in STOP_SIGNALS:
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def uninstall(self) -> None:
        """Put back the handlers found at install (a process that runs the worker more than once)."""
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def also_wake(self, event: threading.Event) -> None:
        self.wakes.append(event)

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        if self.stop_requested.is_set():
            if signum == signal.SIGHUP:
                return
            os.write(2, b"delivery-worker: second signal, exiting now\n")
            os._exit(1)
        self.received = signal.Signals(signum).name
        self.stop_requested.set()
        for event in self.wakes:
            event.set()

    def log_received(self) -> None:
        """Log the signal once, from an ordinary thread."""
        if self.received is None or self._logged:
            return
        self._logged = True
        action = "graceful stop"
        if self.received == "SIGHUP":
            action += "; systemd (Restart=always) starts it again with the configuration re-read"
        log.info("signal.received", signal=self.received, action=action)

    # --- PollObserver ----------------------------------------------------------------------------

    def poll_ticked(self, *, database_ok: bool, in_flight: int) -> None:
        self.log_received()

    def jobs_claimed(self, jobs: Sequence[Job]) -> None:
        pass

    def outcomes_recorded(self, outcomes: Sequence[Outcome]) -> None:
        pass

    def stopping(self) -> None:
        self.log_received()
