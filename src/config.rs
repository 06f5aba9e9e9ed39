//! Every setting of `realtide serve` and `realtide token`: a flag and an
//! environment variable each, with the defaults docs/protocol.md lists.

use std::time::Duration;

use clap::{Args, Parser, Subcommand};

/// The command line: `realtide [serve] [flags]` or `realtide token`. The
/// server's flags work without `serve` too (`realtide --port 4100`).
#[derive(Debug, Parser)]
#[command(
    name = "realtide",
    version,
    about = "A self-hosted realtime server",
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// The server's settings when no command is given.
    #[command(flatten)]
    pub serve: Box<Config>,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One human-readable line per event.
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// How table changes are captured on PostgreSQL (SQLite always uses triggers).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CaptureMode {
    /// Logical decoding when the server allows it (`wal_level = logical`
    /// and a role that may replicate), else triggers.
    Auto,
    /// Logical decoding through a replication slot; refuse to start without it.
    Logical,
    /// A trigger on each watched table.
    Triggers,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server (the default when no command is given).
    Serve(Box<Config>),
    /// Run two demo apps on the server: a live order dashboard (`/`) and a
    /// chat room with presence and a streamed answer (`/chat`). Takes the
    /// server's flags; its database is `./realtide-demo.db` unless
    /// `--database-url` names one.
    Demo(Box<Config>),
    /// Check the settings, the address, the database and Redis, without
    /// serving; exits 1 if anything is wrong.
    Check(Box<Config>),
    /// Print a token signed with the configured secret, for development.
    Token(TokenArgs),
    /// Manage table change capture in the database.
    #[command(subcommand)]
    Capture(CaptureCommand),
}

#[derive(Debug, Subcommand)]
pub enum CaptureCommand {
    /// Remove realtide's capture from the database: triggers, the
    /// publication and replication slot, and the change log's rows (with
    /// `--table`, that table's triggers and publication entry only). Stop
    /// realtide first: a running server installs capture again.
    Remove(CaptureRemoveArgs),
}

#[derive(Debug, Clone, Args)]
pub struct CaptureRemoveArgs {
    #[arg(
        long,
        env = "REALTIDE_DATABASE_URL",
        default_value = "sqlite://realtide.db"
    )]
    pub database_url: String,
    /// Only this table (`orders`, or `app.items` in another PostgreSQL schema).
    #[arg(long)]
    pub table: Option<String>,
    /// The schema of realtide's own tables (PostgreSQL), as given to the server.
    #[arg(long, env = "REALTIDE_SCHEMA", default_value = crate::db::DEFAULT_SCHEMA,
          value_parser = parse_schema)]
    pub schema: String,
}

/// A schema name: a plain identifier, so it needs no quoting anywhere.
fn parse_schema(name: &str) -> Result<String, String> {
    let mut chars = name.chars();
    let plain = chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && name.len() <= 63;
    if plain {
        Ok(name.to_string())
    } else {
        Err(format!(
            "`{name}` is not a plain schema name (lowercase letters, digits and `_`, at most 63)"
        ))
    }
}

/// The server's settings.
#[derive(Debug, Clone, Args)]
pub struct Config {
    /// Address to listen on.
    #[arg(long, env = "REALTIDE_BIND", default_value = "127.0.0.1:4000")]
    pub bind: String,

    /// Port to listen on, replacing the port of `--bind`.
    #[arg(long, env = "REALTIDE_PORT")]
    pub port: Option<u16>,

    /// Log lines as `text` or `json`; the level comes from `--log-level`.
    #[arg(long, env = "REALTIDE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// `error`, `warn`, `info` (connections opened, refused and closed),
    /// `debug`, or a `tracing` filter such as `realtide=debug`. `RUST_LOG`,
    /// when set, wins.
    #[arg(long, env = "REALTIDE_LOG_LEVEL", default_value = "info")]
    pub log_level: String,

