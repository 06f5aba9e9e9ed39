-- The capture functions as they were: each notifies the tracker at commit.
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
    -- Wakes the tracker at commit; identical notifications in one transaction fold into one.
    PERFORM pg_notify('_realtide_changes', '');
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
        SELECT log_name, 'UPDATE', n.json, o.json, now_ms
        FROM (SELECT row_to_json(x)::text AS json, row_number() OVER () AS at FROM _realtide_new AS x) AS n
        JOIN (SELECT row_to_json(x)::text AS json, row_number() OVER () AS at FROM _realtide_old AS x) AS o
          USING (at)
        ORDER BY at;
    END IF;
    -- Wakes the tracker at commit; identical notifications in one transaction fold into one.
    PERFORM pg_notify('_realtide_changes', '');
    RETURN NULL;
END
$$;
