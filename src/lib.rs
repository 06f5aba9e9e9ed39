//! realtide: a self-hosted realtime server. One WebSocket per client carries
//! table change feeds, pub/sub topics, presence and token streams.
//!
//! The map of the crate:
//! - [`config`]: every setting, as a flag and an environment variable.
//! - [`check`]: `realtide check`, the settings and services tried without serving.
//! - [`server`]: the composition root, shared by `main` and the tests.
//! - [`http`]: the WebSocket upgrade, the client's incoming messages, and actix-web routes: emit, admin, health, metrics.
//! - [`socket`]: a TCP connection as actix-http reads it and as frames are written to it from any thread.
//! - [`protocol`]: client requests, server frames, WebSocket framing, error and close codes.
//! - [`outbox`]: what sessions, topics and the registry share of a connection: its subscriptions, its way out, keepalive, and the messages that end it.
//! - [`session`]: `SessionActor`, one per socket, and the context it runs in.
//! - [`registry`]: topic name -> `TopicActor`; lazy start, idle stop; open sessions, kept alive.
//! - [`topic`]: `TopicActor`, batched fan-out, topic names and the replay ring.
//! - [`cache`]: cache hints for the fan-out loop.
//! - [`clock`]: the monotonic uptime and wall-clock seconds that keepalive counts in.
//! - [`auth`]: tokens, their claims and topic permissions; server and admin keys.
//! - [`broker`]: how pub/sub topics reach the other nodes of a cluster (Redis).
//! - [`changes`]: the change tracker: triggers, `PollerActor`, filters.
//! - [`demo`]: `realtide demo`, an order dashboard and a chat room served beside the server.
//! - [`db`]: diesel over SQLite and PostgreSQL, the pool, embedded migrations.
//! - [`history`]: persisted messages and their pages.
//! - [`metrics`]: the Prometheus registry.
//! - [`trends`]: the last 15 minutes of a node's figures, for the console.
//! - [`state`]: what handlers and sessions share.

pub mod auth;
pub mod backend;
pub mod broker;
pub mod cache;
pub mod changes;
pub mod check;
pub mod clock;
pub mod config;
pub mod db;
pub mod demo;
pub mod history;
pub mod http;
pub mod metrics;
pub mod outbox;
pub mod protocol;
pub mod registry;
pub mod server;
pub mod session;
pub mod socket;
pub mod state;
pub mod topic;
pub mod trends;
