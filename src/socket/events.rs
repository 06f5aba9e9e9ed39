//! A connection whose server frames leave as server-sent events (PROTOCOL
//! §11): [`EventStream`] is its write side, shared like a WebSocket's
//! socket; [`EventBody`] is the `text/event-stream` response body that
//! actix-http sends from it.
//!
//! The session, its topics and its outbox write the same bytes here as to a
//! WebSocket (whole server frames: text, ping, close), and this side writes
//! each as SSE: a text frame becomes `data: <json>`, with an `id:` when it
//! moves a subscription (see [`super::resume`]); a ping becomes a comment
//! line; a close becomes a last `event: close` (its code and reason) and
//! the end of the body. So one code path serves both transports.
//!
//! Backpressure: what the body has not taken yet waits here. Past `limit`
//! bytes the reader is too slow: what waits is dropped (it was never
//! partly sent: the body takes whole events), the close event with the
//! slow-consumer code goes instead, and the body ends.

use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use bytes::{BufMut, Bytes, BytesMut};
use futures_util::Stream;
use futures_util::task::AtomicWaker;

use super::Offer;
use super::resume::{Moved, Positions};

const TEXT: u8 = 0x1;
const CLOSE: u8 = 0x8;
const PING: u8 = 0x9;

/// The comment a keepalive ping becomes.
const KEEPALIVE: &[u8] = b": keepalive\n\n";

#[derive(Debug, Default)]
struct State {
    /// Events written that the body has not taken yet.
    pending: BytesMut,
    /// Past the limit once: nothing more is accepted.
    slow: bool,
    /// The close event is written: the body ends once `pending` is out.
    ended: bool,
    /// The body is gone (the client left, or a write to it failed).
    gone: bool,
    positions: Positions,
}

/// One server-sent-events connection's shared write side.
#[derive(Debug, Default)]
pub struct EventStream {
    state: Mutex<State>,
    /// The body's task, woken when there is something to send.
    body: AtomicWaker,
    /// The session's input, woken when the body is gone.
    input: AtomicWaker,
}

impl EventStream {
    pub fn new() -> Arc<EventStream> {
        Arc::default()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // Each critical section leaves `State` consistent before anything
        // that could panic.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The response body that sends this stream's events.
    pub fn body(self: &Arc<Self>) -> EventBody {
        EventBody {
            stream: self.clone(),
        }
    }

    /// Whether the client's side is gone; while it is not, `cx`'s task is
    /// woken when it goes.
    pub fn poll_gone(&self, cx: &mut Context<'_>) -> Poll<()> {
        self.input.register(cx.waker());
        match self.state().gone {
            true => Poll::Ready(()),
            false => Poll::Pending,
        }
    }

    /// The session is over: the body ends once what waits is out (a close
    /// event, if the session sent one, is among it).
    pub fn finish(&self) {
        self.state().ended = true;
        self.body.wake();
    }

    pub fn is_slow(&self) -> bool {
        let state = self.state();
        state.slow || state.gone
    }

    pub fn pending_bytes(&self) -> usize {
        self.state().pending.len()
    }

    /// Writes server frames (`frames`, whole WebSocket frames as the server
    /// sends them) or one text frame's payload (`text`) as events.
    pub(super) fn offer(&self, written: Written<'_>, limit: usize, slow_close: &[u8]) -> Offer {
        let mut state = self.state();
        if state.slow || state.ended || state.gone {
            return Offer::Refused;
        }
        match written {
            Written::Text(payload) => state.put_text(payload),
            Written::Frames(frames) => {
                for (opcode, payload) in frames_in(frames) {
                    match opcode {
                        TEXT => state.put_text(payload),
                        PING => state.pending.put_slice(KEEPALIVE),
                        CLOSE => {
                            state.put_close(payload);
                            break;
                        }
                        // A pong answers a client's ping, which SSE has not.
                        _ => {}
                    }
                }
            }
        }
        let offer = if state.pending.len() > limit {
            state.slow = true;
            state.pending = BytesMut::new();
            let close = frames_in(slow_close).next().map_or(&[][..], |(_, p)| p);
            state.put_close(close);
            Offer::BecameSlow
        } else {
            Offer::Accepted
        };
        drop(state);
        self.body.wake();
        offer
    }
}

/// What is offered to an event stream.
pub(super) enum Written<'a> {
    /// One text frame's payload.
    Text(&'a [u8]),
    /// Whole WebSocket frames.
    Frames(&'a [u8]),
}

impl State {
    fn put_text(&mut self, payload: &[u8]) {
        if self.positions.follow(payload) == Moved::Yes {
            let id = self.positions.id();
            self.pending.reserve(id.len() + payload.len() + 12);
            self.pending.put_slice(b"id: ");
            self.pending.put_slice(id.as_bytes());
            self.pending.put_u8(b'\n');
        }
        // Server frames are compact JSON: no line breaks to split.
        self.pending.put_slice(b"data: ");
        self.pending.put_slice(payload);
        self.pending.put_slice(b"\n\n");
    }

    /// The last event: the close frame's code and reason.
    fn put_close(&mut self, payload: &[u8]) {
        let (code, reason) = match payload {
            [high, low, reason @ ..] => (
                Some(u16::from_be_bytes([*high, *low])),
                String::from_utf8_lossy(reason),
            ),
            _ => (None, "".into()),
        };
        let data = serde_json::json!({"code": code, "reason": reason});
        self.pending.put_slice(b"event: close\ndata: ");
        self.pending.put_slice(data.to_string().as_bytes());
        self.pending.put_slice(b"\n\n");
        self.ended = true;
    }
}

/// The (opcode, payload) of each unmasked frame in `bytes`; a cut frame
/// ends the walk.
fn frames_in(bytes: &[u8]) -> impl Iterator<Item = (u8, &[u8])> {
    let mut rest = bytes;
    std::iter::from_fn(move || {
        let [first, second, after @ ..] = rest else {
            return None;
        };
        let (len, after) = match second & 0x7f {
            126 => {
                let (len, after) = after.split_first_chunk::<2>()?;
                (u16::from_be_bytes(*len) as usize, after)
            }
            127 => {
                let (len, after) = after.split_first_chunk::<8>()?;
                (usize::try_from(u64::from_be_bytes(*len)).ok()?, after)
            }
            n => (n as usize, after),
        };
        if after.len() < len {
            return None;
        }
        let (payload, next) = after.split_at(len);
        rest = next;
        Some((first & 0x0f, payload))
    })
}

/// The `text/event-stream` body: whatever waits, as it comes; it ends after
/// the close event. Dropped (the client left, or actix-http failed to write
/// to it), it tells the session's input.
pub struct EventBody {
    stream: Arc<EventStream>,
}

impl Stream for EventBody {
    type Item = Result<Bytes, std::convert::Infallible>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let stream = &self.stream;
        stream.body.register(cx.waker());
        let mut state = stream.state();
        if !state.pending.is_empty() {
            let events = std::mem::take(&mut state.pending).freeze();
            return Poll::Ready(Some(Ok(events)));
        }
        match state.ended {
            true => Poll::Ready(None),
            false => Poll::Pending,
        }
    }
}

impl Drop for EventBody {
    fn drop(&mut self) {
        let mut state = self.stream.state();
        state.gone = true;
        state.pending = BytesMut::new();
        drop(state);
        self.stream.input.wake();
    }
}

#[cfg(test)]
mod tests {
    use futures_util::StreamExt;

