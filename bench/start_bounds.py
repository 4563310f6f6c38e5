"""Start/session bounds: how fast a held lock and a silent partition are noticed, and what 300 idle
connections to the metrics listener cost.

* lock: another session holds ``FOR UPDATE`` on a row; seconds until a worker session's UPDATE of it
  fails with DatabaseBusy (target: ``lock_timeout``, 5 s);
* partition: a TCP proxy between the session and PostgreSQL stops forwarding without closing;
  seconds until ``SELECT 1`` fails with DatabaseUnavailable (target: statement_timeout + 5 s = 20 s);
* metrics: threads of the process and /readyz latency (a database round trip), with 0 and with 300
  idle sockets open.

    .venv/bin/python -m bench.start_bounds
"""

from __future__ import annotations

import http.client
import socket
import statistics
import threading
import time

import psycopg2

from bench.common import execute, scratch_database
from delivery_worker.db import DatabaseBusy, DatabaseUnavailable, connect, transaction
from delivery_worker.health import HealthServer, LoopLiveness, ReadinessCheck
from delivery_worker.metrics import WorkerMetrics
from tests.servers.tcp_proxy import TcpProxy

IDLE_SOCKETS = 300
PROBES = 20


def lock_seconds(dsn: str) -> float:
    execute(dsn, "CREATE TABLE bench_lock (id int PRIMARY KEY)")
    execute(dsn, "INSERT INTO bench_lock VALUES (1)")
    holder = psycopg2.connect(dsn)
    conn = connect(dsn)
    try:
        with holder.cursor() as cur:
            cur.execute("SELECT id FROM bench_lock WHERE id = 1 FOR UPDATE")
        started = time.monotonic()
        try:
            with transaction(conn) as cur:
                cur.execute("UPDATE bench_lock SET id = 1 WHERE id = 1")
        except DatabaseBusy:
            return time.monotonic() - started
        raise AssertionError("the update was not stopped by the lock")
    finally:
        holder.close()
        conn.close()


def partition_seconds(dsn: str) -> float:
    server = psycopg2.extensions.parse_dsn(dsn)  # wherever BENCH_ADMIN_DSN points
    proxy = TcpProxy(server.get("host") or "127.0.0.1", int(server.get("port") or 5432)).start()
    conn = connect(psycopg2.extensions.make_dsn(dsn, host="127.0.0.1", port=str(proxy.port)))
    try:
        proxy.stall()
        started = time.monotonic()
        try:
            with transaction(conn) as cur:
                cur.execute("SELECT 1")
        except DatabaseUnavailable:
            return time.monotonic() - started
        raise AssertionError("the partition was not noticed")
    finally:
        conn.close()
        proxy.stop()


def probe_ms(port: int) -> list[float]:
    times = []
    for _ in range(PROBES):
        started = time.perf_counter()
        client = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        client.request("GET", "/readyz")
        client.getresponse().read()
        client.close()
        times.append((time.perf_counter() - started) * 1000)
    return times


def metrics_figures(dsn: str) -> None:
    metrics = WorkerMetrics()
    server = HealthServer("127.0.0.1", 0, metrics.registry, LoopLiveness(300), ReadinessCheck(dsn))
    server.start()
    try:
        quiet = probe_ms(server.port)
        threads_quiet = threading.active_count()
        idle = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(IDLE_SOCKETS)]
        try:
            busy = probe_ms(server.port)
            threads_busy = threading.active_count()
        finally:
            for sock in idle:
                sock.close()
    finally:
        server.stop()
    for label, times, threads in (
        ("0 idle", quiet, threads_quiet),
        (f"{IDLE_SOCKETS} idle", busy, threads_busy),
    ):
        print(
            f"metrics  {label:>9}: threads {threads:3d}  /readyz p50 {statistics.median(times):6.1f} ms"
            f"  max {max(times):6.1f} ms"
        )


def main() -> None:
    with scratch_database("start_bounds") as dsn:
        print(f"lock      : DatabaseBusy after {lock_seconds(dsn):5.1f} s (lock_timeout 5 s)")
        print(f"partition : DatabaseUnavailable after {partition_seconds(dsn):5.1f} s (target 20 s)")
        metrics_figures(dsn)


if __name__ == "__main__":
    main()
