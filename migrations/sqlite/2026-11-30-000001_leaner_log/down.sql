CREATE INDEX _realtide_changes_by_time ON _realtide_changes (changed_at);
