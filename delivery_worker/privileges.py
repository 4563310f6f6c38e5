"""The database rights `run` needs, checked once at start so a missing GRANT is one clear line.

`run` needs no DDL: it reads channels and integrations, claims and updates the two queues, and
appends to the two log tables. `migrate` (with `[database] migrate_dsn`) is the only command that
needs to create or alter anything. docs/configuration.md "Least privilege" shows the GRANTs.
"""

from __future__ import annotations

from delivery_worker.db import Connection, transaction

# (table, privilege) pairs `run` uses.
RUN_PRIVILEGES: tuple[tuple[str, str], ...] = (
    ("notification_jobs", "SELECT"),
    ("notification_jobs", "UPDATE"),
    ("delivery_jobs", "SELECT"),
    ("delivery_jobs", "UPDATE"),
    ("notification_channels", "SELECT"),
    ("integrations", "SELECT"),
    ("notification_log", "INSERT"),
    ("delivery_attempts", "INSERT"),
    ("notification_job_attempts", "INSERT"),
    ("delivery_worker_pauses", "SELECT"),
    ("delivery_worker_migrations", "SELECT"),
)
RUN_SEQUENCES: tuple[str, ...] = (
    "notification_log_log_id_seq",
    "delivery_attempts_attempt_id_seq",
    "notification_job_attempts_attempt_id_seq",
)

CHECK = """
SELECT t.name, t.privilege, has_table_privilege(t.name, t.privilege)
FROM unnest(%(tables)s::text[], %(privileges)s::text[]) AS t (name, privilege)
"""
CHECK_SEQUENCES = """
SELECT s.name, has_sequence_privilege(s.name, 'USAGE')
FROM unnest(%(sequences)s::text[]) AS s (name)
WHERE to_regclass(s.name) IS NOT NULL
"""


class MissingPrivileges(Exception):
    """Raised when the worker's database role lacks a right that `run` needs."""


def check_run_privileges(conn: Connection) -> None:
    with transaction(conn) as cur:
        cur.execute("SELECT current_user")
        row = cur.fetchone()
        role = row[0] if row else "?"
        cur.execute(
            CHECK,
            {"tables": [t for t, _ in RUN_PRIVILEGES], "privileges": [p for _, p in RUN_PRIVILEGES]},
        )
        missing = [f"{privilege} ON {table}" for table, privilege, granted in cur.fetchall() if not granted]
        cur.execute(CHECK_SEQUENCES, {"sequences": list(RUN_SEQUENCES)})
        missing += [f"USAGE ON SEQUENCE {name}" for name, granted in cur.fetchall() if not granted]
    if missing:
        raise MissingPrivileges(
            f"database role {role!r} lacks {', '.join(missing)}"
            " (see docs/configuration.md 'Least privilege' for the GRANTs)"
        )
