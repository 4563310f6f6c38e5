"""An HTTP server whose connections cost no thread until they have sent a request.

``ThreadingHTTPServer`` starts one thread per connection, so 300 idle sockets hold 300 threads. Here
accepted connections wait in one selector on the server's thread; a connection that becomes readable
is handed to a small pool of handler threads, which read the request with a per-read socket timeout
and a wall-clock deadline for the whole exchange. Idle connections are closed after
``idle_timeout``; beyond ``max_connections`` the connection idle longest is closed to make room, so a
crowd of idle sockets can neither hold threads nor lock a health probe out.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

import structlog

from channels.deadline import closing_at

log = structlog.get_logger("delivery_worker.bounded_http")

SELECT_SECONDS = 0.5


class BoundedHTTPServer(HTTPServer):
    request_queue_size = 128  # a burst of connections waits in the kernel, not in SYN retries

    def __init__(
        self,
        address: tuple[str, int],
        handler: type[BaseHTTPRequestHandler],
        *,
        threads: int = 4,
        max_connections: int = 64,
        idle_timeout: float = 10.0,
        request_deadline: float = 15.0,
    ) -> None:
        super().__init__(address, handler)
        self.max_connections = max_connections
        self.idle_timeout = idle_timeout
        self.request_deadline = request_deadline
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="http")
        self.selector = selectors.DefaultSelector()
        self.waiting: dict[socket.socket, tuple[float, Any]] = {}  # arrival order: oldest first
        self.handling = 0
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.stopped = threading.Event()

    def serve(self) -> None:
        """Accept and dispatch until ``stop``; run it on a thread of its own."""
        self.selector.register(self.socket, selectors.EVENT_READ)
        try:
            while not self.stopping.is_set():
                for key, _ in self.selector.select(timeout=SELECT_SECONDS):
                    if key.fileobj is self.socket:
                        self._accept()
                    else:
                        self._dispatch(key.fileobj)  # type: ignore[arg-type]
                self._close_idle()
        finally:
            for conn in list(self.waiting):
                self._drop(conn)
            self.selector.close()
            self.stopped.set()

    def stop(self) -> None:
        self.stopping.set()
        self.stopped.wait(timeout=2 * SELECT_SECONDS + 1)
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.server_close()

    def open_connections(self) -> int:
        with self.lock:
            return len(self.waiting) + self.handling

    def _accept(self) -> None:
        try:
            conn, address = self.socket.accept()
        except OSError:
            return
        if self.open_connections() >= self.max_connections and not self._drop_oldest_idle():
            self.shutdown_request(conn)  # every slot holds a request being answered
            return
        with self.lock:
            self.waiting[conn] = (time.monotonic(), address)
        self.selector.register(conn, selectors.EVENT_READ)

    def _dispatch(self, conn: socket.socket) -> None:
        self.selector.unregister(conn)
        with self.lock:
            _, address = self.waiting.pop(conn)
            self.handling += 1
        self.pool.submit(self._answer, conn, address)

    def _answer(self, conn: socket.socket, address: Any) -> None:
        try:
            cut = lambda: conn.shutdown(socket.SHUT_RDWR)  # noqa: E731
            with closing_at(time.monotonic() + self.request_deadline, cut):
                self.finish_request(conn, address)
        except OSError as exc:  # the client went away or trickled past the deadline
            log.debug("metrics.request_cut", error=type(exc).__name__)
        except Exception:  # a bug answering one request must not take the listener down
            log.exception("metrics.request_failed")
        finally:
            self.shutdown_request(conn)
            with self.lock:
                self.handling -= 1

    def _close_idle(self) -> None:
        cutoff = time.monotonic() - self.idle_timeout
        with self.lock:
            expired = [conn for conn, (since, _) in self.waiting.items() if since < cutoff]
        for conn in expired:
            self._drop(conn)

    def _drop_oldest_idle(self) -> bool:
        with self.lock:
            oldest = next(iter(self.waiting), None)
        if oldest is None:
            return False
        self._drop(oldest)
        return True

    def _drop(self, conn: socket.socket) -> None:
        with self.lock:
            self.waiting.pop(conn, None)
        with contextlib.suppress(KeyError, ValueError):
            self.selector.unregister(conn)
        self.shutdown_request(conn)


def send_reply(
    handler: BaseHTTPRequestHandler, status: int, content_type: str, body: bytes, *, send_body: bool
) -> None:
    """One answer of the worker's listeners (health.py, and supervisor_http.py for several
    processes): never cached; a 405 says which methods are allowed; HEAD gets the headers only."""
    handler.send_response(status)
    handler.send_header("Content-Type", content_type)
    handler.send_header("Content-Length", str(len(body)))
    handler.send_header("Cache-Control", "no-store")
    if status == 405:
        handler.send_header("Allow", "GET, HEAD")
    handler.end_headers()
    if send_body:
        handler.wfile.write(body)
