//! The requests of server-sent-events connections (PROTOCOL §11): such a
//! client sends its requests as HTTP POSTs, not on its connection. This
//! node's [`EventStreams`] maps each open stream's `conn` id to its session
//! secret and its session's input queue; [`EventInput`] is that queue as
//! the session reads it, in the order the POSTs were taken.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use bytestring::ByteString;
use futures_util::Stream;
use subtle::ConstantTimeEq;
use tokio::sync::mpsc;

use crate::protocol::frames::{FrameError, Inbound};
use crate::socket::events::EventStream;

/// Requests waiting for one stream's session, at most; a POST beyond them
/// waits for room, so a client's requests cost bounded memory.
pub const INPUT_QUEUE: usize = 64;

/// Where a stream's requests go.
#[derive(Debug, Clone)]
pub struct StreamInput {
    secret: Arc<str>,
    queue: mpsc::Sender<ByteString>,
}

/// Why a stream's requests were not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum InputError {
    /// No such stream here, it has ended, or the secret is wrong: the
    /// client cannot tell which (nor learn which conn ids exist).
    #[error("no such connection, or a wrong session")]
    NotFound,
}

impl StreamInput {
    /// Queues `requests` (each one JSON request text) for the session, in
    /// order, waiting for room.
    pub async fn send(&self, requests: Vec<ByteString>) -> Result<(), InputError> {
        for request in requests {
            self.queue
                .send(request)
                .await
                .map_err(|_| InputError::NotFound)?;
        }
        Ok(())
    }
}

/// This node's open event streams, by `conn` id.
#[derive(Debug, Default)]
pub struct EventStreams {
    open: Mutex<HashMap<String, StreamInput>>,
}

impl EventStreams {
    fn open(&self) -> MutexGuard<'_, HashMap<String, StreamInput>> {
        self.open
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Opens the way in for stream `conn`, whose requests come with
    /// `secret`; `first` are requests the session reads before any POSTed
    /// one (a listen-only stream's subscribes). The input ends when the
    /// stream's client is gone or [`EventStreams::close`] is called.
    pub fn register(
        &self,
        conn: String,
        secret: &str,
        first: Vec<ByteString>,
        stream: Arc<EventStream>,
    ) -> EventInput {
        let (queue, requests) = mpsc::channel(INPUT_QUEUE);
        let input = StreamInput {
            secret: secret.into(),
            queue,
        };
        self.open().insert(conn, input);
        EventInput {
            first: first.into_iter(),
            requests,
            stream,
        }
    }

    /// The way in for stream `conn`, if `secret` is its secret.
    pub fn find(&self, conn: &str, secret: &str) -> Result<StreamInput, InputError> {
        let open = self.open();
        let input = open.get(conn).ok_or(InputError::NotFound)?;
        match bool::from(input.secret.as_bytes().ct_eq(secret.as_bytes())) {
            true => Ok(input.clone()),
            false => Err(InputError::NotFound),
        }
    }

    /// Requests another node took for stream `conn` (its secret checked
    /// there), queued behind those already taken; the future ends once they
    /// are (dropped if the stream has ended meanwhile).
    pub fn deliver(
        &self,
        conn: &str,
        requests: Vec<ByteString>,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        let input = self.open().get(conn).cloned();
        async move {
            if let Some(input) = input {
                let _ = input.send(requests).await;
            }
        }
    }

    /// Stream `conn` has ended: its requests are refused from now on.
    pub fn close(&self, conn: &str) {
        self.open().remove(conn);
    }

    pub fn len(&self) -> usize {
        self.open().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A secret no one can guess: 244 random bits.
pub fn new_secret() -> String {
    let a = uuid::Uuid::new_v4().simple();
    let b = uuid::Uuid::new_v4().simple();
    format!("{a}{b}")
}

/// A stream's requests as its session reads them: as client messages, like
/// a WebSocket's. It ends when the client is gone.
pub struct EventInput {
    first: std::vec::IntoIter<ByteString>,
    requests: mpsc::Receiver<ByteString>,
    stream: Arc<EventStream>,
}

impl Stream for EventInput {
    type Item = Result<Inbound, FrameError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.stream.poll_gone(cx).is_ready() {
            return Poll::Ready(None);
        }
        if let Some(request) = this.first.next() {
            return Poll::Ready(Some(Ok(Inbound::Text(request))));
        }
        this.requests
            .poll_recv(cx)
            .map(|request| request.map(|text| Ok(Inbound::Text(text))))
    }
}

#[cfg(test)]
mod tests {
    use futures_util::StreamExt;

    use super::*;

    #[tokio::test]
    async fn requests_reach_the_session_in_order_and_only_with_the_secret() {
        let streams = EventStreams::default();
        let stream = EventStream::new();
        let first = vec![ByteString::from("first")];
        let mut input = streams.register("c1".into(), "s3cret", first, stream.clone());
        assert_eq!(
            streams.find("c1", "wrong").unwrap_err(),
            InputError::NotFound
        );
        assert_eq!(
            streams.find("c2", "s3cret").unwrap_err(),
            InputError::NotFound
        );
        let way_in = streams.find("c1", "s3cret").unwrap();
        way_in
            .send(vec!["a".into(), "b".into()])
            .await
            .expect("taken");
        for expected in ["first", "a", "b"] {
            match input.next().await {
                Some(Ok(Inbound::Text(text))) => assert_eq!(text, expected),
                other => panic!("{other:?}"),
            }
        }
        let body = stream.body();
        drop(body);
        assert!(input.next().await.is_none(), "the client left: input ends");
        streams.close("c1");
        assert!(streams.find("c1", "s3cret").is_err());
        drop(input);
        assert_eq!(
            way_in.send(vec!["late".into()]).await,
            Err(InputError::NotFound)
        );
    }
}
