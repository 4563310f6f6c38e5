"""Per-destination rate limits and circuit breaking: unit tests with a fake clock, then end to end."""

from __future__ import annotations

import json
import signal

import pytest

from delivery_worker.config import CircuitBreakerSettings, RateLimitSettings
from delivery_worker.destinations import Deferred, DestinationGuard
from tests.processes import start_worker, wait_until
from tests.rows import execute, insert_channel, insert_notification_job
from tests.servers.http import Reply

LIMITS = RateLimitSettings(slack=1, teams=0, pagerduty=0, webhook=0, email=0, snmp=0, mqtt=0)


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def guard(threshold: int = 3, cooldown: float = 30.0) -> tuple[DestinationGuard, FakeClock]:
    clock = FakeClock()
    breaker = CircuitBreakerSettings(failure_threshold=threshold, cooldown_seconds=cooldown)
    return DestinationGuard(LIMITS, breaker, clock=clock, sleep=clock.sleep), clock


def test_rate_limit_waits_briefly_then_defers():
    g, clock = guard()
    g.admit("slack", "https://hooks/a")  # first goes at once
    g.admit("slack", "https://hooks/a")  # second waits one second in its thread
    assert clock.slept == [1.0]
    clock.now -= 1.0  # a third arriving at the same moment would wait two seconds: deferred
    with pytest.raises(Deferred, match="rate limited") as deferred:
        g.admit("slack", "https://hooks/a")
    assert 1.0 < deferred.value.delay_seconds <= 2.25


def test_rate_limit_is_per_destination_and_per_type():
    g, clock = guard()
    g.admit("slack", "https://hooks/a")
    g.admit("slack", "https://hooks/b")
    g.admit("webhook", "https://hooks/a")  # webhooks are unlimited by default
    g.admit("webhook", "https://hooks/a")
    assert clock.slept == []


def test_circuit_opens_after_threshold_then_one_probe_decides():
    g, clock = guard(threshold=3, cooldown=30)
    for _ in range(3):
        g.admit("webhook", "down")
        g.failed("webhook", "down")
    with pytest.raises(Deferred, match="circuit open"):
        g.admit("webhook", "down")
    g.admit("webhook", "elsewhere")  # other destinations are unaffected
    clock.now += 31
    g.admit("webhook", "down")  # the probe
    with pytest.raises(Deferred):
        g.admit("webhook", "down")  # others wait for the probe's result
    g.failed("webhook", "down")  # probe failed: open again for a full cool-off
    clock.now += 29
    with pytest.raises(Deferred):
        g.admit("webhook", "down")
    clock.now += 2
    g.admit("webhook", "down")
    g.succeeded("webhook", "down")  # probe succeeded: closed
    g.admit("webhook", "down")
    g.admit("webhook", "down")


def test_a_probe_that_learns_nothing_lets_the_next_job_probe():
    g, clock = guard(threshold=1, cooldown=5)
    g.failed("webhook", "down")
    clock.now += 6
    g.admit("webhook", "down")  # the probe...
    g.inconclusive("down")  # ...failed before reaching the destination (e.g. a config error)
    g.admit("webhook", "down")  # another job may probe; the circuit is not stuck half-open


def test_success_resets_the_failure_count():
    g, _ = guard(threshold=3)
    for _ in range(2):
        g.failed("webhook", "flaky")
    g.succeeded("webhook", "flaky")
    for _ in range(2):
        g.failed("webhook", "flaky")
    g.admit("webhook", "flaky")


def test_slack_jobs_to_one_webhook_are_paced_and_none_fail(database, http_server):
    rate = 5.0
    url = http_server.url("/services/T0/B0/X")
    channel = insert_channel(database, "slack", {"webhook_url": url})
    other = insert_channel(database, "slack", {"webhook_url": url})  # same URL: same limit
    for i in range(30):
        insert_notification_job(database, channel if i % 2 else other)

    # Pacing itself, one message per job: digests (tests/test_storm_digest.py) would summarise them.
    worker = start_worker(database, worker_threads="8", rate_limits_slack=str(rate), digest_enabled="false")
    try:
        assert wait_until(lambda: _statuses(database) == {"COMPLETED": 30}, timeout=60)
    finally:
        worker.send_signal(signal.SIGTERM)
        out, err = worker.communicate(timeout=30)
    assert worker.returncode == 0, err

    arrivals = sorted(r.received_at for r in http_server.received("/services/T0/B0/X"))
    assert len(arrivals) == 30
    assert arrivals[-1] - arrivals[0] >= 29 / rate * 0.95
    busiest = max(sum(1 for t in arrivals if start <= t < start + 1.0) for start in arrivals)
    assert busiest <= rate + 1
    assert execute(database, "SELECT max(attempts) AS n FROM notification_jobs")[0]["n"] == 0
    assert '"job.deferred"' in out


def test_failing_destination_opens_its_circuit_others_flow_and_deferred_jobs_keep_their_attempts(
    database, http_server
):
    http_server.script("/down", *[Reply(503, b"maintenance")] * 3)  # then 200s
    down = insert_channel(database, "webhook", {"url": http_server.url("/down")})
    up = insert_channel(database, "webhook", {"url": http_server.url("/up")})
    down_jobs = [insert_notification_job(database, down) for _ in range(10)]
    up_jobs = [insert_notification_job(database, up) for _ in range(10)]

    worker = start_worker(
        database,
        worker_threads="1",
        worker_max_attempts="5",
        circuit_breaker_failure_threshold="3",
        circuit_breaker_cooldown_seconds="1",
    )
    try:
        assert wait_until(lambda: _statuses(database) == {"COMPLETED": 20}, timeout=60)
    finally:
        worker.send_signal(signal.SIGTERM)
        out, err = worker.communicate(timeout=30)
    assert worker.returncode == 0, err

    events = [json.loads(line)["event"] for line in out.splitlines() if line.startswith("{")]
    assert events.count("circuit.opened") == 1 and events.count("circuit.closed") == 1
    # The broken endpoint saw 3 failures, then one request per job: it was not hammered.
    down_arrivals = sorted(r.received_at for r in http_server.received("/down"))
    assert len(down_arrivals) == 13
    # Other destinations kept flowing while the circuit was open: all of them before the probe.
    assert max(r.received_at for r in http_server.received("/up")) < down_arrivals[3]
    attempts = {
        r["job_id"]: r["attempts"]
        for r in execute(database, "SELECT job_id, attempts FROM notification_jobs")
    }
    assert sorted(attempts[j] for j in down_jobs) == [0] * 7 + [1] * 3
    assert all(attempts[j] == 0 for j in up_jobs)


def _statuses(dsn: str) -> dict[str, int]:
    rows = execute(dsn, "SELECT status, count(*) AS n FROM notification_jobs GROUP BY status")
    return {r["status"]: r["n"] for r in rows}
