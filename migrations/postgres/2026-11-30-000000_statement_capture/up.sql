-- Capture by statement: one trigger call per statement, and one
-- INSERT ... SELECT of all its rows from the statement's transition tables,
-- in place of a call and an INSERT per row. The tracker replaces a table's
-- row trigger (`_realtide_capture`) with these when it next watches it.
-- An UPDATE's old and new rows are paired by position: PostgreSQL appends
-- each updated row's old and new versions to the two transition tables
-- together, so the n-th old row is the n-th new row's before.
CREATE FUNCTION _realtide_capture_statement() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    now_ms BIGINT := (extract(epoch FROM clock_timestamp()) * 1000)::bigint;
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO _realtide_changes (table_name, op, new_row, old_row, changed_at)
        SELECT TG_TABLE_NAME, 'INSERT', row_to_json(n)::text, NULL, now_ms
        FROM _realtide_new AS n;
    ELSIF TG_OP = 'DELETE' THEN
        INSERT INTO _realtide_changes (table_name, op, new_row, old_row, changed_at)
        SELECT TG_TABLE_NAME, 'DELETE', NULL, row_to_json(o)::text, now_ms
        FROM _realtide_old AS o;
    ELSE
        INSERT INTO _realtide_changes (table_name, op, new_row, old_row, changed_at)
        SELECT TG_TABLE_NAME, 'UPDATE', n.json, o.json, now_ms
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
