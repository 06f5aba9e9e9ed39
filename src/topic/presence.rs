//! Presence: who is on a topic and with what state. One key per identity (the
//! user id, or the connection id when anonymous) and one entry per connection
//! under it, so several tabs of one user are several entries. A plain struct,
//! owned by the topic actor.

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

use crate::outbox::messages::ConnId;

#[derive(Debug, Clone, PartialEq)]
struct Entry {
    /// The connection, when it is on this node and tracked here directly
    /// (a cluster's topics mirror every entry by its wire id instead).
    conn: Option<ConnId>,
    /// The connection's id as clients see it.
    wire_conn: String,
    state: Map<String, Value>,
}

#[derive(Debug, Default)]
pub struct Presence {
    /// Boxed while anyone is present, and gone when no one is: most topics
    /// never track presence, and the box keeps them at one pointer.
    #[expect(
        clippy::box_collection,
        reason = "one pointer instead of three while empty"
    )]
    by_key: Option<Box<BTreeMap<String, Vec<Entry>>>>,
}

/// The `data` of a `presence:join` or `presence:leave` event.
pub fn change_data(key: &str, wire_conn: &str, state: &Map<String, Value>) -> Value {
    json!({"key": key, "conn": wire_conn, "state": state})
}

impl Presence {
    /// Adds or replaces a connection's entry; returns the join event's data.
    pub fn track(
        &mut self,
        key: &str,
        conn: ConnId,
        wire_conn: &str,
        state: Map<String, Value>,
    ) -> Value {
        // A connection tracks under one key; drop any entry it had.
        self.remove(conn);
        let data = change_data(key, wire_conn, &state);
        let by_key = self.by_key.get_or_insert_default();
        by_key.entry(key.to_string()).or_default().push(Entry {
            conn: Some(conn),
            wire_conn: wire_conn.to_string(),
            state,
        });
        data
    }

    /// Adds or replaces an entry known by its wire id (a cluster's mirror);
    /// returns the join event's data.
    pub fn track_wire(&mut self, key: &str, wire_conn: &str, state: Map<String, Value>) -> Value {
        self.remove_wire(wire_conn);
        let data = change_data(key, wire_conn, &state);
        let by_key = self.by_key.get_or_insert_default();
        by_key.entry(key.to_string()).or_default().push(Entry {
            conn: None,
            wire_conn: wire_conn.to_string(),
            state,
        });
        data
    }

    /// Removes a connection's entry; returns the leave event's data if it had one.
    pub fn remove(&mut self, conn: ConnId) -> Option<Value> {
        self.remove_where(|e| e.conn == Some(conn))
    }

    /// Removes the entry of wire id `wire_conn`; returns the leave event's data.
    pub fn remove_wire(&mut self, wire_conn: &str) -> Option<Value> {
        self.remove_where(|e| e.wire_conn == wire_conn)
    }

    /// Whether presence key `key` has an entry.
    pub fn has_key(&self, key: &str) -> bool {
        self.by_key
            .as_ref()
            .is_some_and(|by_key| by_key.contains_key(key))
    }

    /// Every entry: (key, wire id, state).
    pub fn all(&self) -> Vec<(String, String, Map<String, Value>)> {
        self.by_key
            .iter()
            .flat_map(|by_key| by_key.iter())
            .flat_map(|(key, entries)| {
                entries
                    .iter()
                    .map(move |e| (key.clone(), e.wire_conn.clone(), e.state.clone()))
            })
            .collect()
    }

    fn remove_where(&mut self, which: impl Fn(&Entry) -> bool) -> Option<Value> {
        let by_key = self.by_key.as_mut()?;
        let key = by_key
            .iter()
            .find(|(_, entries)| entries.iter().any(&which))
            .map(|(key, _)| key.clone())?;
        let entries = by_key.get_mut(&key)?;
        let at = entries.iter().position(&which)?;
        let entry = entries.remove(at);
        if entries.is_empty() {
            by_key.remove(&key);
            if by_key.is_empty() {
                self.by_key = None;
            }
        }
        Some(change_data(&key, &entry.wire_conn, &entry.state))
    }

    /// Every entry, as `{"<key>":[{"conn","state"}]}`.
    pub fn snapshot(&self) -> Value {
        let presences: Map<String, Value> = self
            .by_key
            .iter()
            .flat_map(|by_key| by_key.iter())
            .map(|(key, entries)| {
                let list = entries
                    .iter()
                    .map(|e| json!({"conn": e.wire_conn, "state": e.state}))
                    .collect();
                (key.clone(), Value::Array(list))
            })
            .collect();
        Value::Object(presences)
    }

    pub fn entries(&self) -> usize {
        self.by_key
            .as_ref()
            .map_or(0, |by_key| by_key.values().map(Vec::len).sum())
    }

    pub fn is_empty(&self) -> bool {
        self.by_key.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn one_key_holds_one_entry_per_connection() {
        let mut presence = Presence::default();
        presence.track("ann", ConnId(1), "c1", state(json!({"tab": 1})));
        presence.track("ann", ConnId(2), "c2", state(json!({"tab": 2})));
        presence.track("bob", ConnId(3), "c3", state(json!({})));
        assert_eq!(presence.entries(), 3);
        assert_eq!(
            presence.snapshot(),
            json!({"ann": [{"conn": "c1", "state": {"tab": 1}}, {"conn": "c2", "state": {"tab": 2}}],
                   "bob": [{"conn": "c3", "state": {}}]})
        );
    }

    #[test]
    fn tracking_again_replaces_the_state() {
        let mut presence = Presence::default();
        presence.track("ann", ConnId(1), "c1", state(json!({"typing": false})));
        let join = presence.track("ann", ConnId(1), "c1", state(json!({"typing": true})));
        assert_eq!(
            join,
            json!({"key": "ann", "conn": "c1", "state": {"typing": true}})
        );
        assert_eq!(presence.entries(), 1);
    }

    #[test]
    fn removing_the_last_entry_removes_the_key() {
        let mut presence = Presence::default();
        presence.track("ann", ConnId(1), "c1", state(json!({"a": 1})));
        assert_eq!(
            presence.remove(ConnId(1)),
            Some(json!({"key": "ann", "conn": "c1", "state": {"a": 1}}))
        );
        assert_eq!(presence.remove(ConnId(1)), None);
        assert!(presence.is_empty());
        assert_eq!(presence.snapshot(), json!({}));
    }
}
