//! Where the Redis master is, and this node's two connections to it: a
//! fixed `--redis-url`, or the master Redis Sentinel names
//! (`--redis-sentinels`, `--redis-master-name`), followed when Sentinel
//! promotes a replica.
//!
//! Following a promotion: a watcher subscribes to `+switch-master` on one
//! Sentinel after another, and the supervisor asks Sentinel again whenever
//! a beat fails (the watcher may have missed the message; an old master
//! that comes back as a replica refuses writes). When the answer is a
//! different address, both connections are replaced: the new pub/sub
//! connection subscribes to every joined topic's channel before it is put
//! in place, then the supervisor loads the scripts and has every topic
//! resync, which is where a master that lacks acked events is noticed
//! (`join.lua`: a topic whose seq went back starts a new epoch).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, IntoConnectionInfo, ProtocolVersion, PushInfo, RedisResult};
use tokio::sync::mpsc;

use super::wire::route;
use super::{CONNECT_TIMEOUT, RESPONSE_TIMEOUT, RedisBroker, Routes};

/// How this node finds the Redis master.
#[derive(Debug, Clone)]
pub enum RedisTarget {
    /// One Redis, always at this URL.
    Url(String),
    /// Whichever master these Sentinels (`host:port`) name `master`.
    Sentinel {
        sentinels: Vec<String>,
        master: String,
    },
}

impl RedisTarget {
    /// For logs: the URL without its password, or the Sentinels and name.
    pub fn describe(&self) -> String {
        match self {
            RedisTarget::Url(url) => crate::config::redact_url(url),
            RedisTarget::Sentinel { sentinels, master } => {
                format!("master `{master}` of Sentinel {}", sentinels.join(","))
            }
        }
    }

    /// Refuses what cannot work before anything connects.
    pub fn check(&self) -> Result<(), String> {
        match self {
            RedisTarget::Url(url) => url
                .as_str()
                .into_connection_info()
                .map(|_| ())
                .map_err(|e| format!("--redis-url `{url}` is not a Redis URL: {e}")),
            RedisTarget::Sentinel { sentinels, master } => {
                if master.is_empty() {
                    return Err("--redis-master-name must not be empty".into());
                }
                if sentinels.is_empty() {
                    return Err("--redis-sentinels names no Sentinel".into());
                }
                for sentinel in sentinels {
                    sentinel_url(sentinel)
                        .into_connection_info()
                        .map_err(|e| format!("--redis-sentinels `{sentinel}`: {e}"))?;
                }
                Ok(())
            }
        }
    }

    /// A client for the master as of now: the URL, or Sentinel's answer
    /// (which redis-rs checks by asking the master its ROLE).
    pub(super) async fn resolve(&self) -> RedisResult<Client> {
        match self {
            RedisTarget::Url(url) => Client::open(url.as_str()),
            RedisTarget::Sentinel { master, .. } => {
                let mut sentinel = redis::sentinel::Sentinel::build(self.sentinel_urls())?;
                let asked = sentinel.async_master_for(master, None);
                match tokio::time::timeout(RESPONSE_TIMEOUT * 2, asked).await {
                    Ok(client) => client,
                    Err(_) => Err(redis::RedisError::from((
                        redis::ErrorKind::Io,
                        "no Sentinel named the master in time",
                    ))),
                }
            }
        }
    }

    /// The Sentinels as URLs; none for a fixed URL.
    pub fn sentinel_urls(&self) -> Vec<String> {
        match self {
            RedisTarget::Url(_) => Vec::new(),
            RedisTarget::Sentinel { sentinels, .. } => {
                sentinels.iter().map(|s| sentinel_url(s)).collect()
            }
        }
    }

    fn is_sentinel(&self) -> bool {
        matches!(self, RedisTarget::Sentinel { .. })
    }
}

/// `host:port` (or a URL) of a Sentinel as a URL.
fn sentinel_url(sentinel: &str) -> String {
    match sentinel.contains("://") {
        true => sentinel.to_string(),
        false => format!("redis://{sentinel}"),
    }
}

/// The two connections to one master.
pub(super) struct Connections {
    /// Multiplexed, for commands and scripts.
    pub(super) commands: ConnectionManager,
    /// RESP3, for the topics' channels; its pushes go to [`route`].
    pub(super) pubsub: ConnectionManager,
    /// `host:port` of the master they reach.
    pub(super) address: String,
}

/// What every pub/sub connection hands its pushes to.
#[derive(Clone)]
pub(super) struct PushTarget {
    pub(super) routes: Arc<Routes>,
    pub(super) lost: mpsc::UnboundedSender<()>,
}

impl Connections {
    /// Connections to `client`'s Redis, made lazily (they connect on first
    /// use, and reconnect by themselves to the same address).
    pub(super) fn open(client: Client, pushes: PushTarget) -> RedisResult<Connections> {
        let info = client.get_connection_info().clone();
        let address = info.addr().to_string();
        let resp3 = info
            .redis_settings()
            .clone()
            .set_protocol(ProtocolVersion::RESP3);
        let resp3_client = Client::open(info.set_redis_settings(resp3))?;
        let config = || {
            ConnectionManagerConfig::new()
                .set_response_timeout(Some(RESPONSE_TIMEOUT))
                .set_connection_timeout(Some(CONNECT_TIMEOUT))
                .set_number_of_retries(1)
                .set_max_delay(Duration::from_millis(500))
        };
        let pubsub_config = config()
            .set_push_sender(move |push: PushInfo| {
                route(&pushes.routes, &pushes.lost, push);
                Ok::<(), redis::aio::SendError>(())
            })
            .set_automatic_resubscription();
        Ok(Connections {
            commands: ConnectionManager::new_lazy_with_config(resp3_client.clone(), config())?,
            pubsub: ConnectionManager::new_lazy_with_config(resp3_client, pubsub_config)?,
            address,
        })
    }
}

