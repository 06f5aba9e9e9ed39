//! Event streams across nodes (PROTOCOL §11): a stream's POSTed requests
//! may reach any node, and go to the node holding the stream.
//!
//! Keys: `stream:<conn>` STRING `<node>\n<sha1 of the secret>`;
//! `node:<id>:streams` SET of the node's streams, reaped with the node.
//! Channel `node:<id>:sse` carries the requests forwarded to that node's
//! streams (a [`ForwardedRequests`] as JSON).

use super::RedisBroker;
use crate::broker::{BrokerFuture, ForwardedRequests, RequestSink};

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
            let mut redis = broker.inner.commands.clone();
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
        let mut redis = self.inner.commands.clone();
        self.inner.runtime.spawn(async move {
            // A key left behind (Redis unreachable now) goes when a forward
            // finds no node taking it, or with this node at its reaping.
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
        let payload = ForwardedRequests {
            conn: conn.to_string(),
            requests,
        };
        let payload = serde_json::to_string(&payload).unwrap_or_default();
        let (prefix, secret) = (self.inner.prefix.clone(), secret.to_string());
        let broker = self.clone();
        self.run(async move {
            let mut redis = broker.inner.commands.clone();
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
        })
    }

    pub(super) fn listen_for_forwarded(&self, sink: RequestSink) {
        let channel = self.forwarded_channel();
        self.inner.routes.set_forwarded(channel.clone(), sink);
        let mut pubsub = self.inner.pubsub.clone();
        self.inner.runtime.spawn(async move {
            // Retried until it holds: the pub/sub link resubscribes by
            // itself after a reconnect, but only to what it once had.
            while pubsub.subscribe(&channel).await.is_err() {
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
        });
    }
}

/// Decodes one forwarded message and hands it over.
pub(super) fn hand_over(sink: &RequestSink, payload: &[u8]) {
    match serde_json::from_slice::<ForwardedRequests>(payload) {
        Ok(forwarded) => sink(forwarded),
        Err(e) => tracing::warn!(error = %e, "an undecodable forwarded request"),
    }
}
