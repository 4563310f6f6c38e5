"""``[worker] processes``: several worker processes under one ``run`` (delivery_worker/supervisor.py)."""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter

import pytest
from prometheus_client import CollectorRegistry, Gauge, Histogram, generate_latest
from prometheus_client import Counter as PromCounter

from delivery_worker.config import ConfigError, load_settings
from delivery_worker.metrics_merge import merge_expositions
from delivery_worker.supervisor import settings_for_process
from tests.processes import STARTED, start_worker, wait_until, worker_env
from tests.rows import execute, insert_channel, insert_notification_job
from tests.servers.http import Reply
from tests.support import make_settings
from tests.test_database_sessions import OutputLines
from tests.test_metrics_health import free_port, get, samples
from tests.test_systemd_notify import notify_socket, received_lines

__all__ = ["notify_socket"]  # a fixture, used by name

KEY = "Idempotency-Key"


def events(out: OutputLines, event: str) -> list[dict[str, object]]:
    found = []
    for line in list(out.lines):
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if record.get("event") == event:
            found.append(record)
    return found


def statuses(dsn: str, ids: list[int]) -> Counter[str]:
    rows = execute(dsn, "SELECT status FROM notification_jobs WHERE job_id = ANY(%s)", (ids,))
    return Counter(row["status"] for row in rows)


def test_two_processes_drain_a_batch_delivering_each_job_once(database, http_server):
    channel = insert_channel(database, "webhook", {"url": http_server.url("/hook")})
    ids = [insert_notification_job(database, channel) for _ in range(40)]
    worker = start_worker(database, "--drain", worker_processes="2", worker_threads="4")
    out = OutputLines(worker)
    assert worker.wait(timeout=60) == 0
    out.thread.join(timeout=5)

    keys = [request.header(KEY) for request in http_server.received("/hook")]
    assert sorted(keys) == sorted(f"notification_jobs:{job_id}" for job_id in ids)  # each once
    assert statuses(database, ids) == {"COMPLETED": 40}
    log_rows = execute(database, "SELECT count(*) AS n FROM notification_log WHERE job_id = ANY(%s)", (ids,))
    assert log_rows[0]["n"] == 40
    started = events(out, "process.started")
    assert sorted(record["process"] for record in started) == [0, 1]
    assert all(record["threads"] == 2 for record in started)  # the 4 threads shared
    assert len(events(out, "process.exited")) == 2
    assert events(out, "worker.stopped")[-1]["processes"] == 2
    completed = events(out, "job.completed")
    assert len(completed) == 40
    assert {record["process"] for record in completed} <= {0, 1}  # each line names its process


def test_sigterm_lets_both_processes_finish_their_jobs_then_exits_0(database, http_server):
    http_server.script("/slow", *[Reply(200, delay=1.5) for _ in range(4)])
    channel = insert_channel(database, "webhook", {"url": http_server.url("/slow")})
    ids = [insert_notification_job(database, channel) for _ in range(4)]
    worker = start_worker(
        database,
        worker_processes="2",
        worker_threads="4",
        worker_max_in_flight_per_destination="0",
    )
    out = OutputLines(worker)
    assert wait_until(lambda: len(http_server.received("/slow")) == 4, timeout=30)
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=40) == 0
    out.thread.join(timeout=5)

    assert statuses(database, ids) == {"COMPLETED": 4}  # in flight at the signal, finished, recorded
    assert len(events(out, "signal.received")) == 1
    exited = events(out, "process.exited")
    assert sorted(record["process"] for record in exited) == [0, 1]
    assert all(record["exit_code"] == 0 for record in exited)
    assert events(out, "worker.stopped")[-1]["reason"] == "signal"


