DROP TABLE _realtide_messages;
