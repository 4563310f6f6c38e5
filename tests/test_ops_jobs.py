"""show, replay, cancel, pause and resume on both queues: the real CLI, a real worker, a local HTTP server.

The operator commands run through `delivery_worker.cli.main` with the configuration from the
environment only; the worker either drains in this process or runs as a child `delivery-worker run`.
"""

from __future__ import annotations

from typing import Any

from tests.ops_cli import Cli
from tests.processes import start_worker, wait_until
from tests.rows import (
    drain,
    execute,
    insert_channel,
    insert_delivery_job,
    insert_integration,
    insert_notification_job,
    job,
    log_rows,
)
from tests.servers.http import RecordingServer, Reply


def attempts_of(dsn: str, job_id: int) -> list[dict[str, Any]]:
    return execute(
        dsn, "SELECT * FROM notification_job_attempts WHERE job_id = %s ORDER BY attempt_id", (job_id,)
    )


def delivery_attempts_of(dsn: str, job_id: int) -> list[dict[str, Any]]:
    return execute(dsn, "SELECT * FROM delivery_attempts WHERE job_id = %s ORDER BY attempt_id", (job_id,))


def status(dsn: str, table: str, job_id: int) -> str:
    return str(job(dsn, table, job_id)["status"])


# --- pause / resume --------------------------------------------------------------------------------


def test_paused_channel_and_integration_wait_unspent_while_others_deliver_then_resume_wakes_the_worker(
    database: str, cli: Cli, http_server: RecordingServer
) -> None:
    held_channel = insert_channel(database, "webhook", {"url": http_server.url("/held-channel")})
    other_channel = insert_channel(
        database, "webhook", {"url": http_server.url("/other")}, tenant_id="tenant-b"
    )
    held_integration = insert_integration(
        database, "webhook", config_json={"url": http_server.url("/held-int")}
    )
    other_integration = insert_integration(
        database, "webhook", tenant_id="tenant-b", config_json={"url": http_server.url("/other-int")}
    )
    paused_channel = cli("pause", "--channel-id", str(held_channel), "--reason", "endpoint migration")
    paused_integration = cli("pause", "--integration-id", held_integration)
    held = [insert_notification_job(database, held_channel) for _ in range(2)]
    held_delivery = insert_delivery_job(database, held_integration)
    other = insert_notification_job(database, other_channel, tenant_id="tenant-b")
    other_delivery = insert_delivery_job(database, other_integration, tenant_id="tenant-b")

    # A long poll interval: after its first cycles the worker only wakes on NOTIFY (resume sends one).
    start_worker(database, worker_poll_interval="30")
    assert wait_until(
        lambda: (
            status(database, "notification_jobs", other) == "COMPLETED"
            and status(database, "delivery_jobs", other_delivery) == "COMPLETED"
        )
    )
    listed = cli("pause", "--list", "--json")

    assert paused_channel.code == 0 and paused_integration.code == 0
    assert paused_channel.err.startswith("database: ")
    assert paused_channel.out.startswith(f"paused channel {held_channel} since ")
    for job_id in held:
        row = job(database, "notification_jobs", job_id)
        assert (row["status"], row["attempts"], row["last_error"]) == ("PENDING", 0, None)
    assert job(database, "delivery_jobs", held_delivery)["status"] == "PENDING"
    assert job(database, "delivery_jobs", held_delivery)["attempts"] == 0
    assert http_server.received("/held-channel") == [] and http_server.received("/held-int") == []
    assert attempts_of(database, held[0]) == [] and delivery_attempts_of(database, held_delivery) == []
    pauses = {(p["scope"], p["target"]): p for p in listed.json()["pauses"]}
    assert pauses[("channel", str(held_channel))]["pending"] == 2
    assert pauses[("channel", str(held_channel))]["reason"] == "endpoint migration"
    assert pauses[("integration", held_integration)]["pending"] == 1

    resumed = cli("resume", "--channel-id", str(held_channel))
    resumed_integration = cli("resume", "--integration-id", held_integration)

    assert resumed.code == 0 and resumed_integration.code == 0
    assert resumed.err.startswith("database: ")
    assert "2 PENDING job(s)" in resumed.out
    assert wait_until(
        lambda: (
            all(status(database, "notification_jobs", j) == "COMPLETED" for j in held)
            and status(database, "delivery_jobs", held_delivery) == "COMPLETED"
        )
    )
    assert len(http_server.received("/held-channel")) == 2 and len(http_server.received("/held-int")) == 1
    assert [a["attempt_no"] for a in attempts_of(database, held[0])] == [1]
    assert cli("pause", "--list").out.strip() == "nothing is paused"


