"""`demo`: a first delivery in under a minute, end to end, on loopback only; it doubles as a smoke test.

It starts a local HTTP receiver (and subscribes to the MQTT broker on 127.0.0.1:1883 when one
answers), creates a throw-away tenant with a signed webhook, a Slack-shaped and a Teams-shaped
channel (and an MQTT one) pointing at them, queues three sample alerts for each, and runs the
worker's own machinery (``Poller``, ``Deliverer``, the channels, the recording path) until they are
delivered. Then it prints what each receiver got, each job's final row and the worker's log lines
for them, and deletes its rows unless ``--keep``.

What it changes, only for this process: the address guard opens exactly 127.0.0.1/32 (``[http]
allowed_networks``, which the MQTT guard reads too) and nothing else non-public; one attempt per job
(a failure shows at once instead of after a backoff); no storm digests (three alerts stay three
messages). Nothing on disk changes. Its jobs are parked so that no other worker claims them
(queues/demo_jobs.py), and its clean-up deletes only the rows it created.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import ipaddress
import json
import secrets
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from delivery_worker.config import Settings
from delivery_worker.db import OPERATOR_SESSION, Connection, connect, transaction
from delivery_worker.ops.demo_receivers import (
    LOOPBACK,
    MQTT_PORT,
    HttpReceiver,
    MqttSubscriber,
    broker_answers,
)
from delivery_worker.ops.demo_report import DemoChannel, DemoRun, build_report, counts, render
from delivery_worker.ops.output import (
    EXIT_FAILURE,
    EXIT_OK,
    add_json_argument,
    announce_database,
    print_json,
)
from delivery_worker.queues.demo_jobs import PARKED

DEFAULT_TIMEOUT_SECONDS = 30.0
TENANT_PREFIX = "demo-"
CHANNEL_NAME = "delivery-worker demo"  # every demo channel's name starts with it (see remove_kept)
LOOPBACK_ONLY = (ipaddress.ip_network(f"{LOOPBACK}/32"),)


INSERT_CHANNEL = """
INSERT INTO notification_channels (tenant_id, name, channel_type, config)
VALUES (%(tenant_id)s, %(name)s, %(channel_type)s, %(config)s::jsonb)
RETURNING channel_id
"""

INSERT_JOB = f"""
INSERT INTO notification_jobs (tenant_id, alert_id, channel_id, deliver_on_event, payload_json, next_run_at)
VALUES (%(tenant_id)s, %(alert_id)s, %(channel_id)s, %(event)s, %(payload)s::jsonb, now() + {PARKED})
RETURNING job_id
"""

TENANT_IN_USE = """
SELECT EXISTS (SELECT 1 FROM notification_channels WHERE tenant_id = %(tenant_id)s)
    OR EXISTS (SELECT 1 FROM notification_jobs WHERE tenant_id = %(tenant_id)s)
"""

FINAL_ROWS = """
SELECT job_id, channel_id, alert_id, deliver_on_event, status, attempts, last_error
FROM notification_jobs
WHERE job_id = ANY(%(job_ids)s::bigint[])
ORDER BY job_id
"""

DEMO_CHANNELS_OF_TENANT = """
SELECT channel_id FROM notification_channels
WHERE tenant_id = %(tenant_id)s AND name LIKE %(name_prefix)s
"""

# notification_log.job_id is ON DELETE SET NULL, so the log rows go first; deleting a channel deletes
# its jobs (ON DELETE CASCADE), and with them any per-attempt history that cascades from the jobs.
DELETE_LOG_ROWS = """
DELETE FROM notification_log
WHERE job_id IN (SELECT job_id FROM notification_jobs
                 WHERE channel_id = ANY(%(channel_ids)s::int[]) AND tenant_id = %(tenant_id)s)
