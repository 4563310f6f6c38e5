"""How long each step of `migrate` holds its locks on a production-sized database, and how long a
producer's INSERT waited meanwhile (the figures in docs/upgrading.md).

    .venv/bin/python -m bench.migrate_locks [--log-rows 3000000]

The database is the platform's own shape (tests/test_migrate.py PLATFORM_DDL: INTEGER
notification_log.alert_id, no indexes of ours) with tests/test_migrate_locking.py's rows. A
transactional step holds its locks until it commits, so its wall time bounds every lock it took;
a no-transaction step takes none that blocks INSERTs (its time is shown for the total).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg2.extensions

from bench.common import ADMIN_DSN, _admin, base_parser, execute, print_table
from delivery_worker import migrate
from delivery_worker.db import OPERATOR_SESSION, connect
from tests.test_migrate import PLATFORM_DDL
from tests.test_migrate_locking import Producer, production_rows


def timed_steps() -> list[tuple[str, str, float]]:
    """Wrap the runner so every step reports (file, kind, seconds)."""
    steps: list[tuple[str, str, float]] = []
    transaction = migrate._Runner._transaction
    run = migrate._Runner._run

    def timed_transaction(self: Any, name: str, section: migrate.Section) -> None:
        started = time.monotonic()
        transaction(self, name, section)
        steps.append((name, "transaction", time.monotonic() - started))

    def timed_run(self: Any, name: str, text: str) -> None:
        started = time.monotonic()
        run(self, name, text)
        if self.conn.autocommit:
            steps.append((name, f"no-tx: {migrate._first_line(text)[:60]}", time.monotonic() - started))

    migrate._Runner._transaction = timed_transaction  # type: ignore[method-assign]
    migrate._Runner._run = timed_run  # type: ignore[method-assign]
    return steps


@contextmanager
def empty_database() -> Iterator[str]:
    """A database with no tables (scratch_database migrates; this one must start unmigrated)."""
    name = f"dw_bench_migrate_{os.getpid()}"
    _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    _admin(f'CREATE DATABASE "{name}"')
    try:
        yield psycopg2.extensions.make_dsn(ADMIN_DSN, dbname=name)
    finally:
        _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def main() -> None:
    parser = base_parser(__doc__ or "")
    parser.add_argument("--log-rows", type=int, default=3_000_000)
    args = parser.parse_args()
    with empty_database() as dsn:
        started = time.monotonic()
        execute(dsn, PLATFORM_DDL)
        execute(dsn, production_rows(args.log_rows))
        print(f"loaded {args.log_rows:,} notification_log rows in {time.monotonic() - started:.1f} s")
        steps = timed_steps()
        producer = Producer(dsn)
        producer.start()
        conn = connect(dsn, session=OPERATOR_SESSION)
        started = time.monotonic()
        try:
            migrate.apply_migrations(conn)
        finally:
            conn.close()
            total = time.monotonic() - started
            producer.stop.set()
            producer.join()
    rows = [[name, kind, f"{seconds * 1000:.0f} ms"] for name, kind, seconds in steps if seconds >= 0.001]
    print_table(
        ["file", "step", "time"], rows, title="migrate steps (transactions hold their locks until commit)"
    )
    durations = sorted(producer.durations)
    print(
        f"migrate {total:.1f} s; producer INSERTs during it: {len(durations)},"
        f" max {durations[-1] * 1000:.0f} ms, lock waits >= 1 s: {len(producer.lock_waits)}"
    )


if __name__ == "__main__":
    main()
