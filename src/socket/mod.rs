//! The TCP connection as both actix-http and the WebSocket session's outbox
//! write to it: [`Connection`] is the I/O actix-http reads and writes (and,
//! after an upgrade, the session's task: `http::upgrade`); [`Socket`] is the
//! same connection's write side for frames, shared with the topics that
//! deliver to it.
//!
//! Why topics write to the socket themselves: a fan-out to a thousand
//! sessions through actix-http's response stream cost, per delivery, a wake
//! of the connection's task, a poll of its dispatcher (read side, timers,
//! body), a copy into its write buffer and then the `send`. Writing the frame
//! from the topic's own thread, straight into the kernel when nothing is
//! waiting before it, leaves only the `send`. What the kernel does not take
//! waits in a backlog, which the connection's task flushes when the socket is
//! writable again (its `poll_flush`), so a slow reader never blocks a topic.
//!
//! Order on the wire: the upgrade's `101` response is written through
//! `poll_write` by actix-http's codec. Frames offered before it has gone out
//! wait in the backlog; `poll_flush` is called only once the codec's own
//! buffer is empty, so that is when the backlog follows it and frames may go
//! straight out from then on.
//!
//! Backpressure: past `limit` bytes waiting in the backlog the reader is too
//! slow. The backlog is cut to the frame already half on the wire, a 4008
//! close frame goes behind it, and nothing more is accepted.
//!
//! A connection over server-sent events ([`events`]) has the same write
//! side: [`Socket::events`] takes the same frames and writes them as events.

use std::io::{self, IoSlice};
use std::net::Shutdown;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll, ready};

use actix_web::rt::net::TcpStream;
use futures_util::task::AtomicWaker;
use prometheus::IntGauge;
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};

use self::backlog::Output;
use self::encode::text_header;
pub use self::encode::{
    MAX_CONTROL_FRAME, close_frame, close_payload, control_frame, put_text_frame,
};

mod backlog;
mod encode;
pub mod events;
pub mod resume;

use self::events::{EventStream, Written};

/// Frames up to this size are copied into one buffer for a single `send`.
const SMALL_FRAME: usize = 512;

/// Where the connection is in its life, as far as frames are concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Plain HTTP: actix-http writes everything; no frames.
    Http,
    /// Upgraded, but the `101` response is not written yet: frames wait.
    AwaitingHead,
    /// actix-http has written (part of) the `101`: frames still wait, until
    /// its buffer is empty.
    HeadWritten,
    /// Frames go straight to the kernel when nothing waits before them.
    Frames,
}

/// What became of a frame offered to the socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offer {
    /// In the kernel, or waiting in the backlog.
    Accepted,
    /// This frame took the backlog past its limit: the reader is too slow,
    /// and the close frame is queued. Only one offer ever answers this.
    BecameSlow,
    /// Refused: the reader was already too slow, or the connection is gone.
    Refused,
}

/// One TCP connection's shared state.
#[derive(Debug)]
struct Shared {
    stream: TcpStream,
    output: Mutex<Output>,
    /// The dispatcher's task, woken to flush a backlog that just started.
    flusher: AtomicWaker,
}

