"""`send-test`: send a sample alert to one channel or integration now, and say what happened.

The destination is loaded and mapped exactly as a claimed job's would be, and the send goes through
the same ``Deliverer`` (channel registry, quick retries, error classification, secret redaction), so
a test that passes means real jobs to that destination will too. No job row is written.
"""

from __future__ import annotations

import argparse
import dataclasses
import socket
import threading
import uuid
from collections.abc import MutableMapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import structlog

from delivery_worker.config import Settings
from delivery_worker.db import Connection, connect, transaction
from delivery_worker.jobs import Destination, Job, Outcome, Table, Verdict
from delivery_worker.ops.output import EXIT_FAILURE, EXIT_OK, add_json_argument, announce_database, print_json

LOAD_CHANNEL = """
SELECT channel_id, tenant_id, channel_type, is_enabled, config
FROM notification_channels
WHERE channel_id = %(channel_id)s
"""

LOAD_INTEGRATION = """
SELECT integration_id, type::text AS type, enabled, config_json,
       snmp_host, snmp_port, snmp_config, snmp_oid_prefix,
       email_config, email_recipients, email_template,
       mqtt_topic, mqtt_qos, mqtt_retain, mqtt_config
FROM integrations
WHERE tenant_id = %(tenant_id)s AND integration_id = %(integration_id)s::uuid
"""

TEST_DEVICE = "delivery-worker-test"
TEST_MESSAGE = "Test notification from delivery-worker"
TEST_ALERT_ID = 0  # fixed, so a PagerDuty test incident can be resolved with --event CLOSED


@dataclass(frozen=True)
class Target:
    """What the operator asked for: a channel, or an integration of a tenant."""

    table: Table
    tenant_id: str | None = None
    channel_id: int | None = None
    integration_id: str | None = None

    @property
    def label(self) -> str:
        if self.table is Table.NOTIFICATION_JOBS:
            return f"channel {self.channel_id}"
        return f"integration {self.tenant_id}:{self.integration_id}"


@dataclass(frozen=True)
class SampleJob(Job):
    """A job that exists only in memory. Its key (the webhook Idempotency-Key) is unique per send,
    so a receiver that drops duplicate keys still shows every test."""

    send_id: str = ""

    @property
    def key(self) -> str:
        return f"send-test:{self.send_id}"


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "send-test",
        help="send a sample alert to one channel or integration and report the result",
        description=(
            "Send a sample alert (device delivery-worker-test) through one notification channel or "
            "integration, the way a job would be sent, without creating a job. Exit 0 if delivered, "
            "1 otherwise."
        ),
    )
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--channel-id", type=int, metavar="N", help="a notification_channels row")
    target.add_argument(
        "--integration",
        type=_integration,
        metavar="TENANT_ID:INTEGRATION_ID",
        help="an integrations row, e.g. acme:7f0c7b9e-2a61-4a4e-9a55-0b7f1f0c2d11",
    )
    parser.add_argument(
        "--severity",
        type=int,
        choices=range(6),
        default=1,
        metavar="0-5",
        help="alert severity (default: 1, low)",
    )
    parser.add_argument(
        "--event",
        choices=("OPEN", "ACKNOWLEDGED", "CLOSED"),
        default="OPEN",
        help="alert event (default: OPEN; CLOSED resolves a PagerDuty test incident)",
    )
    add_json_argument(parser)


def _integration(text: str) -> Target:
    tenant_id, _, integration_id = text.rpartition(":")
    try:
        parsed = uuid.UUID(integration_id)
    except ValueError:
        parsed = None
    if not tenant_id or parsed is None:
        raise argparse.ArgumentTypeError(f"expected TENANT_ID:INTEGRATION_ID (a UUID), got {text!r}")
    return Target(Table.DELIVERY_JOBS, tenant_id=tenant_id, integration_id=str(parsed))


def run(settings: Settings, args: argparse.Namespace) -> int:
    target: Target = args.integration or Target(Table.NOTIFICATION_JOBS, channel_id=args.channel_id)
    announce_database(settings.database.dsn)
    conn = connect(settings.database.dsn)
    try:
        destination = load_destination(conn, target)
    finally:
        conn.close()
    outcome = send(settings, target, destination, severity=args.severity, event=args.event)
    report = result(target, destination, outcome)
    if args.json:
        print_json(report)
    else:
        print(render(report))
    return EXIT_OK if outcome.verdict is Verdict.COMPLETED else EXIT_FAILURE


