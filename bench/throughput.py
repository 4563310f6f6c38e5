"""Throughput: N webhook jobs through the real worker to the fast sink, beside the HTTP limit.

The worker is the real CLI (``delivery-worker run --drain``) in a child process, so its CPU seconds
and peak RSS are its own (``os.wait4``). The HTTP limit is a bare ThreadPoolExecutor posting the
same bodies with the same headers and thread count through one requests.Session configured like
the worker's (channels/http.HttpClient), with no database; ``--limit-client urllib3`` uses urllib3
directly instead. Both rates are taken at the sink, between the first and the last arrival.
``--rounds`` repeats the pair and reports medians; ``--processes 2`` splits the threads between two
worker processes sharing the queue; ``--profile`` then runs the worker (one process) twice more
under py-spy and writes summaries to bench/profiles/.

    .venv/bin/python -m bench.throughput            # 20,000 jobs, 32 threads
    .venv/bin/python -m bench.throughput --quick    # 1,000 jobs
"""

from __future__ import annotations

import json
import queue
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from statistics import median

import requests
import urllib3
from requests.adapters import HTTPAdapter

from bench.common import (
    PROFILES,
    Sink,
    Usage,
    WorkerProcess,
    base_parser,
    cpu_seconds,
    execute,
    fmt,
    insert_jobs,
    insert_webhook_channel,
    job_key,
    machine,
    print_table,
    scratch_database,
    span_rate,
    summarize_profile,
    verdict,
    wait_all,
)

TARGET_RATIO = 0.80
USER_AGENT = "delivery-worker/0.1"


@dataclass(frozen=True)
class Pass:
    """One run of ``jobs`` jobs: delivered, rate at the sink, CPU and RSS of whoever sent them."""

    delivered: int
    jobs_per_s: float
    cpu_s: float  # net of start-up for the worker
    busy_s: float  # first to last arrival
    max_rss_mb: float | None
    sink_cpu_s: float


def worker_settings(
    threads: int, batch_size: int, log_level: str, per_destination: int = 0
) -> dict[str, str]:
    return {
        "worker_threads": str(threads),
        "worker_batch_size": str(batch_size),
        "logging_level": log_level,
        # Every job goes to the one sink: by default the pipeline's own speed, not the per-destination
        # share (docs/storms-claim.md); --per-destination 4 measures the worker's default share.
        "worker_max_in_flight_per_destination": str(per_destination),
    }


def worker_pass(
    dsn: str,
    sink: Sink,
    channel_id: int,
    settings: dict[str, str],
    *,
    jobs: int,
    first: int,
    startup: Usage | None = None,
    processes: int = 1,
    profile: Path | None = None,
    profile_args: tuple[str, ...] = (),
) -> tuple[Pass, list[int]]:
    """Queue ``jobs`` jobs (one INSERT), run the worker (``processes`` of them sharing the queue)
    until it drains them, and measure it: CPU and peak RSS are summed over the processes."""
    ids = insert_jobs(dsn, channel_id, jobs, first=first)
    sink.reset()
    sink_cpu = sink.stats()["cpu_s"]
    workers = [
        WorkerProcess(dsn, settings, drain=True, profile=profile, profile_args=profile_args)
        for _ in range(processes)
    ]
    usages = wait_all(workers, timeout=max(120.0, jobs / 20))
    sink_cpu = sink.stats()["cpu_s"] - sink_cpu
    arrivals = sink.arrivals()
    times = [arrivals[key] for key in map(job_key, ids) if key in arrivals]
    cpu = max(sum(u.cpu_s for u in usages) - processes * (startup.cpu_s if startup else 0.0), 0.0)
    rss = sum(u.max_rss_mb or 0.0 for u in usages)
    busy = max(times) - min(times) if len(times) > 1 else float("nan")
    return Pass(len(times), span_rate(times), cpu, busy, rss, sink_cpu), ids


def startup_usage(dsn: str, settings: dict[str, str]) -> Usage:
    """The worker starting, finding nothing to do and exiting: subtracted from each pass's CPU."""
    return WorkerProcess(dsn, settings, drain=True).wait(timeout=60)


def requests_poster(threads: int) -> tuple[Callable[[str, bytes, dict[str, str]], int], Callable[[], None]]:
    """One requests.Session set up as the worker's (channels/http.HttpClient: pool size, no retries,
    no proxies from the environment), without its outbound-address guard."""
    session = requests.Session()
    session.trust_env = False
    session.mount("http://", HTTPAdapter(pool_connections=32, pool_maxsize=threads, max_retries=0))
    session.headers["User-Agent"] = USER_AGENT

    def post(url: str, body: bytes, headers: dict[str, str]) -> int:
        with session.post(
            url, data=body, headers=headers, timeout=(5.0, 15.0), allow_redirects=False
        ) as reply:
            return reply.status_code

    return post, session.close


