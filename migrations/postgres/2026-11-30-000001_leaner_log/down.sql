DROP INDEX _realtide_changes_by_table;
CREATE INDEX _realtide_changes_by_table ON _realtide_changes (table_name, seq);
DROP INDEX _realtide_changes_by_seq;
CREATE UNIQUE INDEX _realtide_changes_by_seq ON _realtide_changes (seq);
CREATE INDEX _realtide_changes_by_time ON _realtide_changes (changed_at);
