//! Frames the server sends. Replies are built with `serde_json`; events, the
//! fan-out hot path, are encoded once as a [`TopicFrame`] whose topic name is
//! spliced in per spelling, so each subscriber gets shared bytes.

use bytestring::ByteString;
use serde_json::{Map, Value, json};

use super::codes::ProtocolError;

fn text(value: Value) -> ByteString {
    ByteString::from(value.to_string())
}

/// Adds `ref` to a reply when the request carried one.
fn with_ref(mut reply: Map<String, Value>, reference: Option<&Value>) -> ByteString {
    if let Some(r) = reference {
        reply.insert("ref".into(), r.clone());
    }
    text(Value::Object(reply))
}

fn object(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        _ => unreachable!("json! object literal"),
    }
}

pub struct Welcome<'a> {
    pub conn: &'a str,
    pub user_id: Option<&'a str>,
    pub node: &'a str,
    pub idle_timeout_ms: u64,
    pub max_frame: u64,
    /// A server-sent-events connection's secret, which its requests carry.
    pub session: Option<&'a str>,
}

pub fn welcome(w: &Welcome<'_>) -> ByteString {
    let mut welcome = object(json!({
        "type": "welcome",
        "conn": w.conn,
        "userId": w.user_id,
        "node": w.node,
        "idle_timeout_ms": w.idle_timeout_ms,
        "max_frame": w.max_frame,
    }));
    if let Some(session) = w.session {
        welcome.insert("session".into(), session.into());
    }
    text(Value::Object(welcome))
}

pub fn pong(reference: Option<&Value>) -> ByteString {
    with_ref(object(json!({"type": "pong"})), reference)
}

pub struct Subscribed<'a> {
    pub topic: &'a str,
    pub seq: u64,
    pub epoch: &'a str,
    pub recovered: bool,
}

pub fn subscribed(reference: Option<&Value>, s: &Subscribed<'_>) -> ByteString {
    with_ref(
        object(json!({
            "type": "subscribed",
            "topic": s.topic,
            "seq": s.seq,
            "epoch": s.epoch,
            "recovered": s.recovered,
        })),
        reference,
    )
}

/// One page of a table's rows for a `snapshot: true` subscribe; each row's
/// JSON text goes in as it is.
/// Appends `"rows":[…]` with each row's JSON text as it is: a table's rows
/// are spliced, never parsed and written again.
pub fn push_rows(out: &mut String, rows: &[crate::changes::Row]) {
    out.reserve(10 + rows.iter().map(|r| r.json().len() + 1).sum::<usize>());
    out.push_str(r#""rows":["#);
    for (i, row) in rows.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(row.json());
    }
    out.push(']');
}

