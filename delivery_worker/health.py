"""The worker's HTTP listener: ``/metrics`` for Prometheus, ``/livez`` and ``/readyz`` for probes.

Liveness and readiness answer different questions, and an orchestrator acts on them differently:

* ``/livez`` — "is the process still working, or should it be restarted?" 200 while the worker's
  loop ticked within ``staleness_bound`` (the poll loop, or the start-up wait for the database).
  It never looks at the database: a worker riding out an outage holds outcomes it will write once
  the database is back, and restarting it would throw them away (or spool them) for nothing.
* ``/readyz`` — "can this worker do its job now?" 200 only when the database answers on a
  connection of the listener's own (a probe never waits behind the poll loop) **and** no migration
  this worker knows is pending; 503 while the database is away, the schema is behind, or the
  worker is stopping.
* ``/healthz`` — kept for existing probes, with ``/livez`` semantics: everything that points at a
  single health URL (Procfile platforms' checks, Docker ``HEALTHCHECK``, old liveness probes)
  answers a failure by restarting, which is exactly the wrong reaction to a database outage.

Bodies are short JSON that never names a host, port or DSN (the listener may face the internet
under ``$PORT``); the detail of a failing readiness check goes to the log (``health.not_ready``).
``HEAD`` is answered like ``GET`` without the body; other methods get 405.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from typing import Any

import structlog
from prometheus_client import CONTENT_TYPE_PLAIN_0_0_4, CollectorRegistry, generate_latest

from delivery_worker.bounded_http import BoundedHTTPServer, send_reply
from delivery_worker.db import (
    APPLICATION_NAME,
    PROBE_SESSION,
    Connection,
    DatabaseBusy,
    DatabaseRejected,
    DatabaseUnavailable,
    connect,
)
from delivery_worker.jobs import Job, Outcome
from delivery_worker.migrate import pending_migrations

log = structlog.get_logger("delivery_worker.health")

DATABASE_TIMEOUT_SECONDS = 2
HANDLER_THREADS = 4
MAX_CONNECTIONS = 64
IDLE_SECONDS = 10.0
READ_TIMEOUT_SECONDS = 5.0
MIN_STALE_AFTER_SECONDS = 60.0
JSON = "application/json"
ENDPOINTS = ("/metrics", "/livez", "/readyz", "/healthz")


def staleness_bound(poll_interval: float) -> float:
    """How long the loop may go without a tick before /livez fails.

    An idle loop ticks every ``poll_interval``. During a database outage the longest gap is about
    40 s: a silent statement is cut after 20 s (db.py), then up to a 15 s reconnect wait and a 5 s
    connect timeout. Three intervals, never under 60 s (the example unit's ``WatchdogSec``), covers
    that with room to spare, so a worker riding out an outage is never restarted by its probe."""
    return max(3 * poll_interval, MIN_STALE_AFTER_SECONDS)


@dataclass(frozen=True)
class ProbeResult:
    ok: bool
    body: dict[str, Any]


class LoopLiveness:
    """When the worker's loop last showed it is alive; ticked by the start-up wait for the database
    and, as a PollObserver, by every poll loop iteration (the loop keeps ticking during an outage)."""

    def __init__(self, stale_after: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.stale_after = stale_after
        self.clock = clock
        self._last = clock()  # start-up counts as a tick: the wait for the database ticks from here

    def tick(self) -> None:
        self._last = self.clock()

    def age(self) -> float:
        return self.clock() - self._last

    def check(self) -> ProbeResult:
        age = self.age()
        body: dict[str, Any] = {"status": "ok", "last_tick_age_s": round(age, 3)}
        if age > self.stale_after:
            body.update(status="stale", stale_after_s=self.stale_after)
        return ProbeResult(age <= self.stale_after, body)

    # --- PollObserver ----------------------------------------------------------------------------

    def poll_ticked(self, *, database_ok: bool, in_flight: int) -> None:
        self.tick()

    def jobs_claimed(self, jobs: Sequence[Job]) -> None:
        pass

    def outcomes_recorded(self, outcomes: Sequence[Outcome]) -> None:
        pass

    def stopping(self) -> None:
        pass


class ReadinessCheck:
    """Answers "can this worker deliver now?"; thread-safe (probes may overlap).

    The answer in the body is one word per part (``unreachable``, ``busy``, ``refused``); the
    database's own message, which names its host and port, is logged once per change instead."""

    def __init__(self, dsn: str, stopping: threading.Event | None = None) -> None:
        self.dsn = dsn
        self.stopping = stopping or threading.Event()
        self._conn: Connection | None = None
        self._lock = threading.Lock()
        self._last_problem: str | None = None

    def check(self) -> ProbeResult:
        if self.stopping.is_set():
            return ProbeResult(False, {"status": "stopping"})
        with self._lock:
            database, schema, detail = self._check_database()
            self._log_change(detail)
        ok = database == "ok" and schema == "current"
        status = "ok" if ok else "not ready"
        return ProbeResult(ok, {"status": status, "database": database, "schema": schema})

    def _check_database(self) -> tuple[str, str, str | None]:
        """(database, schema, detail for the log): database is ok, unreachable, busy or refused."""
        try:
            if self._conn is None or self._conn.closed:
                # A probe's own short limits: it must answer within seconds whatever the database does.
                self._conn = connect(
                    self.dsn,
                    session=PROBE_SESSION,
                    application_name=f"{APPLICATION_NAME} probe",
                    connect_timeout=DATABASE_TIMEOUT_SECONDS,
                )
                self._conn.autocommit = True
            pending = pending_migrations(self._conn)
        except DatabaseBusy as exc:  # before DatabaseUnavailable: it is a subclass
            return "busy", "unknown", str(exc)
        except DatabaseUnavailable as exc:
            self._close()
            return "unreachable", "unknown", str(exc)
        except DatabaseRejected as exc:  # e.g. SELECT on delivery_worker_migrations revoked
            self._close()
            return "refused", "unknown", str(exc)
        except Exception as exc:  # a probe must answer whatever went wrong; the log says what
            self._close()
            return "error", "unknown", f"{type(exc).__name__}: {exc}"
        if pending:
            return "ok", f"{len(pending)} migration(s) pending", f"pending migrations: {', '.join(pending)}"
        return "ok", "current", None

    def _log_change(self, problem: str | None) -> None:
        if problem == self._last_problem:
            return
        if problem is None:
            log.info("health.ready")
        else:
            log.warning("health.not_ready", reason=problem)
        self._last_problem = problem

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

    def __init__(
        self,
        host: str,
        port: int,
        registry: CollectorRegistry,
        liveness: LoopLiveness,
        readiness: ReadinessCheck,
    ) -> None:
        self.readiness = readiness
        self.httpd = BoundedHTTPServer(
            (host, port),
            _handler(registry, liveness, readiness),
            threads=HANDLER_THREADS,
            max_connections=MAX_CONNECTIONS,
            idle_timeout=IDLE_SECONDS,
        )
        self.port: int = self.httpd.server_address[1]
        self.host = host
        self._thread = threading.Thread(target=self.httpd.serve, name="health-http", daemon=True)

    def start(self) -> HealthServer:
        self._thread.start()
        log.info("metrics.listening", host=self.host, port=self.port, endpoints=list(ENDPOINTS))
        return self

    def stop(self) -> None:
        if self._thread.is_alive():
            self.httpd.stop()
        else:  # never started: nothing to wait for
            self.httpd.server_close()
        self.readiness.close()


def _handler(
    registry: CollectorRegistry, liveness: LoopLiveness, readiness: ReadinessCheck
) -> type[BaseHTTPRequestHandler]:
    probes: dict[str, Callable[[], ProbeResult]] = {
        "/livez": liveness.check,
        "/healthz": liveness.check,  # see the module docstring for why not readiness
        "/readyz": readiness.check,
    }

    class Handler(BaseHTTPRequestHandler):
        server_version = "delivery-worker"
        timeout = READ_TIMEOUT_SECONDS  # per read of the request: a silent client is dropped

        def do_GET(self) -> None:
            self._answer(send_body=True)

        def do_HEAD(self) -> None:
            self._answer(send_body=False)

        def _not_allowed(self) -> None:
            self._reply(405, "text/plain; charset=utf-8", b"method not allowed: use GET or HEAD\n", True)

        do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _not_allowed

        def _answer(self, *, send_body: bool) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._reply(200, CONTENT_TYPE_PLAIN_0_0_4, generate_latest(registry), send_body)
            elif path in probes:
                result = probes[path]()
                body = json.dumps(result.body).encode("utf-8") + b"\n"
                self._reply(200 if result.ok else 503, JSON, body, send_body)
            else:
                hint = f"not found: try {', '.join(ENDPOINTS)}\n".encode()
                self._reply(404, "text/plain; charset=utf-8", hint, send_body)

        def _reply(self, status: int, content_type: str, body: bytes, send_body: bool) -> None:
            send_reply(self, status, content_type, body, send_body=send_body)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # probes every few seconds would drown the job log lines

    return Handler