    /// `sqlite://relative.db`, `sqlite:///abs/path.db`, a bare path, or `postgres://...`.
    #[arg(
        long,
        env = "REALTIDE_DATABASE_URL",
        default_value = "sqlite://realtide.db"
    )]
    pub database_url: String,

    /// Tables served as table topics, a comma list: `*` (every non-reserved
    /// table of the app's schema), `orders`, `app.items` (PostgreSQL: a table
    /// of another schema, topic `items`) or `stock=app.items` (topic `stock`).
    #[arg(long, env = "REALTIDE_TABLES", default_value = "*")]
    pub tables: String,

    /// The one project id this server answers for.
    #[arg(long, env = "REALTIDE_PROJECT_ID", default_value = "realtide")]
    pub project_id: String,

    /// How often the change tracker checks for commits, in ms (at most 200).
    /// A check costs no read of the change log; the log itself is read when
    /// a check sees a commit, and at least every 200 ms.
    #[arg(long, env = "REALTIDE_POLL_INTERVAL_MS", default_value_t = 10,
          value_parser = clap::value_parser!(u64).range(1..=200))]
    pub poll_interval_ms: u64,

    /// The PostgreSQL schema of realtide's own tables (its change log,
    /// history, metadata and migrations), created if missing; tables an
    /// earlier version made in the app's schema move there at start.
    #[arg(long, env = "REALTIDE_SCHEMA", default_value = crate::db::DEFAULT_SCHEMA,
          value_parser = parse_schema)]
    pub schema: String,

    /// How table changes are captured on PostgreSQL: `auto` uses logical
    /// decoding where the server allows it, else triggers.
    #[arg(long, env = "REALTIDE_CAPTURE", value_enum, default_value_t = CaptureMode::Auto)]
    pub capture: CaptureMode,

    /// Close a connection from which nothing arrived for this long.
    #[arg(long, env = "REALTIDE_IDLE_TIMEOUT_MS", default_value_t = 75_000,
          value_parser = clap::value_parser!(u64).range(300..))]
    pub idle_timeout_ms: u64,

    /// Largest whole client message in bytes; larger ones close the connection with 1009.
    #[arg(long, env = "REALTIDE_MAX_FRAME_BYTES", default_value_t = 65_536,
          value_parser = clap::value_parser!(u64).range(64..=(64 * 1024 * 1024)))]
    pub max_frame_bytes: u64,

    /// Bytes that may wait unsent for one client before it is closed with 4008.
    #[arg(long, env = "REALTIDE_MAX_PENDING_BYTES", default_value_t = 1_048_576,
          value_parser = clap::value_parser!(u64).range(1024..))]
    pub max_pending_bytes: u64,

    /// Publishes a second per connection (bursts of twice that).
    #[arg(long, env = "REALTIDE_MAX_PUBLISH_RATE", default_value_t = 100,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_publish_rate: u32,

    /// Events a pub/sub topic keeps for resuming clients.
    #[arg(long, env = "REALTIDE_REPLAY_SIZE", default_value_t = 1000)]
    pub replay_size: usize,

    /// Topics with at least this many subscribers send each batch from two
    /// threads (one event to 10,000 subscribers is ~90 ms of `send`s).
    #[arg(long, env = "REALTIDE_FANOUT_SPLIT_AT", default_value_t = 4096,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(2..))]
    pub fanout_split_at: usize,

    /// Topics with at least this many subscribers also send each batch from
    /// two threads while their sends keep one thread over 60% busy.
    #[arg(long, env = "REALTIDE_FANOUT_BUSY_SPLIT_AT", default_value_t = 256,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(2..))]
    pub fanout_busy_split_at: usize,

    /// Seconds a pub/sub topic keeps events for resuming clients.
    #[arg(long, env = "REALTIDE_REPLAY_TTL_S", default_value_t = 600)]
    pub replay_ttl_s: u64,

    /// Seconds the change log keeps table changes (used by the change tracker).
    #[arg(long, env = "REALTIDE_CHANGES_RETENTION_S", default_value_t = 86_400)]
    pub changes_retention_s: u64,

    /// Stored messages a pub/sub topic keeps (the oldest go first).
    #[arg(long, env = "REALTIDE_HISTORY_MAX_MESSAGES", default_value_t = 10_000,
          value_parser = clap::value_parser!(i64).range(1..))]
    pub history_max_messages: i64,

    /// Seconds a stored message is kept.
    #[arg(long, env = "REALTIDE_HISTORY_MAX_AGE_S", default_value_t = 30 * 86_400,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub history_max_age_s: u64,

    /// HS256 secret; without it the server runs in open mode.
    #[arg(long, env = "REALTIDE_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,

    /// Bearer key for emit; without it emit answers loopback peers only.
    #[arg(long, env = "REALTIDE_SERVER_KEY", hide_env_values = true)]
    pub server_key: Option<String>,

    /// Bearer key for the admin endpoints; without it they answer loopback peers only.
    #[arg(long, env = "REALTIDE_ADMIN_KEY", hide_env_values = true)]
    pub admin_key: Option<String>,

    /// Rows per `snapshot` frame of a `snapshot: true` subscribe.
    #[arg(long, env = "REALTIDE_SNAPSHOT_PAGE_ROWS", default_value_t = 500,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub snapshot_page_rows: usize,

    /// Most matching rows a snapshot sends; more refuse the subscribe
    /// (`too_large`: narrow the filter).
    #[arg(long, env = "REALTIDE_MAX_SNAPSHOT_ROWS", default_value_t = 10_000,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub max_snapshot_rows: usize,

    /// Topics one connection may subscribe to at once; more are refused (`too_large`).
    #[arg(long, env = "REALTIDE_MAX_SUBSCRIPTIONS_PER_CONNECTION", default_value_t = 1000,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub max_subscriptions_per_connection: usize,

    /// Topics on which one connection may track presence at once; more are
    /// refused (`too_large`).
    #[arg(long, env = "REALTIDE_MAX_PRESENCE_PER_CONNECTION", default_value_t = 100,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub max_presence_per_connection: usize,

    /// Live topics on this node; a subscribe, publish or emit that would
    /// start one more is refused (`unavailable`, HTTP 503) until idle ones stop.
    #[arg(long, env = "REALTIDE_MAX_TOPICS", default_value_t = 50_000,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub max_topics: usize,

    /// Browser origins allowed to read the client-facing HTTP endpoints
    /// (`/realtide.js`, history, health): `*`, or a comma list. Default:
    /// `*` in open mode, none when a JWT secret is set. Admin, emit and
    /// stream never answer browsers of another origin.
    #[arg(long, env = "REALTIDE_CORS_ORIGINS")]
    pub cors_origins: Option<String>,

    /// Project API keys (a comma list) the SDKs send as `apiKey`; without
    /// them a key is accepted and ignored, with them an unknown key is 401.
    #[arg(long, env = "REALTIDE_API_KEYS", hide_env_values = true)]
    pub api_keys: Option<String>,

    /// What a connection with a known API key and no token may do: a
    /// `realtime` claim object (default: everything).
    #[arg(long, env = "REALTIDE_API_KEY_GRANTS")]
    pub api_key_grants: Option<String>,

    /// The `aud` tokens must carry; without it a token's `aud` is not checked.
    #[arg(long, env = "REALTIDE_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,

    /// Redis shared by several nodes (`redis://HOST:PORT[/DB]`); without it
    /// this process is the whole server (docs/scaling.md).
    /// (Empty counts as unset, so an environment can switch to Sentinel.)
    #[arg(long, env = "REALTIDE_REDIS_URL")]
    pub redis_url: Option<String>,

    /// Redis Sentinels (`host:port,host:port`) that name the cluster's
    /// Redis master, instead of `--redis-url`: the nodes follow the master
    /// when Sentinel promotes a replica (docs/scaling.md).
    #[arg(long, env = "REALTIDE_REDIS_SENTINELS", value_delimiter = ',')]
    pub redis_sentinels: Vec<String>,

    /// The master's name in Sentinel's configuration.
    #[arg(long, env = "REALTIDE_REDIS_MASTER_NAME", default_value = "mymaster")]
    pub redis_master_name: String,

    /// On SIGTERM, how long `/readyz` answers 503 before clients are closed
    /// with 1012, so a load balancer stops sending new connections first
    /// (default: 2000 with `--redis-url`, 0 alone).
    #[arg(long, env = "REALTIDE_DRAIN_MS")]
    pub drain_ms: Option<u64>,

    /// Prefix of every Redis key and channel, so several clusters can share
    /// one Redis (default: `rt:<project-id>:`).
    #[arg(long, env = "REALTIDE_REDIS_PREFIX")]
    pub redis_prefix: Option<String>,

    /// This node's id, in `welcome.node` and the cluster (default: random).
    #[arg(long, env = "REALTIDE_NODE_ID",
          value_parser = clap::builder::NonEmptyStringValueParser::new())]
    pub node_id: Option<String>,

    /// A node silent this long is dead: its presence entries leave.
    #[arg(long, env = "REALTIDE_NODE_TIMEOUT_MS", default_value_t = 15_000,
          value_parser = clap::value_parser!(u64).range(500..))]
    pub node_timeout_ms: u64,

    /// Worker threads for HTTP and WebSocket sessions (default: one per core).
    #[arg(long, env = "REALTIDE_WORKERS")]
    pub workers: Option<usize>,

    /// The app's backend decides connections that bring no token and no
    /// API key: realtide POSTs each to this URL (docs/backend.md).
    #[arg(long, env = "REALTIDE_PROXY_CONNECT_URL")]
    pub proxy_connect_url: Option<String>,

    /// The app's backend allows each subscribe (and may add a forced filter).
    #[arg(long, env = "REALTIDE_PROXY_SUBSCRIBE_URL")]
    pub proxy_subscribe_url: Option<String>,

    /// The app's backend allows, rewrites or refuses each client publish.
    #[arg(long, env = "REALTIDE_PROXY_PUBLISH_URL")]
    pub proxy_publish_url: Option<String>,

    /// How long a proxy call may take before the request fails `unavailable`.
    #[arg(long, env = "REALTIDE_PROXY_TIMEOUT_MS", default_value_t = 3000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub proxy_timeout_ms: u64,

    /// The request headers the connect proxy is shown (a comma list).
    #[arg(
        long,
        env = "REALTIDE_PROXY_HEADERS",
        default_value = "Cookie,Authorization,User-Agent,X-Forwarded-For"
    )]
    pub proxy_headers: String,

    /// Where webhooks are POSTed (docs/backend.md).
    #[arg(long, env = "REALTIDE_WEBHOOK_URL")]
    pub webhook_url: Option<String>,

    /// Signs webhooks and proxy calls (HMAC-SHA256); at least 32 bytes,
    /// required with `--webhook-url`.
    #[arg(long, env = "REALTIDE_WEBHOOK_SECRET", hide_env_values = true)]
    pub webhook_secret: Option<String>,

    /// The webhook types to send (a comma list; default: all).
    #[arg(long, env = "REALTIDE_WEBHOOK_EVENTS")]
    pub webhook_events: Option<String>,

    /// How long an undelivered webhook is retried before it is dropped.
    #[arg(long, env = "REALTIDE_WEBHOOK_RETRY_S", default_value_t = 86_400)]
    pub webhook_retry_s: u64,
}

