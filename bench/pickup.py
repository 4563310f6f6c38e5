"""Pickup latency: an idle worker, one job at a time; INSERT committed → request at the sink.

The worker is the real CLI (``run``) with its defaults (``poll_interval`` 1.0 s), so a new job is
picked up through LISTEN/NOTIFY (the insert trigger of migration 005). Jobs are queued one by
one at random gaps (0.05 to 0.25 s), each after the previous one arrived. A second, shorter series
repeats this with the notify trigger disabled, which shows the ``poll_interval`` fallback.

    .venv/bin/python -m bench.pickup            # 200 jobs (+ 40 without NOTIFY)
    .venv/bin/python -m bench.pickup --quick    # 20 jobs (+ 10 without NOTIFY)
"""

from __future__ import annotations

import random
import time

from bench.common import (
    Sink,
    WorkerProcess,
    base_parser,
    execute,
    fmt,
    insert_jobs_sql,
    insert_webhook_channel,
    job_key,
    machine,
    percentile,
    print_table,
    scratch_database,
    verdict,
)
from delivery_worker.db import connect

TARGET_P50_MS = 50.0
TARGET_P99_MS = 250.0
ARRIVAL_TIMEOUT_SECONDS = 10.0
DISABLE_NOTIFY = "ALTER TABLE notification_jobs DISABLE TRIGGER delivery_worker_notify_new_jobs"


def series(dsn: str, sink: Sink, channel_id: int, *, count: int, first: int) -> tuple[list[float], int]:
    """Queue ``count`` jobs one at a time; (latencies in ms, jobs that did not arrive in time)."""
    conn = connect(dsn)
    conn.autocommit = True
    chance = random.Random(first)  # gaps, not secrets
    latencies: list[float] = []
    missed = 0
    try:
        with conn.cursor() as cur:
            for i in range(count):
                time.sleep(chance.uniform(0.05, 0.25))
                statement, params = insert_jobs_sql(channel_id, first + i, 1)
                cur.execute(statement, params)
                (job_id,) = cur.fetchone()
                committed = time.monotonic()
                arrival = sink.wait_key(job_key(job_id), timeout=ARRIVAL_TIMEOUT_SECONDS)
                if arrival is None:
                    missed += 1
                else:
                    latencies.append(1000 * (arrival - committed))
    finally:
        conn.close()
    return latencies, missed


def main() -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, help="jobs with NOTIFY (default 200; --quick 20)")
    parser.add_argument("--fallback-jobs", type=int, help="jobs without NOTIFY (default 40; --quick 10)")
    parser.add_argument("--poll-interval", type=float, default=1.0)
    args = parser.parse_args()
    jobs = args.jobs or (20 if args.quick else 200)
    fallback_jobs = args.fallback_jobs if args.fallback_jobs is not None else (10 if args.quick else 40)
    settings = {"worker_poll_interval": str(args.poll_interval)}

    with scratch_database("pickup") as dsn, Sink() as sink:
        channel_id = insert_webhook_channel(dsn, sink.url("/hook"))
        worker = WorkerProcess(dsn, settings, drain=False)
        try:
            _, missed = series(dsn, sink, channel_id, count=3, first=1_000_000)
            if missed:
                raise SystemExit("the worker did not deliver its first jobs")
            with_notify, missed_notify = series(dsn, sink, channel_id, count=jobs, first=1)
            execute(dsn, DISABLE_NOTIFY)
            without_notify, missed_poll = series(dsn, sink, channel_id, count=fallback_jobs, first=2_000_000)
        finally:
            usage = worker.stop()

    rows = [
        [
            name,
            f"{len(values):,}/{len(values) + missed:,}",
            fmt(percentile(values, 50), 1),
            fmt(percentile(values, 99), 1),
            fmt(max(values, default=float("nan")), 1),
        ]
        for name, values, missed in (
            ("LISTEN/NOTIFY (as shipped)", with_notify, missed_notify),
            ("poll only (trigger disabled)", without_notify, missed_poll),
        )
    ]
    print_table(
        ["pickup", "arrived", "p50 ms", "p99 ms", "max ms"],
        rows,
        title=f"pickup: idle worker, poll_interval {args.poll_interval:g} s, one job at a time; {machine()}",
    )
    p50, p99 = percentile(with_notify, 50), percentile(with_notify, 99)
    print(f"worker: {usage.cpu_s:.2f} CPU s over {usage.wall_s:.0f} s, peak RSS {usage.max_rss_mb:.0f} MB")
    print(
        f"p50 {p50:.1f} ms (target <= {TARGET_P50_MS:g}: {verdict(p50 <= TARGET_P50_MS)}), "
        f"p99 {p99:.1f} ms (target <= {TARGET_P99_MS:g}: {verdict(p99 <= TARGET_P99_MS)})"
    )


if __name__ == "__main__":
    main()
