"""Fixtures shared by the whole suite: a fresh PostgreSQL database per test, local HTTP servers.

The schema is migrated once per session into a template database; each test gets a clone
(``CREATE DATABASE ... TEMPLATE``), so tests are independent and cheap.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import psycopg2
import pytest

from delivery_worker.db import connect
from delivery_worker.migrate import apply_migrations
from tests.ops_cli import cli  # noqa: F401  (the operator-command fixture, shared)
from tests.postgres import ADMIN_DSN
from tests.processes import kill_leftover_workers
from tests.rows import execute
from tests.servers.http import RecordingServer


def dsn_for(name: str) -> str:
    return psycopg2.extensions.make_dsn(ADMIN_DSN, dbname=name)


def _admin(statement: str) -> None:
    conn = psycopg2.connect(ADMIN_DSN)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(statement)
    finally:
        conn.close()


def create_database(name: str, template: str | None = None) -> str:
    _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    _admin(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else ""))
    return dsn_for(name)


def drop_database(name: str) -> None:
    _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def template_database() -> Iterator[str]:
    # pid alone collides across containers (pid namespaces) and with pid reuse; the suffix does not.
    name = f"dw_template_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    dsn = create_database(name)
    try:
        conn = connect(dsn)
        try:
            apply_migrations(conn)
        finally:
            conn.close()
        yield name
    finally:
        drop_database(name)


@pytest.fixture
def empty_database() -> Iterator[str]:
    """A database with no tables at all (for migration tests)."""
    name = f"dw_empty_{uuid.uuid4().hex[:12]}"
    dsn = create_database(name)
    yield dsn
    drop_database(name)


@pytest.fixture
def database(template_database: str) -> Iterator[str]:
    """DSN of a freshly migrated database for this test only."""
    name = f"dw_test_{uuid.uuid4().hex[:12]}"
    dsn = create_database(name, template=template_database)
    yield dsn
    drop_database(name)


@pytest.fixture(autouse=True)
def no_leftover_workers() -> Iterator[None]:
    """A test that fails mid-way must not leave a worker process polling."""
    yield
    kill_leftover_workers()


# Exactly the statements of docs/configuration.md "Least privilege" (the role name is substituted).
RUN_GRANTS = """
GRANT USAGE ON SCHEMA public TO {role};
GRANT SELECT, UPDATE ON notification_jobs, delivery_jobs TO {role};
GRANT SELECT ON notification_channels, integrations, delivery_worker_migrations, delivery_worker_pauses
    TO {role};
GRANT INSERT ON notification_log, delivery_attempts, notification_job_attempts TO {role};
GRANT USAGE ON SEQUENCE notification_log_log_id_seq, delivery_attempts_attempt_id_seq,
    notification_job_attempts_attempt_id_seq TO {role};
"""


@pytest.fixture
def runner_role(database: str) -> Iterator[tuple[str, str]]:
    """A login role with only the run GRANTs; yields (role, dsn as that role)."""
    role = f"dw_runner_{uuid.uuid4().hex[:10]}"
    execute(database, f"CREATE ROLE {role} LOGIN")
    execute(database, RUN_GRANTS.format(role=role))
    yield role, psycopg2.extensions.make_dsn(database, user=role)
    execute(database, f"DROP OWNED BY {role}")
    execute(database, f"DROP ROLE {role}")


@pytest.fixture
def http_server() -> Iterator[RecordingServer]:
    server = RecordingServer().start()
    yield server
    server.stop()
