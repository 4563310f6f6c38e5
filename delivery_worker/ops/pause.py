"""`pause` and `resume`: hold back the jobs of one channel, integration or tenant without failing them.

A pause is a row in ``delivery_worker_pauses`` (migration 007). The claim gives a paused destination
no room (queues/claim_order.py), so its jobs stay PENDING with ``attempts`` unchanged: nothing is
spent, nothing fails, however long the pause lasts (unlike ``is_enabled = false``, which fails every
job at once). Jobs already PROCESSING when the pause is made finish as usual.

`resume` deletes the row and NOTIFYs idle workers, so the waiting jobs are claimed at once: a job
whose ``next_run_at`` passed during the pause is due already (the pause never moves it), while a job
still inside a retry backoff keeps its backoff. Pausing what is paused, or resuming what is not,
changes nothing: `pause` says since when it is paused (exit 0), `resume` says it was not (exit 1).
"""

from __future__ import annotations

import argparse
import sys
import uuid
from dataclasses import dataclass
from datetime import UTC
from typing import Any

from delivery_worker.config import Settings
from delivery_worker.db import OPERATOR_SESSION, Connection, connect, transaction
from delivery_worker.ops.output import (
    EXIT_FAILURE,
    EXIT_OK,
    EXIT_USAGE,
    add_json_argument,
    announce_database,
    excerpt,
    print_json,
    render_table,
)

PAUSE = """
INSERT INTO delivery_worker_pauses (scope, target, reason)
VALUES (%(scope)s, %(target)s, %(reason)s)
ON CONFLICT (scope, target) DO NOTHING
RETURNING paused_at
"""

RESUME = """
DELETE FROM delivery_worker_pauses WHERE scope = %(scope)s AND target = %(target)s
RETURNING paused_at
"""

# Idle workers wake at once (delivered at commit), as on a producer's INSERT (005_notify_on_insert.sql).
WAKE_WORKERS = """
SELECT pg_notify('delivery_worker_new_job', 'notification_jobs'),
       pg_notify('delivery_worker_new_job', 'delivery_jobs')
"""

EXISTING = {
    "channel": "SELECT tenant_id FROM notification_channels WHERE channel_id = %(target)s::integer",
    "integration": "SELECT tenant_id FROM integrations WHERE integration_id = %(target)s::uuid",
    "tenant": """
        SELECT %(target)s WHERE EXISTS (SELECT 1 FROM notification_channels WHERE tenant_id = %(target)s)
                             OR EXISTS (SELECT 1 FROM integrations WHERE tenant_id = %(target)s)
    """,
}

# The PENDING jobs a pause holds back (all, and those due now), by the claim's partial indexes.
WAITING = """
SELECT p.scope, p.target, p.reason, p.paused_by, p.paused_at,
       COALESCE(n.pending, 0) + COALESCE(d.pending, 0) AS pending,
       COALESCE(n.due, 0) + COALESCE(d.due, 0) AS due
FROM delivery_worker_pauses AS p
LEFT JOIN LATERAL (
    SELECT count(*) AS pending, count(*) FILTER (WHERE next_run_at <= now()) AS due
    FROM notification_jobs AS j
    WHERE j.status = 'PENDING'
      AND ((p.scope = 'channel' AND j.channel_id::text = p.target)
           OR (p.scope = 'tenant' AND j.tenant_id = p.target))
) AS n ON p.scope IN ('channel', 'tenant')
LEFT JOIN LATERAL (
    SELECT count(*) AS pending, count(*) FILTER (WHERE next_run_at <= now()) AS due
    FROM delivery_jobs AS j
    WHERE j.status = 'PENDING'
      AND ((p.scope = 'integration' AND j.integration_id::text = p.target)
           OR (p.scope = 'tenant' AND j.tenant_id = p.target))
) AS d ON p.scope IN ('integration', 'tenant')
WHERE (%(scope)s::text IS NULL OR (p.scope, p.target) = (%(scope)s::text, %(target)s::text))
ORDER BY p.paused_at, p.scope, p.target
"""

COLUMNS = ("scope", "target", "reason", "paused_by", "paused_at", "pending", "due")


@dataclass(frozen=True)
class Target:
    scope: str  # channel, integration, tenant
    target: str  # channel_id, integration_id (canonical UUID text) or tenant_id

    @property
    def label(self) -> str:
        return f"{self.scope} {self.target}"

    def params(self) -> dict[str, Any]:
        return {"scope": self.scope, "target": self.target}


def add_pause_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "pause",
        help="hold back the jobs of a channel, integration or tenant (they wait, unspent)",
        description=(
            "Stop claiming the jobs of one channel, integration or tenant until `resume`. They stay "
            "PENDING with attempts unchanged. --list shows what is paused and how many jobs wait."
        ),
    )
    _add_target_arguments(parser, listing=True)
    parser.add_argument("--reason", metavar="TEXT", help="why, shown by pause --list")
    add_json_argument(parser)


