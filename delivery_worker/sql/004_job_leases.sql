-- Leases for crash recovery: a claimed job carries the time its claim runs out. A job still
-- PROCESSING after that (its worker died) is taken back by any worker. The lease value also acts as
-- the claim's token: an outcome is written only while the lease it was claimed under still holds.
ALTER TABLE notification_jobs ADD COLUMN IF NOT EXISTS lease_expires_at TIMESTAMPTZ NULL;
ALTER TABLE delivery_jobs ADD COLUMN IF NOT EXISTS lease_expires_at TIMESTAMPTZ NULL;

-- migrate:no-transaction
CREATE INDEX CONCURRENTLY IF NOT EXISTS notification_jobs_processing_idx
    ON notification_jobs (lease_expires_at) WHERE status = 'PROCESSING';
CREATE INDEX CONCURRENTLY IF NOT EXISTS delivery_jobs_processing_idx
    ON delivery_jobs (lease_expires_at) WHERE status = 'PROCESSING';
