"""Migration 006 (claim order) on the platform's own tables: backfill, producers unchanged, idempotent."""

from __future__ import annotations

import json

from tests.rows import execute
from tests.test_migrate import PLATFORM_DDL, migrate, schema_snapshot

CLAIM_ORDER = "006_claim_order.sql"


def test_006_backfills_pending_jobs_and_producers_insert_as_before(empty_database):
    execute(empty_database, PLATFORM_DDL)
    queued = [
        (8, "PENDING", json.dumps({"severity": 5})),
        (9, "PENDING", json.dumps(json.dumps({"severity": "high"}))),  # a payload as a JSON string
        (10, "COMPLETED", json.dumps({"severity": 5})),
    ]
    for alert_id, status, payload in queued:
        execute(
            empty_database,
            "INSERT INTO notification_jobs (tenant_id, alert_id, channel_id, status, payload_json)"
            " VALUES ('t', %s, 1, %s, %s)",
            (alert_id, status, payload),
        )

    assert CLAIM_ORDER in migrate(empty_database)

    ranks = execute(empty_database, "SELECT alert_id, severity_rank FROM notification_jobs ORDER BY alert_id")
    assert [(r["alert_id"], r["severity_rank"]) for r in ranks] == [(7, 0), (8, 6), (9, 4), (10, 0)]
    # A producer's INSERT, exactly as before (no new column named), gets its rank from the trigger.
    execute(
        empty_database,
        "INSERT INTO notification_jobs (tenant_id, alert_id, channel_id, payload_json)"
        " VALUES ('t', 11, 1, '{\"severity\": \"critical\"}')",
    )
    (row,) = execute(empty_database, "SELECT severity_rank FROM notification_jobs WHERE alert_id = 11")
    assert row["severity_rank"] == 5


def test_006_runs_again_without_error_or_change(empty_database):
    migrate(empty_database)
    before = schema_snapshot(empty_database)
    execute(empty_database, "DELETE FROM delivery_worker_migrations WHERE name = %s", (CLAIM_ORDER,))

    assert migrate(empty_database) == [CLAIM_ORDER]

    assert schema_snapshot(empty_database) == before
    indexes = {r["indexname"] for r in execute(empty_database, "SELECT indexname FROM pg_indexes")}
    assert {"notification_jobs_claim_rank_idx", "delivery_jobs_claim_age_idx"} <= indexes
