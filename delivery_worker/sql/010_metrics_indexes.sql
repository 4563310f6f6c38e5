-- For delivery_worker_queue_failed_recent_jobs (metrics.py's QUEUE_SAMPLE, every queue_sample_seconds):
-- jobs that became FAILED recently, read by updated_at from FAILED rows only, so the sample costs the
-- same however many FAILED rows the retention keeps. Additive; producers' INSERTs (PENDING rows)
-- never touch it.
CREATE INDEX IF NOT EXISTS notification_jobs_failed_updated_idx
    ON notification_jobs (updated_at) WHERE status = 'FAILED';
CREATE INDEX IF NOT EXISTS delivery_jobs_failed_updated_idx
    ON delivery_jobs (updated_at) WHERE status = 'FAILED';
