"""`migrate`: apply the numbered SQL files in delivery_worker/sql/ once each, in order, without
holding a lock that producers would queue behind for long.

Every file is written to be idempotent (IF NOT EXISTS, guarded ALTERs) so it is safe on a database
that already has the platform's tables, and safe to run again after an interruption; the ledger
table only records which files finished (by name: a file may be reworked as long as its end state
stays the same, see docs/upgrading.md).

A file is one transaction, unless it is split into sections by marker lines:

* ``-- migrate:no-transaction`` — the statements that follow run one by one, each on its own
  (``CREATE INDEX CONCURRENTLY``, ``DO`` blocks that ``COMMIT`` between batches). They take no lock
  that blocks producers' INSERTs, so they run without ``lock_timeout``. A
  ``CREATE INDEX CONCURRENTLY IF NOT EXISTS name`` whose index exists but is INVALID (a build that
  was interrupted) drops that index first, so the build is done again rather than skipped.
* ``-- migrate:transaction`` — the statements that follow run in one transaction (the default for
  the start of a file). Its locks are taken with ``SET LOCAL lock_timeout`` (``[database]
  migrate_lock_timeout``): a lock that cannot be had in time is given up (and producers stop
  queueing behind it) and tried again a few times, then migrate stops with one line saying so.

A session-level advisory lock keeps two `migrate` runs apart. The second one polls for it rather
than waiting inside a statement, because a waiting statement keeps a snapshot open, and
``CREATE INDEX CONCURRENTLY`` in the first run would wait for that snapshot.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources

import psycopg2
import psycopg2.errors
from psycopg2 import sql

from delivery_worker.db import Connection, DatabaseUnavailable, connect, transaction

LEDGER_DDL = """
CREATE TABLE IF NOT EXISTS delivery_worker_migrations (
    name       TEXT PRIMARY KEY,
    applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
)
"""
ADVISORY_LOCK_KEY = 0x64775F6D6967  # "dw_mig"
NO_TRANSACTION_MARKER = "-- migrate:no-transaction"
TRANSACTION_MARKER = "-- migrate:transaction"
DEFAULT_LOCK_TIMEOUT_SECONDS = 3.0
LOCK_ATTEMPTS = 3  # a transactional section that hit lock_timeout is tried this many times in all
LOCK_RETRY_PAUSE_SECONDS = 1.0
ADVISORY_POLL_SECONDS = 0.5

CONCURRENT_INDEX = re.compile(
    r"^\s*CREATE\s+(?:UNIQUE\s+)?INDEX\s+CONCURRENTLY\s+IF\s+NOT\s+EXISTS\s+(\w+)", re.IGNORECASE
)
INVALID_INDEX = """
SELECT NOT i.indisvalid FROM pg_index i WHERE i.indexrelid = to_regclass(%s)
"""

Report = Callable[[str], None]


class MigrationLockTimeout(Exception):
    """Raised when a migration could not get a table lock within ``migrate_lock_timeout``."""


class MigrationFailed(Exception):
    """Raised when the database refused a migration statement (one line naming file and statement)."""


@dataclass(frozen=True)
class Section:
    """Statements that run together in one transaction, or one by one outside any."""

    in_transaction: bool
    statements: tuple[str, ...]


@dataclass(frozen=True)
class Migration:
    name: str
    sections: tuple[Section, ...]


def migration_files() -> list[tuple[str, str]]:
    folder = resources.files("delivery_worker") / "sql"
    files = sorted((item for item in folder.iterdir() if item.name.endswith(".sql")), key=lambda f: f.name)
    return [(item.name, item.read_text(encoding="utf-8")) for item in files]


def parse_migration(name: str, text: str) -> Migration:
    """Split a file at its marker lines into sections, and each section into statements."""
    sections: list[Section] = []
    in_transaction = True
    lines: list[str] = []

    def close() -> None:
        statements = tuple(split_statements("\n".join(lines)))
        if statements:
            sections.append(Section(in_transaction, statements))

    for line in text.splitlines():
        marker = line.strip()
        if marker in (NO_TRANSACTION_MARKER, TRANSACTION_MARKER):
            close()
            lines = []
            in_transaction = marker == TRANSACTION_MARKER
        else:
            lines.append(line)
    close()
    return Migration(name, tuple(sections))


def split_statements(text: str) -> list[str]:
    """Statements of an SQL text split at top-level semicolons (quotes, dollar quotes and comments
    respected); statements holding only comments are dropped."""
    statements: list[str] = []
    start = i = 0
    size = len(text)
    while i < size:
        char = text[i]
        if text.startswith("--", i):
            end = text.find("\n", i)
            i = size if end < 0 else end + 1
        elif text.startswith("/*", i):
            end = text.find("*/", i + 2)
            i = size if end < 0 else end + 2
        elif char in ("'", '"'):
            end = text.find(char, i + 1)
            i = size if end < 0 else end + 1
        elif char == "$" and (tag := re.match(r"\$[A-Za-z_]*\$", text[i:])):
            end = text.find(tag.group(0), i + len(tag.group(0)))
            i = size if end < 0 else end + len(tag.group(0))
        elif char == ";":
            statements.append(text[start:i])
            i += 1
            start = i
        else:
            i += 1
    statements.append(text[start:])
    return [s.strip() for s in statements if _has_code(s)]


def _has_code(statement: str) -> bool:
    return bool(_without_comments(statement).strip())


def _without_comments(statement: str) -> str:
    """The statement without its ``--`` comment lines (the ones a file puts before a statement)."""
    return "\n".join(line for line in statement.splitlines() if not line.lstrip().startswith("--"))


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


def migration_in_progress(conn: Connection) -> bool:
    """True while a `migrate` holds the advisory lock (in this database)."""
    with transaction(conn) as cur:
        cur.execute(
            "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted"
            " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
            " AND classid = %s AND objid = %s AND objsubid = 1)",
            (ADVISORY_LOCK_KEY >> 32, ADVISORY_LOCK_KEY & 0xFFFFFFFF),
        )
        row = cur.fetchone()
    return bool(row and row[0])


def apply_migrations(
    conn: Connection,
    *,
    lock_timeout: float = DEFAULT_LOCK_TIMEOUT_SECONDS,
    report: Report | None = None,
) -> list[str]:
    """Apply what is missing; return the names applied (empty when the schema is current).

    Raises MigrationLockTimeout, MigrationFailed or DatabaseUnavailable."""
    say: Report = report or (lambda _line: None)
    runner = _Runner(conn, lock_timeout, say)
    conn.autocommit = True
    try:
        runner.statement("SET statement_timeout = 0")  # a backfill may legitimately take minutes
        runner.take_advisory_lock()
        runner.section("delivery_worker_migrations", Section(True, (LEDGER_DDL,)))
        with conn.cursor() as cur:
            cur.execute("SELECT name FROM delivery_worker_migrations")
            done = {name for (name,) in cur.fetchall()}
        applied: list[str] = []
        for name, text in migration_files():
            if name in done:
                continue
            migration = parse_migration(name, text)
            say(f"applying {name}")
            for section in migration.sections:
                runner.section(name, section)
            runner.record(name)
            applied.append(name)
        return applied
    except (psycopg2.OperationalError, psycopg2.InterfaceError) as exc:
        reason = (str(exc).strip().splitlines() or ["connection lost"])[0]
        raise DatabaseUnavailable(f"migrate: {reason}") from exc
    finally:
        if not conn.closed:
            try:
                conn.rollback()
                conn.autocommit = True
                with conn.cursor() as cur:
                    cur.execute("SELECT pg_advisory_unlock_all()")
            except psycopg2.Error:
                pass  # the session ends with the connection; its advisory lock with it


class _Runner:
    """Runs sections on one connection (in autocommit mode between them)."""

    def __init__(self, conn: Connection, lock_timeout: float, say: Report) -> None:
        self.conn = conn
        self.lock_timeout_ms = int(lock_timeout * 1000)
        self.say = say

    def statement(self, text: str) -> None:
        with self.conn.cursor() as cur:
            cur.execute(text)

    def record(self, name: str) -> None:
        with self.conn.cursor() as cur:
            cur.execute("INSERT INTO delivery_worker_migrations (name) VALUES (%s)", (name,))

    def take_advisory_lock(self) -> None:
        waiting = False
        while True:
            with self.conn.cursor() as cur:
                cur.execute("SELECT pg_try_advisory_lock(%s)", (ADVISORY_LOCK_KEY,))
                row = cur.fetchone()
            if row and row[0]:
                return
            if not waiting:
                self.say("another `delivery-worker migrate` is running; waiting for it to finish")
                waiting = True
            time.sleep(ADVISORY_POLL_SECONDS)

    def section(self, name: str, section: Section) -> None:
        if not section.in_transaction:
            self.statement("SET lock_timeout = 0")
            for text in section.statements:
                self._recover_invalid_index(text)
                self._run(name, text)
            return
        for attempt in range(1, LOCK_ATTEMPTS + 1):
            try:
                self._transaction(name, section)
                return
            except MigrationLockTimeout as exc:
                if attempt == LOCK_ATTEMPTS:
                    raise MigrationLockTimeout(
                        f"{exc} after {LOCK_ATTEMPTS} tries. Nothing of that step was kept (every"
                        " step is safe to repeat): run `delivery-worker migrate` again when the"
                        " other session is done, or give it longer with [database] migrate_lock_timeout"
                    ) from None
                self.say(f"{exc}; trying again in {LOCK_RETRY_PAUSE_SECONDS:g} s")
                time.sleep(LOCK_RETRY_PAUSE_SECONDS)

    def _transaction(self, name: str, section: Section) -> None:
        self.conn.autocommit = False
        try:
            with self.conn.cursor() as cur:  # SET LOCAL: ends with this transaction
                cur.execute("SELECT set_config('lock_timeout', %s, true)", (f"{self.lock_timeout_ms}ms",))
            for text in section.statements:
                self._run(name, text)
            self.conn.commit()
        except BaseException:
            if not self.conn.closed:
                self.conn.rollback()
            raise
        finally:
            if not self.conn.closed:
                self.conn.autocommit = True

    def _recover_invalid_index(self, text: str) -> None:
        found = CONCURRENT_INDEX.match(_without_comments(text))
        if not found:
            return
        index = found.group(1)
        with self.conn.cursor() as cur:
            cur.execute(INVALID_INDEX, (index,))
            row = cur.fetchone()
        if row and row[0]:
            self.say(
                f"index {index} is INVALID (an interrupted concurrent build): dropping it to build again"
            )
            with self.conn.cursor() as cur:
                cur.execute(sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {}").format(sql.Identifier(index)))

    def _run(self, name: str, text: str) -> None:
        started = time.monotonic()
        try:
            self.statement(text)
        except psycopg2.errors.LockNotAvailable:
            raise MigrationLockTimeout(
                f"{name}: no lock within migrate_lock_timeout ({self.lock_timeout_ms / 1000:g} s) for"
                f" `{_first_line(text)}`: another session holds a conflicting lock (a long transaction?)"
            ) from None
        except (psycopg2.OperationalError, psycopg2.InterfaceError):
            raise
        except psycopg2.Error as exc:
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise MigrationFailed(f"{name}: `{_first_line(text)}` failed: {reason}") from None
        finally:
            for notice in self.conn.notices:
                text = notice.strip().removeprefix("NOTICE:").strip()
                if not text.endswith(", skipping"):  # IF [NOT] EXISTS found nothing to do
                    self.say(f"{name}: {text}")
            self.conn.notices.clear()
        elapsed = time.monotonic() - started
        if elapsed >= 1.0:
            self.say(f"{name}: {elapsed:.1f} s for `{_first_line(text)}`")


def _first_line(statement: str) -> str:
    """The statement's first line of code; for a DO block, with the comment that explains it."""
    lines = [line.strip() for line in statement.splitlines() if line.strip()]
    comments = [line.lstrip("- ") for line in lines if line.startswith("--")]
    code = [line for line in lines if not line.startswith("--")]
    first = code[0] if code else statement.strip()
    if first.upper().startswith("DO") and comments:
        first = f"{first} ({comments[0]})"
    return first if len(first) <= 100 else first[:99] + "…"


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