def test_paused_tenant_holds_both_tables_and_drain_still_ends(
    database: str, cli: Cli, http_server: RecordingServer
) -> None:
    channel = insert_channel(database, "webhook", {"url": http_server.url("/a")})
    integration = insert_integration(database, "webhook", config_json={"url": http_server.url("/a-int")})
    other = insert_channel(database, "webhook", {"url": http_server.url("/b")}, tenant_id="tenant-b")
    held = insert_notification_job(database, channel)
    held_delivery = insert_delivery_job(database, integration)
    free = insert_notification_job(database, other, tenant_id="tenant-b")

    paused = cli("pause", "--tenant", "tenant-a", "--json")
    drain(database)  # returns: jobs waiting behind a pause are not "due" for --drain

    assert paused.code == 0 and paused.json()["action"] == "paused" and paused.json()["pending"] == 2
    assert status(database, "notification_jobs", free) == "COMPLETED"
    assert (
        status(database, "notification_jobs", held),
        status(database, "delivery_jobs", held_delivery),
    ) == (
        "PENDING",
        "PENDING",
    )
    assert job(database, "notification_jobs", held)["attempts"] == 0
    assert cli("pause", "--tenant", "tenant-a").out.startswith("already paused tenant tenant-a")
    shown = cli("show", "--table", "delivery_jobs", str(held_delivery), "--json").json()["jobs"][0]
    assert [(p["scope"], p["target"]) for p in shown["destination"]["paused"]] == [("tenant", "tenant-a")]

    assert cli("resume", "--tenant", "tenant-a").code == 0
    drain(database)

    assert status(database, "notification_jobs", held) == "COMPLETED"
    assert status(database, "delivery_jobs", held_delivery) == "COMPLETED"
    assert len(http_server.received("/a")) == 1 and len(http_server.received("/a-int")) == 1


def test_pause_refuses_an_unknown_channel_and_resume_what_is_not_paused(database: str, cli: Cli) -> None:
    unknown = cli("pause", "--channel-id", "999")
    not_paused = cli("resume", "--tenant", "nobody")

    assert unknown.code == 1 and "no channel 999 (nothing paused)" in unknown.err
    assert not_paused.code == 1 and "tenant nobody is not paused" in not_paused.err
    assert execute(database, "SELECT * FROM delivery_worker_pauses") == []


# --- replay ------------------------------------------------------------------------------------------


def test_replay_delivers_a_completed_job_again_with_the_same_idempotency_headers(
    database: str, cli: Cli, http_server: RecordingServer
) -> None:
    signed = {
        "url": http_server.url("/n"),
        "secret": "whsec_c2VjcmV0LXNpZ25pbmcta2V5",
        "signature": "standard",
    }
    channel = insert_channel(database, "webhook", signed)
    integration = insert_integration(
        database, "webhook", config_json={**signed, "url": http_server.url("/d")}
    )
    notification = insert_notification_job(database, channel)
    delivery = insert_delivery_job(database, integration)
    drain(database)
    assert status(database, "notification_jobs", notification) == "COMPLETED"

    replayed = cli("replay", "--table", "notification_jobs", str(notification), "--json")
    replayed_delivery = cli("replay", "--table", "delivery_jobs", str(delivery))
    after_replay = job(database, "notification_jobs", notification)
    drain(database)

    assert replayed.code == 0 and replayed.err.startswith("database: ")
    assert replayed.json()["replayed"] == [
        {
            "table": "notification_jobs",
            "job_id": notification,
            "was": "COMPLETED",
            "now": "PENDING",
            "note": "due now as attempt 2",
        }
    ]
    assert replayed_delivery.code == 0 and "replayed 1 job(s)" in replayed_delivery.out
    assert (after_replay["status"], after_replay["attempts"]) == ("PENDING", 1)
    for path, table, job_id in (("/n", "notification_jobs", notification), ("/d", "delivery_jobs", delivery)):
        first, second = http_server.received(path)
        for header in ("Idempotency-Key", "webhook-id"):
            assert first.header(header) is not None
            assert second.header(header) == first.header(header), header
        assert first.header("Idempotency-Key") == f"{table}:{job_id}"
        assert status(database, table, job_id) == "COMPLETED"
    assert [(a["attempt_no"], a["outcome"]) for a in attempts_of(database, notification)] == [
        (1, "completed"),
        (2, "completed"),
    ]
    assert [a["attempt_no"] for a in delivery_attempts_of(database, delivery)] == [1, 2]
    assert [row["success"] for row in log_rows(database, notification)] == [True, True]


