-- Only the indexes the reads need, and none a trigger-written change pays
-- for before it has its `seq`: the log is read by seq and by (table, seq),
-- and pruned in seq order, always among numbered changes.
DROP INDEX _realtide_changes_by_time;
DROP INDEX _realtide_changes_by_seq;
CREATE UNIQUE INDEX _realtide_changes_by_seq ON _realtide_changes (seq) WHERE seq IS NOT NULL;
DROP INDEX _realtide_changes_by_table;
CREATE INDEX _realtide_changes_by_table ON _realtide_changes (table_name, seq) WHERE seq IS NOT NULL;
