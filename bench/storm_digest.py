"""Storm digests: a flood of alerts to ONE Slack webhook (rate limit 1/s), as summaries.

A storm of severity-1 alerts is queued in small batches over ``spread`` seconds while the real worker
(``run``, default settings: ``[rate_limits] slack = 1``, ``[digest] enabled = true``) is running; one
severity-5 alert is queued in the middle of it. A local HTTP server stands in for the Slack webhook
and records each post. Printed per storm size: posts, time to drain (first insert → every job
COMPLETED), latency of the severe alert (its insert → the first post naming it) and the smallest gap
between two posts (Slack takes about one per second). Without digests the same storm takes one post
and one second per alert (``--without-digests`` shows it for the smallest size).

    .venv/bin/python -m bench.storm_digest              # 60 and 1,000 alerts
    .venv/bin/python -m bench.storm_digest --quick      # 60 alerts

``run()`` (or ``storm_scenario`` as a bench/storm.py ``Scenario``) is what bench/storm.py calls.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from bench.common import (
    TENANT,
    WorkerProcess,
    base_parser,
    execute,
    fmt,
    machine,
    print_table,
    scratch_database,
)

SEVERE_MESSAGE = "Main breaker tripped at plant-3"
BATCHES = 20
DRAIN_TIMEOUT_SECONDS = 600.0
SLACK_PATH = "/services/T0/B0/storm"

FLOOD_SQL = """
INSERT INTO notification_jobs (tenant_id, alert_id, channel_id, payload_json)
SELECT %(tenant)s, g, %(channel)s, jsonb_build_object(
    'alert_id', g, 'tenant_id', %(tenant)s, 'device_id', 'door-' || g, 'site_id', 'plant-3',
    'alert_type', 'OFFLINE', 'severity', %(severity)s, 'message', %(message)s || g,
    'triggered_at', '2026-11-29T03:00:00Z', 'event_type', 'OPEN', 'channel_type', 'slack')
FROM generate_series(%(first)s::bigint, %(last)s::bigint) AS g
"""


class SlackStandIn:
    """Records (arrival time, body) of every post; answers 200 ``ok`` as Slack does."""

    def __init__(self) -> None:
        self.posts: list[tuple[float, str]] = []
        self.lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with owner.lock:
                    owner.posts.append((time.monotonic(), body.decode("utf-8", "replace")))
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}{SLACK_PATH}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@dataclass(frozen=True)
class StormResult:
    alerts: int
    digests: bool
    posts: int
    drain_s: float
    severe_latency_s: float
    min_gap_s: float


def _queue(dsn: str, channel: int, first: int, last: int, *, severity: int, message: str) -> None:
    params = {"tenant": TENANT, "channel": channel, "first": first, "last": last}
    execute(dsn, FLOOD_SQL, {**params, "severity": severity, "message": message})


def _completed(dsn: str) -> int:
    return int(execute(dsn, "SELECT count(*) FROM notification_jobs WHERE status = 'COMPLETED'")[0][0])


def storm(alerts: int, *, digests: bool = True, spread_seconds: float = 2.0) -> StormResult:
    """Queue ``alerts`` (one of them severe) over ``spread_seconds`` and wait until all are COMPLETED."""
    slack = SlackStandIn()
    try:
        with scratch_database("storm_digest") as dsn:
            (channel,) = execute(
                dsn,
                "INSERT INTO notification_channels (tenant_id, name, channel_type, config)"
                " VALUES (%s, 'storm', 'slack', %s) RETURNING channel_id",
                (TENANT, json.dumps({"webhook_url": slack.url()})),
            )[0]
            worker = WorkerProcess(dsn, {"digest_enabled": str(digests).lower()}, drain=False)
            try:
                time.sleep(1.5)  # started and listening
                flood = alerts - 1
                per_batch = max(1, math.ceil(flood / BATCHES))
                started = time.monotonic()
                severe_queued = math.nan
                for batch, first in enumerate(range(1, flood + 1, per_batch)):
                    last = min(flood, first + per_batch - 1)
                    _queue(dsn, channel, first, last, severity=1, message="Door sensor offline #")
                    if batch == BATCHES // 2:
                        severe_queued = time.monotonic()
                        _queue(dsn, channel, 0, 0, severity=5, message=SEVERE_MESSAGE + " #")
                    time.sleep(spread_seconds / BATCHES)
                if math.isnan(severe_queued):
                    severe_queued = time.monotonic()
                    _queue(dsn, channel, 0, 0, severity=5, message=SEVERE_MESSAGE + " #")
                deadline = started + DRAIN_TIMEOUT_SECONDS
                while _completed(dsn) < alerts and time.monotonic() < deadline:
                    time.sleep(0.05)
                drained = time.monotonic() - started
            finally:
                worker.stop()
    finally:
        slack.close()
    arrivals = [at for at, _ in slack.posts]
    severe = [at for at, body in slack.posts if SEVERE_MESSAGE in body]
    gaps = [later - earlier for earlier, later in itertools.pairwise(arrivals)]
    return StormResult(
        alerts=alerts,
        digests=digests,
        posts=len(slack.posts),
        drain_s=drained,
        severe_latency_s=(severe[0] - severe_queued) if severe else math.nan,
        min_gap_s=min(gaps, default=math.nan),
    )


def run(sizes: Sequence[int] = (60, 1000), *, without_digests: bool = False) -> list[StormResult]:
    """Each storm size with digests (and the smallest without, if asked); prints a table."""
    results = [storm(size) for size in sizes]
    if without_digests:
        results.append(storm(min(sizes), digests=False))
    rows = [
        [
            f"{r.alerts:,} alerts" + ("" if r.digests else ", digests off"),
            fmt(r.posts),
            fmt(r.drain_s, 1),
            fmt(r.severe_latency_s, 2),
            fmt(r.min_gap_s, 2),
        ]
        for r in results
    ]
    print_table(
        ["storm to one Slack webhook", "posts", "drain s", "severe alert s", "min gap s"],
        rows,
        title=f"storm digests: [rate_limits] slack = 1/s, queued over 2 s; {machine()}",
    )
    return results


def storm_scenario(args: argparse.Namespace) -> None:
    """For bench/storm.py: ``Scenario("digest", "a storm to one Slack webhook", storm_scenario)``."""
    run([60] if args.quick else [60, 1000])


def main() -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", help="storm sizes (default 60 1000; --quick 60)")
    parser.add_argument(
        "--without-digests", action="store_true", help="also the smallest storm, one post each"
    )
    args = parser.parse_args()
    sizes = args.sizes or ([60] if args.quick else [60, 1000])
    run(sizes, without_digests=args.without_digests)


if __name__ == "__main__":
    main()
