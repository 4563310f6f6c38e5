"""`migrate` on a production-sized database while producers keep inserting; its lock_timeout; the
recovery of an INVALID index; how migration files are split into sections."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg2
import psycopg2.errors

from delivery_worker.migrate import migration_files, parse_migration, split_statements
from tests.rows import execute
from tests.test_migrate import PLATFORM_DDL, migrate

LOG_ROWS = 1_000_000


def production_rows(log_rows: int) -> str:
    """The platform's other tables at a realistic size: 200,000 jobs (2,000 still PENDING), 50,000
    jobs of the older pipeline with one attempt each; notification_log holds ``log_rows`` rows."""
    return f"""
INSERT INTO notification_channels (tenant_id, name, channel_type)
SELECT 't' || (n % 20), 'channel ' || n, 'webhook' FROM generate_series(1, 99) AS n;
INSERT INTO notification_jobs (tenant_id, alert_id, channel_id, status, payload_json)
SELECT 't' || (n % 20), 1000 + n, 1 + n % 100, CASE WHEN n % 100 = 0 THEN 'PENDING' ELSE 'COMPLETED' END,
       jsonb_build_object('severity', n % 6, 'message', 'alert ' || n)
FROM generate_series(1, 200000) AS n;
INSERT INTO integrations (tenant_id, integration_id, type, config_json)
VALUES ('t', '00000000-0000-0000-0000-000000000001', 'webhook', '{{}}');
INSERT INTO integration_routes (tenant_id, route_id, integration_id)
VALUES ('t', '00000000-0000-0000-0000-000000000002', '00000000-0000-0000-0000-000000000001');
INSERT INTO delivery_jobs (tenant_id, alert_id, integration_id, route_id, status, payload_json)
SELECT 't', n, '00000000-0000-0000-0000-000000000001', '00000000-0000-0000-0000-000000000002',
       CASE WHEN n % 50 = 0 THEN 'PENDING' ELSE 'COMPLETED' END, jsonb_build_object('severity', n % 6)
