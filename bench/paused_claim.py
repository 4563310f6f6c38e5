"""What skipping paused destinations costs the claim (and ``has_due``) on a realistic queue.

A queue of many tenants and channels, every one with due work, over a finished history; the
notification_jobs CLAIM (prepared, generic plan, exactly as the worker runs it) is timed with and
without its pause condition, first with nothing paused, then with a share of channels and tenants
paused. Each claim runs in a transaction that is rolled back, so every run sees the same queue.
It also times ``has_due`` when every due job waits behind a pause (what ``run --drain`` asks), and
prints the EXPLAIN (ANALYZE, BUFFERS) of the claim with pauses.

    .venv/bin/python -m bench.paused_claim            # 2,000 channels x 20 due jobs, 200k history
    .venv/bin/python -m bench.paused_claim --quick    # 400 channels x 10 due jobs, 20k history
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

from psycopg2.extensions import cursor

from bench.common import PAYLOAD_SQL, base_parser, execute, fmt, machine, print_table, scratch_database
from channels.alert import TOP_SEVERITY_RANK
from delivery_worker.config import load_settings
from delivery_worker.db import OPERATOR_SESSION, Connection, connect
from delivery_worker.jobs import Table
from delivery_worker.queues.claim_order import PreparedClaim, not_paused
from delivery_worker.queues.notification_jobs import NotificationJobs
from delivery_worker.retry import RetryPolicy

CHANNELS_PER_TENANT = 4

CHANNELS = """
INSERT INTO notification_channels (tenant_id, name, channel_type, config)
SELECT 'tenant-' || (g / %(per_tenant)s), 'bench', 'webhook', '{"url": "http://127.0.0.1:9/unused"}'
FROM generate_series(0, %(channels)s - 1) AS g
"""

# Due jobs spread over every channel, and a finished history beside them.
JOBS = f"""
INSERT INTO notification_jobs (tenant_id, alert_id, channel_id, status, payload_json, next_run_at)
SELECT c.tenant_id, g, c.channel_id, %(status)s, {PAYLOAD_SQL}, now() - (g %% 600) * interval '1 second'
FROM generate_series(%(first)s::bigint, %(last)s::bigint) AS g
JOIN notification_channels AS c ON c.channel_id = 1 + g %% %(channels)s
"""

PAUSE_CHANNELS = """
INSERT INTO delivery_worker_pauses (scope, target)
SELECT 'channel', channel_id::text FROM notification_channels WHERE channel_id % 10 = 3
"""
PAUSE_TENANTS = """
INSERT INTO delivery_worker_pauses (scope, target)
SELECT DISTINCT 'tenant', tenant_id FROM notification_channels WHERE channel_id % 20 = 7
"""
PAUSE_EVERYTHING = """
INSERT INTO delivery_worker_pauses (scope, target)
SELECT DISTINCT 'tenant', tenant_id FROM notification_channels ON CONFLICT DO NOTHING
"""

PARAMETERS = {
    "limit": 32,
    "lease_seconds": 60.0,
    "cap": 4,
    "busy_keys": [],
    "busy_counts": [],
    "max_wait": 60.0,
    "top_rank": TOP_SEVERITY_RANK,
}


def vacuum_analyze(dsn: str) -> None:
    conn = connect(dsn, session=OPERATOR_SESSION)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("VACUUM ANALYZE notification_jobs")
    finally:
        conn.close()


def timed(conn: Connection, run: Callable[[cursor], object], repeat: int) -> list[float]:
    """Milliseconds per run, each in its own rolled-back transaction."""
    times = []
    for _ in range(repeat):
        with conn.cursor() as cur:
            started = time.perf_counter()
            run(cur)
            times.append(1000 * (time.perf_counter() - started))
        conn.rollback()
    return times


def main() -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=40, help="claims timed per variant")
    args = parser.parse_args()
    channels, per_channel, history = (400, 10, 20_000) if args.quick else (2_000, 20, 200_000)

    with scratch_database("paused_claim") as dsn:
        execute(dsn, CHANNELS, {"per_tenant": CHANNELS_PER_TENANT, "channels": channels})
        due = channels * per_channel
        execute(dsn, JOBS, {"status": "PENDING", "first": 1, "last": due, "channels": channels})
        execute(
            dsn, JOBS, {"status": "COMPLETED", "first": due + 1, "last": due + history, "channels": channels}
        )
        vacuum_analyze(dsn)

        with_pauses = NotificationJobs.claim_sql
        without = with_pauses.replace(
            not_paused(Table.NOTIFICATION_JOBS, "d.tenant_id", "d.destination"), "TRUE"
        )
        assert without != with_pauses
        claims = {
            "claim without the pause condition (main)": PreparedClaim(without, Table.NOTIFICATION_JOBS),
            "claim with it": PreparedClaim(with_pauses, Table.NOTIFICATION_JOBS),
        }
        policy = RetryPolicy.from_settings(load_settings("/dev/null", environ={}).worker)
        queue = NotificationJobs(lease_seconds=60.0, policy=policy)

        rows = []
        conn = connect(dsn)
        try:
            for label, setup in (
                ("nothing paused", []),
                ("10% of channels + 5% of tenants paused", [PAUSE_CHANNELS, PAUSE_TENANTS]),
            ):
                for statement in setup:
                    execute(dsn, statement)
                paused = execute(dsn, "SELECT count(*) FROM delivery_worker_pauses")[0][0]
                for name, claim in claims.items():
                    timed(conn, lambda cur, c=claim: c.execute(cur, PARAMETERS), 3)  # warm-up
                    ms = timed(
                        conn, lambda cur, c=claim: (c.execute(cur, PARAMETERS), cur.fetchall()), args.repeat
                    )
                    rows.append([label, str(paused), name, fmt(statistics.median(ms), 2), fmt(max(ms), 2)])
            execute(dsn, PAUSE_EVERYTHING)
            ms = timed(conn, queue.has_due, args.repeat)
            with conn.cursor() as cur:
                answer = queue.has_due(cur)
            conn.rollback()
            statement = f"has_due (answers {answer})"
            rows.append(
                ["every tenant paused", "all", statement, fmt(statistics.median(ms), 2), fmt(max(ms), 2)]
            )
            execute(dsn, "DELETE FROM delivery_worker_pauses")
            execute(dsn, PAUSE_CHANNELS)
            execute(dsn, PAUSE_TENANTS)
            with conn.cursor() as cur:
                claims["claim with it"].execute(cur, PARAMETERS)  # prepared on this connection
                cur.execute(
                    "EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) EXECUTE "
                    + claims["claim with it"].execute_sql.split("EXECUTE ", 1)[1],
                    PARAMETERS,
                )
                plan = [line for (line,) in cur.fetchall()]
            conn.rollback()
        finally:
            conn.close()

    print_table(
        ["queue", "pauses", "statement", "median ms", "max ms"],
        rows,
        title=(
            f"paused claim: {channels:,} channels ({channels // CHANNELS_PER_TENANT:,} tenants) with "
            f"{per_channel} due jobs each, {history:,} finished rows; claim of 32; {machine()}"
        ),
    )
    print("\nEXPLAIN (ANALYZE, BUFFERS) of the claim with pauses:")
    print("\n".join(plan))


if __name__ == "__main__":
    main()
