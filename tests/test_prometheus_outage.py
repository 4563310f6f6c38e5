"""A database outage as the shipped rules see it in a real Prometheus scraping a real worker.

The worker reaches PostgreSQL through a TCP proxy; cutting it must put DeliveryWorkerDatabaseDown and
DeliveryWorkerQueueSamplesStale in the pending state (they fire after their `for`, as the promtool
tests show), and Prometheus must see the queue gauges go stale rather than frozen, so no backlog rule
evaluates old numbers. Restoring it must clear both. Skipped without prometheus locally; under CI
(env CI set) it fails.
"""

from __future__ import annotations

import psycopg2

from tests.dashboard import RULES
from tests.metrics_worker import MetricsWorker, free_port
from tests.servers.prometheus import JOB, prometheus, require_tool
from tests.servers.tcp_proxy import TcpProxy

OUTAGE_ALERTS = 'ALERTS{alertname=~"DeliveryWorkerDatabaseDown|DeliveryWorkerQueueSamplesStale"}'


def alert_states(result: list[dict[str, dict[str, str]]]) -> dict[str, str]:
    return {sample["metric"]["alertname"]: sample["metric"]["alertstate"] for sample in result}


def test_a_database_outage_makes_the_outage_alerts_pend_and_the_queue_gauges_stale(database, tmp_path):
    require_tool("prometheus")
    params = psycopg2.extensions.parse_dsn(database)
    proxy = TcpProxy(params.get("host", "127.0.0.1"), int(params.get("port", 5432))).start()
    dsn = psycopg2.extensions.make_dsn(database, host="127.0.0.1", port=proxy.port)
    worker = MetricsWorker.start(dsn, free_port(), tmp_path / "worker.log")
    try:
        with prometheus(tmp_path / "prom", targets=[worker.instance], rule_files=[RULES]) as prom:
            prom.wait_for_scrapes()
            prom.wait_until('delivery_worker_queue_due_jobs{table="notification_jobs"} == 0')
            assert prom.query(OUTAGE_ALERTS) == []

            proxy.cut()
            pending = prom.wait_until(f"count({OUTAGE_ALERTS}) == 2", timeout=60)
            assert alert_states(prom.query(OUTAGE_ALERTS)) == {
                "DeliveryWorkerDatabaseDown": "pending",
                "DeliveryWorkerQueueSamplesStale": "pending",
            }, pending
            assert prom.query(f'delivery_worker_queue_due_jobs{{job="{JOB}"}}') == []  # stale, not frozen
            assert prom.value("delivery_worker_database_up") == 0
            assert prom.value("delivery_worker_queue_sample_up") == 0
            assert prom.value(f'up{{job="{JOB}"}}') == 1  # the worker itself is still scraped

            proxy.restore()
            prom.wait_until('delivery_worker_queue_due_jobs{table="notification_jobs"} == 0', timeout=60)
            prom.wait_until(f"absent({OUTAGE_ALERTS})", timeout=60)
            assert prom.value("delivery_worker_database_up") == 1
    finally:
        proxy.restore()
        worker.stop()
        proxy.stop()
