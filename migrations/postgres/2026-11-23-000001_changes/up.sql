-- The change log: a trigger on each watched table appends every row change
-- here. Ids come from a sequence and can commit out of order, so the change
-- tracker gives each change its `seq` only once every transaction that could
-- precede it has ended (its xid is below the snapshot's xmin), in id order.
CREATE TABLE _realtide_changes (
    id BIGSERIAL PRIMARY KEY,
    xid xid8 NOT NULL DEFAULT pg_current_xact_id(),
    seq BIGINT,
    table_name TEXT NOT NULL,
    op TEXT NOT NULL,
    new_row TEXT,
    old_row TEXT,
    changed_at BIGINT NOT NULL
);
CREATE INDEX _realtide_changes_unsequenced ON _realtide_changes (id) WHERE seq IS NULL;
CREATE UNIQUE INDEX _realtide_changes_by_seq ON _realtide_changes (seq);
CREATE INDEX _realtide_changes_by_table ON _realtide_changes (table_name, seq);
CREATE INDEX _realtide_changes_by_time ON _realtide_changes (changed_at);

-- One function for every watched table: row_to_json follows schema changes by itself.
CREATE FUNCTION _realtide_capture() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO _realtide_changes (table_name, op, new_row, old_row, changed_at)
    VALUES (
        TG_TABLE_NAME,
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
