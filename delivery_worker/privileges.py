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


# Schemas named in search_path that exist but that this role may not use. PostgreSQL skips them
# silently when resolving names, so the tables would look missing ("run migrate") instead.
UNUSABLE_SCHEMAS = """
SELECT n.nspname
FROM unnest(string_to_array(current_setting('search_path'), ',')) WITH ORDINALITY AS p (entry, position)
JOIN pg_namespace n ON n.nspname = replace(btrim(btrim(p.entry), '"'), '$user', current_user)
WHERE NOT has_schema_privilege(n.oid, 'USAGE')
ORDER BY p.position
"""
LEDGER_READABLE = """
SELECT to_regclass('delivery_worker_migrations') IS NULL
    OR has_table_privilege('delivery_worker_migrations', 'SELECT')
"""


class MissingPrivileges(Exception):
    """Raised when the worker's database role lacks a right that `run` needs."""


def check_schema_access(conn: Connection) -> None:
    """Raise MissingPrivileges unless this role can see the schema and read the migration ledger,
    the two rights needed before "is the schema migrated?" can be answered truthfully."""
    with transaction(conn) as cur:
        cur.execute("SELECT current_user")
        row = cur.fetchone()
        role = row[0] if row else "?"
        cur.execute(UNUSABLE_SCHEMAS)
        missing = [f"USAGE ON SCHEMA {name}" for (name,) in cur.fetchall()]
        if not missing:
            cur.execute(LEDGER_READABLE)
            readable = cur.fetchone()
            if readable and not readable[0]:
                missing = ["SELECT ON delivery_worker_migrations"]
    if missing:
        raise MissingPrivileges(_missing_line(role, missing))


def _missing_line(role: str, missing: list[str]) -> str:
    return (
        f"database role {role!r} lacks {', '.join(missing)}"
        " (see docs/configuration.md 'Least privilege' for the GRANTs)"
    )


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
        raise MissingPrivileges(_missing_line(role, missing))
