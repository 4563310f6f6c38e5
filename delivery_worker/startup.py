"""Getting to READY: wait for an unreachable database, then check its schema and grants.

After a reboot or a failover the database is often not there yet. Exiting would hand the retry to
the process manager (and systemd gives up after its start limit), so the worker waits itself, with
backoff, logging ``database.waiting`` at once and then at most every ``WAITING_LOG_SECONDS``, and
keeps systemd's start timeout extended while it does. Missing migrations are waited for the same
way (``schema.waiting``), but only for ``[database] schema_wait_seconds``: a Procfile platform starts
``release`` (migrate) and ``worker`` together, so the worker may simply be early; past that bound a
human must act, and it is one loud line and exit 1. So is a missing GRANT, at once (see
docs/operations-start.md).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import structlog

from delivery_worker.db import (
    CONNECT_TIMEOUT_SECONDS,
    Connection,
    DatabaseRejected,
    DatabaseUnavailable,
    connect,
)
from delivery_worker.migrate import migration_in_progress, pending_migrations
from delivery_worker.privileges import check_run_privileges, check_schema_access
from delivery_worker.systemd import Notifier

log = structlog.get_logger("delivery_worker.startup")

FIRST_RETRY_SECONDS = 0.5
MAX_RETRY_SECONDS = 15.0
WAITING_LOG_SECONDS = 60.0


class SchemaNotReady(Exception):
    """Raised when the database lacks migrations this worker needs."""

    def __init__(self, missing: list[str]) -> None:
        super().__init__(
            f"database schema is not up to date (missing {', '.join(missing)}): run `delivery-worker migrate`"
        )
        self.missing = missing


def wait_for_database(
    dsn: str,
    stopping: threading.Event,
    notifier: Notifier,
    *,
    clock: Callable[[], float] = time.monotonic,
    alive: Callable[[], None] | None = None,
) -> Connection | None:
    """A connection once the database answers, or None if ``stopping`` was set first.

    ``alive`` is called on every try: waiting is this worker working as it should (/livez)."""
    delay = FIRST_RETRY_SECONDS
    since: float | None = None
    next_log = 0.0
    attempts = 0
    while not stopping.is_set():
        attempts += 1
        if alive is not None:
            alive()
        try:
            conn = connect(dsn)
        except DatabaseUnavailable as exc:
            now = clock()
            if since is None:
                since = now
            if now >= next_log:
                next_log = now + WAITING_LOG_SECONDS
                log.warning(
                    "database.waiting",
                    error=str(exc),
                    attempts=attempts,
                    waited_s=round(now - since, 1),
                    retry_in_s=delay,
                )
            # Keep systemd's start job alive while we wait (it would kill a silent start at TimeoutStartSec).
            extend_usec = int((delay + CONNECT_TIMEOUT_SECONDS + 5) * 1_000_000)
            notifier.notify("STATUS=waiting for the database", f"EXTEND_TIMEOUT_USEC={extend_usec}")
            stopping.wait(delay)
            delay = min(delay * 2, MAX_RETRY_SECONDS)
            continue
        if since is not None:
            log.info("database.connected", waited_s=round(clock() - since, 1), attempts=attempts)
        return conn
    return None


def check_schema(conn: Connection) -> None:
    """Raise SchemaNotReady or MissingPrivileges (one line each) unless this worker can run."""
    check_schema_access(conn)
    missing = pending_migrations(conn)
    if missing:
        raise SchemaNotReady(missing)
    check_run_privileges(conn)


def connect_and_check(
    dsn: str,
    stopping: threading.Event,
    notifier: Notifier,
    *,
    wait: bool,
    alive: Callable[[], None] | None = None,
    schema_wait_seconds: float = 0.0,
    clock: Callable[[], float] = time.monotonic,
) -> bool:
    """Wait for the database (or, without ``wait``, try once) and check it. False: stopped while waiting.

    With ``wait``, missing migrations are waited for up to ``schema_wait_seconds``.
    Raises DatabaseUnavailable (only without ``wait``), SchemaNotReady or MissingPrivileges."""
    schema = SchemaWait(schema_wait_seconds if wait else 0.0, notifier, clock)
    while True:
        conn = wait_for_database(dsn, stopping, notifier, alive=alive) if wait else connect(dsn)
        if conn is None:
            return False
        try:
            check_schema(conn)
            schema.ready()
            return True
        except DatabaseUnavailable as exc:
            if not wait:
                raise
            # Lost between connecting and checking (a failover in progress): wait again.
            log.warning("database.waiting", error=str(exc), stage="schema check")
            stopping.wait(MAX_RETRY_SECONDS)
        except SchemaNotReady as exc:
            stopping.wait(schema.next_delay(exc, conn))
        finally:
            conn.close()


class SchemaWait:
    """How long to wait for missing migrations, and the ``schema.waiting`` lines while doing so."""

    def __init__(self, limit_seconds: float, notifier: Notifier, clock: Callable[[], float]) -> None:
        self.limit = limit_seconds
        self.notifier = notifier
        self.clock = clock
        self.since: float | None = None
        self.next_log = 0.0
        self.delay = FIRST_RETRY_SECONDS

    def next_delay(self, exc: SchemaNotReady, conn: Connection) -> float:
        """Seconds until the next check; re-raises ``exc`` once the limit is spent."""
        now = self.clock()
        if self.since is None:
            self.since = now
        waited = now - self.since
        if waited >= self.limit:
            raise exc
        delay = min(self.delay, self.limit - waited)
        self.delay = min(self.delay * 2, MAX_RETRY_SECONDS)
        if now >= self.next_log:
            self.next_log = now + WAITING_LOG_SECONDS
            log.warning(
                "schema.waiting",
                missing=exc.missing,
                migrate_running=_migrate_running(conn),
                waited_s=round(waited, 1),
                gives_up_in_s=round(self.limit - waited, 1),
            )
        extend_usec = int((delay + CONNECT_TIMEOUT_SECONDS + 5) * 1_000_000)
        self.notifier.notify(
            "STATUS=waiting for `delivery-worker migrate`", f"EXTEND_TIMEOUT_USEC={extend_usec}"
        )
        return delay

    def ready(self) -> None:
        if self.since is not None:
            log.info("schema.ready", waited_s=round(self.clock() - self.since, 1))


def _migrate_running(conn: Connection) -> bool | None:
    try:
        return migration_in_progress(conn)
    except (DatabaseUnavailable, DatabaseRejected):  # only a detail of the log line
        return None
