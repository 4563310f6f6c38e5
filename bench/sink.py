"""A fast HTTP/1.1 sink for the benchmarks, run as its own process: ``python -m bench.sink``.

One asyncio event loop answers every request with ``200 ok`` as soon as its body has arrived,
keeping connections alive, so the sink costs the worker under test as little as possible (and,
being another process, none of its GIL). It records the first arrival of each ``Idempotency-Key``
(``time.monotonic()``, which is CLOCK_MONOTONIC and therefore comparable between processes on one
machine).

Paths:

- ``/delay/<ms>/...``: recorded at arrival, answered ``200 ok`` after ``<ms>`` milliseconds (a slow
  endpoint, e.g. ``/delay/40/hook`` for bench/storm.py).
- ``/hang...``: recorded, then never answered; the connection is held until the client gives up
  (its read timeout) or ``--hold-seconds`` pass.
- ``/__stats``: ``{"count", "requests", "hung", "cpu_s"}`` (distinct keys, requests, held requests).
- ``/__arrivals``: ``{key: arrival}`` for every answered key.
- ``/__wait?count=N&timeout=T``: answers once N distinct keys have arrived (or after T seconds).
- ``/__wait?key=K&timeout=T``: answers ``{"t": arrival}`` once K has arrived (``null`` after T).
- ``/__reset``: forgets everything recorded.

The parent reads ``PORT <n>`` from the first line of stdout. The sink exits when its stdin closes
(the parent ended) or after ``--max-seconds``, whichever comes first.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
from urllib.parse import parse_qs, urlsplit

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nok"
MAX_HEAD_BYTES = 64 * 1024


class Recorder:
    """What arrived, and who is waiting for what. Used only from the event loop's thread."""

    def __init__(self, loop: asyncio.AbstractEventLoop, hold_seconds: float) -> None:
        self.loop = loop
        self.hold_seconds = hold_seconds
        self.arrivals: dict[str, float] = {}
        self.requests = 0
        self.hung = 0
        self.count_waiters: list[tuple[int, asyncio.Future[None]]] = []
        self.key_waiters: dict[str, list[asyncio.Future[None]]] = {}
        self.tasks: set[asyncio.Future[None]] = set()

    def arrived(self, key: str, when: float) -> None:
        self.requests += 1
        if not key or key in self.arrivals:
            return
        self.arrivals[key] = when
        waiting = self.key_waiters.pop(key, None)
        for future in waiting or ():
            if not future.done():
                future.set_result(None)
        if self.count_waiters:
            count = len(self.arrivals)
            for target, future in self.count_waiters:
                if count >= target and not future.done():
                    future.set_result(None)
            self.count_waiters = [(n, f) for n, f in self.count_waiters if not f.done()]

    def reset(self) -> None:
        self.arrivals.clear()
        self.requests = 0
        self.hung = 0

    def stats(self) -> dict[str, float]:
        return {
            "count": len(self.arrivals),
            "requests": self.requests,
            "hung": self.hung,
            "cpu_s": time.process_time(),
        }

    async def wait(self, query: dict[str, list[str]]) -> bytes:
        timeout = min(float(query.get("timeout", ["10"])[0]), 600.0)
        future: asyncio.Future[None] = self.loop.create_future()
        if "key" in query:
            key = query["key"][0]
            if key not in self.arrivals:
                self.key_waiters.setdefault(key, []).append(future)
                await _wait_bounded(future, timeout)
            return json.dumps({"t": self.arrivals.get(key)}).encode()
        target = int(query.get("count", ["0"])[0])
        if len(self.arrivals) < target:
            self.count_waiters.append((target, future))
            await _wait_bounded(future, timeout)
        return json.dumps(self.stats()).encode()


def _answer(transport: asyncio.Transport) -> None:
    if not transport.is_closing():
        transport.write(OK)


def _delay_ms(target: str) -> float:
    """The ``<ms>`` of a ``/delay/<ms>/...`` target (0 for any other target)."""
    if not target.startswith("/delay/"):
        return 0.0
    try:
        return max(0.0, float(target.split("/")[2]))
    except ValueError:
        return 0.0


async def _wait_bounded(future: asyncio.Future[None], timeout: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(future, timeout)


class SinkProtocol(asyncio.Protocol):
    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        self.held = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if self.held:
            return  # a held request: ignore anything else on this connection
        self.buffer += data
        while self.transport is not None and not self.held:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buffer) > MAX_HEAD_BYTES:
                    self.transport.close()
                return
            head = bytes(self.buffer[:end]).decode("latin-1")
            lines = head.split("\r\n")
            headers = {}
            for line in lines[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            total = end + 4 + int(headers.get("content-length", "0") or 0)
            if len(self.buffer) < total:
                return
            del self.buffer[:total]
            parts = lines[0].split(" ")
            self.handle(parts[1] if len(parts) > 1 else "/", headers)

    def handle(self, target: str, headers: dict[str, str]) -> None:
        assert self.transport is not None
        now = time.monotonic()
        if target.startswith("/__"):
            task = asyncio.ensure_future(self.control(target))
            self.recorder.tasks.add(task)  # keep a reference until it is done
            task.add_done_callback(self.recorder.tasks.discard)
            return
        key = headers.get("idempotency-key", "")
        if target.startswith("/hang"):
            self.held = True
            self.recorder.hung += 1
            self.recorder.loop.call_later(self.recorder.hold_seconds, self.transport.close)
            return
        self.recorder.arrived(key, now)
        delay_ms = _delay_ms(target)
        if delay_ms:
            self.recorder.loop.call_later(delay_ms / 1000, _answer, self.transport)
            return
        self.transport.write(OK)

    async def control(self, target: str) -> None:
        parts = urlsplit(target)
        query = parse_qs(parts.query)
        recorder = self.recorder
        if parts.path == "/__wait":
            body = await recorder.wait(query)
        elif parts.path == "/__arrivals":
            body = json.dumps(recorder.arrivals).encode()
        elif parts.path == "/__reset":
            recorder.reset()
            body = b"{}"
        else:
            body = json.dumps(recorder.stats()).encode()
        if self.transport is not None and not self.transport.is_closing():
            head = f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
            self.transport.write(head.encode() + body)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None


async def serve(port: int, hold_seconds: float, max_seconds: float) -> None:
    loop = asyncio.get_running_loop()
    recorder = Recorder(loop, hold_seconds)
    server = await loop.create_server(lambda: SinkProtocol(recorder), "127.0.0.1", port, backlog=1024)
    bound = server.sockets[0].getsockname()[1]
    print(f"PORT {bound}", flush=True)
    parent_gone = loop.create_future()

    def stdin_readable() -> None:
        if not sys.stdin.buffer.read1(4096) and not parent_gone.done():
            parent_gone.set_result(None)

    loop.add_reader(sys.stdin.fileno(), stdin_readable)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(parent_gone, max_seconds)
    server.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--hold-seconds", type=float, default=60.0, help="longest a /hang request is held")
    parser.add_argument("--max-seconds", type=float, default=3600.0, help="exit after this long regardless")
    args = parser.parse_args()
    asyncio.run(serve(args.port, args.hold_seconds, args.max_seconds))


if __name__ == "__main__":
    main()
