-- The capture functions no longer NOTIFY: a notifying transaction holds a
-- database-wide lock from before its commit record until it ends, so every
-- capturing writer's commit (its WAL flush included) took turns with every
-- other's. The tracker polls the log's unnumbered changes instead.
-- An UPDATE's old and new rows (its transition tables list them in the same
-- order) are paired by zipping two arrays, not by joining two numbered sets.
-- (CREATE OR REPLACE resets a function's settings: the server sets their
-- search path again after migrating.)
CREATE OR REPLACE FUNCTION _realtide_capture() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    log_name TEXT := COALESCE(TG_ARGV[0], TG_TABLE_NAME);
BEGIN
    INSERT INTO _realtide_changes (table_name, op, new_row, old_row, changed_at)
    VALUES (
        log_name,
        TG_OP,
        CASE WHEN TG_OP <> 'DELETE' THEN row_to_json(NEW)::text END,
        CASE WHEN TG_OP <> 'INSERT' THEN row_to_json(OLD)::text END,
        (extract(epoch FROM clock_timestamp()) * 1000)::bigint
    );
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION _realtide_capture_statement() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    log_name TEXT := COALESCE(TG_ARGV[0], TG_TABLE_NAME);
    now_ms BIGINT := (extract(epoch FROM clock_timestamp()) * 1000)::bigint;
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO _realtide_changes (table_name, op, new_row, old_row, changed_at)
        SELECT log_name, 'INSERT', row_to_json(n)::text, NULL, now_ms
        FROM _realtide_new AS n;
    ELSIF TG_OP = 'DELETE' THEN
        INSERT INTO _realtide_changes (table_name, op, new_row, old_row, changed_at)
        SELECT log_name, 'DELETE', NULL, row_to_json(o)::text, now_ms
        FROM _realtide_old AS o;
    ELSE
        INSERT INTO _realtide_changes (table_name, op, new_row, old_row, changed_at)
        SELECT log_name, 'UPDATE', z.new_row, z.old_row, now_ms
        FROM unnest(
            ARRAY(SELECT row_to_json(x)::text FROM _realtide_new AS x),
            ARRAY(SELECT row_to_json(x)::text FROM _realtide_old AS x)
        ) AS z(new_row, old_row);
    END IF;
    RETURN NULL;
END
$$;
