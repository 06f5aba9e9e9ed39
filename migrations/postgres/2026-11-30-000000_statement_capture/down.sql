DROP FUNCTION _realtide_capture_statement() CASCADE;
