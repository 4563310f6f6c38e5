"""The JSON lines a real `delivery-worker run` prints: the ids every job line carries, one line per
quick retry, circuit lines naming the integration and tenant, and timeouts that say which and how long."""

from __future__ import annotations

import ast
import json
import re
import signal
import socket
from pathlib import Path
from typing import Any

from tests.processes import start_worker, wait_until
from tests.rows import insert_channel, insert_delivery_job, insert_integration, insert_notification_job, job
from tests.servers.http import RecordingServer, Reply


def lines_of(output: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in output.splitlines() if line.startswith("{")]


def drained(dsn: str, **settings: str) -> list[dict[str, Any]]:
    """Run `delivery-worker run --drain` to the end; its log lines."""
    worker = start_worker(dsn, "--drain", **settings)
    out, err = worker.communicate(timeout=60)
    assert worker.returncode == 0, err
    return lines_of(out)


def named(lines: list[dict[str, Any]], event: str) -> list[dict[str, Any]]:
    return [line for line in lines if line["event"] == event]


def test_job_lines_carry_alert_id_and_a_numeric_channel_id_or_the_integration_id(
    database, http_server: RecordingServer
):
    http_server.script("/bad", Reply(400, b"unknown field"))
    channel = insert_channel(database, "webhook", {"url": http_server.url("/ok")})
    notification = insert_notification_job(database, channel, alert_id=424242)
    integration = insert_integration(database, "webhook", config_json={"url": http_server.url("/bad")})
    delivery = insert_delivery_job(database, integration, alert_id=515151)

    lines = drained(database)

    [completed] = named(lines, "job.completed")
    assert completed["job_id"] == notification and completed["table"] == "notification_jobs"
    assert completed["alert_id"] == 424242
    assert completed["channel_id"] == channel and isinstance(completed["channel_id"], int)
    assert "integration_id" not in completed
    assert completed["tenant_id"] == "tenant-a" and completed["channel_type"] == "webhook"
    [failed] = named(lines, "job.failed")
    assert failed["job_id"] == delivery and failed["table"] == "delivery_jobs"
    assert failed["alert_id"] == 515151
    assert failed["integration_id"] == integration and isinstance(failed["integration_id"], str)
    assert "channel_id" not in failed
    assert failed["error"] == "webhook returned HTTP 400: unknown field"


def test_every_quick_retry_is_one_line_so_requests_and_lines_match(database, http_server: RecordingServer):
    http_server.script("/flaky", *[Reply(503, b"busy")] * 6)
    channel = insert_channel(database, "webhook", {"url": http_server.url("/flaky")})
    job_id = insert_notification_job(database, channel)

    lines = drained(database, worker_quick_retries="2", worker_max_attempts="2")

    assert len(http_server.received("/flaky")) == 6  # two attempts of three requests each
    retries = named(lines, "job.quick_retry")
    attempts = named(lines, "job.retry_scheduled") + named(lines, "job.failed")
    assert len(retries) + len(attempts) == 6
    assert [(line["attempt"], line["quick_retry"]) for line in retries] == [(1, 1), (1, 2), (2, 1), (2, 2)]
    for line in retries:
        assert line["job_id"] == job_id and line["channel_id"] == channel and "alert_id" in line
        assert line["error"] == "webhook returned HTTP 503: busy"
        assert line["wait_s"] >= 0
        assert line["level"] == "warning"
    assert [line["quick_retries"] for line in attempts] == [2, 2]
    assert job(database, "notification_jobs", job_id)["status"] == "FAILED"


