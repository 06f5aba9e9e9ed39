//! Which nodes have subscribers on a topic (`{T}:nodes` SET, and each
//! node's `node:<id>:topics` index for reaping), so the app's backend is
//! told once when a topic gets its first subscriber anywhere in the
//! cluster, and once when it loses its last (`lua/occupancy.lua`).

use super::RedisBroker;
use crate::broker::BrokerFuture;

impl RedisBroker {
    pub(super) fn record_occupancy(&self, topic: &str, occupied: bool) -> BrokerFuture<bool> {
        let node = self.inner.settings.node.to_string();
        let keys = [
            self.key(topic, "nodes"),
            format!("{}:topics", self.node_key(&node)),
        ];
        let topic = topic.to_string();
        let broker = self.clone();
        self.run(async move {
            let mut conn = broker.inner.commands.clone();
            let changed: i64 = broker
                .inner
                .scripts
                .occupancy
                .key(&keys[0])
                .key(&keys[1])
                .arg(node)
                .arg(topic)
                .arg(if occupied { "1" } else { "0" })
                .invoke_async(&mut conn)
                .await?;
            Ok(changed == 1)
        })
    }
}