def test_one_port_serves_the_metrics_and_health_of_every_process(database, http_server):
    channel = insert_channel(database, "webhook", {"url": http_server.url("/hook")})
    ids = [insert_notification_job(database, channel) for _ in range(30)]
    port = free_port()
    worker = start_worker(
        database,
        worker_processes="2",
        worker_threads="4",
        metrics_port=str(port),
        metrics_queue_sample_seconds="1",
    )
    out = OutputLines(worker)
    try:
        assert wait_until(lambda: statuses(database, ids) == {"COMPLETED": 30}, timeout=30)
        assert wait_until(lambda: len(events(out, "processes.ready")) == 1, timeout=30)

        def scraped() -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
            status, text = get(f"http://127.0.0.1:{port}/metrics")
            assert status == 200
            return samples(text)

        completed = (
            "delivery_worker_jobs_completed_total",
            frozenset({("table", "notification_jobs"), ("channel_type", "webhook")}),
        )
        assert wait_until(lambda: scraped().get(completed) == 30, timeout=10)  # counted in both, summed
        found = scraped()
        assert found[("delivery_worker_processes", frozenset())] == 2
        assert found[("delivery_worker_processes_running", frozenset())] == 2
        assert found[("delivery_worker_database_up", frozenset())] == 1
        pending = ("delivery_worker_queue_pending_jobs", frozenset({("table", "notification_jobs")}))
        assert wait_until(lambda: scraped().get(pending) == 0, timeout=10)  # sampled every second

        status, body = get(f"http://127.0.0.1:{port}/healthz")
        assert status == 200
        answer = json.loads(body)
        assert answer["status"] == "ok"
        assert [p["process"] for p in answer["processes"]] == [0, 1]
        assert all(p["http_status"] == 200 for p in answer["processes"])
        for path in ("/livez", "/readyz"):
            assert get(f"http://127.0.0.1:{port}{path}")[0] == 200
        assert "_created" not in get(f"http://127.0.0.1:{port}/metrics")[1]
        not_allowed = b"method not allowed: use GET or HEAD\n"
        for method, expected in (("HEAD", (200, b"")), ("POST", (405, not_allowed))):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request(method, "/readyz")
            reply = conn.getresponse()
            assert (reply.status, reply.read()) == expected
            conn.close()
    finally:
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=40) == 0


def test_systemd_hears_one_ready_and_pings_only_while_every_process_ticks(database, notify_socket):
    sock, path = notify_socket
    env = worker_env(database, worker_processes="2", worker_threads="2")
    env.update({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "1000000"})  # a ping every 0.5 s
    worker = subprocess.Popen(
        [sys.executable, "-m", "delivery_worker", "--config", "/dev/null", "run"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    STARTED.append(worker)
    out = OutputLines(worker)
    try:
        before = received_lines(sock, until="WATCHDOG=1", timeout=30)
        assert before.count("READY=1") == 1
        assert before.index("READY=1") < before.index("WATCHDOG=1")
        assert len(events(out, "process.ready")) == 2  # READY=1 only once both were

        child = next(record for record in events(out, "process.started") if record["process"] == 0)
        os.kill(int(str(child["pid"])), signal.SIGSTOP)  # a wedged poll loop in one process
        try:
            time.sleep(2.0)  # past two ping intervals (WatchdogSec)
            received_lines(sock)
            time.sleep(2.0)
            assert "WATCHDOG=1" not in received_lines(sock)  # systemd would now restart the unit
        finally:
            os.kill(int(str(child["pid"])), signal.SIGCONT)
        assert "WATCHDOG=1" in received_lines(sock, until="WATCHDOG=1", timeout=10)

        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=40) == 0
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    assert "STOPPING=1" in received_lines(sock, until="STOPPING=1", timeout=5)


def test_a_crashed_process_is_started_again_and_keeps_delivering(database, http_server):
    channel = insert_channel(database, "webhook", {"url": http_server.url("/hook")})
    worker = start_worker(database, worker_processes="2", worker_threads="2")
    out = OutputLines(worker)
    try:
        assert wait_until(lambda: len(events(out, "processes.ready")) == 1, timeout=30)
        victim = next(record for record in events(out, "process.started") if record["process"] == 1)
        os.kill(int(str(victim["pid"])), signal.SIGKILL)
        assert wait_until(lambda: len(events(out, "process.crashed")) == 1, timeout=10)
        assert wait_until(lambda: len(events(out, "process.started")) == 3, timeout=10)
        assert events(out, "process.started")[-1]["process"] == 1
        ids = [insert_notification_job(database, channel) for _ in range(10)]
        assert wait_until(lambda: statuses(database, ids) == {"COMPLETED": 10}, timeout=30)
    finally:
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=40) == 0


