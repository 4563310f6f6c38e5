"""Alert storms (issue 11): what one tenant's flood does to everyone else, against the real worker.

Each scenario is a function in SCENARIOS: it gets its own scratch database, runs the real worker
(``delivery-worker run`` as a child process, defaults unless it says otherwise) against local
endpoints on 127.0.0.1 only, and prints its figures. Nothing is asserted.

- ``tenant``: 4,000 jobs of tenant ``noisy`` on an endpoint answering in 40 ms (then spread over 8
  such channels); one job of tenant ``vip`` queued mid-flood. Its latency (queued to received).
- ``severity``: 4,000 severity-1 jobs on one channel; one severity-5 job on the same channel
  mid-flood. Its latency, and whether every severity-1 job still completed.
- ``order``: OPEN, ACKNOWLEDGED and CLOSED of 20 alerts queued together, every OPEN answered 503
  twice, two workers on one database: the order in which the receiver accepted each alert's events.

    .venv/bin/python -m bench.storm                       # all scenarios
    .venv/bin/python -m bench.storm --only severity       # one of them
    .venv/bin/python -m bench.storm --quick               # 1,000-job floods

Another scenario is one more ``Scenario`` appended to SCENARIOS (e.g. from bench/storm_digest.py).
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from bench import storm_digest
from bench.common import (
    PAYLOAD_SQL,
    Sink,
    WorkerProcess,
    base_parser,
    execute,
    fmt,
    job_key,
    machine,
    scratch_database,
    verdict,
    wait_all,
)

TARGET_LATENCY_S = 2.0
ENDPOINT_MS = 40


@dataclass(frozen=True)
class Scenario:
    name: str
    summary: str
    run: Callable[[argparse.Namespace], None]


# --- queueing like the producers -------------------------------------------------------------------


def insert_channel(dsn: str, tenant: str, url: str) -> int:
    rows = execute(
        dsn,
        "INSERT INTO notification_channels (tenant_id, name, channel_type, config)"
        " VALUES (%s, 'storm', 'webhook', %s) RETURNING channel_id",
        (tenant, json.dumps({"url": url})),
    )
    return int(rows[0][0])


def insert_flood(
    dsn: str, tenant: str, channel_id: int, *, count: int, severity: int, first: int
) -> list[int]:
    """One INSERT of ``count`` jobs (alert ids first..) of one severity, as a producer queues a storm."""
    rows = execute(
        dsn,
        "INSERT INTO notification_jobs (tenant_id, alert_id, channel_id, payload_json)"
        f" SELECT %s, g, %s, jsonb_set({PAYLOAD_SQL}, '{{severity}}', to_jsonb(%s::int))"
        " FROM generate_series(%s::bigint, %s::bigint) AS g RETURNING job_id",
        (tenant, channel_id, severity, first, first + count - 1),
    )
    return [int(job_id) for (job_id,) in rows]


def completed(dsn: str, job_ids: list[int]) -> int:
    rows = execute(
        dsn,
        "SELECT count(*) FROM notification_jobs WHERE status = 'COMPLETED' AND job_id = ANY(%s)",
        (job_ids,),
    )
    return int(rows[0][0])


def wait_completed(dsn: str, job_ids: list[int], timeout: float) -> int:
    """Poll until every job is COMPLETED (the sink sees a request before its outcome is written)."""
    deadline = time.monotonic() + timeout
    done = completed(dsn, job_ids)
    while done < len(job_ids) and time.monotonic() < deadline:
        time.sleep(0.2)
        done = completed(dsn, job_ids)
    return done


def latency_of(sink: Sink, job_id: int, queued_at: float, timeout: float = 60.0) -> float | None:
    arrival = sink.wait_key(job_key(job_id), timeout)
    return None if arrival is None else arrival - queued_at


def latency_line(name: str, latency: float | None) -> str:
    shown = "not delivered in 60 s" if latency is None else f"{latency * 1000:,.0f} ms"
    met = latency is not None and latency <= TARGET_LATENCY_S
    return f"{name}: {shown} (target <= {TARGET_LATENCY_S:g} s: {verdict(met)})"


# --- (a) another tenant during a flood -------------------------------------------------------------


def tenant_flood(args: argparse.Namespace) -> None:
    print(f"\ntenant: {args.flood:,} jobs of tenant noisy, endpoints answering in {ENDPOINT_MS} ms")
    print(f"threads {args.threads}")
    # On one channel the per-destination share already leaves threads free; spread over 8 channels
    # noisy can fill every thread, and only the tenants' turns let the vip job in.
    for channels in (1, 8):
        behind, latency = vip_during_flood(args, channels)
        print(f"noisy on {channels} channel(s): noisy jobs not yet done when vip arrived: {fmt(behind)}")
        print("  " + latency_line("vip job queued mid-flood, latency", latency))


def vip_during_flood(args: argparse.Namespace, channels: int) -> tuple[int, float | None]:
    flood = args.flood
    with scratch_database("storm_tenant") as dsn, Sink() as sink:
        noisy_jobs: list[int] = []
        for number in range(channels):
            noisy = insert_channel(dsn, "noisy", sink.url(f"/delay/{ENDPOINT_MS}/noisy{number}"))
            share = flood // channels
            noisy_jobs += insert_flood(dsn, "noisy", noisy, count=share, severity=1, first=number * share + 1)
        vip = insert_channel(dsn, "vip", sink.url(f"/delay/{ENDPOINT_MS}/vip"))
        worker = WorkerProcess(dsn, {"worker_threads": str(args.threads)}, drain=False)
        try:
            sink.wait_count(min(200, flood // 4), timeout=120)  # mid-flood
            queued_at = time.monotonic()
            (vip_job,) = insert_flood(dsn, "vip", vip, count=1, severity=1, first=flood + 1)
            latency = latency_of(sink, vip_job, queued_at)
            behind = len(noisy_jobs) - completed(dsn, noisy_jobs)
        finally:
            worker.stop()
    return behind, latency


# --- (b) a critical alert behind a flood of minor ones ---------------------------------------------


def severity_flood(args: argparse.Namespace) -> None:
    flood = args.flood
    with scratch_database("storm_severity") as dsn, Sink() as sink:
        channel = insert_channel(dsn, "plant", sink.url(f"/delay/{ENDPOINT_MS}/plant"))
        minor = insert_flood(dsn, "plant", channel, count=flood, severity=1, first=1)
        worker = WorkerProcess(dsn, {"worker_threads": str(args.threads)}, drain=False)
        started = time.monotonic()
        try:
            sink.wait_count(min(200, flood // 4), timeout=120)
            queued_at = time.monotonic()
            (critical,) = insert_flood(dsn, "plant", channel, count=1, severity=5, first=flood + 1)
            latency = latency_of(sink, critical, queued_at)
            sink.wait_count(flood + 1, timeout=600)
            minor_done = wait_completed(dsn, minor, timeout=60)
            drained_s = time.monotonic() - started
        finally:
            worker.stop()
    print(f"\nseverity: {flood:,} severity-1 jobs on one {ENDPOINT_MS} ms channel, threads {args.threads}")
    print(latency_line("severity-5 job queued mid-flood on the same channel, latency", latency))
    print(
        f"severity-1 jobs COMPLETED: {fmt(minor_done)} of {fmt(flood)} "
        f"({verdict(minor_done == flood)}; the flood took {drained_s:.1f} s)"
    )


# --- (c) one alert's events in order across two workers --------------------------------------------


class OrderReceiver:
    """A webhook receiver on 127.0.0.1 answering each alert's first ``refuse`` OPEN requests 503
    and every other request 200, recording (alert, event, status) in the order it answered."""

    def __init__(self, refuse: int) -> None:
        self.refuse = refuse
        self.lock = threading.Lock()
        self.seen: list[tuple[int, str, int]] = []
        self.refused: dict[int, int] = defaultdict(int)
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))))
                status = receiver.answer(int(body["alert_id"]), str(body["event_type"]))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def answer(self, alert_id: int, event: str) -> int:
        with self.lock:
            status = 200
            if event == "OPEN" and self.refused[alert_id] < self.refuse:
                self.refused[alert_id] += 1
                status = 503
            self.seen.append((alert_id, event, status))
            return status

    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/events"

    @contextmanager
    def running(self) -> Iterator[OrderReceiver]:
        self.thread.start()
        try:
            yield self
        finally:
            self.server.shutdown()
            self.server.server_close()


EVENTS = ("OPEN", "ACKNOWLEDGED", "CLOSED")


def event_order(args: argparse.Namespace) -> None:
    alerts = 20
    receiver = OrderReceiver(refuse=2)
    with scratch_database("storm_order") as dsn, receiver.running():
        channel = insert_channel(dsn, "plant", receiver.url())
        for alert_id in range(1, alerts + 1):
            for event in EVENTS:  # queued together, in one statement per alert
                payload = {"alert_id": alert_id, "severity": 4, "event_type": event, "message": "storm"}
                execute(
                    dsn,
                    "INSERT INTO notification_jobs (tenant_id, alert_id, channel_id, deliver_on_event,"
                    " payload_json) VALUES ('plant', %s, %s, %s, %s)",
                    (alert_id, channel, event, json.dumps(payload)),
                )
        settings = {
            "worker_threads": "8",
            "worker_backoff_base_seconds": "0",
            "worker_quick_retries": "0",
            "worker_poll_interval": "0.05",
            # 20 OPENs refused in a row would open the endpoint's circuit: a different feature.
            "circuit_breaker_failure_threshold": "0",
        }
        workers = [WorkerProcess(dsn, settings, drain=True) for _ in range(2)]
        wait_all(workers, timeout=120)
        statuses = dict(execute(dsn, "SELECT status, count(*) FROM notification_jobs GROUP BY status"))
    accepted: dict[int, list[str]] = defaultdict(list)
    for alert_id, event, status in receiver.seen:
        if status == 200:
            accepted[alert_id].append(event)
    in_order = sum(1 for alert_id in range(1, alerts + 1) if tuple(accepted[alert_id]) == EVENTS)
    first = [f"{event} {status}" for alert_id, event, status in receiver.seen if alert_id == 1]
    print(f"\norder: OPEN, ACKNOWLEDGED, CLOSED of {alerts} alerts queued together, OPEN answered 503 twice")
    print(
        "two workers on one database; jobs by status: " + ", ".join(f"{k} {v}" for k, v in statuses.items())
    )
    print(f"alert 1 as the receiver saw it: {', '.join(first)}")
    print(f"alerts accepted in event order: {in_order} of {alerts} ({verdict(in_order == alerts)})")


SCENARIOS: list[Scenario] = [
    Scenario("tenant", "another tenant's job during a 40 ms flood", tenant_flood),
    Scenario("severity", "a severity-5 job behind a severity-1 flood on one channel", severity_flood),
    Scenario("order", "each alert's events in order with retries and two workers", event_order),
    Scenario("digest", "a storm to one Slack webhook, summarised", storm_digest.storm_scenario),
]


def main(scenarios: list[Scenario] | None = None) -> None:
    chosen = SCENARIOS if scenarios is None else scenarios
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--only", choices=[s.name for s in chosen], action="append", help="run just these")
    parser.add_argument("--flood", type=int, help="jobs in each flood (default 4,000; --quick 1,000)")
    parser.add_argument("--threads", type=int, default=16, help="[worker] threads (default 16)")
    args: Any = parser.parse_args()
    args.flood = args.flood or (1_000 if args.quick else 4_000)
    print(f"storm scenarios; worker defaults unless stated; {machine()}")
    for scenario in chosen:
        if args.only and scenario.name not in args.only:
            continue
        scenario.run(args)


if __name__ == "__main__":
    main()
