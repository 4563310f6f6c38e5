"""LISTEN for new-job notifications on a connection of its own and wake the poll loop.

Runs in a daemon thread. Notifications are a latency optimisation only: when the connection
drops, the listener reconnects quietly with backoff, and the poll loop's ``poll_interval`` keeps
the worker correct in the meantime. A LISTEN connection only ever waits, so it would never notice a
silent partition by itself: after ``liveness_seconds`` without traffic it repeats its LISTEN (a
round trip, cut by the session's client-side limit when no answer comes) and reconnects on failure.
"""

from __future__ import annotations

import select
import threading
import time

import structlog

from delivery_worker.db import Connection, DatabaseUnavailable, connect

log = structlog.get_logger("delivery_worker.listener")

CHANNELS = ("delivery_worker_new_job", "new_delivery_job")  # ours, and the platform's own
MAX_BACKOFF_SECONDS = 15.0
LIVENESS_SECONDS = 30.0


class NotificationListener:
    def __init__(
        self,
        dsn: str,
        wake: threading.Event,
        stopping: threading.Event,
        *,
        liveness_seconds: float = LIVENESS_SECONDS,
    ) -> None:
        self.dsn = dsn
        self.liveness_seconds = liveness_seconds
        self.wake = wake
        self.stopping = stopping
        self.thread = threading.Thread(target=self._run, name="listen", daemon=True)
        self.connected = threading.Event()

    def start(self) -> NotificationListener:
        self.thread.start()
        return self

    def _run(self) -> None:
        backoff = 0.5
        while not self.stopping.is_set():
            try:
                conn = self._listen()
            except DatabaseUnavailable:
                self.stopping.wait(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF_SECONDS)
                continue
            backoff = 0.5
            try:
                self._wait_for_notifications(conn)
            except Exception as exc:  # any driver error: reconnect; polling covers the gap
                log.debug("listener.reconnecting", error=type(exc).__name__)
            finally:
                self.connected.clear()
                conn.close()

    def _listen(self) -> Connection:
        conn = connect(self.dsn)
        conn.autocommit = True
        with conn.cursor() as cur:
            for channel in CHANNELS:
                cur.execute(f"LISTEN {channel}")
        self.connected.set()
        self.wake.set()  # catch anything queued while we were not listening
        return conn

    def _wait_for_notifications(self, conn: Connection) -> None:
        heard = time.monotonic()
        while not self.stopping.is_set():
            readable, _, _ = select.select([conn], [], [], min(1.0, self.liveness_seconds))
            if not readable:
                if time.monotonic() - heard >= self.liveness_seconds:
                    with conn.cursor() as cur:  # raises when the path to the server is gone
                        cur.execute(f"LISTEN {CHANNELS[0]}")
                    heard = time.monotonic()
                continue
            heard = time.monotonic()
            conn.poll()
            if conn.notifies:
                conn.notifies.clear()
                self.wake.set()
