"""Latency-bound throughput: the worker against an endpoint that answers after a delay (200 ms).

Real receivers answer in 100-300 ms, so in production the worker's ceiling is Little's law:
threads / latency. For each thread count, N webhook jobs are queued by one INSERT and drained by
the real worker (``delivery-worker run --drain``, ``[worker] processes`` of them under one ``run``);
beside it, a bare ThreadPoolExecutor with the same threads posts the same bodies through one
requests.Session (bench/throughput.py's HTTP limit), with no database. Both rates are taken at the
sink (bench/sink.py: one asyncio loop, so 256+ held connections cost it next to nothing), between
the first and the last arrival. Also printed: the worker's CPU seconds per 1,000 jobs (start-up
subtracted: the figure to compare code variants by on a busy machine) and its peak RSS per process.

    .venv/bin/python -m bench.latency                          # threads 16, 64, 256; 200 ms
    .venv/bin/python -m bench.latency --threads 256 --processes 2 --seconds 10
    .venv/bin/python -m bench.latency --quick                  # ~3 s of work per thread count
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from pathlib import Path
from statistics import median

from bench.common import (
    Sink,
    WorkerProcess,
    base_parser,
    execute,
    fmt,
    insert_jobs,
    insert_webhook_channel,
    job_key,
    machine,
    print_table,
    scratch_database,
    span_rate,
)
from bench.throughput import bodies_for, http_limit, worker_settings

TARGET_SHARE = 0.80


@dataclass(frozen=True)
class WorkerRun:
    delivered: int
    jobs_per_s: float
    cpu_s_per_1k: float
    peak_rss_mb: float  # the largest process of the run (the parent, or one worker process)
    completed: int


def tree_peak_rss_mb(pid: int) -> float:
    """The largest VmHWM among ``pid`` and its children (the worker processes of one ``run``)."""
    peak = 0.0
    pids = [pid]
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):
                pids += [int(p) for p in (task / "children").read_text().split()]
    for one in pids:
        with contextlib.suppress(OSError, ValueError):
            for line in Path(f"/proc/{one}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peak = max(peak, int(line.split()[1]) / 1024)
    return peak


def worker_run(
    dsn: str, sink: Sink, channel_id: int, settings: dict[str, str], jobs: int, first: int, startup_cpu: float
) -> tuple[WorkerRun, list[int]]:
    ids = insert_jobs(dsn, channel_id, jobs, first=first)
    sink.reset()
    worker = WorkerProcess(dsn, settings, drain=True)
    deadline = time.monotonic() + max(120.0, jobs / 20)
    peak = 0.0
    while not worker._reap() and time.monotonic() < deadline:
        if time.monotonic() - worker.started > 0.5:  # exec'd: the figure is the worker's own
            peak = max(peak, tree_peak_rss_mb(worker.process.pid))
        time.sleep(0.1)
    usage = worker.wait(timeout=1.0)
    arrivals = sink.arrivals()
    times = [arrivals[key] for key in map(job_key, ids) if key in arrivals]
    completed = execute(
        dsn,
        "SELECT count(*) FROM notification_jobs WHERE status = 'COMPLETED' AND job_id = ANY(%s)",
        (ids,),
    )[0][0]
    cpu = max(usage.cpu_s - startup_cpu, 0.0)
    return WorkerRun(len(times), span_rate(times), cpu / jobs * 1000, peak, completed), ids


def main() -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--threads", default="16,64,256", help="comma-separated thread counts")
    parser.add_argument("--delay-ms", type=int, default=200, help="the endpoint's answer time")
    parser.add_argument(
        "--seconds", type=float, help="work per thread count at the bound (default 8; --quick 3)"
    )
    parser.add_argument("--processes", type=int, default=1, help="[worker] processes (threads are split)")
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--log-level", default="INFO", help="the worker's log level (INFO: a line per job)")
    parser.add_argument("--rounds", type=int, default=1, help="repeat each thread count; show medians")
    parser.add_argument("--no-limit", action="store_true", help="skip the bare requests loop")
    args = parser.parse_args()
    seconds = args.seconds or (3.0 if args.quick else 8.0)
    thread_counts = [int(t) for t in args.threads.split(",")]
    path = f"/delay/{args.delay_ms}/hook"

    rows = []
    verdicts = []
    with scratch_database("latency") as dsn, Sink() as sink:
        channel_id = insert_webhook_channel(dsn, sink.url(path))
        first = 1
        for threads in thread_counts:
            settings = worker_settings(threads, args.batch_size, args.log_level)
            if args.processes > 1:
                settings["worker_processes"] = str(args.processes)
            startup = WorkerProcess(dsn, settings, drain=True).wait(timeout=60)
            bound = threads / (args.delay_ms / 1000)
            jobs = max(200, int(bound * seconds))
            runs: list[WorkerRun] = []
            limits: list[float] = []
            for _ in range(args.rounds):
                run, ids = worker_run(dsn, sink, channel_id, settings, jobs, first, startup.cpu_s)
                first += jobs
                runs.append(run)
                if not args.no_limit:
                    limit = http_limit(sink, bodies_for(dsn, ids), threads, "requests", path=path)
                    limits.append(limit.jobs_per_s)
            rate = median(r.jobs_per_s for r in runs)
            limit_rate = median(limits) if limits else float("nan")
            rows.append(
                [
                    fmt(threads),
                    f"{min(r.completed for r in runs):,}/{jobs:,}",
                    fmt(rate),
                    fmt(bound),
                    f"{rate / bound:.0%}",
                    fmt(limit_rate) + (f" ({limit_rate / bound:.0%})" if limits else ""),
                    f"{rate / limit_rate:.0%}" if limits else "-",
                    fmt(median(r.cpu_s_per_1k for r in runs), 2),
                    fmt(max(r.peak_rss_mb for r in runs)),
                ]
            )
            verdicts.append((threads, rate, limit_rate, bound))

    processes = f" in {args.processes} worker processes" if args.processes > 1 else ""
    rounds = f", median of {args.rounds} rounds" if args.rounds > 1 else ""
    print_table(
        [
            "threads",
            "COMPLETED",
            "worker jobs/s",
            "Little's-law bound",
            "share",
            "bare requests, no db",
            "worker / bare",
            "CPU s/1k jobs",
            "peak RSS MB/process",
        ],
        rows,
        title=(
            f"latency: endpoint answering after {args.delay_ms} ms, ~{seconds:.0f} s of jobs at the bound, "
            f"threads{processes}, batch_size {args.batch_size}, log level {args.log_level}{rounds}; "
            f"{machine()}"
        ),
    )
    for threads, rate, limit_rate, bound in verdicts:
        if threads == max(thread_counts):
            beats = "met" if rate >= limit_rate else "NOT met"
            print(
                f"{threads} threads: worker {fmt(rate)} jobs/s, bare requests {fmt(limit_rate)} "
                f"(worker >= bare: {beats}); share of the bound {rate / bound:.0%} "
                f"(stretch >= {TARGET_SHARE:.0%})"
            )


if __name__ == "__main__":
    main()
