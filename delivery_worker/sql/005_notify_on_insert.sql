-- Wake idle workers the moment producers queue a job: one NOTIFY per INSERT statement on either
-- queue (payload: the table name). Workers still poll every poll_interval, so a lost notification
-- only costs latency. Producers that already NOTIFY new_delivery_job keep working: workers listen
-- on both channels.
CREATE OR REPLACE FUNCTION delivery_worker_notify_new_jobs() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('delivery_worker_new_job', TG_TABLE_NAME);
    RETURN NULL;
END
$$;

DROP TRIGGER IF EXISTS delivery_worker_notify_new_jobs ON notification_jobs;
CREATE TRIGGER delivery_worker_notify_new_jobs
    AFTER INSERT ON notification_jobs
    FOR EACH STATEMENT EXECUTE FUNCTION delivery_worker_notify_new_jobs();

DROP TRIGGER IF EXISTS delivery_worker_notify_new_jobs ON delivery_jobs;
CREATE TRIGGER delivery_worker_notify_new_jobs
    AFTER INSERT ON delivery_jobs
    FOR EACH STATEMENT EXECUTE FUNCTION delivery_worker_notify_new_jobs();
