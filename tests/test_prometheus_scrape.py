"""The real Prometheus scraping a real worker: the shipped rules and dashboard against real data.

A worker child process (`delivery-worker run` with `[metrics] port`) delivers, retries and fails
jobs into a local HTTP server while Debian's `prometheus` scrapes it every second and evaluates
config/prometheus-rules.yml. Skipped without prometheus locally; under CI (env CI set) it fails.
"""

from __future__ import annotations

import math
import re
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest

from tests.conftest import create_database, drop_database
from tests.dashboard import (
    RULES,
    dashboard_queries,
    load_dashboard,
    metric_names,
    rule_expressions,
    substitute,
)
from tests.metrics_worker import MetricsWorker, free_port
from tests.processes import wait_until
from tests.rows import (
    execute,
    insert_channel,
    insert_delivery_job,
    insert_integration,
    insert_notification_job,
)
from tests.servers.http import RecordingServer, Reply
from tests.servers.prometheus import JOB, Prometheus, prometheus, require_tool, single_value

FINISHED = "SELECT count(*) AS n FROM {table} WHERE status IN ('PENDING', 'PROCESSING')"


def jobs_left(dsn: str) -> int:
    return sum(
        int(execute(dsn, FINISHED.format(table=table))[0]["n"])
        for table in ("notification_jobs", "delivery_jobs")
    )


def evaluated_at(timestamp: str) -> datetime:
    """Prometheus' RFC 3339 time with nanoseconds, to the microsecond."""
    return datetime.fromisoformat(re.sub(r"(\.\d{6})\d*", r"\1", timestamp).replace("Z", "+00:00"))


@dataclass
class Scraped:
    prom: Prometheus
    instance: str


@pytest.fixture(scope="module")
def scraped_worker(template_database: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scraped]:
    """A worker that completed, retried and failed jobs of both tables, scraped by a real Prometheus."""
    require_tool("prometheus")
    workdir = tmp_path_factory.mktemp("prometheus-scrape")
    name = f"dw_test_{uuid.uuid4().hex[:12]}"
    dsn = create_database(name, template=template_database)
    server = RecordingServer().start()
    server.script("/flaky", Reply(500), Reply(200))  # one retry, then delivered
    server.script("/bad", Reply(400, body=b"rejected"))  # permanent: FAILED at once
    port = free_port()
    worker = MetricsWorker.start(dsn, port, workdir / "worker.log")
    try:
        with prometheus(workdir, targets=[f"127.0.0.1:{port}"], rule_files=[RULES]) as prom:
            prom.wait_for_scrapes()  # counters seen before the jobs, so rates see them move
            ok = insert_channel(dsn, "webhook", {"url": server.url("/ok")})
            for _ in range(3):
                insert_notification_job(dsn, ok)
            insert_notification_job(dsn, insert_channel(dsn, "webhook", {"url": server.url("/flaky")}))
            insert_notification_job(dsn, insert_channel(dsn, "webhook", {"url": server.url("/bad")}))
            integration = insert_integration(dsn, "webhook", config_json={"url": server.url("/ok")})
            insert_delivery_job(dsn, integration)
            assert wait_until(lambda: jobs_left(dsn) == 0, timeout=60), worker.log()[-3000:]
            statuses = "SELECT status, count(*) AS n FROM {table} GROUP BY status ORDER BY status"
            assert execute(dsn, statuses.format(table="notification_jobs")) == [
                {"status": "COMPLETED", "n": 4},
                {"status": "FAILED", "n": 1},
            ]
            assert execute(dsn, statuses.format(table="delivery_jobs")) == [{"status": "COMPLETED", "n": 1}]
            prom.wait_until("sum(delivery_worker_jobs_completed_total) == 5")
            prom.wait_until("sum(delivery_worker_jobs_retried_total) == 1")
            prom.wait_until("sum(delivery_worker_jobs_failed_total) == 1")
            prom.wait_until('max(delivery_worker_queue_failed_recent_jobs{table="notification_jobs"}) >= 1')
            yield Scraped(prom, f"127.0.0.1:{port}")
    finally:
        worker.stop()
        server.stop()
        drop_database(name)


