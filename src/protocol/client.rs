//! Frames a client sends: parsed from text into typed requests, with every
//! malformed input turned into a `bad_request` that keeps the request's `ref`.

use serde::Deserialize;
use serde_json::{Map, Value};

use super::codes::ProtocolError;

/// Longest string `ref` a client may send.
pub const MAX_REF_CHARS: usize = 64;
/// Event names are 1 to this many characters, on the socket and over HTTP.
pub const MAX_EVENT_CHARS: usize = 64;

/// One parsed client frame: its `ref` (when valid) and the request or why it is not one.
#[derive(Debug)]
pub struct Envelope {
    pub reference: Option<Value>,
    /// The frame's `topic` when it is a string, for the `topic` of an error.
    pub topic: Option<String>,
    pub request: Result<Request, ProtocolError>,
}

/// The requests of the protocol (docs/protocol.md).
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Request {
    Subscribe(SubscribeRequest),
    Unsubscribe {
        topic: String,
    },
    Publish(PublishRequest),
    Track {
        topic: String,
        state: Map<String, Value>,
    },
    Untrack {
        topic: String,
    },
    Auth {
        token: String,
    },
    History(HistoryRequest),
    Ping,
    /// The SDKs' legacy `sendChat`: a persisted publish to `chat/<roomId>`.
    Chat(ChatRequest),
}