impl Config {
    /// How long a SIGTERM drains before clients are closed (`--drain-ms`).
    pub fn drain(&self) -> Duration {
        let default = if self.redis_target().is_some() {
            2000
        } else {
            0
        };
        Duration::from_millis(self.drain_ms.unwrap_or(default))
    }

    /// Where the cluster's Redis is, when this node is one of several.
    pub fn redis_target(&self) -> Option<crate::broker::redis::RedisTarget> {
        use crate::broker::redis::RedisTarget;
        let url = self.redis_url.as_ref().filter(|url| !url.is_empty());
        let sentinels: &[String] = match self.redis_sentinels.as_slice() {
            [only] if only.is_empty() => &[],
            sentinels => sentinels,
        };
        match (url, sentinels) {
            (Some(url), _) => Some(RedisTarget::Url(url.clone())),
            (None, []) => None,
            (None, sentinels) => Some(RedisTarget::Sentinel {
                sentinels: sentinels.to_vec(),
                master: self.redis_master_name.clone(),
            }),
        }
    }

    /// The address to listen on: `--bind`, with `--port` in place of its port.
    pub fn listen_address(&self) -> String {
        match self.port {
            None => self.bind.clone(),
            Some(port) => match self.bind.rsplit_once(':') {
                Some((host, _)) => format!("{host}:{port}"),
                None => format!("{}:{port}", self.bind),
            },
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        // unwrap: the defaults above are valid by construction.
        let cli = Cli::try_parse_from(["realtide", "serve"]).unwrap();
        match cli.command {
            Some(Command::Serve(config)) => *config,
            _ => unreachable!("`serve` parses to Command::Serve"),
        }
    }
}

/// A url as logs may show it: the password of `scheme://user:password@host`
/// becomes `***`.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let (authority, tail) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    match authority.rsplit_once('@') {
        Some((user_info, host)) => {
            let user = user_info
                .split_once(':')
                .map_or(user_info, |(user, _)| user);
            let hidden = if user_info.contains(':') { ":***" } else { "" };
            format!("{scheme}://{user}{hidden}@{host}{tail}")
        }
        None => url.to_string(),
    }
}

