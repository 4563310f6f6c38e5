-- notification_log.alert_id is INTEGER on older databases while notification_jobs.alert_id is BIGINT;
-- a job whose alert_id does not fit must still get its log row. The one retype the contract allows.
DO $$
BEGIN
    IF EXISTS (
        SELECT 1 FROM information_schema.columns
        WHERE table_schema = current_schema() AND table_name = 'notification_log'
          AND column_name = 'alert_id' AND data_type = 'integer'
    ) THEN
        ALTER TABLE notification_log ALTER COLUMN alert_id TYPE BIGINT;
    END IF;
END
$$;
