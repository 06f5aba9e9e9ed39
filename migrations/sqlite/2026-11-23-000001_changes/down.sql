DROP TABLE _realtide_changes;
