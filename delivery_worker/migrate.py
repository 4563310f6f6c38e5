"""`migrate`: apply the numbered SQL files in delivery_worker/sql/ once each, in order.

Every file is written to be idempotent (IF NOT EXISTS, guarded ALTERs) so it is safe on a database
that already has the platform's tables; the ledger table only records what was applied. An advisory
lock keeps two workers that migrate at the same moment from racing.
"""

from __future__ import annotations

from importlib import resources

import psycopg2
from psycopg2 import sql

from delivery_worker.db import Connection, DatabaseUnavailable, connect, transaction

LEDGER_DDL = """
CREATE TABLE IF NOT EXISTS delivery_worker_migrations (
    name       TEXT PRIMARY KEY,
    applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
)
"""
ADVISORY_LOCK_KEY = 0x64775F6D6967  # "dw_mig"


def migration_files() -> list[tuple[str, str]]:
    folder = resources.files("delivery_worker") / "sql"
    files = sorted((item for item in folder.iterdir() if item.name.endswith(".sql")), key=lambda f: f.name)
    return [(item.name, item.read_text(encoding="utf-8")) for item in files]


def pending_migrations(conn: Connection) -> list[str]:
    """Names of migrations not yet applied (all of them when the ledger does not exist)."""
    with transaction(conn) as cur:
        cur.execute("SELECT to_regclass('delivery_worker_migrations') IS NOT NULL")
        row = cur.fetchone()
        applied: set[str] = set()
        if row and row[0]:
            cur.execute("SELECT name FROM delivery_worker_migrations")
            applied = {name for (name,) in cur.fetchall()}
    return [name for name, _ in migration_files() if name not in applied]


def apply_migrations(conn: Connection) -> list[str]:
    """Apply what is missing; return the names applied (empty when the schema is current)."""
    applied: list[str] = []
    with transaction(conn) as cur:
        cur.execute("SELECT pg_advisory_xact_lock(%s)", (ADVISORY_LOCK_KEY,))
        cur.execute(LEDGER_DDL)
        cur.execute("SELECT name FROM delivery_worker_migrations")
        done = {name for (name,) in cur.fetchall()}
        for name, text in migration_files():
            if name in done:
                continue
            cur.execute(text)
            cur.execute("INSERT INTO delivery_worker_migrations (name) VALUES (%s)", (name,))
            applied.append(name)
    return applied


def create_database_if_missing(dsn: str) -> bool:
    """Create the DSN's database when it does not exist (for local set-up). True if created."""
    params = psycopg2.extensions.parse_dsn(dsn)
    name = params.get("dbname")
    if not name:
        return False
    try:
        probe = connect(dsn)
        probe.close()
        return False
    except DatabaseUnavailable as exc:
        if "does not exist" not in str(exc):
            raise
    admin = connect(psycopg2.extensions.make_dsn(dsn, dbname="postgres"))
    try:
        admin.autocommit = True
        with admin.cursor() as cur:
            cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    finally:
        admin.close()
    return True