pub fn snapshot_page(
    reference: Option<&Value>,
    topic: &str,
    seq: u64,
    key: &[String],
    rows: &[crate::changes::Row],
    last: bool,
) -> ByteString {
    let mut frame = String::from(r#"{"type":"snapshot","#);
    if let Some(reference) = reference {
        frame.push_str(r#""ref":"#);
        frame.push_str(&reference.to_string());
        frame.push(',');
    }
    frame.push_str(r#""topic":"#);
    frame.push_str(&Value::from(topic).to_string());
    frame.push_str(&format!(r#","seq":{seq},"key":"#));
    frame.push_str(&Value::from(key.to_vec()).to_string());
    frame.push(',');
    push_rows(&mut frame, rows);
    frame.push_str(&format!(r#","last":{last}}}"#));
    ByteString::from(frame)
}

pub fn unsubscribed(reference: Option<&Value>, topic: &str, reason: Option<&str>) -> ByteString {
    let mut reply = object(json!({"type": "unsubscribed", "topic": topic}));
    if let Some(reason) = reason {
        reply.insert("reason".into(), reason.into());
    }
    with_ref(reply, reference)
}

pub fn history(reference: Option<&Value>, topic: &str, messages: Vec<Value>) -> ByteString {
    with_ref(
        object(json!({"type": "history", "topic": topic, "messages": messages})),
        reference,
    )
}

pub fn ack(reference: Option<&Value>) -> ByteString {
    with_ref(object(json!({"type": "ack"})), reference)
}

pub fn publish_ack(
    reference: Option<&Value>,
    id: Option<&Value>,
    seq: u64,
    message_id: Option<&str>,
) -> ByteString {
    let mut reply = object(json!({"type": "ack", "seq": seq}));
    if let Some(id) = id {
        reply.insert("id".into(), id.clone());
    }
    if let Some(message_id) = message_id {
        reply.insert("message_id".into(), message_id.into());
    }
    with_ref(reply, reference)
}

pub fn error(reference: Option<&Value>, topic: Option<&str>, e: &ProtocolError) -> ByteString {
    let mut reply = object(json!({
        "type": "error",
        "code": e.code.as_str(),
        "message": e.message,
    }));
    if let Some(topic) = topic {
        reply.insert("topic".into(), topic.into());
    }
    with_ref(reply, reference)
}

/// The event name and topic prefix of the SDKs' legacy chat (`sendChat`).
pub const CHAT_EVENT: &str = "chat";
pub const CHAT_PREFIX: &str = "chat/";

/// A topic frame encoded once: everything but the `topic` field, which differs
/// between subscribers that spelled the topic differently.
#[derive(Debug, Clone)]
pub struct TopicFrame {
    /// `{"type":"event","topic":` (the frame's type prefix).
    head: &'static str,
    /// `,"event":...}`: the rest of the object after the topic.
    tail: ByteString,
}

impl TopicFrame {
    /// An `event` frame of a pub/sub topic.
    pub fn event(
        event: &str,
        data: &Value,
        user_id: Option<&str>,
        timestamp_ms: i64,
        seq: u64,
        message_id: Option<&str>,
    ) -> Self {
        use std::io::Write;
        // Written straight out, in the key order a `json!` object would
        // have: building that object first deep-copied `data`, key by key,
        // once for every publish.
        fn put<T: serde::Serialize + ?Sized>(tail: &mut Vec<u8>, value: &T) {
            serde_json::to_writer(&mut *tail, value).expect("JSON to memory");
        }
        let mut tail = Vec::with_capacity(112 + event.len());
        tail.extend_from_slice(br#","data":"#);
        put(&mut tail, data);
        tail.extend_from_slice(br#","event":"#);
        put(&mut tail, event);
        if let Some(id) = message_id {
            tail.extend_from_slice(br#","message_id":"#);
            put(&mut tail, id);
        }
        let _ = write!(tail, r#","seq":{seq},"timestamp":{timestamp_ms},"userId":"#);
        put(&mut tail, &user_id);
        tail.push(b'}');
        let tail = String::from_utf8(tail).expect("serde_json writes UTF-8");
        TopicFrame {
            head: r#"{"type":"event","topic":"#,
            tail: ByteString::from(tail),
        }
    }

    /// An event published to `topic` (canonical): a `chat_message` frame for
    /// the legacy chat (event `chat` on a `chat/...` topic, as the `chat`
    /// request stores it), else an `event` frame.
    pub fn published(
        topic: &str,
        event: &str,
        data: &Value,
        user_id: Option<&str>,
        timestamp_ms: i64,
        seq: u64,
        message_id: Option<&str>,
    ) -> Self {
        let mut frame = Self::event(event, data, user_id, timestamp_ms, seq, message_id);
        if event == CHAT_EVENT && topic.starts_with(CHAT_PREFIX) {
            frame.head = r#"{"type":"chat_message","topic":"#;
        }
        frame
    }

    /// A presence event: no `seq`, never replayed.
    pub fn presence(event: &str, data: &Value, timestamp_ms: i64) -> Self {
        let fields = json!({"event": event, "data": data, "timestamp": timestamp_ms});
        Self::from_fields(r#"{"type":"event","topic":"#, fields)
    }

    /// A `db_change` frame of a table topic.
    pub fn db_change(change: &crate::changes::Change) -> Self {
        use crate::changes::{Operation, Row};
        use std::fmt::Write;
        fn json(row: &Option<Row>) -> &str {
            row.as_ref().map_or("null", Row::json)
        }
        let data = match change.operation {
            Operation::Delete => &change.old,
            Operation::Insert | Operation::Update => &change.new,
        };
        let mut tail = String::with_capacity(96 + json(data).len() * 2);
        tail.push_str(r#","data":"#);
        tail.push_str(json(data));
        if change.operation != Operation::Insert {
            tail.push_str(r#","old":"#);
            tail.push_str(json(&change.old));
        }
        let _ = write!(
            tail,
            r#","operation":"{}","seq":{},"timestamp":{}}}"#,
            change.operation.as_str(),
            change.seq,
            change.at_ms
        );
        TopicFrame {
            head: r#"{"type":"db_change","topic":"#,
            tail: ByteString::from(tail),
        }
    }

    fn from_fields(head: &'static str, fields: Value) -> Self {
        // `{"a":1,...}` becomes `,"a":1,...}`: the fields after the topic.
        let mut tail = fields.to_string();
        tail.replace_range(0..1, ",");
        TopicFrame {
            head,
            tail: ByteString::from(tail),
        }
    }

    /// The whole frame for a subscriber that spelled the topic `spelling`.
    pub fn for_spelling(&self, spelling: &str) -> ByteString {
        let topic = Value::from(spelling).to_string();
        let mut frame = String::with_capacity(self.head.len() + topic.len() + self.tail.len());
        frame.push_str(self.head);
        frame.push_str(&topic);
        frame.push_str(&self.tail);
        ByteString::from(frame)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_frame_is_one_json_object_with_the_spelling_as_topic() {
        let frame = TopicFrame::event("msg", &json!({"t": "a\"b"}), Some("ann"), 5, 9, None);
        let parsed: Value = serde_json::from_str(&frame.for_spelling("chat/x/realtide")).unwrap();
        assert_eq!(
            parsed,
            json!({"type":"event","topic":"chat/x/realtide","event":"msg","data":{"t":"a\"b"},
                   "userId":"ann","timestamp":5,"seq":9})
        );
    }

    #[test]
    fn an_event_frame_is_written_as_a_json_object_of_the_same_fields_would_be() {
        let data = json!({"b": [1, 2.5, null], "a": "\u{e9}\n"});
        for (user, id) in [(Some("ann"), Some("00000000000000000042")), (None, None)] {
            let frame = TopicFrame::event("msg", &data, user, 5, 9, id);
            let mut fields = json!({"type": "event", "topic": "t", "event": "msg", "data": data,
                                    "userId": user, "timestamp": 5, "seq": 9});
            if let Some(id) = id {
                fields["message_id"] = id.into();
            }
            let written = frame.for_spelling("t");
            assert_eq!(serde_json::from_str::<Value>(&written).unwrap(), fields);
            // Byte for byte as the object would print, after type and topic.
            let mut expected = fields.as_object().unwrap().clone();
            expected.remove("type");
            expected.remove("topic");
            let expected = Value::Object(expected).to_string();
            assert_eq!(
                &written[written.find(r#","data""#).unwrap() + 1..],
                &expected[1..]
            );
        }
    }

    #[test]
    fn replies_carry_the_ref_only_when_given() {
        let with: Value = serde_json::from_str(&pong(Some(&json!(3)))).unwrap();
        assert_eq!(with, json!({"type":"pong","ref":3}));
        let without: Value = serde_json::from_str(&pong(None)).unwrap();
        assert_eq!(without, json!({"type":"pong"}));
    }
}
