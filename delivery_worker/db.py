"""Opening PostgreSQL connections with bounded sessions, and turning driver errors into our own types.

Every connection the worker opens (poll loop, listener, queue sampler, health probe) carries limits so
that neither another session's lock nor a silent network partition can hold a thread for long:

* server side: ``lock_timeout`` (a row or table lock held by someone else), ``statement_timeout`` and
  ``idle_in_transaction_session_timeout`` (a frozen worker never keeps its locks);
* libpq TCP keepalives and ``tcp_user_timeout``: a peer that vanished is noticed by the kernel;
* client side: every statement and commit is cut (its socket shut down by the watchdog of
  ``channels.deadline``) when no answer came ``CLIENT_GRACE_SECONDS`` after ``statement_timeout``.
  The server would have cancelled the statement by then, so silence means the path to it is gone
  even where keepalives are answered (a proxy or load balancer in between).
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import psycopg2
import psycopg2.errors
import psycopg2.extensions

from channels.deadline import closing_at
from delivery_worker.config import redact_dsn

APPLICATION_NAME = "delivery-worker"
CONNECT_TIMEOUT_SECONDS = 5
CLIENT_GRACE_SECONDS = 5.0

# libpq keepalives: probe after 10 s of silence, every 5 s, give up after 3 unanswered (~25 s idle);
# data sent and not acknowledged for 20 s drops the connection (tcp_user_timeout).
KEEPALIVES: dict[str, Any] = {
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 5,
    "keepalives_count": 3,
    "tcp_user_timeout": 20_000,
}

Connection = psycopg2.extensions.connection


class DatabaseUnavailable(Exception):
    """Raised when PostgreSQL cannot be reached or the connection broke mid-statement."""


class DatabaseBusy(DatabaseUnavailable):
    """Raised when a statement hit ``lock_timeout`` or ``statement_timeout``: the database answers,
    but another session holds what the statement needs. Try again later; the connection is fine.

    A subclass of DatabaseUnavailable so that code which only knows "retry later" keeps its work;
    catch it first to log it as what it is (a lock, not an outage)."""


class DatabaseRejected(Exception):
    """Raised when PostgreSQL refused a statement: a missing privilege, a constraint, bad data."""


@dataclass(frozen=True)
class SessionLimits:
    """Server-side limits of one kind of session, in seconds; 0 means none."""

    statement_timeout: float
    lock_timeout: float
    idle_in_transaction_timeout: float

    def options(self) -> str:
        settings = {
            "statement_timeout": self.statement_timeout,
            "lock_timeout": self.lock_timeout,
            "idle_in_transaction_session_timeout": self.idle_in_transaction_timeout,
        }
        return " ".join(f"-c {name}={int(seconds * 1000)}" for name, seconds in settings.items())

    @property
    def client_limit(self) -> float | None:
        """How long a statement may go unanswered before the client cuts the connection."""
        return self.statement_timeout + CLIENT_GRACE_SECONDS if self.statement_timeout else None


# The worker's own statements take milliseconds (claiming 32 jobs among 1M finished rows: ~8 ms), so
# 15 s is three orders of magnitude of headroom; a lock held by another session is given 5 s.
WORKER_SESSION = SessionLimits(statement_timeout=15, lock_timeout=5, idle_in_transaction_timeout=60)
# /readyz must answer a probe quickly.
PROBE_SESSION = SessionLimits(statement_timeout=2, lock_timeout=1, idle_in_transaction_timeout=10)
# migrate and the operator commands (prune of millions of rows) may legitimately run for minutes and
# wait for the worker's row locks; they keep a lock_timeout so a stuck lock is reported, not waited on.
OPERATOR_SESSION = SessionLimits(statement_timeout=0, lock_timeout=60, idle_in_transaction_timeout=600)


def connect(
    dsn: str,
    *,
    session: SessionLimits = WORKER_SESSION,
    application_name: str = APPLICATION_NAME,
    connect_timeout: float = CONNECT_TIMEOUT_SECONDS,
) -> Connection:
    """A connection with bounded connect time and session limits; the message never shows the password.

    Keepalive settings and ``options`` already in the DSN are kept; the session limits are added last."""
    try:
        given = psycopg2.extensions.parse_dsn(dsn)
        conn = psycopg2.connect(
            dsn,
            connection_factory=BoundedConnection,
            application_name=application_name,
            connect_timeout=max(1, int(connect_timeout)),
            options=f"{given.get('options', '')} {session.options()}".strip(),
            **{key: value for key, value in KEEPALIVES.items() if key not in given},
        )
    except psycopg2.OperationalError as exc:
        raise DatabaseUnavailable(f"cannot connect to {redact_dsn(dsn)}: {_connect_failure(exc)}") from None
    except psycopg2.ProgrammingError:  # parse_dsn: not a DSN at all
        raise DatabaseUnavailable(f"cannot connect to {redact_dsn(dsn)}: not a valid DSN") from None
    bounded: BoundedConnection = conn
    bounded.client_limit = session.client_limit
    return bounded


def _connect_failure(exc: psycopg2.OperationalError) -> str:
    """libpq's last failure line (one per host tried), without its indented hints."""
    lines = [line for line in str(exc).splitlines() if line.strip() and not line[0].isspace()]
    return lines[-1].strip() if lines else "connection failed"


