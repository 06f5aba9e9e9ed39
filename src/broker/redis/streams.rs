//! Event streams across nodes (PROTOCOL §11): a stream's POSTed requests
//! may reach any node, and go to the node holding the stream.
//!
//! Keys: `stream:<conn>` STRING `<node>\n<sha1 of the secret>`;
//! `node:<id>:streams` SET of the node's streams, reaped with the node.
//! Channel `node:<id>:sse` carries what other nodes say to this node's
//! streams ([`NodeMessage`] as JSON): requests forwarded to them, and that
//! requests this node forwarded were queued. A forward answers only once
//! the holding node has queued its requests, so a client's requests sent
//! one after another through different nodes keep their order.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use super::{RESPONSE_TIMEOUT, RedisBroker, unavailable};
use crate::broker::{BrokerFuture, ForwardedRequests, RequestSink};

/// What travels on a node's stream channel.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "t")]
enum NodeMessage {
    /// Requests for one of the receiving node's streams; `from` is told
    /// `Queued { id }` once they are queued.
    #[serde(rename = "r")]
    Requests {
        from: String,
        id: u64,
        #[serde(flatten)]
        requests: ForwardedRequests,
    },
    /// Forward `id` of the receiving node was queued.
    #[serde(rename = "q")]
    Queued { id: u64 },
}

/// This node's forwards waiting for their `Queued`.
#[derive(Default)]
pub(super) struct Forwards {
    next: AtomicU64,
    waiting: Mutex<HashMap<u64, oneshot::Sender<()>>>,
}

impl Forwards {
    fn waiting(&self) -> std::sync::MutexGuard<'_, HashMap<u64, oneshot::Sender<()>>> {
        self.waiting.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn start(&self) -> (u64, oneshot::Receiver<()>) {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (queued, heard) = oneshot::channel();
        self.waiting().insert(id, queued);
        (id, heard)
    }

    fn forget(&self, id: u64) {
        self.waiting().remove(&id);
    }

    fn queued(&self, id: u64) {
        if let Some(queued) = self.waiting().remove(&id) {
            let _ = queued.send(());
        }
    }
}

/// Reads this node's stream channel (on the pub/sub connection's task).
pub(super) type NodeChannel = Arc<dyn Fn(&[u8]) + Send + Sync>;

impl RedisBroker {
    fn stream_key(&self, conn: &str) -> String {
        format!("{}stream:{conn}", self.inner.prefix)
    }

    fn streams_index(&self) -> String {
        format!("{}:streams", self.node_key(&self.inner.settings.node))
    }

    /// The channel requests for this node's streams come on.
    pub(super) fn forwarded_channel(&self) -> String {
        format!("{}:sse", self.node_key(&self.inner.settings.node))
    }

    pub(super) fn open_stream_key(&self, conn: &str, secret: &str) -> BrokerFuture<()> {
        let (key, index) = (self.stream_key(conn), self.streams_index());
        let (node, secret, conn) = (
            self.inner.settings.node.to_string(),
            secret.to_string(),
            conn.to_string(),
        );
        let broker = self.clone();
        self.run(async move {
            let mut redis = broker.inner.current.commands()?;
            let _: i64 = broker
                .inner
                .scripts
                .open_stream
                .key(key)
                .key(index)
                .arg(node)
                .arg(secret)
                .arg(conn)
                .invoke_async(&mut redis)
                .await?;
            Ok(())
        })
    }

    pub(super) fn close_stream_key(&self, conn: &str) {
        let (key, index, conn) = (
            self.stream_key(conn),
            self.streams_index(),
            conn.to_string(),
        );
        let broker = self.clone();
        self.inner.runtime.spawn(async move {
            // A key left behind (Redis unreachable now) goes when a forward
            // finds no node taking it, or with this node at its reaping.
            let Ok(mut redis) = broker.inner.current.commands() else {
                return;
            };
            let _ = redis::pipe()
                .del(key)
                .srem(index, conn)
                .query_async::<()>(&mut redis)
                .await;
        });
    }

    pub(super) fn forward_to_holder(
        &self,
        conn: &str,
        secret: &str,
        requests: Vec<String>,
    ) -> BrokerFuture<bool> {
        let key = self.stream_key(conn);
        let forwards = &self.inner.forwards;
        let (id, heard) = forwards.start();
        let message = NodeMessage::Requests {
            from: self.inner.settings.node.to_string(),
            id,
            requests: ForwardedRequests {
                conn: conn.to_string(),
                requests,
            },
        };
        let payload = serde_json::to_string(&message).unwrap_or_default();
        let (prefix, secret) = (self.inner.prefix.clone(), secret.to_string());
        let broker = self.clone();
        let passed = self.run(async move {
            let mut redis = broker.inner.current.commands()?;
            let taken: i64 = broker
                .inner
                .scripts
                .forward
                .key(key)
                .arg(prefix)
                .arg(secret)
                .arg(payload)
                .invoke_async(&mut redis)
                .await?;
            Ok(taken > 0)
        });
        let broker = self.clone();
        Box::pin(async move {
            let passed = passed.await;
            if !matches!(passed, Ok(true)) {
                broker.inner.forwards.forget(id);
                return passed;
            }
            match tokio::time::timeout(RESPONSE_TIMEOUT, heard).await {
                Ok(Ok(())) => Ok(true),
                _ => {
                    broker.inner.forwards.forget(id);
                    Err(unavailable(
                        "the node holding the stream did not say it took the requests",
                    ))
                }
            }
        })
    }

    pub(super) fn listen_for_forwarded(&self, sink: RequestSink) {
        let channel = self.forwarded_channel();
        let broker = self.clone();
        let reader: NodeChannel = Arc::new(move |payload| broker.read_node_message(&sink, payload));
        self.inner.routes.set_streams(channel.clone(), reader);
        let broker = self.clone();
        self.inner.runtime.spawn(async move {
            // Retried until it holds: the pub/sub link resubscribes by
            // itself after a reconnect, but only to what it once had (and
            // a new master's link subscribes to it when it is made).
            loop {
                if let Ok(mut pubsub) = broker.inner.current.pubsub()
                    && pubsub.subscribe(&channel).await.is_ok()
                {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
        });
    }

    fn read_node_message(&self, sink: &RequestSink, payload: &[u8]) {
        match serde_json::from_slice::<NodeMessage>(payload) {
            Ok(NodeMessage::Queued { id }) => self.inner.forwards.queued(id),
            Ok(NodeMessage::Requests { from, id, requests }) => {
                // Queued in the order they came: each task's first poll
                // asks for room in turn, and the queue hands it out in turn.
                let queued = sink(requests);
                let channel = format!("{}:sse", self.node_key(&from));
                let answer = serde_json::to_string(&NodeMessage::Queued { id }).unwrap_or_default();
                let broker = self.clone();
                self.inner.runtime.spawn(async move {
                    queued.await;
                    let Ok(mut redis) = broker.inner.current.commands() else {
                        return;
                    };
                    let _ = redis::cmd("PUBLISH")
                        .arg(channel)
                        .arg(answer)
                        .query_async::<i64>(&mut redis)
                        .await;
                });
            }
            Err(e) => tracing::warn!(error = %e, "an undecodable message for this node's streams"),
        }
    }
}