FROM generate_series(1, 50000) AS n;
INSERT INTO delivery_attempts (tenant_id, job_id, attempt_no, ok, started_at, finished_at)
SELECT 't', n, 1, true, now(), now() FROM generate_series(1, 50000) AS n;
INSERT INTO notification_log (channel_id, alert_id, job_id, success)
SELECT 1 + n % 100, n, CASE WHEN n <= 200000 THEN n END, true FROM generate_series(1, {log_rows}) AS n;
ANALYZE;
"""


class Producer(threading.Thread):
    """Inserts into the three tables producers write, one autocommit INSERT at a time, until told to
    stop. Its session gives up on any lock it waited 1 s for (lock_timeout), and every INSERT's
    wall time is kept."""

    def __init__(self, dsn: str) -> None:
        super().__init__(daemon=True)
        self.dsn = dsn
        self.stop = threading.Event()
        self.durations: list[float] = []
        self.lock_waits: list[str] = []
        self.errors: list[str] = []

    def run(self) -> None:
        conn = psycopg2.connect(self.dsn, options="-c lock_timeout=1000 -c statement_timeout=30000")
        conn.autocommit = True
        statements = (
            "INSERT INTO notification_jobs (tenant_id, alert_id, channel_id, payload_json)"
            " VALUES ('p', %(n)s, 1, '{\"severity\": 4}')",
            "INSERT INTO notification_log (channel_id, alert_id, success) VALUES (1, %(n)s, true)",
            "INSERT INTO delivery_jobs (tenant_id, alert_id, integration_id, route_id, payload_json)"
            " VALUES ('t', 900000 + %(n)s, '00000000-0000-0000-0000-000000000001',"
            " '00000000-0000-0000-0000-000000000002', '{}')",
        )
        n = 0
        try:
            while not self.stop.is_set():
                n += 1
                for statement in statements:
                    started = time.monotonic()
                    try:
                        with conn.cursor() as cur:
                            cur.execute(statement, {"n": 5_000_000 + n})
                    except psycopg2.errors.LockNotAvailable as exc:
                        self.lock_waits.append(str(exc).splitlines()[0])
                    except psycopg2.Error as exc:
                        self.errors.append(str(exc).splitlines()[0])
                    self.durations.append(time.monotonic() - started)
                time.sleep(0.005)
        finally:
            conn.close()


def run_migrate(dsn: str, **settings: str) -> subprocess.CompletedProcess[str]:
    env = {"DATABASE_URL": dsn, "PATH": "/usr/bin:/bin"}
    env.update({f"DELIVERY_WORKER_{key.upper()}": value for key, value in settings.items()})
    command = [sys.executable, "-m", "delivery_worker", "--config", "/dev/null", "migrate"]
    return subprocess.run(command, env=env, capture_output=True, text=True, check=False, timeout=300)


def test_migrate_of_a_production_sized_database_never_blocks_producers_for_a_second(empty_database):
    execute(empty_database, PLATFORM_DDL)
    execute(empty_database, production_rows(LOG_ROWS))
    producer = Producer(empty_database)
    producer.start()
    try:
        assert _wait_for(lambda: len(producer.durations) >= 30)
        result = run_migrate(empty_database)
        produced_during = len(producer.durations)
    finally:
        producer.stop.set()
        producer.join(timeout=30)

    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"applied {len(migration_files())} migration(s)")
    assert producer.errors == [] and producer.lock_waits == []
    assert produced_during > 90  # it kept inserting while migrate ran
    assert max(producer.durations) < 1.0, sorted(producer.durations)[-5:]
    # The online widening kept every row and its value; the producer's rows during it included.
    (log,) = execute(
        empty_database,
        "SELECT count(*) AS n, count(*) FILTER (WHERE alert_id = log_id) AS same,"
        " pg_typeof(min(alert_id))::text AS type FROM notification_log WHERE log_id <= %s",
        (LOG_ROWS,),
    )
    assert log == {"n": LOG_ROWS, "same": LOG_ROWS, "type": "bigint"}
    (nullable,) = execute(
        empty_database,
        "SELECT is_nullable FROM information_schema.columns"
        " WHERE table_name = 'notification_log' AND column_name = 'alert_id'",
    )
    assert nullable == {"is_nullable": "NO"}
    produced = execute(empty_database, "SELECT count(*) AS n FROM notification_log WHERE alert_id > 5000000")
    assert produced[0]["n"] >= produced_during // 3 - 1
    assert execute(empty_database, "SELECT count(*) AS n FROM pg_index WHERE NOT indisvalid") == [{"n": 0}]
    # 006's batched backfill ranked every queued job.
    unranked = execute(
        empty_database,
        "SELECT count(*) AS n FROM notification_jobs WHERE status = 'PENDING'"
        " AND severity_rank <> delivery_worker_severity_rank(payload_json)",
    )
    assert unranked == [{"n": 0}]
    (ranked,) = execute(
        empty_database,
        "SELECT count(*) AS n FROM delivery_jobs WHERE status = 'PENDING' AND severity_rank > 0",
    )
    assert ranked["n"] > 800


@contextmanager
def held_lock(dsn: str, statement: str) -> Iterator[None]:
    """Another session holding a lock inside an open transaction (a long report, a stuck client)."""
    conn = psycopg2.connect(dsn)
    try:
        with conn.cursor() as cur:
            cur.execute(statement)
        yield
    finally:
        conn.rollback()
        conn.close()


def test_a_lock_held_elsewhere_ends_migrate_with_one_line_saying_to_run_it_again(database):
    execute(database, "DELETE FROM delivery_worker_migrations WHERE name LIKE '004%%'")

    with held_lock(database, "SELECT count(*) FROM notification_jobs"):
        blocked = run_migrate(database, database_migrate_lock_timeout="0.2")
    after = run_migrate(database)

    assert blocked.returncode == 1
    assert "Traceback" not in blocked.stderr
    assert blocked.stderr.count("trying again") == 2
    last = blocked.stderr.strip().splitlines()[-1]
    assert last == (
        "delivery-worker: 004_job_leases.sql: no lock within migrate_lock_timeout (0.2 s) for"
        " `ALTER TABLE notification_jobs ADD COLUMN IF NOT EXISTS lease_expires_at TIMESTAMPTZ NULL`:"
        " another session holds a conflicting lock (a long transaction?) after 3 tries. Nothing of that"
        " step was kept (every step is safe to repeat): run `delivery-worker migrate` again when the"
        " other session is done, or give it longer with [database] migrate_lock_timeout"
    )
    assert after.returncode == 0, after.stderr
    assert after.stdout.strip() == "applied 1 migration(s): 004_job_leases.sql"


def test_invalid_indexes_left_by_interrupted_concurrent_builds_are_built_again(database):
    # What an interrupted CREATE INDEX CONCURRENTLY leaves behind: the index, marked INVALID.
    rebuilt = ("notification_log_job_id_idx", "notification_jobs_claim_age_idx")  # 003's and 006's
    execute(
        database,
        "UPDATE pg_index SET indisvalid = false WHERE indexrelid = ANY (%s::regclass[])",
        (list(rebuilt),),
    )
    execute(database, "DELETE FROM delivery_worker_migrations WHERE name LIKE '003%%' OR name LIKE '006%%'")

    result = run_migrate(database)

    assert result.returncode == 0, result.stderr
    for index in rebuilt:
        assert f"index {index} is INVALID" in result.stderr
    valid = execute(database, "SELECT count(*) AS n FROM pg_index WHERE NOT indisvalid")
    assert valid == [{"n": 0}]


def test_a_widening_interrupted_after_its_first_step_is_finished_by_the_next_migrate(empty_database):
    execute(empty_database, PLATFORM_DDL)
    execute(
        empty_database,
        "INSERT INTO notification_log (channel_id, alert_id) SELECT 1, n FROM generate_series(1, 25000) AS n",
    )
    name, text = next((n, t) for n, t in migration_files() if n.startswith("002"))
    first_step = parse_migration(name, text).sections[0]
    assert first_step.in_transaction
    for statement in first_step.statements:  # the twin and its trigger, then the run stopped
        execute(empty_database, statement)
    execute(empty_database, "INSERT INTO notification_log (channel_id, alert_id) VALUES (1, 2147483647)")

    migrate(empty_database)

    rows = execute(
        empty_database,
        "SELECT count(*) AS n, count(*) FILTER (WHERE alert_id = log_id) AS same, max(alert_id) AS top,"
        " pg_typeof(max(alert_id))::text AS type FROM notification_log",
    )
    assert rows == [{"n": 25001, "same": 25000, "top": 2147483647, "type": "bigint"}]
    columns = execute(
        empty_database,
        "SELECT column_name FROM information_schema.columns WHERE table_name = 'notification_log'"
        " AND column_name LIKE 'alert_id%%'",
    )
    assert columns == [{"column_name": "alert_id"}]
    leftovers = execute(
        empty_database,
        "SELECT (SELECT count(*) FROM pg_trigger WHERE tgname = 'delivery_worker_copy_log_alert_id')"
        " + (SELECT count(*) FROM pg_proc WHERE proname = 'delivery_worker_copy_log_alert_id') AS n",
    )
    assert leftovers == [{"n": 0}]
    # The swap is done: a job whose alert_id does not fit an INTEGER gets its log row.
    execute(empty_database, "INSERT INTO notification_log (channel_id, alert_id) VALUES (1, 9000000000)")


def test_a_platform_index_on_log_alert_id_is_kept_by_retyping_in_place(empty_database):
    execute(empty_database, PLATFORM_DDL)
    execute(empty_database, "CREATE INDEX platform_log_alert_idx ON notification_log (alert_id)")

    migrate(empty_database)

    (column,) = execute(
        empty_database,
        "SELECT data_type FROM information_schema.columns"
        " WHERE table_name = 'notification_log' AND column_name = 'alert_id'",
    )
    assert column["data_type"] == "bigint"
    indexes = {r["indexname"] for r in execute(empty_database, "SELECT indexname FROM pg_indexes")}
    assert "platform_log_alert_idx" in indexes


def test_split_statements_keeps_quoted_and_dollar_quoted_semicolons_together():
    text = """
    -- a comment; with a semicolon
    CREATE FUNCTION f() RETURNS int LANGUAGE plpgsql AS $$ BEGIN RETURN 1; END $$;
    SELECT 'a;b', "odd;name" FROM t; /* block; comment */
    DO $fn$ BEGIN PERFORM 1; END $fn$
    """
    assert split_statements(text) == [
        "-- a comment; with a semicolon\n"
        "    CREATE FUNCTION f() RETURNS int LANGUAGE plpgsql AS $$ BEGIN RETURN 1; END $$",
        "SELECT 'a;b', \"odd;name\" FROM t",
        "/* block; comment */\n    DO $fn$ BEGIN PERFORM 1; END $fn$",
    ]


def test_marker_lines_split_a_file_into_transaction_and_no_transaction_sections():
    migration = parse_migration(
        "x.sql",
        "ALTER TABLE a ADD COLUMN b int;\n-- migrate:no-transaction\nCREATE INDEX CONCURRENTLY i ON a (b);\n"
        "CREATE INDEX CONCURRENTLY j ON a (b);\n-- migrate:transaction\nSELECT 1;\n",
    )
    shapes = [(s.in_transaction, len(s.statements)) for s in migration.sections]
    assert shapes == [(True, 1), (False, 2), (True, 1)]
    # Every shipped index build on a platform table (which producers write to) runs CONCURRENTLY,
    # outside a transaction; an index on a table the same file creates may be built in its transaction.
    for name, text in migration_files():
        for section in parse_migration(name, text).sections:
            for statement in section.statements:
                built = INDEX_ON.search(statement)
                if built and built.group(1).lower() in PLATFORM_TABLES:
                    assert not section.in_transaction and "CONCURRENTLY" in statement.upper(), (
                        name,
                        statement,
                    )


INDEX_ON = re.compile(r"CREATE\s+(?:UNIQUE\s+)?INDEX\b.*?\bON\s+(?:ONLY\s+)?(\w+)", re.IGNORECASE | re.DOTALL)
PLATFORM_TABLES = {
    "notification_channels",
    "notification_routing_rules",
    "notification_jobs",
    "notification_log",
    "integrations",
    "integration_routes",
    "delivery_jobs",
    "delivery_attempts",
}


def _wait_for(predicate, timeout: float = 20.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False