#[derive(Debug, Clone, Deserialize)]
pub struct SubscribeRequest {
    pub topic: String,
    pub filter: Option<Map<String, Value>>,
    pub since: Option<u64>,
    pub epoch: Option<String>,
    pub history: Option<u32>,
    pub echo: Option<bool>,
    /// Table topics: the matching rows first, then the changes after them.
    pub snapshot: Option<bool>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct PublishRequest {
    pub topic: String,
    pub event: String,
    pub data: Value,
    pub persist: Option<bool>,
    /// The client's own id for the message, echoed in the ack.
    pub id: Option<Value>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ChatRequest {
    /// One topic segment: the room is `chat/<roomId>`.
    #[serde(rename = "roomId")]
    pub room_id: String,
    pub text: String,
    pub metadata: Option<Map<String, Value>>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct HistoryRequest {
    pub topic: String,
    pub limit: Option<i64>,
    /// Milliseconds (a number), or a message id (a string).
    pub before: Option<crate::history::Before>,
    pub before_id: Option<String>,
}

impl Envelope {
    /// Parses one text frame. Never fails: a bad frame becomes an `Err` request.
    pub fn parse(text: &str) -> Envelope {
        let mut object = match serde_json::from_str::<Value>(text) {
            Ok(Value::Object(object)) => object,
            Ok(_) => return Envelope::invalid(None, "a frame must be a JSON object"),
            Err(e) => return Envelope::invalid(None, format!("a frame must be JSON: {e}")),
        };
        let topic = object
            .get("topic")
            .and_then(Value::as_str)
            .map(str::to_owned);
        let reference = match object.remove("ref") {
            None => None,
            Some(r) => match validate_ref(r) {
                Ok(r) => Some(r),
                Err(e) => {
                    return Envelope {
                        reference: None,
                        topic,
                        request: Err(e),
                    };
                }
            },
        };
        let request = serde_json::from_value::<Request>(Value::Object(object))
            .map_err(|e| ProtocolError::bad_request(e.to_string()))
            .and_then(|request| {
                request.validate()?;
                Ok(request)
            });
        Envelope {
            reference,
            topic,
            request,
        }
    }

    fn invalid(reference: Option<Value>, message: impl Into<String>) -> Envelope {
        Envelope {
            reference,
            topic: None,
            request: Err(ProtocolError::bad_request(message)),
        }
    }
}

fn validate_ref(reference: Value) -> Result<Value, ProtocolError> {
    match &reference {
        Value::String(s) if s.chars().count() <= MAX_REF_CHARS => Ok(reference),
        Value::String(_) => Err(ProtocolError::bad_request(format!(
            "`ref` is longer than {MAX_REF_CHARS} characters"
        ))),
        Value::Number(n) if n.is_i64() || n.is_u64() => Ok(reference),
        _ => Err(ProtocolError::bad_request(
            "`ref` must be a string or an integer",
        )),
    }
}

/// Checks an event name's length (1 to 64 characters).
pub fn validate_event_name(event: &str) -> Result<(), ProtocolError> {
    let chars = event.chars().count();
    if (1..=MAX_EVENT_CHARS).contains(&chars) {
        Ok(())
    } else {
        Err(ProtocolError::bad_request(format!(
            "`event` must be 1 to {MAX_EVENT_CHARS} characters"
        )))
    }
}

impl Request {
    /// Field checks serde's types cannot express.
    fn validate(&self) -> Result<(), ProtocolError> {
        match self {
            Request::Publish(p) => validate_event_name(&p.event),
            Request::Chat(c) if c.room_id.is_empty() || c.room_id.contains('/') => Err(
                ProtocolError::bad_request("`roomId` must be one topic segment (no `/`)"),
            ),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::ErrorCode;

    fn error_of(text: &str) -> (Option<Value>, ProtocolError) {
        let envelope = Envelope::parse(text);
        (envelope.reference, envelope.request.unwrap_err())
    }

    #[test]
    fn a_ping_with_a_string_ref_parses() {
        let envelope = Envelope::parse(r#"{"type":"ping","ref":"a1"}"#);
        assert_eq!(envelope.reference, Some(Value::from("a1")));
        assert!(matches!(envelope.request, Ok(Request::Ping)));
    }

    #[test]
    fn unknown_fields_are_ignored() {
        let envelope = Envelope::parse(r#"{"type":"unsubscribe","topic":"a/b","extra":[1]}"#);
        assert!(matches!(envelope.request, Ok(Request::Unsubscribe { topic }) if topic == "a/b"));
    }

    #[test]
    fn a_bad_field_keeps_the_ref() {
        let (reference, error) = error_of(r#"{"type":"subscribe","ref":7,"topic":5}"#);
        assert_eq!(reference, Some(Value::from(7)));
        assert_eq!(error.code, ErrorCode::BadRequest);
    }

    #[test]
    fn frames_that_are_not_requests_are_bad_requests() {
        for text in [
            "not json",
            "[1,2]",
            r#"{"topic":"a/b"}"#,
            r#"{"type":"dance"}"#,
            r#"{"type":"publish","topic":"a/b","event":"e"}"#,
            r#"{"type":"publish","topic":"a/b","event":"","data":1}"#,
            r#"{"type":"track","topic":"a/b","state":[1]}"#,
            r#"{"type":"subscribe","topic":"a/b","since":-1}"#,
        ] {
            assert_eq!(error_of(text).1.code, ErrorCode::BadRequest, "{text}");
        }
    }

    #[test]
    fn refs_of_the_wrong_type_or_length_are_refused() {
        let long = "x".repeat(65);
        for text in [
            r#"{"type":"ping","ref":1.5}"#.to_string(),
            r#"{"type":"ping","ref":null}"#.to_string(),
            r#"{"type":"ping","ref":{"a":1}}"#.to_string(),
            format!(r#"{{"type":"ping","ref":"{long}"}}"#),
        ] {
            let (reference, error) = error_of(&text);
            assert_eq!(reference, None);
            assert_eq!(error.code, ErrorCode::BadRequest, "{text}");
        }
        let exact = "x".repeat(64);
        let envelope = Envelope::parse(&format!(r#"{{"type":"ping","ref":"{exact}"}}"#));
        assert!(envelope.request.is_ok());
    }

    #[test]
    fn event_names_are_counted_in_characters() {
        assert!(validate_event_name(&"é".repeat(64)).is_ok());
        assert!(validate_event_name(&"é".repeat(65)).is_err());
    }
}