def urllib3_poster(threads: int) -> tuple[Callable[[str, bytes, dict[str, str]], int], Callable[[], None]]:
    """urllib3's PoolManager directly (what requests runs on), for comparison."""
    pool = urllib3.PoolManager(
        num_pools=32, maxsize=threads, retries=False, timeout=urllib3.Timeout(5.0, 15.0)
    )

    def post(url: str, body: bytes, headers: dict[str, str]) -> int:
        reply = pool.request(
            "POST", url, body=body, headers={"User-Agent": USER_AGENT, **headers}, redirect=False
        )
        return reply.status

    return post, pool.clear


POSTERS = {"requests": requests_poster, "urllib3": urllib3_poster}


def http_limit(
    sink: Sink, bodies: list[tuple[str, bytes]], threads: int, client: str, *, path: str = "/hook"
) -> Pass:
    """Post every body from a bare thread pool with the same headers, and no database."""
    post, close = POSTERS[client](threads)
    url = sink.url(path)
    work: queue.SimpleQueue[tuple[str, bytes]] = queue.SimpleQueue()
    for item in bodies:
        work.put(item)
    deadline = time.monotonic() + max(120.0, len(bodies) / 20)
    failures: list[int] = []

    def post_until_empty() -> None:
        while time.monotonic() < deadline:
            try:
                key, body = work.get_nowait()
            except queue.Empty:
                return
            status = post(url, body, {"Content-Type": "application/json", "Idempotency-Key": key})
            if not 200 <= status < 300:
                failures.append(status)

    sink.reset()
    sink_cpu, cpu = sink.stats()["cpu_s"], cpu_seconds()
    with ThreadPoolExecutor(threads) as pool:
        for future in [pool.submit(post_until_empty) for _ in range(threads)]:
            future.result()
    cpu = cpu_seconds() - cpu
    sink_cpu = sink.stats()["cpu_s"] - sink_cpu
    close()
    if failures:
        print(f"HTTP limit: {len(failures)} non-2xx answers", flush=True)
    times = list(sink.arrivals().values())
    busy = max(times) - min(times) if len(times) > 1 else float("nan")
    return Pass(len(times), span_rate(times), cpu, busy, None, sink_cpu)


def bodies_for(dsn: str, ids: list[int]) -> list[tuple[str, bytes]]:
    """The exact bytes the webhook channel sent for these jobs (see channels/webhook.render_body)."""
    rows = execute(dsn, "SELECT job_id, payload_json FROM notification_jobs WHERE job_id = ANY(%s)", (ids,))
    return [
        ("limit:" + str(job_id), json.dumps(dict(payload), default=str).encode()) for job_id, payload in rows
    ]


def profile_passes(
    dsn: str, sink: Sink, channel_id: int, settings: dict[str, str], jobs: int, *, first: int
) -> None:
    """Two more passes under py-spy: who holds the GIL, and where the poll loop's time goes."""
    PROFILES.mkdir(exist_ok=True)
    kinds = {
        "gil": ("--gil", "samples of the thread holding the GIL (where the worker's CPU goes)", None),
        "poll-loop": (
            "--idle",
            "the poll loop's thread only, idle included (where its wall time goes)",
            "poll loop",
        ),
    }
    for number, (name, (flag, what, only)) in enumerate(kinds.items()):
        with tempfile.TemporaryDirectory() as folder:
            raw = Path(folder) / f"{name}.txt"
            args = ("--rate", "250", "--nonblocking", flag)
            result, _ = worker_pass(
                dsn,
                sink,
                channel_id,
                settings,
                jobs=jobs,
                first=first + number * jobs,
                profile=raw,
                profile_args=args,
            )
            title = (
                f"py-spy record {' '.join(args)}: delivery-worker run --drain, {jobs:,} webhook jobs, "
                f"threads {settings['worker_threads']}, batch_size {settings['worker_batch_size']}, "
                f"log level {settings['logging_level']}; {machine()}\n{what}\n"
                f"(under the profiler: {fmt(result.jobs_per_s)} jobs/s)"
            )
            summary = summarize_profile(raw, title=title, only=only)
        target = PROFILES / f"throughput-{name}.txt"
        target.write_text(summary, encoding="utf-8")
        print(f"wrote {target.relative_to(PROFILES.parent.parent)}")