/// The connections in use, replaced whole when the master moves; none
/// while Sentinel has not yet named a master.
#[derive(Default)]
pub(super) struct Current(Mutex<Option<Connections>>);

impl Current {
    pub(super) fn new(connections: Option<Connections>) -> Current {
        Current(Mutex::new(connections))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Connections>> {
        // Each critical section is one clone or one replacement.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// One of the connections, cloned (the other is not).
    fn pick(
        &self,
        which: fn(&Connections) -> &ConnectionManager,
    ) -> RedisResult<ConnectionManager> {
        self.lock()
            .as_ref()
            .map(|c| which(c).clone())
            .ok_or_else(|| {
                redis::RedisError::from((redis::ErrorKind::Io, "no Redis master is known yet"))
            })
    }

    /// The multiplexed connection for commands and scripts.
    pub(super) fn commands(&self) -> RedisResult<ConnectionManager> {
        self.pick(|c| &c.commands)
    }

    /// The pub/sub connection.
    pub(super) fn pubsub(&self) -> RedisResult<ConnectionManager> {
        self.pick(|c| &c.pubsub)
    }

    /// `host:port` of the master in use; empty when none is known.
    pub(super) fn address(&self) -> String {
        self.lock()
            .as_ref()
            .map(|c| c.address.clone())
            .unwrap_or_default()
    }

    fn replace(&self, connections: Connections) {
        *self.lock() = Some(connections);
    }
}

impl RedisBroker {
    /// Asks where the master is now and, when it moved, connects there.
    /// Answers whether the connections were replaced (the caller then
    /// loads the scripts and resyncs every topic).
    pub(super) async fn follow_master(&self) -> bool {
        let target = &self.inner.settings.target;
        if !target.is_sentinel() {
            return false;
        }
        let client = match target.resolve().await {
            Ok(client) => client,
            Err(e) => {
                self.inner.link.still_down(Some(&e));
                return false;
            }
        };
        let address = client.get_connection_info().addr().to_string();
        if address == self.inner.current.address() {
            return false;
        }
        let connections = match Connections::open(client, self.inner.pushes.clone()) {
            Ok(connections) => connections,
            Err(e) => {
                self.inner.link.still_down(Some(&e));
                return false;
            }
        };
        // Every joined topic's channel (and this node's stream channel)
        // before the connection is used, so no event is routed nowhere.
        let mut channels: Vec<String> = self.inner.routes.lock().keys().cloned().collect();
        if let Some((streams, _)) = self.inner.routes.streams.get() {
            channels.push(streams.clone());
        }
        let mut pubsub = connections.pubsub.clone();
        if !channels.is_empty()
            && let Err(e) = pubsub.subscribe(&channels).await
        {
            self.inner.link.still_down(Some(&e));
            return false;
        }
        match self.inner.current.address().as_str() {
            "" => tracing::info!(master = %address, "Sentinel names the Redis master"),
            from => tracing::warn!(
                from,
                to = %address,
                "Sentinel names a new Redis master; following it"
            ),
        }
        self.inner.link.set_up(false);
        self.inner.current.replace(connections);
        true
    }

    /// Listens for `+switch-master` on one Sentinel after another and
    /// wakes the supervisor when this node's master is switched.
    pub(super) async fn watch_sentinels(self, switched: mpsc::UnboundedSender<()>) {
        let RedisTarget::Sentinel { sentinels, master } = self.inner.settings.target.clone() else {
            return;
        };
        for sentinel in sentinels.iter().cycle() {
            if switched.is_closed() {
                return;
            }
            if let Err(e) = watch_one(&sentinel_url(sentinel), &master, &switched).await {
                tracing::debug!(%sentinel, error = %e, "Sentinel watch ended");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// Follows one Sentinel's `+switch-master` until its connection ends.
async fn watch_one(
    url: &str,
    master: &str,
    switched: &mpsc::UnboundedSender<()>,
) -> RedisResult<()> {
    let client = Client::open(url)?;
    let connecting = client.get_async_pubsub();
    let mut pubsub = tokio::time::timeout(CONNECT_TIMEOUT, connecting)
        .await
        .map_err(|_| redis::RedisError::from((redis::ErrorKind::Io, "connect timed out")))??;
    pubsub.subscribe("+switch-master").await?;
    // A switch may have happened while no Sentinel was watched.
    let _ = switched.send(());
    let mut messages = pubsub.on_message();
    while let Some(message) = messages.next().await {
        let text: String = message.get_payload().unwrap_or_default();
        // `<master name> <old ip> <old port> <new ip> <new port>`
        if text.split(' ').next() == Some(master) {
            let _ = switched.send(());
        }
    }
    Ok(())
}
