DROP TABLE _realtide_meta;
