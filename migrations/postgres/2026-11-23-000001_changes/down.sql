DROP FUNCTION _realtide_capture() CASCADE;
DROP TABLE _realtide_changes;
