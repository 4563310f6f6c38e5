"""A raw-socket HTTP peer on 127.0.0.1 for answers no well-behaved server gives.

    with raw_http_server(lambda conn: conn.sendall(b"HTTP/1.1 200 OK\\r\\n...")) as server:
        url = server.url("/hook")

``answer(conn)`` is called in its own thread after the request (headers and Content-Length body)
has been read; ``server.requests`` holds the raw request bytes and ``server.sent`` the bytes each
answer managed to write before the client went away.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

Answer = Callable[["RawConnection"], None]


@dataclass
class RawConnection:
    sock: socket.socket
    stopping: threading.Event
    sent: int = 0
    request: bytes = b""  # the raw request this connection answers

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)
        self.sent += len(data)

    def trickle(self, data: bytes, every: float = 0.2) -> None:
        """One byte at a time, ``every`` seconds apart, until done or the server stops."""
        for i in range(len(data)):
            if self.stopping.is_set():
                return
            self.send(data[i : i + 1])
            time.sleep(every)


@dataclass
class RawServer:
    port: int
    requests: list[bytes] = field(default_factory=list)
    sent: list[int] = field(default_factory=list)
    closed: threading.Event = field(default_factory=threading.Event)  # an answer ended (peer gone or done)

    scheme: str = "http"

    def url(self, path: str = "/hook", host: str = "127.0.0.1") -> str:
        return f"{self.scheme}://{host}:{self.port}{path}"


def _read_request(sock: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return head + b"\r\n\r\n" + body


@contextlib.contextmanager
def raw_http_server(answer: Answer, tls: ssl.SSLContext | None = None) -> Iterator[RawServer]:
    """``tls``: a server-side context; each accepted connection is wrapped in it (https)."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    server = RawServer(port=listener.getsockname()[1], scheme="https" if tls else "http")
    stopping = threading.Event()

    def serve(sock: socket.socket) -> None:
        conn = RawConnection(sock, stopping)
        try:
            if tls is not None:
                sock = conn.sock = tls.wrap_socket(sock, server_side=True)
            conn.request = _read_request(sock)
            server.requests.append(conn.request)
            answer(conn)
        except OSError:
            pass  # the client cut the connection: that is what most tests provoke
        finally:
            server.sent.append(conn.sent)
            sock.close()
            server.closed.set()

    def accept_loop() -> None:
        while not stopping.is_set():
            try:
                sock, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            sock.settimeout(None)
            threading.Thread(target=serve, args=(sock,), daemon=True).start()

    thread = threading.Thread(target=accept_loop, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        stopping.set()
        thread.join(timeout=5)
        listener.close()


def endless(conn: RawConnection, head: bytes, chunk: bytes) -> None:
    """``head`` then ``chunk`` again and again until the client goes away or the server stops."""
    conn.send(head)
    while not conn.stopping.is_set():
        conn.send(chunk)