def add_resume_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "resume",
        help="lift a pause: the waiting jobs are claimed at once",
        description="Lift the pause of a channel, integration or tenant and wake idle workers.",
    )
    _add_target_arguments(parser, listing=False)
    add_json_argument(parser)


def _add_target_arguments(parser: argparse.ArgumentParser, *, listing: bool) -> None:
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument(
        "--channel-id", type=int, metavar="N", help="a notification channel (notification_jobs)"
    )
    target.add_argument("--integration-id", type=_uuid, metavar="UUID", help="an integration (delivery_jobs)")
    target.add_argument("--tenant", metavar="TENANT_ID", help="every channel and integration of a tenant")
    if listing:
        target.add_argument(
            "--list", action="store_true", help="list the pauses in force and their waiting jobs"
        )


def _uuid(text: str) -> str:
    try:
        return str(uuid.UUID(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a UUID, got {text!r}") from None


def target_of(args: argparse.Namespace) -> Target:
    if args.channel_id is not None:
        return Target("channel", str(args.channel_id))
    if args.integration_id is not None:
        return Target("integration", args.integration_id)
    return Target("tenant", args.tenant)


def run_pause(settings: Settings, args: argparse.Namespace) -> int:
    if args.list:
        return list_pauses(settings, as_json=args.json)
    if args.tenant is not None and not args.tenant.strip():
        print("delivery-worker pause: --tenant needs a tenant id", file=sys.stderr)
        return EXIT_USAGE
    target = target_of(args)
    announce_database(settings.database.dsn)
    conn = connect(settings.database.dsn, session=OPERATOR_SESSION)
    try:
        with transaction(conn) as cur:
            cur.execute(EXISTING[target.scope], target.params())
            exists = cur.fetchone() is not None
            if exists or target.scope == "tenant":
                cur.execute(PAUSE, {**target.params(), "reason": args.reason})
                newly = cur.fetchone() is not None
        if not exists and target.scope != "tenant":
            print(f"delivery-worker pause: no {target.label} (nothing paused)", file=sys.stderr)
            return EXIT_FAILURE
        if not exists:  # a tenant may get its first channel later: paused anyway, but say so
            print(f"delivery-worker pause: note: tenant {target.target} has no channel or integration yet",
                  file=sys.stderr)  # fmt: skip
        pause = _pauses(conn, target)[0]
    finally:
        conn.close()
    return _report("paused" if newly else "already paused", pause, as_json=args.json)


def run_resume(settings: Settings, args: argparse.Namespace) -> int:
    target = target_of(args)
    announce_database(settings.database.dsn)
    conn = connect(settings.database.dsn, session=OPERATOR_SESSION)
    try:
        before = _pauses(conn, target)
        with transaction(conn) as cur:
            cur.execute(RESUME, target.params())
            lifted = cur.fetchone() is not None
            if lifted:
                cur.execute(WAKE_WORKERS)
    finally:
        conn.close()
    if not lifted or not before:
        print(f"delivery-worker resume: {target.label} is not paused (pause --list shows what is)",
              file=sys.stderr)  # fmt: skip
        return EXIT_FAILURE
    return _report("resumed", before[0], as_json=args.json)


def _report(action: str, pause: dict[str, Any], *, as_json: bool) -> int:
    if as_json:
        print_json({"action": action.replace(" ", "_"), **pause})
    else:
        waiting = f"{pause['pending']} PENDING job(s) ({pause['due']} due now)"
        since = pause["paused_at"].astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ")
        what = f"{pause['scope']} {pause['target']}"
        if action == "resumed":
            print(f"resumed {what} (paused since {since}): {waiting} may be claimed at once")
        else:
            print(f"{action} {what} since {since}: {waiting} wait")
    return EXIT_OK


def list_pauses(settings: Settings, *, as_json: bool) -> int:
    conn = connect(settings.database.dsn, session=OPERATOR_SESSION)
    try:
        pauses = _pauses(conn, None)
    finally:
        conn.close()
    if as_json:
        print_json({"count": len(pauses), "pauses": pauses})
    elif not pauses:
        print("nothing is paused")
    else:
        rows = [[p[c] if c != "reason" else excerpt(p[c], 40) for c in COLUMNS] for p in pauses]
        print(render_table(["scope", "target", "reason", "by", "since", "pending", "due"], rows))
    return EXIT_OK


def _pauses(conn: Connection, target: Target | None) -> list[dict[str, Any]]:
    params = target.params() if target else {"scope": None, "target": None}
    with transaction(conn) as cur:
        cur.execute(WAITING, params)
        return [dict(zip(COLUMNS, row, strict=True)) for row in cur.fetchall()]
