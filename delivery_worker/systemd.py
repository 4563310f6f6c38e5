"""Talking to systemd (``Type=notify``): READY, STOPPING, STATUS and the watchdog ping.

The protocol is one datagram per message to the AF_UNIX socket named by ``$NOTIFY_SOCKET`` (a name
starting with ``@`` is in the abstract namespace). The service reads ``$NOTIFY_SOCKET``,
``$WATCHDOG_USEC`` and ``$WATCHDOG_PID`` once at start and hands them here; without a socket every
call does nothing, so the worker runs the same outside systemd (Heroku, a terminal, tests).
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Sequence

import structlog

from delivery_worker.jobs import Job, Outcome

log = structlog.get_logger("delivery_worker.systemd")


class Notifier:
    """Sends sd_notify messages; never raises (a lost status line must not stop deliveries)."""

    def __init__(self, socket_path: str | None) -> None:
        self.address = _socket_address(socket_path) if socket_path else None
        self._warned = False

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def notify(self, *lines: str) -> None:
        """Send ``lines`` (e.g. "READY=1", "STATUS=polling") as one datagram."""
        if self.address is None:
            return
        message = "\n".join(lines).encode("utf-8")
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.sendto(message, self.address)
        except OSError as exc:
            if not self._warned:  # once: a broken socket would otherwise log on every tick
                self._warned = True
                log.warning("systemd.notify_failed", error=str(exc))


def _socket_address(path: str) -> str | bytes:
    if path.startswith("@"):
        return b"\0" + path[1:].encode("utf-8")
    return path


def watchdog_interval(watchdog_usec: str | None, watchdog_pid: str | None, pid: int) -> float | None:
    """Seconds between pings (half of WatchdogSec, as sd_watchdog_enabled advises), or None when the
    watchdog is off or meant for another process."""
    if not watchdog_usec:
        return None
    if watchdog_pid and watchdog_pid.strip() != str(pid):
        return None
    try:
        usec = int(watchdog_usec)
    except ValueError:
        return None
    return usec / 1_000_000 / 2 if usec > 0 else None


class SystemdObserver:
    """A PollObserver: pings the watchdog from the poll loop, reports STATUS and STOPPING.

    Pinging from the loop (not from a timer thread) means a wedged loop stops the pings and systemd
    restarts the worker. STOPPING=1 is sent on the first tick after a signal set ``stopping`` (the
    signal handler itself only sets flags), or when the loop ends on its own (``--drain``).
    """

    def __init__(
        self,
        notifier: Notifier,
        *,
        ping_every: float | None,
        stopping: threading.Event,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.notifier = notifier
        self.ping_every = ping_every
        self.stopping_event = stopping
        self.clock = clock
        self._last_ping: float | None = None
        self._database_ok: bool | None = None
        self._stopping_sent = False

    def poll_ticked(self, *, database_ok: bool, in_flight: int) -> None:
        if self.stopping_event.is_set():
            self._send_stopping(in_flight)
        elif database_ok != self._database_ok:
            self._database_ok = database_ok
            status = "delivering" if database_ok else "database unavailable, reconnecting"
            self.notifier.notify(f"STATUS={status}")
        if self.ping_every is not None:
            now = self.clock()
            if self._last_ping is None or now - self._last_ping >= self.ping_every:
                self._last_ping = now
                self.notifier.notify("WATCHDOG=1")

    def jobs_claimed(self, jobs: Sequence[Job]) -> None:
        pass

    def outcomes_recorded(self, outcomes: Sequence[Outcome]) -> None:
        pass

    def stopping(self) -> None:
        self._send_stopping(0)

    def _send_stopping(self, in_flight: int) -> None:
        if self._stopping_sent:
            return
        self._stopping_sent = True
        self.notifier.notify("STOPPING=1", f"STATUS=stopping, {in_flight} job(s) in flight")