impl Shared {
    fn output(&self) -> MutexGuard<'_, Output> {
        // Each critical section leaves `Output` consistent before anything
        // that could panic, so a poisoned lock is safe to take over.
        self.output
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Writes what it can of the backlog; `Pending` (with the caller's task
    /// woken when writable) while some remains.
    fn poll_flush_backlog(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut output = self.output();
        while let Some(backlog) = &output.backlog {
            match self.stream.try_write(&backlog.bytes) {
                Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Ok(n) => output.consumed(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    // try_write cleared the readiness; this registers for the next.
                    ready!(self.stream.poll_write_ready(cx))?;
                }
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        if output.phase == Phase::HeadWritten {
            output.phase = Phase::Frames;
        }
        Poll::Ready(Ok(()))
    }
}

/// The I/O actix-http serves a connection on.
pub struct Connection {
    shared: Arc<Shared>,
}

impl Connection {
    /// A connection on `stream`; `backlog_total` (a metric) follows its backlog.
    pub fn new(stream: TcpStream, backlog_total: Option<IntGauge>) -> Connection {
        Connection {
            shared: Arc::new(Shared {
                stream,
                output: Mutex::new(Output {
                    phase: Phase::Http,
                    backlog: None,
                    slow: false,
                    total: backlog_total,
                }),
                flusher: AtomicWaker::new(),
            }),
        }
    }

    /// A second handle on the connection, to read from while this one
    /// flushes and shuts down.
    pub fn reader(&self) -> Connection {
        Connection {
            shared: self.shared.clone(),
        }
    }

    /// The client's address, for logs.
    pub fn peer_addr(&self) -> Option<std::net::SocketAddr> {
        self.shared.stream.peer_addr().ok()
    }

    /// The frame-writing side, for the connection's extensions.
    pub fn socket(&self) -> Socket {
        Socket {
            way: Way::WebSocket(Arc::downgrade(&self.shared)),
        }
    }
}

impl AsyncRead for Connection {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let stream = &self.shared.stream;
        loop {
            ready!(stream.poll_read_ready(cx))?;
            // SAFETY: `recv` only writes into the unfilled part, and only the
            // `n` bytes it reports are marked initialised.
            let unfilled = unsafe { buf.unfilled_mut() };
            let read = stream.try_io(Interest::READABLE, || {
                socket2::SockRef::from(stream).recv(unfilled)
            });
            match read {
                Ok(n) => {
                    // SAFETY: the kernel initialised `n` bytes.
                    unsafe { buf.assume_init(n) };
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for Connection {
    /// actix-http's own bytes: responses, and an upgrade's `101`.
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let shared = &self.shared;
        {
            let mut output = shared.output();
            match output.phase {
                Phase::Http | Phase::HeadWritten => {}
                Phase::AwaitingHead => output.phase = Phase::HeadWritten,
                // actix-http writes nothing after the `101`; were it to, its
                // bytes would follow the frames already offered.
                Phase::Frames => {
                    output.queue([buf, &[]], 0);
                    return Poll::Ready(Ok(buf.len()));
                }
            }
        }
        loop {
            ready!(shared.stream.poll_write_ready(cx))?;
            match shared.stream.try_write(buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                other => return Poll::Ready(other),
            }
        }
    }

    /// actix-http calls this whenever its own buffer is empty: the backlog
    /// goes out behind it, and the dispatcher's task becomes the one woken
    /// to flush it again.
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.shared.flusher.register(cx.waker());
        self.shared.poll_flush_backlog(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.shared.poll_flush_backlog(cx))?;
        Poll::Ready(socket2::SockRef::from(&self.shared.stream).shutdown(Shutdown::Write))
    }
}

/// A connection's frame-writing side. It does not keep the connection open:
/// once actix-http is done with it, every offer is refused.
#[derive(Debug, Clone)]
pub struct Socket {
    way: Way,
}

#[derive(Debug, Clone)]
enum Way {
    WebSocket(Weak<Shared>),
    Events(Arc<EventStream>),
}

impl Socket {
    /// The write side of a server-sent-events connection.
    pub fn events(stream: Arc<EventStream>) -> Socket {
        Socket {
            way: Way::Events(stream),
        }
    }

    /// Whether this connection is a server-sent-events stream (whose client
    /// only listens: it is kept by writes succeeding, not by what it sends).
    pub fn is_event_stream(&self) -> bool {
        matches!(self.way, Way::Events(_))
    }

    /// The connection is being upgraded: frames may be offered from now on,
    /// and go out after the `101`.
    pub fn upgrade(&self) {
        if let Way::WebSocket(shared) = &self.way
            && let Some(shared) = shared.upgrade()
        {
            shared.output().phase = Phase::AwaitingHead;
        }
    }

    /// Asks the CPU to fetch this socket's state ahead of a delivery.
    pub fn prefetch(&self) {
        if let Way::WebSocket(shared) = &self.way {
            let shared = shared.as_ptr() as *const u8;
            crate::cache::prefetch(shared);
            // The output lock lies a cache line or two further on.
            crate::cache::prefetch(shared.wrapping_add(64));
        }
    }

    pub fn is_slow(&self) -> bool {
        match &self.way {
            Way::WebSocket(shared) => shared.upgrade().is_none_or(|shared| shared.output().slow),
            Way::Events(stream) => stream.is_slow(),
        }
    }

    /// Bytes offered that the kernel did not take yet.
    pub fn backlog_bytes(&self) -> usize {
        match &self.way {
            Way::WebSocket(shared) => shared
                .upgrade()
                .map_or(0, |shared| shared.output().backlog_len()),
            Way::Events(stream) => stream.pending_bytes(),
        }
    }

    /// Offers a text frame with `payload`; past `limit` bytes waiting, the
    /// reader is too slow and `close` is queued instead.
    pub fn offer_text(&self, payload: &[u8], limit: usize, close: &[u8]) -> Offer {
        match &self.way {
            Way::WebSocket(shared) => {
                let mut header = [0u8; 10];
                let header = text_header(payload.len(), &mut header);
                offer(shared, [header, payload], limit, close)
            }
            Way::Events(stream) => stream.offer(Written::Text(payload), limit, close),
        }
    }

    /// Offers bytes that are whole frames already (the session's control
    /// frames); they count toward the limit like any other.
    pub fn offer_frames(&self, frames: &[u8], limit: usize, close: &[u8]) -> Offer {
        match &self.way {
            Way::WebSocket(shared) => offer(shared, [frames, &[]], limit, close),
            Way::Events(stream) => stream.offer(Written::Frames(frames), limit, close),
        }
    }
}

fn offer(shared: &Weak<Shared>, parts: [&[u8]; 2], limit: usize, close: &[u8]) -> Offer {
    let Some(shared) = shared.upgrade() else {
        return Offer::Refused;
    };
    let total = parts[0].len() + parts[1].len();
    if total == 0 {
        // Nothing to send; an empty entry would blur the frame bounds.
        return Offer::Accepted;
    }
    let mut output = shared.output();
    if output.slow {
        return Offer::Refused;
    }
    let mut written = 0;
    let was_empty = output.backlog.is_none();
    if output.phase == Phase::Frames && was_empty {
        // Straight to the kernel, past tokio's readiness bookkeeping: a
        // `WouldBlock` here only queues the frame, and the flush that
        // follows goes through tokio, which then learns of it itself.
        let socket = socket2::SockRef::from(&shared.stream);
        let result = if parts[1].is_empty() {
            socket.send_with_flags(parts[0], libc::MSG_NOSIGNAL)
        } else if total <= SMALL_FRAME {
            // One contiguous `send` costs the kernel less than a
            // two-part `sendmsg`; copying a small frame costs less still.
            let mut frame = [0u8; SMALL_FRAME];
            frame[..parts[0].len()].copy_from_slice(parts[0]);
            frame[parts[0].len()..total].copy_from_slice(parts[1]);
            socket.send_with_flags(&frame[..total], libc::MSG_NOSIGNAL)
        } else {
            let slices = [IoSlice::new(parts[0]), IoSlice::new(parts[1])];
            socket.send_vectored_with_flags(&slices, libc::MSG_NOSIGNAL)
        };
        match result {
            Ok(n) if n == total => return Offer::Accepted,
            Ok(n) => written = n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            // The connection is broken; its read side ends the session.
            Err(_) => return Offer::Refused,
        }
    }
    output.queue(parts, written);
    let offer = if output.backlog_len() > limit {
        output.slow = true;
        output.cut_for_close(close);
        Offer::BecameSlow
    } else {
        Offer::Accepted
    };
    drop(output);
    if was_empty || offer == Offer::BecameSlow {
        shared.flusher.wake();
    }
    offer
}

/// A loopback connection upgraded as actix-http would leave it (the `101`
/// written and flushed), and a raw client on the other end.
#[cfg(test)]
pub(crate) async fn test_pair() -> (Connection, Socket, tests::RawClient) {
    use tokio::io::AsyncWriteExt;
    let (mut connection, socket, mut client) = tests::upgraded_pair().await;
    connection.write_all(tests::HEAD).await.unwrap();
    connection.flush().await.unwrap();
    assert_eq!(client.read_exactly(tests::HEAD.len()).await, tests::HEAD);
    (connection, socket, client)
}

#[cfg(test)]
pub(crate) mod tests {
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    pub const HEAD: &[u8] = b"HTTP/1.1 101 Switching Protocols\r\n\r\n";

    /// The client's end: reads raw bytes, with a deadline.
    pub struct RawClient(tokio::net::TcpStream);

    impl RawClient {
        pub async fn read_exactly(&mut self, n: usize) -> Vec<u8> {
            let mut buf = vec![0; n];
            tokio::time::timeout(Duration::from_secs(5), self.0.read_exact(&mut buf))
                .await
                .expect("the bytes arrive")
                .unwrap();
            buf
        }

        pub async fn assert_nothing_more(&mut self) {
            let mut byte = [0u8; 1];
            let read = tokio::time::timeout(Duration::from_millis(150), self.0.read(&mut byte));
            assert!(read.await.is_err(), "nothing more was sent");
        }

        /// One frame: (opcode, payload).
        async fn frame(&mut self) -> (u8, Vec<u8>) {
            let head = self.read_exactly(2).await;
            let len = match head[1] {
                126 => u16::from_be_bytes(self.read_exactly(2).await.try_into().unwrap()) as usize,
                127 => u64::from_be_bytes(self.read_exactly(8).await.try_into().unwrap()) as usize,
                n => n as usize,
            };
            (head[0] & 0x0f, self.read_exactly(len).await)
        }
    }

    pub async fn upgraded_pair() -> (Connection, Socket, RawClient) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let connection = Connection::new(server, None);
        let socket = connection.socket();
        socket.upgrade();
        (connection, socket, RawClient(client))
    }

    #[tokio::test]
    async fn frames_offered_before_the_101_is_flushed_follow_it() {
        let (mut connection, socket, mut client) = upgraded_pair().await;
        assert_eq!(socket.offer_text(b"early", 1 << 20, b""), Offer::Accepted);
        connection.write_all(HEAD).await.unwrap();
        assert_eq!(client.read_exactly(HEAD.len()).await, HEAD);
        client.assert_nothing_more().await;
        connection.flush().await.unwrap();
        assert_eq!(client.read_exactly(7).await, b"\x81\x05early");
        assert_eq!(socket.offer_text(b"next", 1 << 20, b""), Offer::Accepted);
        assert_eq!(
            client.read_exactly(6).await,
            b"\x81\x04next",
            "once the 101 is out, frames go without the dispatcher"
        );
    }

    #[tokio::test]
    async fn a_backlog_is_let_go_once_the_reader_has_caught_up() {
        let (mut connection, socket, mut client) = test_pair().await;
        let payload = vec![b'x'; 1000];
        let mut offered = 0;
        while socket.backlog_bytes() == 0 {
            assert_eq!(socket.offer_text(&payload, 1 << 30, b""), Offer::Accepted);
            offered += 1;
            assert!(offered < 100_000, "the kernel never filled up");
        }
        let flushing = tokio::spawn(async move {
            connection.flush().await.unwrap();
            connection
        });
        for _ in 0..offered {
            assert_eq!(client.frame().await, (0x1, payload.clone()));
        }
        let _connection = flushing.await.unwrap();
        let Way::WebSocket(shared) = &socket.way else {
            unreachable!()
        };
        let shared = shared.upgrade().unwrap();
        assert!(
            shared.output().backlog.is_none(),
            "no buffer kept once drained"
        );
        assert_eq!(socket.offer_text(b"next", 1 << 30, b""), Offer::Accepted);
        assert_eq!(client.frame().await, (0x1, b"next".to_vec()));
    }

    #[tokio::test]
    async fn a_reader_that_falls_behind_gets_whole_frames_then_the_close() {
        let (mut connection, socket, mut client) = test_pair().await;
        let payload = vec![b'x'; 1000];
        let close = close_frame(4008, "slow consumer");
        let limit = 64 * 1024;
        let mut offered = 0;
        let outcome = loop {
            match socket.offer_text(&payload, limit, &close) {
                Offer::Accepted => offered += 1,
                other => break other,
            }
            assert!(offered < 100_000, "the limit is never reached");
        };
        assert_eq!(outcome, Offer::BecameSlow);
        assert_eq!(socket.offer_text(b"more", limit, &close), Offer::Refused);
        assert!(socket.is_slow());

        // The dispatcher flushes what waits while the client catches up.
        let flushing = tokio::spawn(async move {
            connection.flush().await.unwrap();
            connection
        });
        let mut texts = 0;
        loop {
            match client.frame().await {
                (0x1, body) => {
                    assert_eq!(body, payload, "frame {texts} arrives whole");
                    texts += 1;
                }
                (0x8, body) => {
                    assert_eq!(&body[..2], &4008u16.to_be_bytes());
                    break;
                }
                (op, _) => panic!("unexpected opcode {op}"),
            }
        }
        assert!(
            texts > 0 && texts <= offered,
            "{texts} of {offered} before the close"
        );
        let _still_open = flushing.await.unwrap();
        client.assert_nothing_more().await;
    }

    #[tokio::test]
    async fn a_closed_connection_refuses_frames() {
        let (connection, socket, _client) = test_pair().await;
        drop(connection);
        assert_eq!(socket.offer_text(b"late", 1 << 20, b""), Offer::Refused);
        assert!(socket.is_slow());
    }
}
