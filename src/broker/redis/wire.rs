//! What travels on the Redis connections, decoded: the pub/sub pushes
//! routed to topics (`b|<epoch>|<first seq>|<event>\n<event>…`, one
//! publish call's events in one message; `e|<epoch>|<seq>|<event>`, one
//! event, as nodes of earlier versions send; `j|<op>|<entry>`,
//! `l|<op>|<entry>`, the op empty when none),
//! kept token events (`<seq>|<event>`), and the shapes of script answers.

use redis::{PushInfo, PushKind, Value};
use tokio::sync::mpsc;

use super::Routes;
use crate::broker::{FromBroker, KeyEdges, PresenceOp, Sequenced};

/// Routes one push of the pub/sub connection.
pub(super) fn route(routes: &Routes, lost: &mpsc::UnboundedSender<()>, push: PushInfo) {
    match push.kind {
        PushKind::Message => {
            let (Some(Value::BulkString(channel)), Some(Value::BulkString(payload))) =
                (push.data.first(), push.data.get(1))
            else {
                return;
            };
            let Ok(channel) = std::str::from_utf8(channel) else {
                return;
            };
            if let Some((streams, reader)) = routes.streams.get()
                && streams == channel
            {
                reader(payload);
                return;
            }
            let messages = decode(payload);
            if messages.is_empty() {
                tracing::warn!(channel, "an undecodable message on a topic channel");
                return;
            }
            if let Some(topic) = routes.lock().get(channel) {
                for message in messages {
                    topic.do_send(message);
                }
            }
        }
        PushKind::Disconnection => {
            let _ = lost.send(());
        }
        _ => {}
    }
}

/// The track and untrack scripts' answer `{flag, replaced or removed
/// entry (JSON) or ''}`: for track the flag says the key joined; the entry,
/// when there is one, is the entry whose key has none left.
pub(super) fn key_edges(answer: &Value) -> KeyEdges {
    let parts = array(answer);
    let joined = matches!(parts.first(), Some(Value::Int(1)));
    let left = parts
        .get(1)
        .and_then(bulk)
        .filter(|entry| !entry.is_empty())
        .and_then(|entry| serde_json::from_slice(entry).ok());
    KeyEdges { joined, left }
}

/// A presence op as a script argument and in a channel message.
pub(super) fn op_text(op: Option<PresenceOp>) -> String {
    op.map(|PresenceOp(n)| n.to_string()).unwrap_or_default()
}

/// A channel message, as what it tells topics (nothing when undecodable):
/// `b|<epoch>|<first seq>|<event>\n<event>…`, `e|<epoch>|<seq>|<event>`,
/// `j|<op>|<entry>`, `l|<op>|<entry>`.
pub(super) fn decode(payload: &[u8]) -> Vec<FromBroker> {
    let Ok(text) = std::str::from_utf8(payload) else {
        return Vec::new();
    };
    match text.split_once('|') {
        // Compact JSON has no raw newline, so it separates the events.
        Some(("b" | "e", rest)) => decode_events(rest),
        _ => decode_one(text).into_iter().collect(),
    }
}

/// `<epoch>|<first seq>|<event>[\n<event>…]`: the events from the first seq on.
fn decode_events(rest: &str) -> Vec<FromBroker> {
    let Some((epoch, rest)) = rest.split_once('|') else {
        return Vec::new();
    };
    let Some((first, events)) = rest.split_once('|') else {
        return Vec::new();
    };
    let Ok(first) = first.parse::<u64>() else {
        return Vec::new();
    };
    let epoch: std::sync::Arc<str> = epoch.into();
    let mut decoded = Vec::new();
    for (i, event) in events.split('\n').enumerate() {
        let Ok(event) = serde_json::from_str(event) else {
            // A seq left out shows as a gap, which the replay log fills.
            tracing::warn!("an undecodable event on a topic channel");
            continue;
        };
        decoded.push(FromBroker::Event {
            epoch: epoch.clone(),
            event: Sequenced {
                seq: first + i as u64,
                event,
            },
        });
    }
    decoded
}

fn decode_one(text: &str) -> Option<FromBroker> {
    let (kind, rest) = text.split_once('|')?;
    match kind {
        "j" | "l" => {
            let (op, entry) = rest.split_once('|')?;
            let op = match op {
                "" => None,
                n => Some(PresenceOp(n.parse().ok()?)),
            };
            Some(FromBroker::Presence {
                joined: kind == "j",
                entry: serde_json::from_str(entry).ok()?,
                op,
            })
        }
        _ => None,
    }
}

/// A kept event: `<seq>|<event>` (token lists).
pub(super) fn decode_kept(text: &[u8]) -> Option<Sequenced> {
    let text = std::str::from_utf8(text).ok()?;
    let (seq, event) = text.split_once('|')?;
    Some(Sequenced {
        seq: seq.parse().ok()?,
        event: serde_json::from_str(event).ok()?,
    })
}

pub(super) fn bulk(value: &Value) -> Option<&[u8]> {
    match value {
        Value::BulkString(bytes) => Some(bytes),
        Value::SimpleString(text) => Some(text.as_bytes()),
        _ => None,
    }
}

pub(super) fn text(value: &Value) -> Option<String> {
    match value {
        Value::Int(n) => Some(n.to_string()),
        other => bulk(other).and_then(|b| String::from_utf8(b.to_vec()).ok()),
    }
}

pub(super) fn array(value: &Value) -> &[Value] {
    match value {
        Value::Array(items) | Value::Set(items) => items,
        _ => &[],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_messages_decode() {
        let event = r#"e|ep1|7|{"o":"n1","k":3,"e":"msg","d":{"a":1},"t":5}"#;
        match decode(event.as_bytes()).pop() {
            Some(FromBroker::Event { epoch, event }) => {
                assert_eq!(&*epoch, "ep1");
                assert_eq!(event.seq, 7);
                assert_eq!(event.event.event, "msg");
                assert_eq!(event.event.conn, None);
            }
            other => panic!("{other:?}"),
        }
        let leave = r#"l||{"key":"ann","conn":"c1","state":{},"node":"n1"}"#;
        assert!(matches!(
            decode(leave.as_bytes()).pop(),
            Some(FromBroker::Presence {
                joined: false,
                op: None,
                ..
            })
        ));
        let join = r#"j|42|{"key":"ann","conn":"c1","state":{},"node":"n1"}"#;
        assert!(matches!(
            decode(join.as_bytes()).pop(),
            Some(FromBroker::Presence {
                joined: true,
                op: Some(PresenceOp(42)),
                ..
            })
        ));
        assert!(decode(b"x|y").is_empty());
        assert!(decode(b"e|ep|notanumber|{}").is_empty());
    }

    #[test]
    fn a_batch_is_its_events_with_seqs_from_the_first_on() {
        let batch = concat!(
            r#"b|ep1|7|{"o":"n1","k":3,"e":"one","d":"a\nb","t":5}"#,
            "\n",
            r#"{"o":"n1","k":4,"e":"two","d":2,"t":5}"#
        );
        let seqs: Vec<(u64, String)> = decode(batch.as_bytes())
            .into_iter()
            .map(|m| match m {
                FromBroker::Event { event, .. } => (event.seq, event.event.event),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(seqs, vec![(7, "one".into()), (8, "two".into())]);
    }
}