def load_destination(conn: Connection, target: Target) -> Destination | None:
    """The destination as a claim would map it; None when the row does not exist."""
    from delivery_worker.queues.delivery_jobs import integration_config

    with transaction(conn) as cur:
        if target.table is Table.NOTIFICATION_JOBS:
            cur.execute(LOAD_CHANNEL, {"channel_id": target.channel_id})
        else:
            cur.execute(
                LOAD_INTEGRATION, {"tenant_id": target.tenant_id, "integration_id": target.integration_id}
            )
        row = cur.fetchone()
        names = [column.name for column in cur.description or ()]
    if row is None:
        return None
    if target.table is Table.NOTIFICATION_JOBS:
        channel_id, tenant_id, channel_type, enabled, config = row
        return Destination(str(channel_id), tenant_id, channel_type, bool(enabled), config)
    integration = dict(zip(names, row, strict=True))
    kind = integration["type"]
    return Destination(
        destination_id=str(integration["integration_id"]),
        tenant_id=str(target.tenant_id),
        channel_type=kind,
        enabled=integration["enabled"] is not False,
        config=integration_config(kind, integration),
    )


def sample_payload(tenant_id: str, channel_type: str, *, severity: int, event: str) -> dict[str, Any]:
    return {
        "alert_id": TEST_ALERT_ID,
        "tenant_id": tenant_id,
        "device_id": TEST_DEVICE,
        "site_id": TEST_DEVICE,
        "alert_type": "TEST",
        "severity": severity,
        "message": TEST_MESSAGE,
        "details": {"sent_by": "delivery-worker send-test", "host": socket.gethostname()},
        "triggered_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "event_type": event,
        "channel_type": channel_type,
    }


def send(
    settings: Settings, target: Target, destination: Destination | None, *, severity: int, event: str
) -> Outcome:
    """One attempt, quick retries included, through the worker's own Deliverer."""
    from channels.registry import build_registry
    from delivery_worker.delivery import Deliverer
    from delivery_worker.destinations import DestinationGuard
    from delivery_worker.retry import RetryPolicy

    tenant_id = destination.tenant_id if destination else (target.tenant_id or "")
    channel_type = destination.channel_type if destination else "unknown"
    job = SampleJob(
        table=target.table,
        job_id=0,
        tenant_id=tenant_id,
        alert_id=TEST_ALERT_ID,
        event=event,
        attempts=0,
        payload=sample_payload(tenant_id, channel_type, severity=severity, event=event),
        destination=destination,
        channel_id=target.channel_id,
        send_id=uuid.uuid4().hex,
    )
    # With at least two attempts allowed, the verdict tells transient (RETRY) from permanent (FAILED).
    policy = RetryPolicy.from_settings(settings.worker)
    policy = dataclasses.replace(policy, max_attempts=max(policy.max_attempts, 2))
    _drop_job_log_lines()
    registry = build_registry(settings, pool_size=settings.worker.threads)
    try:
        guard = DestinationGuard(settings.rate_limits, settings.circuit_breaker)
        return Deliverer(registry, policy, threading.Event(), guard).run(job)
    finally:
        registry.close()


JOB_LOG_EVENTS = frozenset({"job.completed", "job.retry_scheduled", "job.failed"})


def _drop_job_log_lines() -> None:
    """The Deliverer logs each job's outcome; here the printed result says it better, and its
    "job.retry_scheduled" would be wrong (nothing is scheduled). Other lines still go to stderr."""

    def drop(_logger: Any, _method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        if event.get("event") in JOB_LOG_EVENTS:
            raise structlog.DropEvent
        return event

    structlog.configure(processors=[drop, *structlog.get_config()["processors"]])


def result(target: Target, destination: Destination | None, outcome: Outcome) -> dict[str, Any]:
    failure = {Verdict.RETRY: "transient", Verdict.FAILED: "permanent"}.get(outcome.verdict)
    return {
        "target": target.label,
        "channel_type": destination.channel_type if destination else None,
        "status": "delivered" if outcome.verdict is Verdict.COMPLETED else "failed",
        "failure": failure,
        "latency_ms": outcome.latency_ms,
        "http_status": outcome.http_status,
        "error": outcome.error,
    }


def render(report: dict[str, Any]) -> str:
    status = report["status"] + (f" ({report['failure']})" if report["failure"] else "")
    rows = {
        "target": report["target"],
        "channel_type": report["channel_type"],
        "status": status,
        "latency_ms": report["latency_ms"],
        "http_status": report["http_status"],
        "error": report["error"],
    }
    return "\n".join(f"{name:<13}{'-' if value is None else value}" for name, value in rows.items())
