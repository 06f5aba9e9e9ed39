//! The app's backend in the loop (PROTOCOL §10): proxies through which it
//! decides (a connection without credentials, a subscribe, a publish) and,
//! later, webhooks that tell it what happened. [`Backend`] holds the HTTP
//! client and the settings every call shares; `proxy` makes the calls and
//! reads the answers; `signing` signs their bodies.

pub mod metrics;
pub mod proxy;
pub mod signing;
pub mod webhooks;

use std::time::Duration;

use crate::config::Config;

pub use self::metrics::BackendMetrics;
use self::signing::Signer;

/// Shortest `--webhook-secret` accepted.
pub const MIN_SECRET_BYTES: usize = 32;

/// Refuses backend settings that would not work or not be safe: a webhook
/// URL without a secret, a short secret, a URL that is not `http://`.
pub fn check_settings(config: &Config) -> Result<(), String> {
    if let Some(secret) = &config.webhook_secret
        && secret.len() < MIN_SECRET_BYTES
    {
        return Err(format!(
            "--webhook-secret is {} bytes; it must be at least {MIN_SECRET_BYTES} random bytes \
             (e.g. `openssl rand -base64 48`)",
            secret.len()
        ));
    }
    if config.webhook_url.is_some() && config.webhook_secret.is_none() {
        return Err(
            "--webhook-url needs --webhook-secret, so the backend can tell realtide's calls \
             from anyone's"
                .into(),
        );
    }
    for (url, flag) in [
        (&config.proxy_connect_url, "--proxy-connect-url"),
        (&config.proxy_subscribe_url, "--proxy-subscribe-url"),
        (&config.proxy_publish_url, "--proxy-publish-url"),
        (&config.webhook_url, "--webhook-url"),
    ] {
        let Some(url) = url else { continue };
        if url.starts_with("https://") {
            return Err(format!(
                "{flag} `{url}`: this build calls the backend over plain http:// only \
                 (put it on a private network, or a local TLS proxy in between)"
            ));
        }
        if !url.starts_with("http://") || reqwest::Url::parse(url).is_err() {
            return Err(format!("{flag} `{url}` is not an http:// URL"));
        }
    }
    Ok(())
}

/// What every call to the app's backend shares.
pub struct Backend {
    client: reqwest::Client,
    pub(crate) connect_url: Option<String>,
    pub(crate) subscribe_url: Option<String>,
    pub(crate) publish_url: Option<String>,
    /// The request headers the connect proxy is shown, lower case.
    forwarded_headers: Vec<String>,
    timeout: Duration,
    signer: Option<Signer>,
    metrics: BackendMetrics,
}

impl Backend {
    pub fn new(config: &Config, metrics: BackendMetrics) -> Backend {
        let forwarded_headers = config
            .proxy_headers
            .split(',')
            .map(|h| h.trim().to_ascii_lowercase())
            .filter(|h| !h.is_empty())
            .collect();
        Backend {
            // Redirects are not followed: a backend answers where it is asked.
            client: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap_or_default(),
            connect_url: config.proxy_connect_url.clone(),
            subscribe_url: config.proxy_subscribe_url.clone(),
            publish_url: config.proxy_publish_url.clone(),
            forwarded_headers,
            timeout: Duration::from_millis(config.proxy_timeout_ms),
            signer: config.webhook_secret.as_deref().map(Signer::new),
            metrics,
        }
    }

    /// Whether connections without credentials go to the backend.
    pub fn decides_connections(&self) -> bool {
        self.connect_url.is_some()
    }

    pub fn decides_subscribes(&self) -> bool {
        self.subscribe_url.is_some()
    }

    pub fn decides_publishes(&self) -> bool {
        self.publish_url.is_some()
    }
}