def test_replay_of_a_failed_job_gets_one_real_attempt_even_with_its_retries_spent(
    database: str, cli: Cli, http_server: RecordingServer
) -> None:
    http_server.script("/flaky", Reply(503), Reply(503), Reply(200))
    channel = insert_channel(database, "webhook", {"url": http_server.url("/flaky")})
    failed = insert_notification_job(database, channel)
    drain(database, worker={"max_attempts": 2})
    assert (status(database, "notification_jobs", failed), len(http_server.received("/flaky"))) == (
        "FAILED",
        2,
    )

    assert cli("replay", str(failed)).code == 0
    drain(database, worker={"max_attempts": 2})

    row = job(database, "notification_jobs", failed)
    assert (row["status"], row["attempts"]) == ("COMPLETED", 2)
    assert len(http_server.received("/flaky")) == 3
    assert [(a["attempt_no"], a["outcome"], a["http_status"]) for a in attempts_of(database, failed)] == [
        (1, "retry", 503),
        (2, "failed", 503),
        (3, "completed", 200),
    ]


def test_replay_refuses_pending_and_processing_and_missing_jobs(database: str, cli: Cli) -> None:
    channel = insert_channel(database, "webhook", {"url": "http://127.0.0.1:9/x"})
    pending = insert_notification_job(database, channel)
    processing = insert_notification_job(database, channel)
    execute(database, "UPDATE notification_jobs SET status = 'PROCESSING' WHERE job_id = %s", (processing,))

    refused = cli("replay", "--table", "notification_jobs", str(pending), str(processing), "424242")

    assert refused.code == 1
    assert f"notification_jobs job {pending}: is PENDING: it will be delivered when due" in refused.err
    assert f"notification_jobs job {processing}: is PROCESSING: a worker is delivering it now" in refused.err
    assert "job 424242: no such job" in refused.err
    assert "replayed 0 job(s), refused 3" in refused.out
    assert status(database, "notification_jobs", processing) == "PROCESSING"


def test_replay_and_cancel_ask_for_a_table_when_an_id_is_in_both(database: str, cli: Cli) -> None:
    channel = insert_channel(database, "webhook", {"url": "http://127.0.0.1:9/x"})
    integration = insert_integration(database, "webhook", config_json={"url": "http://127.0.0.1:9/y"})
    notification = insert_notification_job(database, channel)
    delivery = insert_delivery_job(database, integration)
    assert notification == delivery == 1  # fresh sequences: the same id in both tables

    for command in ("replay", "cancel"):
        ambiguous = cli(command, "1")
        assert ambiguous.code == 2, command
        assert "exist in both notification_jobs and delivery_jobs; give --table" in ambiguous.err
    assert (
        status(database, "notification_jobs", 1) == "PENDING"
        and status(database, "delivery_jobs", 1) == "PENDING"
    )


# --- cancel ------------------------------------------------------------------------------------------


def test_cancel_fails_pending_jobs_on_both_tables_and_they_are_never_sent(
    database: str, cli: Cli, http_server: RecordingServer
) -> None:
    channel = insert_channel(database, "webhook", {"url": http_server.url("/dead")})
    integration = insert_integration(database, "webhook", config_json={"url": http_server.url("/dead-int")})
    notification = insert_notification_job(database, channel)
    delivery = insert_delivery_job(database, integration)
    completed = insert_notification_job(database, channel)
    execute(database, "UPDATE notification_jobs SET status = 'COMPLETED' WHERE job_id = %s", (completed,))

    cancelled = cli("cancel", "--table", "notification_jobs", str(notification), str(completed))
    cancelled_delivery = cli("cancel", "--table", "delivery_jobs", str(delivery), "--json")
    drain(database)

    assert cancelled.code == 1  # one of the two was refused
    assert cancelled.err.startswith("database: ")
    assert f"notification_jobs job {completed}: is COMPLETED: already delivered" in cancelled.err
    assert "cancelled 1 job(s), refused 1" in cancelled.out
    assert cancelled_delivery.code == 0 and cancelled_delivery.json()["cancelled"][0]["job_id"] == delivery
    for table, job_id in (("notification_jobs", notification), ("delivery_jobs", delivery)):
        row = job(database, table, job_id)
        assert (row["status"], row["last_error"], row["attempts"]) == ("FAILED", "cancelled by operator", 0)
    assert http_server.received() == []
    assert [(r["success"], r["error_msg"]) for r in log_rows(database, notification)] == [
        (False, "cancelled by operator")
    ]
    assert attempts_of(database, notification) == [] and delivery_attempts_of(database, delivery) == []
    assert status(database, "notification_jobs", completed) == "COMPLETED"