"""
DELETE_JOBS = """
DELETE FROM notification_jobs WHERE channel_id = ANY(%(channel_ids)s::int[]) AND tenant_id = %(tenant_id)s
"""
DELETE_CHANNELS = """
DELETE FROM notification_channels WHERE channel_id = ANY(%(channel_ids)s::int[]) AND tenant_id = %(tenant_id)s
"""


@dataclass(frozen=True)
class SampleAlert:
    alert_id: int
    event: str
    severity: int
    message: str


SAMPLE_ALERTS = (
    SampleAlert(1001, "OPEN", 3, "Temperature high (9.5 °C) in cold room 2"),
    SampleAlert(1001, "CLOSED", 3, "Temperature high (9.5 °C) in cold room 2"),
    SampleAlert(1002, "OPEN", 5, "Compressor stopped"),
)


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "demo",
        help="deliver sample alerts to local receivers and show what they got (a smoke test)",
        description=(
            "Start a receiver on 127.0.0.1 (and use the MQTT broker on 127.0.0.1:1883 if one answers), "
            "create a demo tenant with webhook, Slack, Teams (and MQTT) channels pointing at it, queue "
            "sample alerts, deliver them with the worker's own machinery, print what each receiver got, "
            "each job's row and the log lines, then delete the demo's rows. Only loopback is opened, "
            "only for this run. Exit 0 if every demo job was delivered, 1 otherwise."
        ),
    )
    parser.add_argument("--keep", action="store_true", help="keep the demo's rows (for stats, show)")
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT_SECONDS,
        metavar="SECONDS",
        help=f"give up on undelivered jobs after this long (default: {DEFAULT_TIMEOUT_SECONDS:g})",
    )
    parser.add_argument(
        "--remove",
        metavar="TENANT",
        help="delete the rows a --keep run left for this demo tenant, and nothing else",
    )
    add_json_argument(parser)


def run(settings: Settings, args: argparse.Namespace) -> int:
    announce_database(settings.database.dsn)
    conn = connect(settings.database.dsn, session=OPERATOR_SESSION)
    try:
        if problem := schema_problem(conn):
            print(f"delivery-worker: demo: {problem}", file=sys.stderr)
            return EXIT_FAILURE
        if args.remove:
            return remove_kept(conn, args.remove, as_json=args.json)
        return run_demo(conn, settings, keep=args.keep, timeout=args.timeout, as_json=args.json)
    except KeyboardInterrupt:  # Ctrl-C: run_demo has stopped its worker and, unless --keep, removed its rows
        kept = "kept (demo --remove TENANT deletes them)" if args.keep else "removed"
        print(f"delivery-worker: demo: interrupted; its rows were {kept}", file=sys.stderr)
        return EXIT_FAILURE
    finally:
        conn.close()


def schema_problem(conn: Connection) -> str | None:
    from delivery_worker.migrate import pending_migrations

    missing = pending_migrations(conn)
    if missing:
        return (
            f"database schema is not up to date (missing {', '.join(missing)}): run `delivery-worker migrate`"
        )
    return None


def run_demo(conn: Connection, settings: Settings, *, keep: bool, timeout: float, as_json: bool) -> int:
    started = time.monotonic()
    tenant_id = unused_tenant(conn)
    receiver = HttpReceiver()
    receiver.start()
    mqtt: MqttSubscriber | None = None
    mqtt_note = None
    demo: DemoRun | None = None
    removed: dict[str, int] | None = None
    try:
        if broker_answers():
            mqtt = MqttSubscriber(f"{mqtt_topic_root(tenant_id)}/#")
            if not mqtt.start():
                mqtt = None
                mqtt_note = f"the broker on {LOOPBACK}:{MQTT_PORT} refused a subscription: MQTT skipped"
        else:
            mqtt_note = f"no broker answers on {LOOPBACK}:{MQTT_PORT}: MQTT skipped"
        demo = create_demo(conn, tenant_id, demo_channels(tenant_id, receiver, with_mqtt=mqtt is not None))
        print(
            f"demo tenant {tenant_id}: queued {len(demo.job_ids)} jobs for {len(demo.channels)} channels; "
            "delivering...",
            file=sys.stderr,
        )
        log_lines = deliver(for_demo(settings), demo.job_ids, timeout)
        if mqtt is not None:
            mqtt.wait_for(len(SAMPLE_ALERTS))
        rows = final_rows(conn, demo.job_ids)
    finally:
        receiver.stop()
        if mqtt is not None:
            mqtt.stop()
        if demo is not None and not keep:
            removed = remove_rows(conn, demo.tenant_id, list(demo.channels))
    assert demo is not None  # create_demo raised otherwise
    report = build_report(demo, receiver, mqtt, rows, log_lines, mqtt_note=mqtt_note)
    report["receiver_url"] = receiver.base_url
    report["seconds"] = round(time.monotonic() - started, 1)
    report["removed"] = removed
    if as_json:
        print_json(report)
    else:
        print(render(report))
    return EXIT_OK if not report["problems"] else EXIT_FAILURE


def unused_tenant(conn: Connection) -> str:
    """``demo-`` and 8 random hex digits that no channel or job uses yet."""
    while True:
        tenant_id = f"{TENANT_PREFIX}{secrets.token_hex(4)}"
        with transaction(conn) as cur:
            cur.execute(TENANT_IN_USE, {"tenant_id": tenant_id})
            row = cur.fetchone()
        if row is not None and not row[0]:
            return tenant_id


def mqtt_topic_root(tenant_id: str) -> str:
    return f"delivery-worker-demo/{tenant_id}"


def demo_channels(tenant_id: str, receiver: HttpReceiver, *, with_mqtt: bool) -> list[DemoChannel]:
    """The channels, each with its own path on the receiver (a Slack- and a Teams-shaped one)."""
    base = receiver.base_url
    slack_path = "/services/T0DEMO/B0DEMO/" + secrets.token_hex(4)
    teams_path = "/workflows/demo/triggers/manual/paths/invoke"
    channels = [
        DemoChannel(
            "webhook", "webhook", {"url": f"{base}/webhook", "secret": secrets.token_hex(16)}, "/webhook"
        ),
        DemoChannel("slack", "slack", {"webhook_url": base + slack_path}, slack_path),
        DemoChannel("teams", "teams", {"webhook_url": base + teams_path}, teams_path),
    ]
    if with_mqtt:
        topic = mqtt_topic_root(tenant_id)
        config = {"broker_url": f"mqtt://{LOOPBACK}:{MQTT_PORT}", "topic": topic + "/{alert_id}", "qos": 1}
        channels.append(DemoChannel("mqtt", "mqtt", config, f"{topic}/#"))
    return channels


def sample_payload(tenant_id: str, alert: SampleAlert, channel_type: str) -> dict[str, Any]:
    return {
        "alert_id": alert.alert_id,
        "tenant_id": tenant_id,
        "device_id": "freezer-7",
        "site_id": "warehouse-north",
        "alert_type": "TEMPERATURE" if alert.alert_id == 1001 else "EQUIPMENT",
        "severity": alert.severity,
        "message": alert.message,
        "details": {"source": "delivery-worker demo"},
        "triggered_at": "2026-12-02T08:00:00+00:00",
        "event_type": alert.event,
        "channel_type": channel_type,
    }


def create_demo(conn: Connection, tenant_id: str, channels: Sequence[DemoChannel]) -> DemoRun:
    """The tenant's channels and parked jobs, in one transaction."""
    demo = DemoRun(tenant_id, {}, [])
    with transaction(conn) as cur:
        for channel in channels:
            cur.execute(
                INSERT_CHANNEL,
                {
                    "tenant_id": tenant_id,
                    "name": f"{CHANNEL_NAME}: {channel.receiver}",
                    "channel_type": channel.channel_type,
                    "config": json.dumps(channel.config),
                },
            )
            channel_id = _returned(cur)
            demo.channels[channel_id] = channel
            for alert in SAMPLE_ALERTS:
                payload = sample_payload(tenant_id, alert, channel.channel_type)
                cur.execute(
                    INSERT_JOB,
                    {
                        "tenant_id": tenant_id,
                        "alert_id": alert.alert_id,
                        "channel_id": channel_id,
                        "event": alert.event,
                        "payload": json.dumps(payload),
                    },
                )
                demo.job_ids.append(_returned(cur))
    return demo


