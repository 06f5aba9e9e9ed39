-- The change log: triggers on each watched table append every committed row
-- change here, whoever wrote it. SQLite has one writer at a time, so `seq`
-- (AUTOINCREMENT: never reused, even after pruning) is commit order.
CREATE TABLE _realtide_changes (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    table_name TEXT NOT NULL,
    op TEXT NOT NULL,
    new_row TEXT,
    old_row TEXT,
    changed_at INTEGER NOT NULL
);
CREATE INDEX _realtide_changes_by_table ON _realtide_changes (table_name, seq);
CREATE INDEX _realtide_changes_by_time ON _realtide_changes (changed_at);
