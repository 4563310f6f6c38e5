-- notification_log.alert_id is INTEGER on older databases while notification_jobs.alert_id is BIGINT;
-- a job whose alert_id does not fit must still get its log row. The one retype the contract allows.
--
-- `ALTER COLUMN alert_id TYPE BIGINT` rewrites the whole table under ACCESS EXCLUSIVE (3.8 s on 3M
-- rows, every producer INSERT waiting), so the column is widened online instead: a BIGINT twin kept
-- filled by a trigger, existing rows copied in batches of short transactions, NOT NULL proven by a
-- CHECK validated without blocking writes, and then the twin swapped in within one brief lock.
-- Where alert_id is already BIGINT (every database this migrate created) nothing happens. Each step
-- checks where the last run stopped, so an interrupted run continues. See docs/upgrading.md.

-- 1. The twin and the trigger that fills it for new and changed rows. When anything else depends
--    on the column (an index, a view, a default of the platform's), the online swap would drop it:
--    then the column is retyped in place as before (a rewrite under lock, said in a NOTICE).
DO $$
DECLARE
    column_number smallint;
BEGIN
    SELECT attnum INTO column_number FROM pg_attribute
    WHERE attrelid = 'notification_log'::regclass AND attname = 'alert_id' AND NOT attisdropped
      AND atttypid = 'integer'::regtype;
    IF column_number IS NULL THEN
        RETURN;  -- already BIGINT, or already swapped
    END IF;
    IF EXISTS (
        SELECT 1 FROM pg_depend
        WHERE refclassid = 'pg_class'::regclass AND refobjid = 'notification_log'::regclass
          AND refobjsubid = column_number
    ) THEN
        RAISE NOTICE 'notification_log.alert_id has dependent objects: retyping it in place (rewrites the table under ACCESS EXCLUSIVE)';
        ALTER TABLE notification_log ALTER COLUMN alert_id TYPE BIGINT;
        RETURN;
    END IF;
    ALTER TABLE notification_log ADD COLUMN IF NOT EXISTS alert_id_wide BIGINT;
    CREATE OR REPLACE FUNCTION delivery_worker_copy_log_alert_id() RETURNS trigger
    LANGUAGE plpgsql AS $fn$
    BEGIN
        NEW.alert_id_wide := NEW.alert_id;
        RETURN NEW;
    END
    $fn$;
    DROP TRIGGER IF EXISTS delivery_worker_copy_log_alert_id ON notification_log;
    CREATE TRIGGER delivery_worker_copy_log_alert_id
        BEFORE INSERT OR UPDATE ON notification_log
        FOR EACH ROW EXECUTE FUNCTION delivery_worker_copy_log_alert_id();
END
$$;

-- migrate:no-transaction
-- 2. Copy the existing rows, 10,000 at a time, each batch its own transaction (row locks only).
DO $$
DECLARE
    batch_start bigint;
    batch_end bigint;
BEGIN
    IF NOT EXISTS (
        SELECT 1 FROM pg_attribute
        WHERE attrelid = 'notification_log'::regclass AND attname = 'alert_id_wide' AND NOT attisdropped
    ) THEN
        RETURN;
    END IF;
    SELECT min(log_id) INTO batch_start FROM notification_log;
    WHILE batch_start IS NOT NULL LOOP
        SELECT log_id INTO batch_end FROM notification_log
        WHERE log_id >= batch_start ORDER BY log_id OFFSET 10000 LIMIT 1;
        UPDATE notification_log SET alert_id_wide = alert_id
        WHERE log_id >= batch_start AND (batch_end IS NULL OR log_id < batch_end)
          AND alert_id_wide IS NULL;
        COMMIT;
        batch_start := batch_end;
    END LOOP;
END
$$;

-- migrate:transaction
-- 3. A CHECK that proves the twin has no NULL, added unchecked (a brief lock) ...
DO $$
BEGIN
    IF EXISTS (
        SELECT 1 FROM pg_attribute
        WHERE attrelid = 'notification_log'::regclass AND attname = 'alert_id_wide' AND NOT attisdropped
    ) AND NOT EXISTS (
        SELECT 1 FROM pg_constraint
        WHERE conrelid = 'notification_log'::regclass AND conname = 'notification_log_alert_id_wide_not_null'
    ) THEN
        ALTER TABLE notification_log ADD CONSTRAINT notification_log_alert_id_wide_not_null
            CHECK (alert_id_wide IS NOT NULL) NOT VALID;
    END IF;
END
$$;

-- migrate:no-transaction
-- 4. ... then validated: a scan under SHARE UPDATE EXCLUSIVE, which lets INSERTs and UPDATEs through.
DO $$
BEGIN
    IF EXISTS (
        SELECT 1 FROM pg_constraint
        WHERE conrelid = 'notification_log'::regclass AND conname = 'notification_log_alert_id_wide_not_null'
          AND NOT convalidated
    ) THEN
        ALTER TABLE notification_log VALIDATE CONSTRAINT notification_log_alert_id_wide_not_null;
    END IF;
END
$$;

-- migrate:transaction
-- 5. The swap, catalog changes only: SET NOT NULL is proven by the validated CHECK (no scan). The
--    column keeps its name and NOT NULL; it becomes the table's last column.
DO $$
BEGIN
    IF EXISTS (
        SELECT 1 FROM pg_attribute
        WHERE attrelid = 'notification_log'::regclass AND attname = 'alert_id_wide' AND NOT attisdropped
    ) THEN
        ALTER TABLE notification_log ALTER COLUMN alert_id_wide SET NOT NULL;
        DROP TRIGGER IF EXISTS delivery_worker_copy_log_alert_id ON notification_log;
        ALTER TABLE notification_log DROP COLUMN alert_id;
        ALTER TABLE notification_log RENAME COLUMN alert_id_wide TO alert_id;
        ALTER TABLE notification_log DROP CONSTRAINT IF EXISTS notification_log_alert_id_wide_not_null;
    END IF;
END
$$;
DROP FUNCTION IF EXISTS delivery_worker_copy_log_alert_id();
