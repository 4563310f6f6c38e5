"""Peak RSS of the HTTP helper against huge and endless response bodies (issue 12, item 6).

A peer in a separate process (so its memory is not counted) answers every request with a 300 MB
body (200 or 500) or an endless chunked 200; the webhook channel sends to it from this process and
the figure is this process's peak RSS after each case (``ru_maxrss``: it only grows, so each line is
the peak so far); a 500 whose gzip body unpacks to that size checks decompression too. Before the
body cap the same cases took 653 MB (a 200), 1.2 GB (a 500), 3.2 GB (four 500s at once) and
1.56 GB (endless chunked).

    .venv/bin/python -m bench.http_body_rss            # 300 MB bodies
    .venv/bin/python -m bench.http_body_rss --quick    # 30 MB bodies
"""

from __future__ import annotations

import multiprocessing
import resource
import socket
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor

from bench.common import base_parser, machine
from channels.errors import DeliveryError
from channels.registry import build_registry
from channels.webhook import WebhookChannel
from tests.support import make_delivery, make_settings

CHUNK = b"x" * 65536


def _serve(listener: socket.socket, body_bytes: int) -> None:
    """One thread per connection (see _answer)."""
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=_answer, args=(conn, body_bytes), daemon=True).start()


def _answer(conn: socket.socket, body_bytes: int) -> None:
    """By path: /ok and /error send body_bytes; /endless streams chunks until the client leaves."""
    try:
        request = b""
        while b"\r\n\r\n" not in request:
            request += conn.recv(65536)
        path = request.split(b" ", 2)[1]
        if path == b"/endless":
            conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            while True:
                conn.sendall(b"10000\r\n" + CHUNK + b"\r\n")
        if path == b"/bomb":  # gzip of body_bytes zeros: about a thousandth of that on the wire
            packer = zlib.compressobj(9, zlib.DEFLATED, 31)
            zeros = bytes(len(CHUNK))
            bomb = b"".join(packer.compress(zeros) for _ in range(body_bytes // len(CHUNK))) + packer.flush()
            head = f"HTTP/1.1 500 Oops\r\nContent-Encoding: gzip\r\nContent-Length: {len(bomb)}\r\n\r\n"
            conn.sendall(head.encode() + bomb)
            return
        status = b"200 OK" if path == b"/ok" else b"500 Internal Server Error"
        conn.sendall(b"HTTP/1.1 " + status + b"\r\nContent-Length: " + str(body_bytes).encode() + b"\r\n\r\n")
        for _ in range(body_bytes // len(CHUNK)):
            conn.sendall(CHUNK)
    except OSError:
        pass  # the client hung up: the point of the exercise
    finally:
        conn.close()


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    args = base_parser(__doc__ or "").parse_args()
    body_mb = 30 if args.quick else 300
    listener = socket.create_server(("127.0.0.1", 0), backlog=16)
    port = listener.getsockname()[1]
    peer = multiprocessing.get_context("fork").Process(
        target=_serve, args=(listener, body_mb * 1024 * 1024), daemon=True
    )
    peer.start()
    registry = build_registry(make_settings(http={"read_timeout": 10.0}))
    channel = WebhookChannel(registry.context)

    def send(path: str) -> str:
        config = channel.parse_config({"url": f"http://127.0.0.1:{port}{path}"})
        try:
            return f"HTTP {channel.send(config, make_delivery()).http_status}"
        except DeliveryError as exc:
            return type(exc).__name__

    print(f"# http_body_rss: {machine()}, {body_mb} MB bodies, peer in its own process")
    print(f"{'case':<32} {'outcome':<16} {'seconds':>8} {'peak RSS MB':>12}")
    print(f"{'(baseline)':<32} {'':<16} {'':>8} {peak_rss_mb():>12.1f}")
    cases = [
        (f"200 with a {body_mb} MB body", lambda: send("/ok")),
        (f"500 with a {body_mb} MB body", lambda: send("/error")),
        ("endless chunked 200", lambda: send("/endless")),
        (f"500, gzip of {body_mb} MB zeros", lambda: send("/bomb")),
        (f"four 500s at once ({body_mb} MB each)", lambda: ", ".join(_four(send))),
    ]
    for name, run in cases:
        started = time.monotonic()
        outcome = run()
        print(f"{name:<32} {outcome[:16]:<16} {time.monotonic() - started:>8.2f} {peak_rss_mb():>12.1f}")
    registry.close()
    peer.kill()


def _four(send: object) -> list[str]:
    with ThreadPoolExecutor(4) as pool:
        return sorted(set(pool.map(lambda _: send("/error"), range(4))))  # type: ignore[operator]


if __name__ == "__main__":
    main()
