"""Claim cost against history: claim and complete N jobs with 1k, 100k and 1M finished rows present.

Only the database side is timed, with the worker's own queue code (``delivery_worker.queues``), in
cycles as the poll loop runs them: one transaction records the previous cycle's jobs COMPLETED
(status UPDATE plus ``notification_log`` rows) and claims up to ``--batch`` more from both tables.
History is inserted in SQL with generate_series into both queues and both log tables (90%
COMPLETED, 10% FAILED, updated over the last 30 days), then VACUUM ANALYZEd and checkpointed; it
grows in place from one level to the next. The jobs are queued by one INSERT before each level.

    .venv/bin/python -m bench.claim_cost            # 5,000 jobs at 1k, 100k and 1M finished rows
    .venv/bin/python -m bench.claim_cost --quick    # 1,000 jobs at 1k and 100k
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

import psycopg2.errors

from bench.common import (
    PAYLOAD_SQL,
    TENANT,
    base_parser,
    execute,
    fmt,
    insert_jobs,
    insert_webhook_channel,
    machine,
    percentile,
    print_table,
    scratch_database,
    verdict,
)
from delivery_worker.config import load_settings
from delivery_worker.db import OPERATOR_SESSION, Connection, connect, transaction
from delivery_worker.jobs import Job, Outcome, Verdict
from delivery_worker.queues import JobQueue, build_queues

TARGET_FACTOR = 1.5
HISTORY_ALERT_IDS = 100_000_000  # history alert ids start here, clear of the measured jobs'

NOTIFICATION_HISTORY = f"""
INSERT INTO notification_jobs
    (tenant_id, alert_id, channel_id, status, attempts, next_run_at, last_error, payload_json,
     created_at, updated_at)
SELECT %(tenant)s, g, %(channel)s,
       CASE WHEN g %% 10 = 0 THEN 'FAILED' ELSE 'COMPLETED' END,
       CASE WHEN g %% 10 = 0 THEN 5 ELSE 0 END,
       now() - (g %% 2592000) * interval '1 second',
       CASE WHEN g %% 10 = 0 THEN 'webhook returned HTTP 503: unavailable' END,
       {PAYLOAD_SQL},
       now() - (g %% 2592000) * interval '1 second', now() - (g %% 2592000) * interval '1 second'
FROM generate_series(%(first)s::bigint, %(last)s::bigint) AS g
"""
NOTIFICATION_LOG_HISTORY = """
INSERT INTO notification_log (channel_id, alert_id, job_id, sent_at, success, error_msg)
SELECT channel_id, alert_id, job_id, updated_at, status = 'COMPLETED', last_error
FROM notification_jobs WHERE alert_id BETWEEN %(first)s AND %(last)s
"""
DELIVERY_HISTORY = f"""
INSERT INTO delivery_jobs
    (tenant_id, alert_id, integration_id, route_id, status, attempts, next_run_at, last_error,
     payload_json, created_at, updated_at)
SELECT %(tenant)s, g, %(integration)s, %(route)s,
       CASE WHEN g %% 10 = 0 THEN 'FAILED' ELSE 'COMPLETED' END,
       CASE WHEN g %% 10 = 0 THEN 5 ELSE 0 END,
       now() - (g %% 2592000) * interval '1 second',
       CASE WHEN g %% 10 = 0 THEN 'webhook returned HTTP 503: unavailable' END,
       {PAYLOAD_SQL},
       now() - (g %% 2592000) * interval '1 second', now() - (g %% 2592000) * interval '1 second'
FROM generate_series(%(first)s::bigint, %(last)s::bigint) AS g
"""
DELIVERY_ATTEMPTS_HISTORY = """
INSERT INTO delivery_attempts
    (tenant_id, job_id, attempt_no, ok, http_status, latency_ms, error, started_at, finished_at)
SELECT tenant_id, job_id, GREATEST(attempts, 1), status = 'COMPLETED',
       CASE WHEN status = 'COMPLETED' THEN 200 ELSE 503 END, 40, last_error, updated_at, updated_at
FROM delivery_jobs WHERE alert_id BETWEEN %(first)s AND %(last)s
"""


@dataclass(frozen=True)
class Level:
    history: int
    jobs: int
    seconds: float
    cycle_ms: list[float]
    reap_ms: float


def add_history(dsn: str, ids: dict[str, object], *, first: int, count: int) -> float:
    """Add ``count`` finished jobs (with their log rows) to every queue; seconds taken."""
    started = time.monotonic()
    last = HISTORY_ALERT_IDS + first + count - 1
    params = {**ids, "tenant": TENANT, "first": HISTORY_ALERT_IDS + first, "last": last}
    for statement in (
        NOTIFICATION_HISTORY,
        NOTIFICATION_LOG_HISTORY,
        DELIVERY_HISTORY,
        DELIVERY_ATTEMPTS_HISTORY,
    ):
        execute(dsn, statement, params)
    settle(dsn)
    return time.monotonic() - started


def settle(dsn: str) -> None:
    """VACUUM ANALYZE (as autovacuum would have by then, and so that it does not start during the
    measurement), then a CHECKPOINT so that the history's WAL is not flushed while timing."""
    conn = connect(dsn, session=OPERATOR_SESSION)  # VACUUM of 1M rows outlasts a worker statement_timeout
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute("VACUUM (ANALYZE)")
            # Needs superuser or pg_checkpoint; without it the figures are only noisier.
            with contextlib.suppress(psycopg2.errors.InsufficientPrivilege):
                cur.execute("CHECKPOINT")
    finally:
        conn.close()