def test_a_process_that_cannot_start_fails_the_whole_run(empty_database):
    worker = start_worker(empty_database, "--drain", worker_processes="2", worker_threads="2")
    stdout, stderr = worker.communicate(timeout=60)
    assert worker.returncode == 1
    assert "not migrated" in stderr or "migrate" in stderr
    assert '"processes.failed"' in stdout


def test_each_process_gets_its_share_of_the_units_limits():
    settings = make_settings(
        worker={"threads": 9, "max_in_flight_per_destination": 4, "processes": 2},
        rate_limits={"slack": 1.0, "teams": 4.0},
    )
    first, second = (settings_for_process(settings, index, 2) for index in (0, 1))
    assert (first.worker.threads, second.worker.threads) == (5, 4)
    assert (first.worker.max_in_flight_per_destination, second.worker.max_in_flight_per_destination) == (2, 2)
    assert first.rate_limits.slack == second.rate_limits.slack == 0.5
    assert first.rate_limits.teams == 2.0
    assert first.worker.processes == second.worker.processes == 1
    assert first.metrics.port == 0  # the supervisor owns the configured port
    uncapped = make_settings(worker={"threads": 4, "max_in_flight_per_destination": 0, "processes": 3})
    assert settings_for_process(uncapped, 2, 3).worker.max_in_flight_per_destination == 0


def exposition(in_flight: float, up: float, tick: float, pending: float, completed: int) -> str:
    registry = CollectorRegistry()
    Gauge("delivery_worker_jobs_in_flight", "in flight", registry=registry).set(in_flight)
    Gauge("delivery_worker_database_up", "up", registry=registry).set(up)
    Gauge("delivery_worker_last_poll_timestamp_seconds", "tick", registry=registry).set(tick)
    Gauge("delivery_worker_queue_pending_jobs", "pending", ["table"], registry=registry).labels("t").set(
        pending
    )
    counter = PromCounter("delivery_worker_jobs_completed", "done", ["table"], registry=registry)
    counter.labels("t").inc(completed)
    Histogram("delivery_worker_delivery_duration_seconds", "d", buckets=(1.0,), registry=registry).observe(
        0.5
    )
    return generate_latest(registry).decode()


def test_merging_sums_counters_and_histograms_and_applies_each_gauge_rule():
    merged = samples(
        merge_expositions(
            [(0, exposition(3, 1, 100.0, 7, 10)), (1, exposition(5, 0, 200.0, 0, 32))], sampling_process=0
        )
    )
    assert merged[("delivery_worker_jobs_completed_total", frozenset({("table", "t")}))] == 42
    assert merged[("delivery_worker_delivery_duration_seconds_count", frozenset())] == 2
    assert merged[("delivery_worker_delivery_duration_seconds_bucket", frozenset({("le", "1.0")}))] == 2
    assert merged[("delivery_worker_jobs_in_flight", frozenset())] == 8  # summed
    assert merged[("delivery_worker_database_up", frozenset())] == 0  # the worst
    assert merged[("delivery_worker_last_poll_timestamp_seconds", frozenset())] == 200.0  # the latest
    assert merged[("delivery_worker_queue_pending_jobs", frozenset({("table", "t")}))] == 7  # process 0's


def test_more_processes_than_threads_is_a_config_error():
    environ = {"DELIVERY_WORKER_WORKER_PROCESSES": "4", "DELIVERY_WORKER_WORKER_THREADS": "2"}
    with pytest.raises(ConfigError, match=r"\[worker\] processes: must be <= threads"):
        load_settings("/dev/null", environ=environ)
