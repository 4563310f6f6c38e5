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
    """The connection one send is using; ``cut()`` shuts its socket (called by the deadline watchdog).

    A connection goes back to the pool when its answer is read, and another thread may take it at
    once: ``cut()`` only touches a connection this attempt still owns (the last to use it), and
    ``release()`` at the end of the send makes a late cut a no-op."""

    def __init__(self) -> None:
        self.connection: Any = None

    def cut(self) -> None:
        with _ownership:
            connection = self.connection
            if connection is None or getattr(connection, _OWNER, None) is not self:
                return
            sock = getattr(connection, "sock", None)
            if sock is None:
                return
            # The plain socket's shutdown, also for TLS: SSLSocket.shutdown would drop its SSL object
            # under the thread still reading from it. Shutting down wakes that thread with EOF.
            with contextlib.suppress(OSError):  # already closed: nothing left to cut
                socket.socket.shutdown(sock, socket.SHUT_RDWR)

    def release(self) -> None:
        with _ownership:
            self.connection = None


_OWNER = "_delivery_attempt"
_ownership = threading.Lock()  # who owns a connection changes, and is cut, under this lock
_current = threading.local()


@contextlib.contextmanager
def watching(attempt: AttemptConnection) -> Iterator[AttemptConnection]:
    """Within the block, connections used by this thread are recorded in ``attempt``."""
    _current.attempt = attempt
    try:
        yield attempt
    finally:
        _current.attempt = None
        attempt.release()


def note_in_use(connection: Any) -> None:
    """Called by the connection classes when they connect or send a request."""
    attempt = getattr(_current, "attempt", None)
    with _ownership:
        setattr(connection, _OWNER, attempt)
        if attempt is not None:
            attempt.connection = connection
