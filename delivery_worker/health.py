"""The worker's HTTP listener: ``/metrics`` for Prometheus and ``/healthz`` for probes.

``/healthz`` answers 200 only when both hold:

* the database answers ``SELECT 1`` within ``DATABASE_TIMEOUT_SECONDS``, on a connection of the
  listener's own (a probe never waits behind the poll loop);
* the poll loop ticked within ``stale_after`` seconds (see ``staleness_bound``).

Otherwise 503. The body is JSON either way, e.g.
``{"status": "ok", "database": "ok", "last_poll_age_s": 0.4}``.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from typing import Any

import psycopg2
import structlog
from prometheus_client import CONTENT_TYPE_PLAIN_0_0_4, CollectorRegistry, generate_latest

from delivery_worker.bounded_http import BoundedHTTPServer
from delivery_worker.config import redact_dsn
from delivery_worker.db import APPLICATION_NAME, PROBE_SESSION, Connection, DatabaseUnavailable, connect

log = structlog.get_logger("delivery_worker.health")

DATABASE_TIMEOUT_SECONDS = 2
HANDLER_THREADS = 4
MAX_CONNECTIONS = 64
IDLE_SECONDS = 10.0
READ_TIMEOUT_SECONDS = 5.0
MIN_STALE_AFTER_SECONDS = 30.0


def staleness_bound(poll_interval: float) -> float:
    """How long the poll loop may go without a tick before /healthz fails.

    An idle loop ticks every ``poll_interval``; during a database outage it ticks at least every
    15 s reconnect wait plus a 5 s connect timeout. Three intervals, never under 30 s, covers both
    without flapping, and is still well inside the systemd watchdog of the example unit.
    """
    return max(3 * poll_interval, MIN_STALE_AFTER_SECONDS)


@dataclass(frozen=True)
class Health:
    healthy: bool
    database: str  # "ok" or the error
    last_poll_age_s: float

    def body(self) -> dict[str, Any]:
        return {
            "status": "ok" if self.healthy else "unhealthy",
            "database": self.database,
            "last_poll_age_s": round(self.last_poll_age_s, 3),
        }


class HealthCheck:
    """Answers "is this worker healthy?"; thread-safe (probes may overlap)."""

    def __init__(self, dsn: str, last_poll_age: Callable[[], float], stale_after: float) -> None:
        self.dsn = dsn
        self.last_poll_age = last_poll_age
        self.stale_after = stale_after
        self._conn: Connection | None = None
        self._lock = threading.Lock()

    def check(self) -> Health:
        database = self._check_database()
        age = self.last_poll_age()
        return Health(database == "ok" and age <= self.stale_after, database, age)

    def _check_database(self) -> str:
        with self._lock:
            try:
                if self._conn is None or self._conn.closed:
                    # A probe's own short limits: it must answer within seconds whatever the database does.
                    self._conn = connect(
                        self.dsn,
                        session=PROBE_SESSION,
                        application_name=f"{APPLICATION_NAME} healthz",
                        connect_timeout=DATABASE_TIMEOUT_SECONDS,
                    )
                    self._conn.autocommit = True
                with self._conn.cursor() as cur:
                    cur.execute("SELECT 1")
                    cur.fetchone()
                return "ok"
            except DatabaseUnavailable as exc:  # connect() already names host and port, password masked
                return str(exc)
            except psycopg2.Error as exc:
                self._close()
                lines = str(exc).strip().splitlines() or [type(exc).__name__]
                return redact_dsn(lines[0].strip())

    def close(self) -> None:
        with self._lock:
            self._close()

    def _close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


class HealthServer:
    """A BoundedHTTPServer on a daemon thread. Port 0 picks a free port (see ``port``).

    Scrapes and probes are small and rare: HANDLER_THREADS threads answer them, at most
    MAX_CONNECTIONS sockets are open at once, and a socket that sends nothing for IDLE_SECONDS (or
    waits READ_TIMEOUT_SECONDS for its next bytes) is closed."""

    def __init__(self, host: str, port: int, registry: CollectorRegistry, health: HealthCheck) -> None:
        self.health = health
        self.httpd = BoundedHTTPServer(
            (host, port),
            _handler(registry, health),
            threads=HANDLER_THREADS,
            max_connections=MAX_CONNECTIONS,
            idle_timeout=IDLE_SECONDS,
        )
        self.port: int = self.httpd.server_address[1]
        self.host = host
        self._thread = threading.Thread(target=self.httpd.serve, name="health-http", daemon=True)

    def start(self) -> HealthServer:
        self._thread.start()
        log.info("metrics.listening", host=self.host, port=self.port)
        return self

    def stop(self) -> None:
        if self._thread.is_alive():
            self.httpd.stop()
        else:  # never started: nothing to wait for
            self.httpd.server_close()
        self.health.close()


def _handler(registry: CollectorRegistry, health: HealthCheck) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "delivery-worker"
        timeout = READ_TIMEOUT_SECONDS  # per read of the request: a silent client is dropped

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._reply(200, CONTENT_TYPE_PLAIN_0_0_4, generate_latest(registry))
            elif path == "/healthz":
                result = health.check()
                body = json.dumps(result.body()).encode("utf-8")
                self._reply(200 if result.healthy else 503, "application/json", body)
            else:
                self._reply(404, "text/plain; charset=utf-8", b"not found: try /metrics or /healthz\n")

        def _reply(self, status: int, content_type: str, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # probes every few seconds would drown the job log lines

    return Handler
