-- realtide's own facts about this database. `epoch` names the database's
-- change history: table topics report it, so a client can resume across a
-- server restart and is told to reload when the database is a different one.
CREATE TABLE _realtide_meta (
    key TEXT PRIMARY KEY NOT NULL,
    value TEXT NOT NULL
);
