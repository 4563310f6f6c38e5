"""Deliverer.run_digest in-process against a local HTTP server standing in for Slack."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator

import pytest

from channels.registry import build_registry
from delivery_worker import delivery
from delivery_worker.delivery import Deliverer
from delivery_worker.destinations import DestinationGuard
from delivery_worker.jobs import Destination, Job, Table, Verdict
from delivery_worker.retry import RetryPolicy
from tests.servers.http import RecordingServer
from tests.support import SAMPLE_PAYLOAD, make_settings


@pytest.fixture
def deliverer() -> Iterator[Deliverer]:
    settings = make_settings(worker={"quick_retries": 0})
    registry = build_registry(settings)
    yield Deliverer(
        registry,
        RetryPolicy.from_settings(settings.worker),
        threading.Event(),
        DestinationGuard(settings.rate_limits, settings.circuit_breaker),
        max_listed=3,
    )
    registry.close()


def slack_jobs(server: RecordingServer, count: int) -> list[Job]:
    destination = Destination("7", "tenant-a", "slack", True, {"webhook_url": server.url("/slack")})
    return [
        Job(
            table=Table.NOTIFICATION_JOBS,
            job_id=100 + n,
            tenant_id="tenant-a",
            alert_id=n,
            event="OPEN",
            attempts=0,
            payload=dict(SAMPLE_PAYLOAD, severity=n % 5, message=f"alert {n}"),
            destination=destination,
            channel_id=7,
        )
        for n in range(count)
    ]


def test_one_post_completes_every_job(deliverer, http_server):
    outcomes = deliverer.run_digest(slack_jobs(http_server, 6))

    assert [o.verdict for o in outcomes] == [Verdict.COMPLETED] * 6
    assert [o.job.job_id for o in outcomes] == list(range(100, 106))
    (post,) = http_server.received("/slack")
    body = json.loads(post.body)
    assert body["text"] == "6 alerts: 1 critical, 1 high, 1 medium, 3 low"
    assert len(body["attachments"][0]["blocks"]) == 1 + 3 + 1


def test_a_stopping_worker_releases_every_job_unsent(deliverer, http_server):
    deliverer.stopping.set()

    outcomes = deliverer.run_digest(slack_jobs(http_server, 4))

    assert [o.verdict for o in outcomes] == [Verdict.DEFERRED] * 4
    assert http_server.received() == []


def test_a_taken_rate_limit_slot_defers_every_job_without_an_attempt(deliverer, http_server):
    jobs = slack_jobs(http_server, 4)
    deliverer.guard.next_slot[http_server.url("/slack")] = time.monotonic() + 5  # beyond the inline wait

    outcomes = deliverer.run_digest(jobs)

    assert {o.verdict for o in outcomes} == {Verdict.DEFERRED}
    assert len({o.retry_delay_seconds for o in outcomes}) == 1 and outcomes[0].retry_delay_seconds > 1
    assert http_server.received() == []


def test_a_bug_while_building_the_digest_sends_each_job_alone(deliverer, http_server, monkeypatch):
    def broken(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError("bug")

    monkeypatch.setattr(delivery, "summarise", broken)
    deliverer.guard.rate_limits = make_settings(rate_limits={"slack": 0}).rate_limits  # no pacing

    outcomes = deliverer.run_digest(slack_jobs(http_server, 3))

    assert [o.verdict for o in outcomes] == [Verdict.COMPLETED] * 3
    texts = sorted(json.loads(r.body)["text"] for r in http_server.received("/slack"))
    assert texts == ["🔵 LOW: alert 0", "🔵 LOW: alert 1", "🟡 MEDIUM: alert 2"]
