//! Which nodes have subscribers on a topic (`{T}:nodes` SET, and each
//! node's `node:<id>:topics` index for reaping), so the app's backend is
//! told once when a topic gets its first subscriber anywhere in the
//! cluster, and once when it loses its last (`lua/occupancy.lua`).

use super::RedisBroker;
use crate::broker::{Broker, Told};

impl RedisBroker {
    /// Records this node's occupancy of `topic`, and tells it when that
    /// made the topic occupied (or vacant) cluster-wide, on the Redis
    /// thread as Redis answers, so one topic's tellings keep Redis's order.
    /// With Redis unreachable it is told anyway: perhaps by two nodes,
    /// rather than by none.
    pub(super) fn record_occupancy(&self, topic: &str, occupied: bool) {
        let told = Told::Occupancy {
            topic: topic.to_string(),
            occupied,
        };
        if !self.is_up() {
            return self.tell(told);
        }
        let node = self.inner.settings.node.to_string();
        let keys = [
            self.key(topic, "nodes"),
            format!("{}:topics", self.node_key(&node)),
        ];
        let topic = topic.to_string();
        let broker = self.clone();
        let recorded = self.run(async move {
            let mut conn = broker.inner.current.commands()?;
            let changed: redis::RedisResult<i64> = broker
                .inner
                .scripts
                .occupancy
                .key(&keys[0])
                .key(&keys[1])
                .arg(node)
                .arg(topic)
                .arg(if occupied { "1" } else { "0" })
                .invoke_async(&mut conn)
                .await;
            match changed {
                Ok(1) => broker.tell(told),
                Ok(_) => {}
                Err(e) => {
                    broker.tell(told);
                    return Err(e);
                }
            }
            Ok(())
        });
        // Driven to its end for its accounting (a failure marks Redis down).
        self.inner.runtime.spawn(async move {
            let _ = recorded.await;
        });
    }
}
