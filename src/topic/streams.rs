//! Token streams in progress on a topic: their tokens so far, so that a
//! subscriber who joins mid-stream first gets what was already sent, then the
//! rest live, with no gap and no repeat. A plain struct, owned by the topic.

use std::sync::Arc;

use thin_vec::ThinVec;

use crate::protocol::server::TopicFrame;

/// Tokens kept per stream; a longer stream's late joiners miss the oldest.
pub const MAX_TOKENS_KEPT: usize = 20_000;

#[derive(Debug, Default)]
pub struct RunningStreams {
    /// In the order the streams started; a topic rarely has more than a
    /// few, and most never have one (a `ThinVec` is one pointer while empty).
    streams: ThinVec<(Arc<str>, Vec<TopicFrame>)>,
}

impl RunningStreams {
    pub fn keep(&mut self, stream: &Arc<str>, token: TopicFrame) {
        match self.streams.iter_mut().find(|(id, _)| id == stream) {
            Some((_, tokens)) if tokens.len() < MAX_TOKENS_KEPT => tokens.push(token),
            Some(_) => {}
            None => self.streams.push((stream.clone(), vec![token])),
        }
    }

    pub fn end(&mut self, stream: &Arc<str>) {
        self.streams.retain(|(id, _)| id != stream);
    }

    /// Every running stream's tokens so far, stream by stream, in order.
    pub fn tokens(&self) -> Vec<TopicFrame> {
        self.streams
            .iter()
            .flat_map(|(_, tokens)| tokens.iter().cloned())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn token(n: u64) -> TopicFrame {
        TopicFrame::event("ai:token", &json!({"token": n}), None, 0, n, None)
    }

    #[test]
    fn a_finished_stream_is_forgotten_and_others_keep_their_order() {
        let (a, b): (Arc<str>, Arc<str>) = ("a".into(), "b".into());
        let mut streams = RunningStreams::default();
        streams.keep(&a, token(1));
        streams.keep(&b, token(2));
        streams.keep(&a, token(3));
        assert_eq!(streams.tokens().len(), 3);
        streams.end(&a);
        let left = streams.tokens();
        assert_eq!(left.len(), 1);
        assert!(left[0].for_spelling("x/y").contains(r#""seq":2"#));
    }
}