class BoundedConnection(psycopg2.extensions.connection):
    """A connection whose statements, commits and rollbacks are cut when the server stays silent."""

    client_limit: float | None = None

    def cursor(self, *args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("cursor_factory", BoundedCursor)
        return super().cursor(*args, **kwargs)

    def commit(self) -> None:
        with answered_in_time(self):
            super().commit()

    def rollback(self) -> None:
        if self.closed:  # the server rolls back a dropped session itself; keep the original error
            return
        with answered_in_time(self):
            super().rollback()


class BoundedCursor(psycopg2.extensions.cursor):
    def execute(self, query: Any, vars: Any = None) -> None:
        with answered_in_time(self.connection):
            super().execute(query, vars)

    def executemany(self, query: Any, vars_list: Any) -> None:
        with answered_in_time(self.connection):
            super().executemany(query, vars_list)


@contextmanager
def answered_in_time(conn: Connection) -> Iterator[None]:
    """Shut the connection's socket if the block is still waiting after the connection's client limit."""
    limit = getattr(conn, "client_limit", None)
    if limit is None:
        yield
        return
    with closing_at(time.monotonic() + limit, lambda: _shut_socket(conn)) as armed:
        try:
            yield
        except psycopg2.Error:
            if armed.fired:
                raise psycopg2.OperationalError(
                    f"no answer from the database within {limit:g} s (network partition?)"
                ) from None
            raise


def _shut_socket(conn: Connection) -> None:
    """Make the blocked libpq call fail now: shut down (not close) the connection's socket."""
    if conn.closed:
        return
    duplicate = socket.socket(fileno=os.dup(conn.fileno()))
    try:
        duplicate.shutdown(socket.SHUT_RDWR)
    finally:
        duplicate.close()


@contextmanager
def transaction(conn: Connection) -> Iterator[psycopg2.extensions.cursor]:
    """A cursor in a transaction that commits on success and rolls back on error.

    Lock and statement timeouts become DatabaseBusy, other connection-level failures
    DatabaseUnavailable, and refused statements DatabaseRejected, so callers handle the project's
    types rather than the driver's hierarchy.
    """
    try:
        with conn, conn.cursor() as cur:
            yield cur
    except (psycopg2.errors.LockNotAvailable, psycopg2.errors.QueryCanceled) as exc:
        raise DatabaseBusy(busy_reason(exc)) from exc
    except (psycopg2.OperationalError, psycopg2.InterfaceError) as exc:
        reason = (str(exc).strip().splitlines() or ["connection lost"])[0]
        raise DatabaseUnavailable(reason) from exc
    except psycopg2.Error as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise DatabaseRejected(reason) from exc


def busy_reason(exc: psycopg2.Error) -> str:
    detail = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    if isinstance(exc, psycopg2.errors.LockNotAvailable):
        return f"lock timeout: another session holds a lock this statement needs ({detail})"
    return f"statement timeout: the statement ran too long ({detail})"


def is_usable(conn: Connection | None) -> bool:
    return conn is not None and not conn.closed