def _returned(cur: Any) -> int:
    row = cur.fetchone()
    assert row is not None, "INSERT ... RETURNING returns its row"
    return int(row[0])


def for_demo(settings: Settings) -> Settings:
    """The settings of this run's worker (see the module docstring); nothing is written anywhere."""
    return dataclasses.replace(
        settings,
        http=dataclasses.replace(settings.http, allow_private_networks=False, allowed_networks=LOOPBACK_ONLY),
        worker=dataclasses.replace(settings.worker, max_attempts=1),
        digest=dataclasses.replace(settings.digest, enabled=False),
    )


def deliver(settings: Settings, job_ids: list[int], timeout: float) -> list[str]:
    """Run a worker over the demo's jobs only until none is left PENDING or ``timeout`` passes, as
    `run --drain` would; return its log lines (JSON)."""
    from channels.registry import build_registry
    from delivery_worker.delivery import Deliverer
    from delivery_worker.destinations import DestinationGuard
    from delivery_worker.poller import Poller
    from delivery_worker.queues.demo_jobs import DemoJobs
    from delivery_worker.retry import RetryPolicy
    from delivery_worker.spool import Spool

    policy = RetryPolicy.from_settings(settings.worker)
    stopping = threading.Event()
    registry = build_registry(settings, pool_size=settings.worker.threads)
    deliverer = Deliverer(
        registry,
        policy,
        stopping,
        DestinationGuard(settings.rate_limits, settings.circuit_breaker),
        max_listed=settings.digest.max_listed,
    )
    queue = DemoJobs(job_ids, lease_seconds=settings.worker.lease_seconds, policy=policy)
    with captured_log_lines() as lines, tempfile.TemporaryDirectory(prefix="delivery-worker-demo-") as state:
        # Its own spool directory: the spool of a worker running beside it is that worker's to replay.
        poller = Poller(settings, [queue], deliverer, stopping, spool=Spool(Path(state)))
        worker = threading.Thread(target=poller.run, kwargs={"drain": True}, name="demo-worker", daemon=True)
        worker.start()
        try:
            worker.join(timeout)
        finally:
            if worker.is_alive():  # out of time (or Ctrl-C): stop as a signal would
                stopping.set()
                poller.wake.set()
                worker.join(settings.worker.shutdown_timeout + 5)
            registry.close()
    return lines


