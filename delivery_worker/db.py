"""Opening PostgreSQL connections, and turning driver errors into one readable exception."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import psycopg2
import psycopg2.extensions

from delivery_worker.config import redact_dsn

APPLICATION_NAME = "delivery-worker"
CONNECT_TIMEOUT_SECONDS = 5

Connection = psycopg2.extensions.connection


class DatabaseUnavailable(Exception):
    """Raised when PostgreSQL cannot be reached or the connection broke mid-statement."""


class DatabaseRejected(Exception):
    """Raised when PostgreSQL refused a statement: a missing privilege, a constraint, bad data."""


def connect(dsn: str) -> Connection:
    """A connection with a bounded connect time; the message never shows the password."""
    try:
        conn = psycopg2.connect(
            dsn, application_name=APPLICATION_NAME, connect_timeout=CONNECT_TIMEOUT_SECONDS
        )
    except psycopg2.OperationalError as exc:
        reason = (str(exc).strip().splitlines() or ["connection failed"])[-1]
        raise DatabaseUnavailable(f"cannot connect to {redact_dsn(dsn)}: {reason}") from None
    return conn


@contextmanager
def transaction(conn: Connection) -> Iterator[psycopg2.extensions.cursor]:
    """A cursor in a transaction that commits on success and rolls back on error.

    Connection-level failures become DatabaseUnavailable and refused statements DatabaseRejected,
    so callers handle the project's two types rather than the driver's hierarchy.
    """
    try:
        with conn, conn.cursor() as cur:
            yield cur
    except (psycopg2.OperationalError, psycopg2.InterfaceError) as exc:
        reason = (str(exc).strip().splitlines() or ["connection lost"])[0]
        raise DatabaseUnavailable(reason) from exc
    except psycopg2.Error as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise DatabaseRejected(reason) from exc


def is_usable(conn: Connection | None) -> bool:
    return conn is not None and not conn.closed
