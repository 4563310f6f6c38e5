"""What `delivery-worker demo` prints: what each receiver got, each job's final row, the log lines.

Built as one document first (``--json`` prints it as is), then rendered as text.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import dataclass
from typing import Any

from delivery_worker.ops.demo_receivers import LOOPBACK, MQTT_PORT, HttpReceiver, MqttSubscriber, Received
from delivery_worker.ops.output import excerpt, render_table

TELLING_KEYS = ("text", "message")
SIGNATURE_HEADER = "X-Signature-SHA256"  # the webhook channel's default signature (channels/webhook.py)


@dataclass(frozen=True)
class DemoChannel:
    receiver: str  # webhook, slack, teams, mqtt: how the output names it
    channel_type: str
    config: dict[str, Any]
    address: str  # the receiver's URL path, or the MQTT topic filter


@dataclass
class DemoRun:
    """The rows this run created."""

    tenant_id: str
    channels: dict[int, DemoChannel]  # by channel_id
    job_ids: list[int]


def build_report(
    demo: DemoRun,
    receiver: HttpReceiver,
    mqtt: MqttSubscriber | None,
    rows: list[dict[str, Any]],
    log_lines: list[str],
    *,
    mqtt_note: str | None,
) -> dict[str, Any]:
    problems: list[str] = []
    by_id = {row["job_id"]: row for row in rows}
    receivers = []
    for channel_id, channel in demo.channels.items():
        got = (
            mqtt.messages() if channel.receiver == "mqtt" and mqtt else receiver.requests_to(channel.address)
        )
        shown = [_received(item, channel) for item in got]
        receivers.append({"receiver": channel.receiver, "channel_id": channel_id, "received": shown})
        expected = sum(1 for row in rows if row["channel_id"] == channel_id)
        if len(got) != expected:
            problems.append(f"the {channel.receiver} receiver got {len(got)} messages for {expected} jobs")
        if any(item["signature_verified"] is False for item in shown):
            problems.append(f"a {channel.receiver} signature does not verify")
    jobs = []
    for job_id in demo.job_ids:
        row = by_id.get(job_id, {"status": "missing", "attempts": None, "last_error": None})
        owner = demo.channels.get(row.get("channel_id", 0))
        jobs.append(
            {
                "job_id": job_id,
                "receiver": owner.receiver if owner else None,
                "alert_id": row.get("alert_id"),
                "event": row.get("deliver_on_event"),
                "status": row["status"],
                "attempts": row["attempts"],
                "last_error": row["last_error"],
            }
        )
        if row["status"] != "COMPLETED":
            reason = row["last_error"] or "not delivered in time"
            problems.append(f"job {job_id} ({jobs[-1]['receiver']}) is {row['status']}: {reason}")
    return {
        "tenant_id": demo.tenant_id,
        "mqtt": mqtt_note or f"broker {LOOPBACK}:{MQTT_PORT}",
        "receivers": receivers,
        "jobs": jobs,
        "log_lines": [line for line in log_lines if _about(line, set(demo.job_ids))],
        "problems": problems,
    }


def _received(item: Received, channel: DemoChannel) -> dict[str, Any]:
    signature = item.headers.get(SIGNATURE_HEADER)
    verified = None
    if channel.receiver == "webhook":
        expected = hmac.new(str(channel.config["secret"]).encode(), item.body, hashlib.sha256).hexdigest()
        verified = signature is not None and hmac.compare_digest(signature, expected)
    return {
        "method": item.method,
        "path": item.path,
        "signature": signature,
        "signature_verified": verified,
        "body": excerpt(_readable(item.body), 60),
    }


def _readable(body: bytes) -> str:
    """The telling part of a body: the first ``text`` or ``message`` string of a JSON body (Slack's
    fallback text, a Teams card's headline, the webhook's or MQTT payload's message), else the body."""
    text = body.decode("utf-8", "replace")
    try:
        found = _first_telling(json.loads(text))
    except ValueError:
        return text
    return text if found is None else f"{found[0]}: {found[1]}"


def _first_telling(node: Any) -> tuple[str, str] | None:
    if isinstance(node, dict):
        for key in TELLING_KEYS:
            if isinstance(node.get(key), str):
                return key, node[key]
        children = list(node.values())
    elif isinstance(node, list):
        children = node
    else:
        return None
    for child in children:
        if (found := _first_telling(child)) is not None:
            return found
    return None


def _about(line: str, job_ids: set[int]) -> bool:
    """A log line about one of the demo's jobs, or any warning or error (it may say why one failed)."""
    try:
        event = json.loads(line)
    except ValueError:
        return True
    if not isinstance(event, dict):
        return True
    if event.get("level") in ("warning", "error", "critical"):
        return True
    keys = {f"notification_jobs:{job_id}" for job_id in job_ids}
    named = [event.get("job_id"), event.get("job"), *(event.get("job_ids") or []), *(event.get("jobs") or [])]
    return any(value in job_ids or value in keys for value in named if isinstance(value, int | str))


def counts(removed: dict[str, int]) -> str:
    return f"{removed['jobs']} jobs, {removed['log_rows']} log rows, {removed['channels']} channels"


def render(report: dict[str, Any]) -> str:
    tenant = report["tenant_id"]
    out = [f"demo tenant {tenant}: receiver {report['receiver_url']}, MQTT: {report['mqtt']}", ""]
    out.append("what each receiver got:")
    received = [
        (entry["receiver"], item["method"], excerpt(item["path"], 30), _signature_cell(item), item["body"])
        for entry in report["receivers"]
        for item in entry["received"]
    ]
    out.append(_indent(render_table(["receiver", "method", "path", "signature", "body"], received)))
    out += ["", "each job's final row (notification_jobs):"]
    jobs = [
        (j["job_id"], j["receiver"], j["alert_id"], j["event"], j["status"], j["attempts"], j["last_error"])
        for j in report["jobs"]
    ]
    headers = ["job_id", "receiver", "alert_id", "event", "status", "attempts", "last_error"]
    out.append(_indent(render_table(headers, jobs)))
    out += ["", "the worker's log lines for them:", *(f"  {line}" for line in report["log_lines"]), ""]
    delivered = sum(1 for j in report["jobs"] if j["status"] == "COMPLETED")
    outcome = "OK" if not report["problems"] else "FAILED"
    out.append(
        f"{outcome}: {delivered} of {len(report['jobs'])} demo jobs delivered in {report['seconds']:g} s"
    )
    out += [f"  - {problem}" for problem in report["problems"]]
    if report["removed"] is not None:
        out.append(f"removed the demo's rows: {counts(report['removed'])}")
    else:
        first, last = report["jobs"][0]["job_id"], report["jobs"][-1]["job_id"]
        out += [
            f"kept the demo's rows (tenant {tenant}, jobs {first}-{last}); see them with",
            "  delivery-worker stats",
            f"  delivery-worker show {first}",
            "and delete them with",
            f"  delivery-worker demo --remove {tenant}",
        ]
    return "\n".join(out)


def _signature_cell(item: dict[str, Any]) -> str:
    if item["signature"] is None:
        return "-"
    verdict = "verifies" if item["signature_verified"] else "DOES NOT VERIFY"
    return f"{SIGNATURE_HEADER}: {item['signature'][:12]}… ({verdict})"


def _indent(text: str) -> str:
    return "\n".join(f"  {line}" for line in text.splitlines())