def test_a_digest_quick_retry_is_one_line_naming_every_job_and_alert(database, http_server: RecordingServer):
    http_server.script("/services/T0/B0/digest", Reply(503, b"busy"))  # then 200
    channel = insert_channel(database, "slack", {"webhook_url": http_server.url("/services/T0/B0/digest")})
    alerts = [700_001, 700_002, 700_003]
    jobs = [insert_notification_job(database, channel, alert_id=alert) for alert in alerts]

    lines = drained(database, worker_quick_retries="1")  # Slack is rate limited (1/s): one digest

    assert len(http_server.received("/services/T0/B0/digest")) == 2
    [retry] = named(lines, "digest.quick_retry")
    [sent] = named(lines, "digest.sent")
    for line in (retry, sent):
        assert sorted(line["job_ids"]) == jobs and sorted(line["alert_ids"]) == alerts
        assert line["channel_id"] == channel and line["tenant_id"] == "tenant-a"
    assert retry["quick_retry"] == 1 and retry["error"] == "Slack returned HTTP 503: busy"
    assert sent["quick_retries"] == 1


def test_circuit_lines_name_the_integration_and_tenant(database, http_server: RecordingServer):
    http_server.script("/down", Reply(500))  # then 200: the probe after the cooldown closes it
    integration = insert_integration(
        database, "webhook", tenant_id="tenant-c", config_json={"url": http_server.url("/down")}
    )
    job_id = insert_delivery_job(database, integration, tenant_id="tenant-c")
    worker = start_worker(
        database, circuit_breaker_failure_threshold="1", circuit_breaker_cooldown_seconds="0.5"
    )
    try:
        assert wait_until(lambda: job(database, "delivery_jobs", job_id)["status"] == "COMPLETED", 30)
    finally:
        worker.send_signal(signal.SIGTERM)
        out, _ = worker.communicate(timeout=30)
    lines = lines_of(out)

    [opened] = named(lines, "circuit.opened")
    [closed] = named(lines, "circuit.closed")
    for line in (opened, closed):
        assert line["integration_id"] == integration
        assert line["tenant_id"] == "tenant-c"
        assert line["channel_type"] == "webhook"
        assert len(line["destination"]) == 12 and "127.0.0.1" not in json.dumps(line)


def test_a_read_timeout_says_which_and_how_long_in_the_line_and_last_error(database):
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)  # accepts (via the backlog) and never answers
        port = silent.getsockname()[1]
        channel = insert_channel(database, "webhook", {"url": f"http://127.0.0.1:{port}/void"})
        job_id = insert_notification_job(database, channel)

        lines = drained(database, worker_max_attempts="1", http_read_timeout="0.5")

    expected = f"read timeout after 0.5 s waiting for 127.0.0.1:{port}"
    [failed] = named(lines, "job.failed")
    assert failed["error"] == expected
    assert job(database, "notification_jobs", job_id)["last_error"] == expected


LOG_METHODS = {"debug", "info", "warning", "error", "exception", "critical"}
ROOT = Path(__file__).resolve().parent.parent
LOGS_DOC = (ROOT / "docs" / "logs.md").read_text(encoding="utf-8")


def events_in_code() -> set[str]:
    """Every event name the worker and channels log: ``log.<level>("name", ...)`` string literals."""
    found: set[str] = set()
    for path in [*ROOT.glob("delivery_worker/**/*.py"), *ROOT.glob("channels/**/*.py")]:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in LOG_METHODS
                and isinstance(node.func.value, ast.Name)
                and node.func.value.id == "log"
                and node.args
                and isinstance(node.args[0], ast.Constant)
                and isinstance(node.args[0].value, str)
            ):
                found.add(node.args[0].value)
    return found


def test_docs_list_every_log_event_the_code_emits_and_no_other():
    documented = set(re.findall(r"^\| `([a-z_]+\.[a-z_]+)`(?:, `([a-z_]+\.[a-z_]+)`)?", LOGS_DOC, re.M))
    names = {name for pair in documented for name in pair if name}
    code_text = "\n".join(
        path.read_text(encoding="utf-8")
        for path in [*ROOT.glob("delivery_worker/**/*.py"), *ROOT.glob("channels/**/*.py")]
    )

    missing = events_in_code() - names
    assert not missing, f"docs/logs.md lacks these events: {sorted(missing)}"
    stale = {name for name in names if f'"{name}"' not in code_text}
    assert not stale, f"docs/logs.md lists events the code never logs: {sorted(stale)}"
    assert {"job.quick_retry", "digest.quick_retry", "circuit.opened"} <= names