    use super::*;
    use crate::socket::{close_frame, put_text_frame};

    fn text(frames: &[&str]) -> Vec<u8> {
        let mut out = BytesMut::new();
        for frame in frames {
            put_text_frame(&mut out, frame.as_bytes());
        }
        out.to_vec()
    }

    async fn next(body: &mut EventBody) -> String {
        let bytes = body.next().await.expect("an event").unwrap();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    #[tokio::test]
    async fn frames_become_events_and_a_close_ends_the_body() {
        let stream = EventStream::new();
        let mut body = stream.body();
        let frames = text(&[
            r#"{"type":"welcome"}"#,
            r#"{"type":"subscribed","topic":"t","seq":2,"epoch":"e","recovered":false}"#,
        ]);
        assert_eq!(
            stream.offer(Written::Frames(&frames), 1 << 20, b""),
            Offer::Accepted
        );
        stream.offer(Written::Frames(&[0x89, 0x00]), 1 << 20, b"");
        let id = {
            let mut positions = Positions::default();
            positions.follow(br#"{"type":"subscribed","topic":"t","seq":2,"epoch":"e"}"#);
            positions.id()
        };
        assert_eq!(
            next(&mut body).await,
            format!(
                "data: {{\"type\":\"welcome\"}}\n\nid: {id}\ndata: {{\"type\":\"subscribed\",\"topic\":\"t\",\"seq\":2,\"epoch\":\"e\",\"recovered\":false}}\n\n: keepalive\n\n"
            )
        );
        stream.offer(Written::Frames(&close_frame(1012, "bye")), 1 << 20, b"");
        assert_eq!(
            next(&mut body).await,
            "event: close\ndata: {\"code\":1012,\"reason\":\"bye\"}\n\n"
        );
        assert!(body.next().await.is_none(), "the body ends after the close");
        assert_eq!(
            stream.offer(Written::Text(b"{}"), 1 << 20, b""),
            Offer::Refused
        );
    }

    #[tokio::test]
    async fn a_reader_past_the_limit_gets_only_the_slow_close() {
        let stream = EventStream::new();
        let mut body = stream.body();
        let close = close_frame(4008, "slow consumer");
        let big = "x".repeat(300);
        let mut offers = 0;
        let outcome = loop {
            match stream.offer(Written::Text(big.as_bytes()), 1000, &close) {
                Offer::Accepted => offers += 1,
                other => break other,
            }
        };
        assert_eq!((outcome, offers), (Offer::BecameSlow, 3));
        assert_eq!(
            stream.offer(Written::Text(b"{}"), 1000, &close),
            Offer::Refused
        );
        assert!(stream.is_slow());
        assert_eq!(
            next(&mut body).await,
            "event: close\ndata: {\"code\":4008,\"reason\":\"slow consumer\"}\n\n"
        );
        assert!(body.next().await.is_none());
    }

    #[tokio::test]
    async fn a_dropped_body_refuses_frames_and_wakes_the_input() {
        let stream = EventStream::new();
        let body = stream.body();
        let gone = futures_util::future::poll_fn(|cx| stream.poll_gone(cx));
        let waiting = tokio::spawn({
            let stream = stream.clone();
            async move { futures_util::future::poll_fn(|cx| stream.poll_gone(cx)).await }
        });
        drop(gone);
        tokio::task::yield_now().await;
        drop(body);
        tokio::time::timeout(std::time::Duration::from_secs(5), waiting)
            .await
            .expect("the input learns the client left")
            .unwrap();
        assert_eq!(
            stream.offer(Written::Text(b"{}"), 1 << 20, b""),
            Offer::Refused
        );
    }
}
