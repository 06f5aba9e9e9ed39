//! Where each subscription of a server-sent-events stream stands, as the
//! stream's event ids carry it (PROTOCOL §11): a browser's `EventSource`
//! sends back only the last id it saw (`Last-Event-ID`), so that one id must
//! let the server resume every subscription of the stream.
//!
//! The id is the compact JSON object `{"<topic>":["<epoch>",<seq>],…}`,
//! base64url-encoded (no padding) so that any topic name fits in an HTTP
//! header and an SSE `id:` line.

use std::collections::BTreeMap;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Deserialize;

/// Longest `Last-Event-ID` read back, in bytes: a stream of many
/// subscriptions has a long id, but not longer than this.
const MAX_ID_BYTES: usize = 16 * 1024;

/// A stream's subscriptions: topic (as the client spelled it) -> epoch and
/// the last `seq` delivered.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Positions {
    topics: BTreeMap<String, (String, u64)>,
}

/// The top-level fields of a server frame that move a position.
#[derive(Deserialize)]
struct Head<'a> {
    #[serde(rename = "type", borrow)]
    kind: &'a str,
    #[serde(borrow, default)]
    topic: Option<std::borrow::Cow<'a, str>>,
    #[serde(default)]
    seq: Option<u64>,
    #[serde(borrow, default)]
    epoch: Option<std::borrow::Cow<'a, str>>,
}

/// Whether a frame gets an `id:` line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Moved {
    /// Not a subscription's frame: no id.
    No,
    /// A subscription started or advanced: the frame carries the new id.
    Yes,
}

impl Positions {
    /// Reads a `Last-Event-ID` back; an id this server did not write reads
    /// as no position at all (the subscriptions start afresh).
    pub fn parse(id: &str) -> Positions {
        let id = id.trim();
        if id.is_empty() || id.len() > MAX_ID_BYTES {
            return Positions::default();
        }
        URL_SAFE_NO_PAD
            .decode(id)
            .ok()
            .and_then(|json| serde_json::from_slice(&json).ok())
            .map(|topics| Positions { topics })
            .unwrap_or_default()
    }

    /// Where `topic` stood: its epoch and last `seq`.
    pub fn of(&self, topic: &str) -> Option<(&str, u64)> {
        self.topics
            .get(topic)
            .map(|(epoch, seq)| (epoch.as_str(), *seq))
    }

    /// Follows one server frame (§4's JSON): `subscribed` starts a
    /// position, `event` and `db_change` advance it, `unsubscribed` ends it.
    pub fn follow(&mut self, frame: &[u8]) -> Moved {
        let Ok(head) = serde_json::from_slice::<Head<'_>>(frame) else {
            return Moved::No;
        };
        let Some(topic) = head.topic else {
            return Moved::No;
        };
        match head.kind {
            "subscribed" => {
                let (Some(epoch), Some(seq)) = (head.epoch, head.seq) else {
                    return Moved::No;
                };
                self.topics
                    .insert(topic.into_owned(), (epoch.into_owned(), seq));
                Moved::Yes
            }
            "event" | "db_change" => {
                let Some(seq) = head.seq else {
                    // Presence and ephemeral events carry no seq: nothing
                    // to resume from.
                    return Moved::No;
                };
                match self.topics.get_mut(topic.as_ref()) {
                    Some((_, last)) => {
                        *last = seq.max(*last);
                        Moved::Yes
                    }
                    None => Moved::No,
                }
            }
            "unsubscribed" => {
                self.topics.remove(topic.as_ref());
                Moved::No
            }
            _ => Moved::No,
        }
    }

    /// The event id that resumes every subscription from here.
    pub fn id(&self) -> String {
        let json = serde_json::to_vec(&self.topics).unwrap_or_default();
        URL_SAFE_NO_PAD.encode(json)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_id_resumes_every_subscription_it_saw() {
        let mut positions = Positions::default();
        let subscribed =
            br#"{"type":"subscribed","topic":"orders","seq":4,"epoch":"e1","recovered":false}"#;
        assert_eq!(positions.follow(subscribed), Moved::Yes);
        let chat =
            br#"{"type":"subscribed","topic":"chat/a b","seq":0,"epoch":"e2","recovered":false}"#;
        positions.follow(chat);
        let change = br#"{"type":"db_change","topic":"orders","seq":9,"data":{"seq":1}}"#;
        assert_eq!(positions.follow(change), Moved::Yes);
        let presence = br#"{"type":"event","topic":"chat/a b","event":"presence.join"}"#;
        assert_eq!(positions.follow(presence), Moved::No);

        let back = Positions::parse(&positions.id());
        assert_eq!(back.of("orders"), Some(("e1", 9)));
        assert_eq!(back.of("chat/a b"), Some(("e2", 0)));

        positions.follow(br#"{"type":"unsubscribed","topic":"orders"}"#);
        assert_eq!(Positions::parse(&positions.id()).of("orders"), None);
    }

    #[test]
    fn an_id_from_elsewhere_resumes_nothing() {
        for id in ["", "not base64!", "e30", "WzEsMl0"] {
            assert_eq!(Positions::parse(id), Positions::default(), "{id}");
        }
    }

    #[test]
    fn frames_of_no_subscription_carry_no_id() {
        let mut positions = Positions::default();
        for frame in [
            &br#"{"type":"welcome","conn":"c"}"#[..],
            br#"{"type":"ack","ref":1}"#,
            br#"{"type":"db_change","topic":"orders","seq":3}"#,
            b"not json",
        ] {
            assert_eq!(positions.follow(frame), Moved::No);
        }
    }
}
