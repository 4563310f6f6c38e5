-- The claim order of issue 11: severity first (with aging), tenants interleaved, each alert's events
-- in order, and a share per destination. Producers keep inserting rows exactly as before: a trigger
-- stores each job's severity rank, and this migration backfills the PENDING rows already queued.
-- Idempotent: every statement may run again. Locks: docs/upgrading.md.

-- The payload's severity as the claim ranks it: 0 when unknown (missing, negative, absurd, not a
-- number), else min(severity, 5) + 1. The SQL twin of channels/alert.py severity_rank (ints 0-5,
-- int-valued strings and floats truncated toward zero, the named forms critical/high/medium/low/info,
-- ASCII whitespace trimmed); tests/test_claim_order.py runs both over the same payloads.
-- It never raises: it runs inside producers' INSERTs, which must not fail because of a payload.
CREATE OR REPLACE FUNCTION delivery_worker_severity_rank(payload jsonb) RETURNS smallint
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
DECLARE
    body jsonb := payload;
    severity jsonb;
    word text;
    number numeric;
BEGIN
    IF jsonb_typeof(body) = 'string' THEN  -- a payload may arrive as a JSON string holding an object
        BEGIN
            body := (body #>> '{}')::jsonb;
        EXCEPTION WHEN OTHERS THEN  -- not JSON inside: the worker fails that job; it ranks unknown
            RETURN 0;
        END;
    END IF;
    IF jsonb_typeof(body) IS DISTINCT FROM 'object' THEN
        RETURN 0;
    END IF;
    severity := body -> 'severity';
    IF jsonb_typeof(severity) = 'number' THEN
        number := severity::numeric;
    ELSIF jsonb_typeof(severity) = 'string' THEN
        word := lower(btrim(severity #>> '{}', E' \t\n\r\f' || chr(11)));
        CASE word
            WHEN 'critical' THEN RETURN 5;
            WHEN 'high' THEN RETURN 4;
            WHEN 'medium' THEN RETURN 3;
            WHEN 'low' THEN RETURN 2;
            WHEN 'info' THEN RETURN 1;
            ELSE NULL;
        END CASE;
        -- A plain decimal number of at most 64 characters with an exponent of at most 3 digits:
        -- the cast below cannot fail on it.
        IF length(word) > 64
           OR word !~ '^[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]{1,3})?$' THEN
            RETURN 0;
        END IF;
        number := word::numeric;
    ELSE
        RETURN 0;
    END IF;
    IF abs(number) > 1000 OR number < 0 THEN  -- channels/alert.py SEVERITY_LIMIT
        RETURN 0;
    END IF;
    RETURN least(trunc(number), 5)::smallint + 1;
END
$$;

CREATE OR REPLACE FUNCTION delivery_worker_store_severity_rank() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.severity_rank := delivery_worker_severity_rank(NEW.payload_json);
    RETURN NEW;
END
$$;

ALTER TABLE notification_jobs ADD COLUMN IF NOT EXISTS severity_rank SMALLINT NOT NULL DEFAULT 0;
ALTER TABLE delivery_jobs ADD COLUMN IF NOT EXISTS severity_rank SMALLINT NOT NULL DEFAULT 0;

DROP TRIGGER IF EXISTS delivery_worker_severity_rank ON notification_jobs;
CREATE TRIGGER delivery_worker_severity_rank
    BEFORE INSERT OR UPDATE OF payload_json ON notification_jobs
    FOR EACH ROW EXECUTE FUNCTION delivery_worker_store_severity_rank();

DROP TRIGGER IF EXISTS delivery_worker_severity_rank ON delivery_jobs;
CREATE TRIGGER delivery_worker_severity_rank
    BEFORE INSERT OR UPDATE OF payload_json ON delivery_jobs
    FOR EACH ROW EXECUTE FUNCTION delivery_worker_store_severity_rank();

-- migrate:no-transaction
-- Backfill both queues: jobs queued before this migration (finished ones are never claimed again,
-- so they keep 0), 1,000 at a time in job_id order, each batch its own short transaction: one
-- UPDATE of every PENDING row would hold their row locks (and the claim's) while it runs.
DO $$
DECLARE
    queue text;
    batch_start bigint;
    batch_end bigint;
BEGIN
    FOREACH queue IN ARRAY ARRAY['notification_jobs', 'delivery_jobs'] LOOP
        batch_start := 0;
        LOOP
            EXECUTE format(
                'SELECT job_id FROM %I WHERE status = ''PENDING'' AND job_id >= $1'
                ' ORDER BY job_id OFFSET 1000 LIMIT 1', queue)
                INTO batch_end USING batch_start;
            EXECUTE format(
                'UPDATE %I SET severity_rank = delivery_worker_severity_rank(payload_json)'
                ' WHERE status = ''PENDING'' AND job_id >= $1 AND ($2::bigint IS NULL OR job_id < $2)'
                '   AND severity_rank IS DISTINCT FROM delivery_worker_severity_rank(payload_json)', queue)
                USING batch_start, batch_end;
            COMMIT;
            EXIT WHEN batch_end IS NULL;
            batch_start := batch_end;
        END LOOP;
    END LOOP;
END
$$;

-- The claim (delivery_worker/queues/*.py) walks the destinations with due work (tenant, then
-- channel or integration) and reads each one's best jobs twice: by age, for jobs past
-- max_priority_wait_seconds, and by severity rank. Partial indexes on PENDING rows only, so their
-- size follows the queue, not the history. Built CONCURRENTLY: producers keep inserting meanwhile.
CREATE INDEX CONCURRENTLY IF NOT EXISTS notification_jobs_claim_age_idx
    ON notification_jobs (tenant_id, channel_id, next_run_at, job_id) WHERE status = 'PENDING';
CREATE INDEX CONCURRENTLY IF NOT EXISTS notification_jobs_claim_rank_idx
    ON notification_jobs (tenant_id, channel_id, severity_rank DESC, next_run_at, job_id)
    WHERE status = 'PENDING';
CREATE INDEX CONCURRENTLY IF NOT EXISTS delivery_jobs_claim_age_idx
    ON delivery_jobs (tenant_id, integration_id, next_run_at, job_id) WHERE status = 'PENDING';
CREATE INDEX CONCURRENTLY IF NOT EXISTS delivery_jobs_claim_rank_idx
    ON delivery_jobs (tenant_id, integration_id, severity_rank DESC, next_run_at, job_id)
    WHERE status = 'PENDING';

-- An alert's later event waits while an earlier one for the same destination is open: the claim
-- looks that up through the producers' unique constraints, (tenant_id, alert_id, channel_id, ...)
-- and (tenant_id, alert_id, route_id, ...), whose prefix finds an alert's few jobs at any history
-- size; no index of its own, so no extra index write on every status change.
