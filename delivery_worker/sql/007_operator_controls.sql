-- Operator controls (issue 14): pausing a channel, integration or tenant, and a per-attempt history
-- for notification_jobs. Two new tables only: nothing existing is altered, so producers' INSERTs
-- never wait on this file. Idempotent: every statement may run again.

-- One row per paused channel (target = channel_id), integration (target = integration_id, the
-- canonical lower-case UUID text) or tenant (target = tenant_id). The claim skips due jobs whose
-- destination or tenant has a row here; they stay PENDING with attempts unchanged (unspent) and are
-- claimed as soon as the row is gone (`delivery-worker resume`). A handful of rows: each claim reads
-- them once (by the primary key's scope prefix) into a hash it checks every busy destination against.
CREATE TABLE IF NOT EXISTS delivery_worker_pauses (
    scope TEXT NOT NULL CHECK (scope IN ('channel', 'integration', 'tenant')),
    target TEXT NOT NULL,
    reason TEXT NULL,
    paused_by TEXT NOT NULL DEFAULT current_user,
    paused_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (scope, target)
);

-- One row per finished attempt of a notification job (delivery_jobs have delivery_attempts), written
-- in the transaction that records the attempt's outcome. outcome: completed, retry, failed, or
-- lease_lost (the worker died during the attempt; written when the job is taken back). error is the
-- redacted error the job's last_error shows, at most 500 characters. Deleted with its job (prune).
CREATE TABLE IF NOT EXISTS notification_job_attempts (
    attempt_id BIGSERIAL PRIMARY KEY,
    job_id BIGINT NOT NULL REFERENCES notification_jobs (job_id) ON DELETE CASCADE,
    tenant_id TEXT NOT NULL,
    attempt_no INTEGER NOT NULL,
    outcome TEXT NOT NULL,
    http_status INTEGER NULL,
    latency_ms INTEGER NULL,
    error TEXT NULL,
    started_at TIMESTAMPTZ NOT NULL,
    finished_at TIMESTAMPTZ NOT NULL
);

-- `show` reads a job's attempts, and the cascade of a job's DELETE finds them, through this index.
CREATE INDEX IF NOT EXISTS notification_job_attempts_job_id_idx ON notification_job_attempts (job_id);