/// Shortest JWT secret accepted: HS256 with a shorter key can be brute-forced.
pub const MIN_JWT_SECRET_BYTES: usize = 32;

/// Refuses a JWT secret too short to keep tokens from being forged.
pub fn check_jwt_secret(secret: &str) -> Result<(), String> {
    if secret.len() < MIN_JWT_SECRET_BYTES {
        return Err(format!(
            "the JWT secret (--jwt-secret, REALTIDE_JWT_SECRET) is {} bytes; it must be at least \
             {MIN_JWT_SECRET_BYTES} random bytes (e.g. `openssl rand -base64 48`), or unset for open mode",
            secret.len()
        ));
    }
    Ok(())
}

impl Config {
    /// Refuses settings that would run the server less safely than it looks:
    /// a short JWT secret, an empty server or admin key.
    pub fn check(&self) -> Result<(), String> {
        if let Some(secret) = &self.jwt_secret {
            check_jwt_secret(secret)?;
        }
        let sentinels = self.redis_sentinels.iter().any(|s| !s.is_empty());
        if self.redis_url.as_ref().is_some_and(|url| !url.is_empty()) && sentinels {
            return Err("use --redis-url or --redis-sentinels, not both".into());
        }
        if let Some(target) = self.redis_target() {
            target.check()?;
        }
        if let Some(node) = &self.node_id {
            let fits = (1..=64).contains(&node.len())
                && node
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
            if !fits {
                return Err(format!(
                    "--node-id `{node}`: use 1 to 64 letters, digits, `-`, `_` or `.`"
                ));
            }
        }
        crate::backend::check_settings(self)?;
        for (key, flag) in [
            (&self.server_key, "--server-key"),
            (&self.admin_key, "--admin-key"),
        ] {
            if key.as_deref().is_some_and(|k| k.trim().is_empty()) {
                return Err(format!("{flag} is set but empty: give a key, or unset it"));
            }
        }
        Ok(())
    }

