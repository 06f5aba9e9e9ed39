-- Pruning walks the log in seq order (the primary key): no index on time.
DROP INDEX _realtide_changes_by_time;