# --- show ----------------------------------------------------------------------------------------


def test_show_lists_attempts_log_rows_and_the_destination_with_secrets_masked(
    database: str, cli: Cli, http_server: RecordingServer
) -> None:
    token = "T0KEN-in-the-path-9f8e7d"
    api_key = "api-key-5a4b3c2d1e"
    for path in (f"/n/{token}", f"/d/{token}"):
        http_server.script(path, Reply(500, body=b"try later"), Reply(200))
    config = {"url": http_server.url(f"/n/{token}"), "headers": {"X-Api-Key": api_key}}
    channel = insert_channel(database, "webhook", config)
    integration = insert_integration(
        database, "webhook", config_json={**config, "url": http_server.url(f"/d/{token}")}
    )
    notification = insert_notification_job(database, channel)
    delivery = insert_delivery_job(database, integration)
    drain(database, worker={"max_attempts": 3})

    shown = cli("show", "--table", "notification_jobs", str(notification), "--json")
    table_view = cli("show", "--table", "delivery_jobs", str(delivery))
    both = cli("show", str(notification))

    assert shown.code == 0 and table_view.code == 0
    [document] = shown.json()["jobs"]
    assert document["job"]["status"] == "COMPLETED"
    assert [(a["attempt_no"], a["outcome"], a["http_status"]) for a in document["attempts"]] == [
        (1, "retry", 500),
        (2, "completed", 200),
    ]
    assert [entry["success"] for entry in document["log"]] == [True]
    destination = document["destination"]
    assert (destination["kind"], destination["id"], destination["type"]) == (
        "channel",
        str(channel),
        "webhook",
    )
    assert destination["tenant_id"] == "tenant-a" and destination["paused"] == []
    assert destination["config"]["headers"] == {"X-Api-Key": "[REDACTED]"}
    assert destination["config"]["url"] == f"http://127.0.0.1:{http_server.port}[REDACTED]"
    for output in (shown.out, table_view.out, both.out):
        assert token not in output and api_key not in output
    assert f"delivery_jobs job {delivery}" in table_view.out
    assert "attempts:" in table_view.out and "HTTP 500: try later" in table_view.out
    assert f"integration {integration}" in table_view.out
    # Without --table, an id found in both tables is shown twice, each labelled.
    assert notification == delivery
    assert f"notification_jobs job {notification}" in both.out and f"delivery_jobs job {delivery}" in both.out


def test_show_says_when_there_is_no_such_job(cli: Cli) -> None:
    missing = cli("show", "77")

    assert missing.code == 1 and "no job 77" in missing.err and missing.out == ""


def test_attempt_history_goes_with_its_job(database: str, http_server: RecordingServer) -> None:
    channel = insert_channel(database, "webhook", {"url": http_server.url("/n")})
    notification = insert_notification_job(database, channel)
    drain(database)
    assert len(attempts_of(database, notification)) == 1

    execute(database, "DELETE FROM notification_jobs WHERE job_id = %s", (notification,))

    assert attempts_of(database, notification) == []


def test_an_attempt_lost_with_its_worker_is_in_the_history(
    database: str, http_server: RecordingServer
) -> None:
    channel = insert_channel(database, "webhook", {"url": http_server.url("/n")})
    notification = insert_notification_job(database, channel)
    execute(  # as a worker that died mid-attempt leaves it
        database,
        "UPDATE notification_jobs SET status = 'PROCESSING', lease_expires_at = now() - interval '1 minute'"
        " WHERE job_id = %s",
        (notification,),
    )

    drain(database)

    assert status(database, "notification_jobs", notification) == "COMPLETED"
    assert [(a["attempt_no"], a["outcome"]) for a in attempts_of(database, notification)] == [
        (1, "lease_lost"),
        (2, "completed"),
    ]
