-- Webhooks waiting to be delivered (PROTOCOL §10): written when the
-- happening is recorded, deleted once the receiver answered 2xx (or the
-- retry window passed). `order_key` is the topic (or `conn:<id>`): only the
-- oldest row of a key is sent, so each key's events go in order. `owner`
-- and `lease_until` say which node is sending a row, so each is sent by one
-- node; a lease that runs out (its node died) lets another take it.
CREATE TABLE _realtide_webhooks (
    num BIGSERIAL PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    order_key TEXT NOT NULL,
    kind TEXT NOT NULL,
    body TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_at BIGINT NOT NULL,
    last_error TEXT,
    owner TEXT,
    lease_until BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX _realtide_webhooks_by_key ON _realtide_webhooks (order_key, num);
