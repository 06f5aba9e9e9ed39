//! Topic permissions from a token's `realtime` claim.

use std::sync::{Arc, LazyLock};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The `realtime` claim as it appears in a token.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RealtimeClaim {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subscribe: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub publish: Option<Vec<String>>,
    /// Filters forced on table subscriptions, by table.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filters: Option<Map<String, Value>>,
}

/// What a connection may subscribe to and publish to. Connections hold it
/// behind an `Arc`: those allowed everything share one.
#[derive(Debug, Clone, PartialEq)]
pub struct Grants {
    subscribe: Patterns,
    publish: Patterns,
    pub forced_filters: Map<String, Value>,
}

/// `None`: everything (no `realtime` claim). `Some(list)`: only what a pattern covers.
#[derive(Debug, Clone, PartialEq)]
struct Patterns(Option<Vec<String>>);

impl Patterns {
    fn allows(&self, topic: &str) -> bool {
        match &self.0 {
            None => true,
            Some(patterns) => patterns.iter().any(|p| pattern_covers(p, topic)),
        }
    }
}

/// A pattern is a canonical topic name, or a prefix ending in `*`:
/// `chat/*` covers `chat/a` and `chat/a/b`, not `chat`.
pub fn pattern_covers(pattern: &str, topic: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => topic.len() > prefix.len() && topic.starts_with(prefix),
        None => pattern == topic,
    }
}

impl Grants {
    /// Everything allowed: open mode, or a token without a `realtime` claim.
    pub fn all() -> Arc<Self> {
        static ALL: LazyLock<Arc<Grants>> = LazyLock::new(|| {
            Arc::new(Grants {
                subscribe: Patterns(None),
                publish: Patterns(None),
                forced_filters: Map::new(),
            })
        });
        ALL.clone()
    }

    pub fn from_claim(claim: Option<&RealtimeClaim>) -> Arc<Self> {
        match claim {
            None => Self::all(),
            Some(c) => Arc::new(Grants {
                subscribe: Patterns(Some(c.subscribe.clone().unwrap_or_default())),
                publish: Patterns(Some(c.publish.clone().unwrap_or_default())),
                forced_filters: c.filters.clone().unwrap_or_default(),
            }),
        }
    }

    /// May subscribe to (and read the history of) a canonical topic.
    pub fn can_subscribe(&self, topic: &str) -> bool {
        self.subscribe.allows(topic)
    }

    pub fn can_publish(&self, topic: &str) -> bool {
        self.publish.allows(topic)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prefix_pattern_covers_deeper_topics_but_not_its_parent() {
        assert!(pattern_covers("chat/*", "chat/a"));
        assert!(pattern_covers("chat/*", "chat/a/b"));
        assert!(!pattern_covers("chat/*", "chat"));
        assert!(!pattern_covers("chat/*", "chat/"));
        assert!(!pattern_covers("chat/*", "chatter/a"));
        assert!(pattern_covers("*", "orders"));
        assert!(pattern_covers("orders", "orders"));
        assert!(!pattern_covers("orders", "orders2"));
    }

    #[test]
    fn without_the_claim_everything_is_allowed() {
        let grants = Grants::from_claim(None);
        assert!(grants.can_subscribe("x/y") && grants.can_publish("x/y"));
    }

    #[test]
    fn with_the_claim_a_missing_list_allows_nothing() {
        let claim = RealtimeClaim {
            subscribe: Some(vec!["chat/*".into()]),
            ..Default::default()
        };
        let grants = Grants::from_claim(Some(&claim));
        assert!(grants.can_subscribe("chat/a"));
        assert!(!grants.can_subscribe("news/a"));
        assert!(!grants.can_publish("chat/a"));
    }
}