def test_every_dashboard_query_returns_data_from_a_scraped_worker(scraped_worker: Scraped):
    variables = {
        "job": JOB,
        # as Grafana formats a chosen instance in a regex matcher: escaped, backslashes doubled
        "instance": re.escape(scraped_worker.instance).replace("\\", "\\\\"),
        "__rate_interval": "5m",  # wide enough to hold every outcome of the fixture
        "__interval": "15s",
        "__range": "1h",
    }
    queries = dashboard_queries(load_dashboard())
    assert len(queries) >= 25
    empty, never_finite = [], []
    for title, expr in queries:
        result = scraped_worker.prom.query(substitute(expr, variables))
        if not result:
            empty.append((title, expr))
        elif not any(math.isfinite(float(sample["value"][1])) for sample in result):
            never_finite.append((title, expr))
    assert empty == [], "dashboard queries with no data"
    assert never_finite == [], "dashboard queries with only NaN/Inf"


def test_dashboard_variables_find_the_scraped_worker(scraped_worker: Scraped):
    variables = {variable["name"]: variable for variable in load_dashboard()["templating"]["list"]}
    for name, expected in (("job", JOB), ("instance", scraped_worker.instance)):
        query = variables[name]["query"]["query"]
        match = re.fullmatch(r"label_values\((.+), (\w+)\)", query)
        assert match, query
        selector = substitute(match.group(1), {"job": JOB})
        series = scraped_worker.prom.api("series", **{"match[]": selector})
        assert expected in {labels.get(match.group(2)) for labels in series}, (query, series)


def test_every_metric_the_rules_use_is_scraped_and_every_rule_evaluates(scraped_worker: Scraped):
    prom = scraped_worker.prom
    scraped = prom.metric_names()
    used = set().union(*(metric_names(expr) for expr in rule_expressions().values()))
    assert {"delivery_worker_jobs_failed_total", "up"} <= used
    assert sorted(used - scraped) == []

    def evaluated() -> list[dict[str, Any]]:
        rules = [rule for group in prom.api("rules")["groups"] for rule in group["rules"]]
        return rules if rules and all(rule["health"] != "unknown" for rule in rules) else []

    assert wait_until(lambda: bool(evaluated()), timeout=30)
    rules = evaluated()
    assert len(rules) == len(rule_expressions())
    assert [(rule["name"], rule.get("lastError")) for rule in rules if rule["health"] != "ok"] == []


def test_a_healthy_worker_trips_no_alert(scraped_worker: Scraped):
    """One FAILED job among six, a retry, both queues drained: nothing pending, nothing firing."""
    prom = scraped_worker.prom
    since = datetime.now(UTC)

    def evaluated_since() -> bool:
        groups = prom.api("rules")["groups"]
        return bool(groups) and all(evaluated_at(group["lastEvaluation"]) > since for group in groups)

    assert wait_until(evaluated_since, timeout=30)  # the rules have seen everything the worker did
    assert prom.query("ALERTS") == []


def test_first_failure_after_a_restart_moves_increase_above_zero(database, http_server, tmp_path):
    """Issue 14: counters without a 0 sample made `increase(...) > 0` miss the first failure of every
    process. Prometheus must see each process's counter at 0 before its first failure."""
    require_tool("prometheus")
    failing = insert_channel(database, "webhook", {"url": http_server.url("/bad")})
    http_server.script("/bad", *[Reply(400, body=b"rejected")] * 2)
    port = free_port()
    increase = 'sum(increase(delivery_worker_jobs_failed_total{table="notification_jobs"}[5m]))'
    worker = MetricsWorker.start(database, port, tmp_path / "worker-1.log")
    try:
        with prometheus(tmp_path / "prom", targets=[f"127.0.0.1:{port}"]) as prom:
            prom.wait_for_scrapes()
            assert prom.value(increase) == 0  # the series exist, at 0, before any failure

            insert_notification_job(database, failing)
            first = single_value(prom.wait_until(f"{increase} > 0"))  # the first failure after the start

            worker.stop()
            prom.wait_until(f'up{{job="{JOB}"}} == 0')
            worker = MetricsWorker.start(database, port, tmp_path / "worker-2.log")
            restarted = time.time()
            prom.wait_until(f"delivery_worker_last_poll_timestamp_seconds > {restarted}")
            before = prom.value(increase)
            assert before == pytest.approx(first, abs=0.5)  # the reset to 0 is not counted as failures

            insert_notification_job(database, failing)
            after = single_value(
                prom.wait_until(f"{increase} > {before + 0.5}")
            )  # the first after the restart
            assert after == pytest.approx(2, abs=0.6)
            failed = execute(database, "SELECT count(*) AS n FROM notification_jobs WHERE status = 'FAILED'")
            assert failed[0]["n"] == 2
    finally:
        worker.stop()