@contextmanager
def captured_log_lines() -> Iterator[list[str]]:
    """The JSON log lines written meanwhile (the worker's), instead of on stderr."""
    previous = structlog.get_config()
    buffer = io.StringIO()
    lines: list[str] = []
    structlog.configure(
        logger_factory=lambda *_args: structlog.PrintLogger(buffer), cache_logger_on_first_use=False
    )
    try:
        yield lines
    finally:
        structlog.configure(**previous)
        lines.extend(buffer.getvalue().splitlines())


def final_rows(conn: Connection, job_ids: list[int]) -> list[dict[str, Any]]:
    with transaction(conn) as cur:
        cur.execute(FINAL_ROWS, {"job_ids": job_ids})
        names = [column.name for column in cur.description or ()]
        return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


def remove_rows(conn: Connection, tenant_id: str, channel_ids: list[int]) -> dict[str, int]:
    """Delete the demo channels of ``tenant_id`` with their jobs and log rows, in one transaction."""
    where = {"tenant_id": tenant_id, "channel_ids": channel_ids}
    with transaction(conn) as cur:
        cur.execute(DELETE_LOG_ROWS, where)
        log_rows = cur.rowcount
        cur.execute(DELETE_JOBS, where)
        jobs = cur.rowcount
        cur.execute(DELETE_CHANNELS, where)
        return {"jobs": jobs, "log_rows": log_rows, "channels": cur.rowcount}


def remove_kept(conn: Connection, tenant_id: str, *, as_json: bool) -> int:
    """`demo --remove TENANT`: only channels named by the demo, of a ``demo-`` tenant, and their rows."""
    if not tenant_id.startswith(TENANT_PREFIX):
        print(f"delivery-worker: demo: {tenant_id!r} is not a demo tenant (demo-...)", file=sys.stderr)
        return EXIT_FAILURE
    with transaction(conn) as cur:
        cur.execute(DEMO_CHANNELS_OF_TENANT, {"tenant_id": tenant_id, "name_prefix": f"{CHANNEL_NAME}:%"})
        channel_ids = [channel_id for (channel_id,) in cur.fetchall()]
    removed = remove_rows(conn, tenant_id, channel_ids)
    if as_json:
        print_json({"tenant_id": tenant_id, "removed": removed})
    else:
        print(f"removed demo tenant {tenant_id}: {counts(removed)}")
    return EXIT_OK
