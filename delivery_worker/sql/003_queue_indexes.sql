-- Claiming reads only due PENDING rows; partial indexes keep that cost flat as finished rows pile up.
-- They match the claim's ORDER BY (next_run_at, job_id), so a claim reads just the rows it takes
-- instead of sorting every due row.
-- Built CONCURRENTLY (outside a transaction): a plain CREATE INDEX holds a SHARE lock, which stops
-- producers' INSERTs for the whole build (about a second per million notification_log rows).
-- migrate:no-transaction
CREATE INDEX CONCURRENTLY IF NOT EXISTS notification_jobs_due_idx
    ON notification_jobs (next_run_at, job_id) WHERE status = 'PENDING';
CREATE INDEX CONCURRENTLY IF NOT EXISTS delivery_jobs_due_idx
    ON delivery_jobs (next_run_at, job_id) WHERE status = 'PENDING';
CREATE INDEX CONCURRENTLY IF NOT EXISTS notification_log_job_id_idx ON notification_log (job_id);
CREATE INDEX CONCURRENTLY IF NOT EXISTS delivery_attempts_job_id_idx ON delivery_attempts (job_id);
