"""`delivery-worker demo` as a newcomer runs it: the real CLI in a child process, on a test database."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from typing import Any

import pytest

from delivery_worker.cli import main
from delivery_worker.ops import demo as demo_command
from delivery_worker.ops.demo_receivers import broker_answers
from tests.processes import start_worker, wait_until
from tests.rows import execute, insert_channel, insert_notification_job

HTTP_RECEIVERS = ("webhook", "slack", "teams")


def demo(dsn: str, *args: str) -> subprocess.CompletedProcess[str]:
    """`delivery-worker --config /dev/null demo ARGS` with DATABASE_URL, as `make demo` runs it."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "DATABASE_URL": dsn}
    return subprocess.run(
        [sys.executable, "-m", "delivery_worker", "--config", "/dev/null", "demo", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def expected_receivers() -> set[str]:
    return {*HTTP_RECEIVERS, "mqtt"} if broker_answers() else set(HTTP_RECEIVERS)


def count(dsn: str, table: str, where: str = "TRUE", params: Any = None) -> int:
    return int(execute(dsn, f"SELECT count(*) AS n FROM {table} WHERE {where}", params)[0]["n"])


def last_job_id(dsn: str) -> int:
    return int(execute(dsn, "SELECT last_value FROM notification_jobs_job_id_seq")[0]["last_value"])


def test_demo_delivers_every_job_shows_it_and_leaves_no_rows_run_twice(database: str) -> None:
    receivers = expected_receivers()
    for _run in range(2):
        result = demo(database)
        assert result.returncode == 0, result.stdout + result.stderr
        out = result.stdout
        jobs = 3 * len(receivers)
        job_ids = range(last_job_id(database) - jobs + 1, last_job_id(database) + 1)
        assert f"OK: {jobs} of {jobs} demo jobs delivered" in out
        for receiver in receivers:  # three messages each, in the receivers' table
            method = "PUBLISH" if receiver == "mqtt" else "POST"
            assert len(re.findall(rf"^  {receiver} +{method} ", out, re.MULTILINE)) == 3, out
        assert out.count("X-Signature-SHA256: ") == 3
        assert out.count("(verifies)") == 3
        for job_id in job_ids:  # every job's final row, and its log line
            assert re.search(rf"^ +{job_id}  \w+ +100[12]  (OPEN|CLOSED) +COMPLETED ", out, re.MULTILINE), out
            logged = [json.loads(line) for line in out.splitlines() if line.startswith("  {")]
            assert any(e["event"] == "job.completed" and e["job_id"] == job_id for e in logged)
        assert "removed the demo's rows" in out
        assert result.stderr.startswith(f"database: {database}\n")  # no password to mask here
        for table in ("notification_channels", "notification_jobs", "notification_log"):
            assert count(database, table) == 0, table


def test_keep_leaves_the_rows_for_stats_and_remove_deletes_only_them(database: str) -> None:
    other_channel = insert_channel(
        database, "webhook", {"url": "https://hooks.example.com/x"}, tenant_id="acme"
    )
    other_job = insert_notification_job(database, other_channel, tenant_id="acme")

    result = demo(database, "--keep", "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    tenant = report["tenant_id"]
    assert tenant.startswith("demo-") and report["removed"] is None and report["problems"] == []
    assert {entry["receiver"] for entry in report["receivers"]} == expected_receivers()
    webhook = next(entry for entry in report["receivers"] if entry["receiver"] == "webhook")
    assert [item["signature_verified"] for item in webhook["received"]] == [True, True, True]
    jobs = 3 * len(expected_receivers())
    assert count(database, "notification_jobs", "tenant_id = %s AND status = 'COMPLETED'", (tenant,)) == jobs
    assert count(database, "notification_channels", "tenant_id = %s", (tenant,)) == len(expected_receivers())
    assert (
        count(
            database,
            "notification_log",
            "success AND job_id = ANY(%s)",
            ([j["job_id"] for j in report["jobs"]],),
        )
        == jobs
    )

    refused = demo(database, "--remove", "acme")
    assert refused.returncode == 1 and "not a demo tenant" in refused.stderr
    removed = demo(database, "--remove", tenant)
    assert removed.returncode == 0, removed.stderr
    assert f"removed demo tenant {tenant}: {jobs} jobs, {jobs} log rows" in removed.stdout
    assert count(database, "notification_channels", "tenant_id = %s", (tenant,)) == 0
    assert count(database, "notification_jobs", "tenant_id = %s", (tenant,)) == 0
    assert count(database, "notification_log") == 0
    # The other tenant's rows were never touched: its job is still PENDING and due, never attempted.
    row = execute(database, "SELECT status, attempts FROM notification_jobs WHERE job_id = %s", (other_job,))
    assert row == [{"status": "PENDING", "attempts": 0}]


def test_a_worker_running_beside_the_demo_never_touches_its_jobs(database: str, http_server: Any) -> None:
    """`make run` in another terminal: its guard refuses loopback, so a demo job it claimed would fail."""
    worker = start_worker(database, http_allowed_networks="")  # the default guard, as `make run` has it
    refused_channel = insert_channel(database, "webhook", {"url": http_server.url()}, tenant_id="acme")
    refused_job = insert_notification_job(database, refused_channel, tenant_id="acme")
    # It is polling, and it refuses loopback: the other tenant's loopback job fails at once.
    assert wait_until(
        lambda: (
            execute(database, "SELECT status FROM notification_jobs WHERE job_id = %s", (refused_job,))
            == [{"status": "FAILED"}]
        )
    )

    result = demo(database, "--keep", "--json")
    worker.terminate()
    worker_out, _ = worker.communicate(timeout=30)

    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    demo_ids = [job["job_id"] for job in report["jobs"]]
    rows = execute(
        database,
        "SELECT j.status, j.last_error, l.success FROM notification_jobs AS j"
        " JOIN notification_log AS l USING (job_id) WHERE j.job_id = ANY(%s)",
        (demo_ids,),
    )
    assert len(rows) == len(demo_ids) == 3 * len(expected_receivers())  # one log row per job
    assert all(row == {"status": "COMPLETED", "last_error": None, "success": True} for row in rows)
    logged = [json.loads(line) for line in worker_out.splitlines() if line.startswith("{")]
    assert any(e.get("job_id") == refused_job for e in logged)  # its lines are there...
    assert not [e for e in logged if e.get("job_id") in demo_ids]  # ...and none about a demo job
    assert http_server.received() == []  # nor did it send anything to loopback


def test_an_unmigrated_database_is_named_with_what_to_do(empty_database: str) -> None:
    result = demo(empty_database)
    assert result.returncode == 1
    assert "run `delivery-worker migrate`" in result.stderr


def test_out_of_time_exits_1_naming_each_undelivered_job_and_still_cleans_up(database: str) -> None:
    # CLOSED jobs wait for their OPEN, so with no time at all some are never claimed.
    result = demo(database, "--timeout", "0")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "FAILED: " in result.stdout
    assert re.search(r"^  - job \d+ \(\w+\) is PENDING: not delivered in time$", result.stdout, re.MULTILINE)
    for table in ("notification_channels", "notification_jobs", "notification_log"):
        assert count(database, table) == 0, table


def test_without_a_broker_mqtt_is_skipped_with_a_note(
    database: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in [name for name in os.environ if name.startswith("DELIVERY_WORKER_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("DATABASE_URL", database)
    monkeypatch.setattr(demo_command, "broker_answers", lambda: False)
    assert main(["--config", "/dev/null", "demo", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["mqtt"] == "no broker answers on 127.0.0.1:1883: MQTT skipped"
    assert {entry["receiver"] for entry in report["receivers"]} == set(HTTP_RECEIVERS)
    assert len(report["jobs"]) == 9 and report["problems"] == []