def row(name: str, passes: list[Pass], jobs: int) -> list[str]:
    """Medians over the rounds (peak RSS: the highest)."""
    rss = [p.max_rss_mb for p in passes if p.max_rss_mb is not None]
    return [
        name,
        fmt(min(p.delivered for p in passes)),
        fmt(median(p.jobs_per_s for p in passes)),
        fmt(median(p.cpu_s / jobs * 1000 for p in passes), 2),
        fmt(median(100 * p.cpu_s / p.busy_s for p in passes)),
        fmt(max(rss)) if rss else "-",
        fmt(median(100 * p.sink_cpu_s / p.busy_s for p in passes)),
    ]


def main() -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, help="jobs per pass (default 20,000; --quick 1,000)")
    parser.add_argument("--threads", type=int, default=32, help="in all (the limit's threads too)")
    parser.add_argument(
        "--processes", type=int, default=1, help="worker processes sharing the queue and the threads"
    )
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--log-level", default="INFO", help="the worker's log level (INFO: a line per job)")
    parser.add_argument("--rounds", type=int, default=1, help="repeat worker + limit; show medians")
    parser.add_argument(
        "--limit-client", choices=sorted(POSTERS), default="requests", help="HTTP client of the limit"
    )
    parser.add_argument("--profile", action="store_true", help="then profile the worker with py-spy")
    parser.add_argument(
        "--per-destination", type=int, default=0, help="[worker] max_in_flight_per_destination (0: threads)"
    )
    args = parser.parse_args()
    jobs = args.jobs or (1_000 if args.quick else 20_000)
    settings = worker_settings(
        args.threads // args.processes, args.batch_size, args.log_level, args.per_destination
    )

    workers: list[Pass] = []
    limits: list[Pass] = []
    completed = 0
    with scratch_database("throughput") as dsn, Sink() as sink:
        channel_id = insert_webhook_channel(dsn, sink.url("/hook"))
        startup = startup_usage(dsn, settings)
        for number in range(args.rounds):
            result, ids = worker_pass(
                dsn,
                sink,
                channel_id,
                settings,
                jobs=jobs,
                first=number * jobs + 1,
                startup=startup,
                processes=args.processes,
            )
            workers.append(result)
            completed += execute(
                dsn,
                "SELECT count(*) FROM notification_jobs WHERE status = 'COMPLETED' AND job_id = ANY(%s)",
                (ids,),
            )[0][0]
            limits.append(http_limit(sink, bodies_for(dsn, ids), args.threads, args.limit_client))
        if args.profile:  # one process with all the threads
            single = worker_settings(args.threads, args.batch_size, args.log_level, args.per_destination)
            profile_passes(dsn, sink, channel_id, single, jobs, first=args.rounds * jobs + 1)

    rounds = f", median of {args.rounds} rounds" if args.rounds > 1 else ""
    in_processes = f" in {args.processes} worker processes" if args.processes > 1 else ""
    print_table(
        ["run", "delivered", "jobs/s", "CPU s/1k jobs", "CPU %", "peak RSS MB", "sink CPU %"],
        [
            row("worker (run --drain)", workers, jobs),
            row(f"HTTP limit ({args.limit_client}, no db)", limits, jobs),
        ],
        title=(
            f"throughput: {jobs:,} webhook jobs, threads {args.threads}{in_processes}, "
            f"batch_size {args.batch_size}, "
            f"log level {args.log_level}{rounds}; {machine()}"
        ),
    )
    print(
        f"worker start-up and exit with nothing to do: {startup.cpu_s:.2f} CPU s, "
        f"{startup.max_rss_mb:.0f} MB (subtracted, per process, from the worker's CPU)"
    )
    print(f"jobs COMPLETED in the database: {completed:,} of {jobs * args.rounds:,}")
    ratios = [w.jobs_per_s / limit.jobs_per_s for w, limit in zip(workers, limits, strict=True)]
    if len(ratios) > 1:
        print("worker / limit per round: " + ", ".join(f"{r:.0%}" for r in ratios))
        print("worker peak RSS per round: " + ", ".join(f"{fmt(w.max_rss_mb)} MB" for w in workers))
    ratio = median(ratios)
    print(f"worker / limit: {ratio:.0%} (target >= {TARGET_RATIO:.0%}: {verdict(ratio >= TARGET_RATIO)})")


if __name__ == "__main__":
    main()
