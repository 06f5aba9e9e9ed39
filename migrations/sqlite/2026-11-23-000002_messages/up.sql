-- Persisted pub/sub messages (publish or emit with `persist: true`). `num`
-- is given in publish order (a topic stores one message at a time, in seq
-- order), and the message id clients see is `num` zero-padded to 20 digits,
-- so ids sort in publish order and `before_id` pages without gaps or repeats
-- even when many messages share a millisecond.
CREATE TABLE _realtide_messages (
    num INTEGER PRIMARY KEY AUTOINCREMENT,
    room_id TEXT NOT NULL,
    user_id TEXT,
    event TEXT NOT NULL,
    data TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    seq BIGINT NOT NULL
);
CREATE INDEX _realtide_messages_by_room ON _realtide_messages (room_id, num);
CREATE INDEX _realtide_messages_by_time ON _realtide_messages (created_at);