def claim_and_complete(conn: Connection, queues: list[JobQueue], *, jobs: int, batch: int) -> Level:
    """Cycles as the poll loop runs them: one transaction records the outcomes of the previous
    cycle's jobs (all COMPLETED) and claims up to ``batch`` more from both tables."""
    cycle_ms: list[float] = []
    outcomes: list[Outcome] = []
    claimed_in_all = 0
    started = time.monotonic()
    deadline = started + 600
    while (claimed_in_all < jobs or outcomes) and time.monotonic() < deadline:
        t0 = time.perf_counter()
        claimed: list[Job] = []
        with transaction(conn) as cur:
            for job_queue in queues:
                mine = [o for o in outcomes if o.job.table is job_queue.table]
                if mine:
                    job_queue.record(cur, mine)
            for job_queue in queues:  # every table is asked each cycle, as the poll loop does
                limit = min(batch, jobs - claimed_in_all) - len(claimed)
                if limit > 0:
                    claimed += job_queue.claim(cur, limit)
        cycle_ms.append(1000 * (time.perf_counter() - t0))
        now = datetime.now(UTC)
        outcomes = [Outcome(job, Verdict.COMPLETED, now, now, http_status=200) for job in claimed]
        claimed_in_all += len(claimed)
        if not claimed and not outcomes:
            break
    seconds = time.monotonic() - started
    t0 = time.perf_counter()
    with transaction(conn) as cur:
        for job_queue in queues:
            job_queue.reap(cur)
    reap_ms = 1000 * (time.perf_counter() - t0)
    return Level(0, claimed_in_all, seconds, cycle_ms, reap_ms)


def main() -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument(
        "--jobs", type=int, help="jobs claimed and completed per level (default 5,000; --quick 1,000)"
    )
    parser.add_argument("--batch", type=int, default=32, help="jobs per claim (the worker's free threads)")
    parser.add_argument(
        "--levels", help="finished rows before each level, comma separated (default 1000,100000,1000000)"
    )
    args = parser.parse_args()
    jobs = args.jobs or (1_000 if args.quick else 5_000)
    default_levels = "1000,100000" if args.quick else "1000,100000,1000000"
    levels = [int(text) for text in (args.levels or default_levels).split(",")]

    results: list[Level] = []
    with scratch_database("claim_cost") as dsn:
        channel = insert_webhook_channel(dsn, "http://127.0.0.1:9/unused")
        integration, route = str(uuid.uuid4()), str(uuid.uuid4())
        execute(
            dsn,
            "INSERT INTO integrations (tenant_id, integration_id, name, type, config_json)"
            " VALUES (%s, %s, 'bench', 'webhook', '{\"url\": \"http://127.0.0.1:9/unused\"}')",
            (TENANT, integration),
        )
        execute(
            dsn,
            "INSERT INTO integration_routes (tenant_id, route_id, integration_id) VALUES (%s, %s, %s)",
            (TENANT, route, integration),
        )
        ids = {"channel": channel, "integration": integration, "route": route}
        settings = load_settings("/dev/null", environ={})
        settings = dataclasses.replace(
            settings,
            database=dataclasses.replace(settings.database, dsn=dsn),
            # One channel takes every claim, as the worker's free threads would (no per-destination share).
            worker=dataclasses.replace(settings.worker, max_in_flight_per_destination=args.batch),
        )
        queues = build_queues(settings)
        added = 0
        conn = connect(dsn)
        try:  # warm-up, not timed: the first cycles of a new connection and database are slower
            insert_jobs(dsn, channel, 10 * args.batch, first=len(levels) * jobs + 1)
            claim_and_complete(conn, queues, jobs=10 * args.batch, batch=args.batch)
        finally:
            conn.close()
        for number, history in enumerate(levels):
            # The jobs completed at the previous level count as history too.
            finished = execute(dsn, "SELECT count(*) FROM notification_jobs WHERE status <> 'PENDING'")[0][0]
            count = max(history - finished, 0)
            spent = add_history(dsn, ids, first=added, count=count)
            added += count
            finished += count
            print(
                f"history: {finished:,} finished rows in each queue ({count:,} added in {spent:.0f} s)",
                flush=True,
            )
            insert_jobs(dsn, channel, jobs, first=number * jobs + 1)
            conn = connect(dsn)
            try:
                level = claim_and_complete(conn, queues, jobs=jobs, batch=args.batch)
            finally:
                conn.close()
            results.append(dataclasses.replace(level, history=finished))

    base = results[0].seconds
    rows = [
        [
            fmt(level.history),
            fmt(level.jobs),
            fmt(level.seconds, 2),
            fmt(level.jobs / level.seconds),
            fmt(percentile(level.cycle_ms, 50), 2),
            fmt(percentile(level.cycle_ms, 99), 2),
            fmt(level.reap_ms, 2),
            f"{level.seconds / base:.2f}x",
        ]
        for level in results
    ]
    print_table(
        [
            "finished rows",
            "jobs",
            "seconds",
            "jobs/s",
            "cycle p50",
            "cycle p99",
            "reap",
            "vs first",
        ],
        rows,
        title=(
            f"claim cost: cycles of record + claim {args.batch} in one transaction; times in ms; {machine()}"
        ),
    )
    factor = results[-1].seconds / base
    print(
        f"{fmt(results[-1].history)} vs {fmt(results[0].history)} finished rows: {factor:.2f}x "
        f"(target <= {TARGET_FACTOR:g}x: {verdict(factor <= TARGET_FACTOR)})"
    )


if __name__ == "__main__":
    main()
