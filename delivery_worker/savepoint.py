"""Savepoints: one refused statement rolls back only its own step, not the poll cycle's transaction.

The poll cycle writes outcomes, renews leases, reaps and claims in one transaction. Each step runs in
a savepoint, so a statement PostgreSQL refuses (a constraint, a missing privilege, a lock or statement
timeout) undoes that step alone and the others still commit. A broken connection is not a refusal: it
propagates, and ``db.transaction`` reports it as DatabaseUnavailable.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import psycopg2
from psycopg2.extensions import cursor

# Error classes that mean the session is gone (connection exceptions, operator intervention that ends
# the backend), as opposed to one statement refused on a working session.
SESSION_LOST = ("08", "57P01", "57P02", "57P03")


class Refused(Exception):
    """Raised when PostgreSQL refused a statement inside a savepoint (the savepoint was rolled back)."""


def session_lost(cur: cursor, error: psycopg2.Error) -> bool:
    code = error.pgcode
    return bool(cur.connection.closed) or code is None or code.startswith(SESSION_LOST)


@contextmanager
def savepoint(cur: cursor, name: str = "step") -> Iterator[None]:
    """Run the block in a savepoint; a refused statement raises Refused with PostgreSQL's message
    (after ROLLBACK TO the most recent savepoint of that name)."""
    cur.execute(f"SAVEPOINT {name}")  # name is a constant of the caller, never data
    try:
        yield
    except psycopg2.Error as exc:
        if session_lost(cur, exc):
            raise
        cur.execute(f"ROLLBACK TO SAVEPOINT {name}")
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise Refused(reason) from exc
    # Not released: COMMIT ends it anyway, and a RELEASE would cost a round trip per step and cycle.
