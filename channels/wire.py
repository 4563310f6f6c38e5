"""What the HTTP helper needs from the connections under requests/urllib3.

- Which connection the current thread is using, so the attempt deadline (channels/deadline.py) can
  shut its socket from the watchdog thread: a peer trickling the headers or the body is then cut.
- A response whose status line survives unreadable headers (more than http.client's 100 header
  lines, or an over-long line): the status is what decides a delivery, so it is kept and raised as
  ``HeadersUnreadable`` instead of being lost in a generic protocol error.
"""

from __future__ import annotations

import contextlib
import http.client
import socket
import threading
from collections.abc import Iterator
from typing import Any


class HeadersUnreadable(http.client.HTTPException):
    """Raised when a response's status line was read but its header block could not be parsed."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"HTTP {status} with unreadable headers ({reason})")
        self.status = status


class StatusFirstResponse(http.client.HTTPResponse):
    """http.client's response, keeping the status when the header block fails to parse."""

    def begin(self) -> None:
        try:
            super().begin()
        except http.client.HTTPException as exc:
            if isinstance(self.status, int) and not isinstance(exc, HeadersUnreadable):
                raise HeadersUnreadable(self.status, type(exc).__name__) from None
            raise


class AttemptConnection:
    """The connection one send is using; ``cut()`` shuts its socket (called by the deadline watchdog)."""

    def __init__(self) -> None:
        self.connection: Any = None

    def cut(self) -> None:
        sock = getattr(self.connection, "sock", None)
        if sock is None:
            return
        # The plain socket's shutdown, also for TLS: SSLSocket.shutdown would drop its SSL object
        # under the thread still reading from it. Shutting down wakes that thread with EOF.
        with contextlib.suppress(OSError):  # already closed: nothing left to cut
            socket.socket.shutdown(sock, socket.SHUT_RDWR)


_current = threading.local()


@contextlib.contextmanager
def watching(attempt: AttemptConnection) -> Iterator[AttemptConnection]:
    """Within the block, connections used by this thread are recorded in ``attempt``."""
    _current.attempt = attempt
    try:
        yield attempt
    finally:
        _current.attempt = None


def note_in_use(connection: Any) -> None:
    """Called by the connection classes when they connect or send a request."""
    attempt = getattr(_current, "attempt", None)
    if attempt is not None:
        attempt.connection = connection