    /// The browser origins of `--cors-origins`, or its default: `None`
    /// for any origin, else the list (empty: none).
    pub fn cors_origins(&self) -> Option<Vec<String>> {
        match self.cors_origins.as_deref().map(str::trim) {
            Some("*") => None,
            Some(list) => Some(
                list.split(',')
                    .map(str::trim)
                    .filter(|o| !o.is_empty())
                    .map(str::to_owned)
                    .collect(),
            ),
            None if self.jwt_secret.is_none() => None,
            None => Some(Vec::new()),
        }
    }

    pub fn idle_timeout(&self) -> Duration {
        Duration::from_millis(self.idle_timeout_ms)
    }

    pub fn replay_ttl(&self) -> Duration {
        Duration::from_secs(self.replay_ttl_s)
    }
}

/// `realtide token`: sign a development token.
#[derive(Debug, Clone, Args)]
pub struct TokenArgs {
    /// The identity (`sub` claim).
    #[arg(long)]
    pub sub: String,

    /// Lifetime, e.g. `1h`, `30m`, `90s`.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    pub ttl: Duration,

    /// A JSON object whose keys are added to the claims.
    #[arg(long)]
    pub claims: Option<String>,

    #[arg(long, env = "REALTIDE_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_ids_are_plain_names() {
        let with = |id: &str| Config {
            node_id: Some(id.to_string()),
            ..Config::default()
        };
        assert!(with("node-1.eu_west").check().is_ok());
        for bad in ["", "a b", "<script>", "n\u{e9}", &"x".repeat(65)] {
            assert!(with(bad).check().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn port_replaces_the_port_of_bind() {
        let with = |bind: &str, port| Config {
            bind: bind.to_string(),
            port,
            ..Config::default()
        };
        assert_eq!(
            with("0.0.0.0:4000", Some(80)).listen_address(),
            "0.0.0.0:80"
        );
        assert_eq!(with("[::1]:4000", Some(81)).listen_address(), "[::1]:81");
        assert_eq!(
            with("127.0.0.1:4000", None).listen_address(),
            "127.0.0.1:4000"
        );
    }
}
