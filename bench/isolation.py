"""Isolation: how much a destination that never answers slows everyone else's alerts.

Producers queue webhook jobs at a steady rate (one INSERT per job, as the platform does); every
tenth job goes to ``/hang``, where the sink reads the request and never answers, so each attempt
holds a worker thread until ``[http] read_timeout`` (2 s here). The figure is the enqueue-to-
delivered latency (INSERT committed → request at the sink) of the other, fast jobs, against a run
where that tenth goes to a second fast endpoint instead. The worker is the real CLI (``run``, with
LISTEN/NOTIFY) with the defaults otherwise: quick retries, circuit breaker and all.

    .venv/bin/python -m bench.isolation             # 100 jobs/s for 20 s, each run
    .venv/bin/python -m bench.isolation --quick     # 100 jobs/s for 5 s
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from bench.common import (
    Sink,
    Usage,
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

TARGET_FACTOR = 2.0


@dataclass(frozen=True)
class Run:
    name: str
    fast: int
    delivered: int
    latencies_ms: list[float]
    hung_requests: int
    usage: Usage


def produce(dsn: str, channels: tuple[int, int], *, rate: float, count: int, every: int) -> dict[int, float]:
    """Insert ``count`` jobs at ``rate`` per second, each ``every``-th to the second channel;
    return {job_id: commit time} for the jobs of the first (fast) channel."""
    conn = connect(dsn)
    conn.autocommit = True
    committed: dict[int, float] = {}
    started = time.monotonic()
    try:
        with conn.cursor() as cur:
            for i in range(count):
                delay = started + i / rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                to_other = i % every == every - 1
                statement, params = insert_jobs_sql(channels[1] if to_other else channels[0], i + 1, 1)
                cur.execute(statement, params)
                (job_id,) = cur.fetchone()
                if not to_other:
                    committed[int(job_id)] = time.monotonic()
    finally:
        conn.close()
    return committed


def one_run(
    name: str, *, hanging: bool, rate: float, seconds: float, every: int, settings: dict[str, str]
) -> Run:
    count = int(rate * seconds)
    with scratch_database("isolation") as dsn, Sink(hold_seconds=60) as sink:
        fast = insert_webhook_channel(dsn, sink.url("/hook"))
        other = insert_webhook_channel(dsn, sink.url("/hang" if hanging else "/other"))
        worker = WorkerProcess(dsn, settings, drain=False)
        probe = insert_jobs_sql(fast, 10_000_000, 1)  # the worker is up once this one arrives
        (probe_id,) = execute(dsn, *probe)[0]
        if sink.wait_key(job_key(probe_id), timeout=60) is None:
            worker.stop()
            raise SystemExit("the worker did not deliver a first job within 60 s")
        sink.reset()
        committed = produce(dsn, (fast, other), rate=rate, count=count, every=every)
        sink.wait_count(len(committed) if hanging else count, timeout=seconds + 120)
        hung = int(sink.stats()["hung"])
        usage = worker.stop()
        arrivals = sink.arrivals()
    latencies = [
        1000 * (arrivals[job_key(job_id)] - at)
        for job_id, at in committed.items()
        if job_key(job_id) in arrivals
    ]
    return Run(name, len(committed), len(latencies), latencies, hung, usage)


def main() -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=100.0, help="jobs queued per second (default 100)")
    parser.add_argument("--seconds", type=float, help="how long producers queue (default 20; --quick 5)")
    parser.add_argument("--every", type=int, default=10, help="every n-th job goes to the hanging endpoint")
    parser.add_argument("--threads", type=int, default=32)
    parser.add_argument("--read-timeout", type=float, default=2.0)
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION_KEY=VALUE",
        help="any other worker setting, e.g. --set worker_quick_retries=0",
    )
    args = parser.parse_args()
    seconds = args.seconds or (5.0 if args.quick else 20.0)
    settings = {"worker_threads": str(args.threads), "http_read_timeout": str(args.read_timeout)}
    settings.update(dict(item.split("=", 1) for item in args.set))

    runs = [
        one_run(name, hanging=hanging, rate=args.rate, seconds=seconds, every=args.every, settings=settings)
        for name, hanging in (("without hanging endpoint", False), ("with hanging endpoint", True))
    ]
    rows = [
        [
            run.name,
            f"{run.delivered:,}/{run.fast:,}",
            fmt(percentile(run.latencies_ms, 50), 1),
            fmt(percentile(run.latencies_ms, 99), 1),
            fmt(max(run.latencies_ms, default=float("nan")), 1),
            fmt(run.hung_requests),
        ]
        for run in runs
    ]
    extra = ", ".join(f"{key}={value}" for key, value in sorted(settings.items()))
    print_table(
        ["run", "fast delivered", "p50 ms", "p99 ms", "max ms", "requests hung"],
        rows,
        title=(
            f"isolation: {args.rate:g} jobs/s for {seconds:g} s, every {args.every}th to the second "
            f"endpoint; {extra}; {machine()}"
        ),
    )
    base, hung = (percentile(run.latencies_ms, 99) for run in runs)
    factor = hung / base
    met = verdict(factor <= TARGET_FACTOR)
    print(f"p99 with / without: {factor:.1f}x (target <= {TARGET_FACTOR:g}x: {met})")


if __name__ == "__main__":
    main()
