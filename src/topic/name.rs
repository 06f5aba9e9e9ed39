//! Topic names: the spellings clients use, parsed into a canonical name and a
//! kind. A `TopicName` exists only once its spelling has been validated.

use std::fmt;
use std::sync::Arc;

use crate::protocol::ProtocolError;

/// Longest canonical pub/sub topic name, in bytes.
pub const MAX_PUBSUB_BYTES: usize = 255;
/// Longest table name, in characters (`^[A-Za-z_][A-Za-z0-9_]{0,62}$`).
pub const MAX_TABLE_CHARS: usize = 63;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TopicKind {
    /// A database table whose committed changes are the events.
    Table,
    /// A `path/name` topic fed by clients and the HTTP API.
    PubSub,
}

impl TopicKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TopicKind::Table => "table",
            TopicKind::PubSub => "pubsub",
        }
    }
}

/// A validated, canonical topic name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TopicName {
    canonical: Arc<str>,
    kind: TopicKind,
}

impl fmt::Display for TopicName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.canonical)
    }
}

impl TopicName {
    /// Parses a client's spelling (docs/protocol.md) for the server's `project_id`.
    pub fn parse(spelling: &str, project_id: &str) -> Result<TopicName, ProtocolError> {
        if spelling.starts_with('_') || spelling.starts_with('$') {
            return Err(reserved(spelling));
        }
        if let Some(rest) = spelling.strip_prefix("table/") {
            let table = match rest.split_once('/') {
                None => rest,
                Some((table, project)) if project == project_id => table,
                Some((_, project)) if !project.contains('/') => {
                    return Err(ProtocolError::forbidden(format!(
                        "topic `{spelling}` names project `{project}`; this server is `{project_id}`"
                    )));
                }
                Some(_) => {
                    return Err(ProtocolError::bad_request(format!(
                        "`{spelling}` is not `table/<name>` or `table/<name>/<projectId>`"
                    )));
                }
            };
            return Self::table(table);
        }
        if !spelling.contains('/') {
            return Self::table(spelling);
        }
        let canonical = match spelling.rsplit_once('/') {
            Some((head, last)) if last == project_id && head.contains('/') => head,
            _ => spelling,
        };
        validate_pubsub(canonical)?;
        Ok(TopicName {
            canonical: canonical.into(),
            kind: TopicKind::PubSub,
        })
    }

    fn table(name: &str) -> Result<TopicName, ProtocolError> {
        if !is_valid_table_name(name) {
            return Err(ProtocolError::bad_request(format!(
                "`{name}` is not a valid table name (letters, digits and `_`, not starting with a digit, at most {MAX_TABLE_CHARS})"
            )));
        }
        if is_reserved_table(name) {
            return Err(reserved(name));
        }
        Ok(TopicName {
            canonical: name.into(),
            kind: TopicKind::Table,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.canonical
    }

    pub fn shared(&self) -> Arc<str> {
        self.canonical.clone()
    }

    /// The canonical name's `Arc`, borrowed (outboxes compare it by pointer).
    pub fn as_arc(&self) -> &Arc<str> {
        &self.canonical
    }

    pub fn kind(&self) -> TopicKind {
        self.kind
    }
}

fn reserved(name: &str) -> ProtocolError {
    ProtocolError::forbidden(format!("`{name}` is reserved"))
}

/// `^[A-Za-z_][A-Za-z0-9_]{0,62}$`
pub fn is_valid_table_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && name.len() <= MAX_TABLE_CHARS
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Tables no client may subscribe to: ours (`_realtide_*`), diesel's
/// (`__diesel_*`), and the databases' own catalogues.
pub fn is_reserved_table(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    lower.starts_with('_') || lower.starts_with("sqlite_") || lower.starts_with("pg_")
}

fn validate_pubsub(name: &str) -> Result<(), ProtocolError> {
    if name.len() > MAX_PUBSUB_BYTES {
        return Err(ProtocolError::bad_request(format!(
            "topic names are at most {MAX_PUBSUB_BYTES} bytes"
        )));
    }
    let segment_ok = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "_.:@-".contains(c))
    };
    if name.split('/').all(segment_ok) {
        Ok(())
    } else {
        Err(ProtocolError::bad_request(format!(
            "`{name}` is not a valid topic: segments of [A-Za-z0-9_.:@-] separated by `/`"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::ErrorCode;

    fn parse(s: &str) -> Result<TopicName, ErrorCode> {
        TopicName::parse(s, "realtide").map_err(|e| e.code)
    }

    #[test]
    fn table_spellings_name_the_same_table() {
        for s in ["orders", "table/orders", "table/orders/realtide"] {
            let t = parse(s).unwrap();
            assert_eq!((t.as_str(), t.kind()), ("orders", TopicKind::Table), "{s}");
        }
    }

    #[test]
    fn a_trailing_project_id_is_removed_when_two_segments_remain() {
        assert_eq!(
            parse("chat/general/realtide").unwrap().as_str(),
            "chat/general"
        );
        assert_eq!(parse("chat/realtide").unwrap().as_str(), "chat/realtide");
        assert_eq!(parse("a/b/c").unwrap().as_str(), "a/b/c");
        assert_eq!(parse("chat/general").unwrap().kind(), TopicKind::PubSub);
    }

    #[test]
    fn invalid_names_are_bad_requests() {
        for s in [
            "1orders",
            "or-ders",
            "table/x-y",
            "chat//x",
            "chat/",
            "/chat",
            "chat/a b",
            "table/a/b/c",
        ] {
            assert_eq!(parse(s).unwrap_err(), ErrorCode::BadRequest, "{s}");
        }
        assert_eq!(parse(&"t".repeat(64)).unwrap_err(), ErrorCode::BadRequest);
        assert!(parse(&"t".repeat(63)).is_ok());
        let long = format!("a/{}", "b".repeat(254));
        assert_eq!(parse(&long).unwrap_err(), ErrorCode::BadRequest);
        assert!(parse(&format!("a/{}", "b".repeat(253))).is_ok());
    }

    #[test]
    fn reserved_names_are_forbidden() {
        for s in [
            "_realtide_changes",
            "$sys/x",
            "_chat/x",
            "table/_secret",
            "sqlite_master",
            "__diesel_schema_migrations",
        ] {
            assert_eq!(parse(s).unwrap_err(), ErrorCode::Forbidden, "{s}");
        }
        assert_eq!(
            parse("table/orders/other").unwrap_err(),
            ErrorCode::Forbidden
        );
    }
}
