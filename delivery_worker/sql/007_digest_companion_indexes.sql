-- Storm digests claim the other due jobs of ONE destination (queues/companions.py). These partial
-- indexes hold PENDING rows only, keyed like that claim (destination, then its ORDER BY), so it reads
-- just the rows it takes however many other destinations have jobs waiting.
CREATE INDEX IF NOT EXISTS notification_jobs_due_by_channel_idx
    ON notification_jobs (channel_id, next_run_at, job_id) WHERE status = 'PENDING';
CREATE INDEX IF NOT EXISTS delivery_jobs_due_by_integration_idx
    ON delivery_jobs (integration_id, next_run_at, job_id) WHERE status = 'PENDING';
