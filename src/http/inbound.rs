//! A WebSocket connection's incoming side, as its session reads it:
//! [`Incoming`], a stream of whole client messages and control frames.
//!
//! Memory per connection stays bounded whatever a client sends. A read
//! lands on the stack and only what arrived is kept, so an idle connection
//! holds no read buffer; nothing more is read while a whole message waits
//! in the buffer, so pipelined frames wait in the kernel, not here; a frame
//! announced larger than `max_frame` is refused at its header.
//!
//! After the first error the stream yields that error and ends: a failed
//! connection reads nothing more (RFC 6455 §7.1.7), so a bad frame costs
//! one decode, not one per poll.

use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::BytesMut;
use futures_util::Stream;
use tokio::io::{AsyncRead, ReadBuf};

use crate::protocol::frames::{FrameError, Inbound, MessageDecoder};
use crate::socket::Connection;

/// Bytes read from the socket per poll, at most.
pub const READ_CHUNK: usize = 4096;

/// The client's messages, decoded from its connection.
pub struct Incoming {
    connection: Connection,
    /// Bytes read but not decoded yet: part of a frame, or what followed
    /// one in the same read.
    buf: BytesMut,
    decoder: MessageDecoder,
    ended: bool,
}

impl Incoming {
    /// `early` holds what the client sent right behind its handshake.
    pub fn new(connection: Connection, early: &[u8], max_frame: u64) -> Self {
        Incoming {
            connection,
            buf: BytesMut::from(early),
            decoder: MessageDecoder::new(max_frame),
            ended: false,
        }
    }

    fn end(&mut self) {
        self.ended = true;
        self.buf = BytesMut::new();
    }
}

impl Stream for Incoming {
    type Item = Result<Inbound, FrameError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            if this.ended {
                return Poll::Ready(None);
            }
            match this.decoder.decode(&mut this.buf) {
                Ok(Some(item)) => {
                    if this.buf.is_empty() {
                        // An idle connection keeps no read buffer.
                        this.buf = BytesMut::new();
                    }
                    return Poll::Ready(Some(Ok(item)));
                }
                Err(error) => {
                    this.end();
                    return Poll::Ready(Some(Err(error)));
                }
                Ok(None) => {}
            }
            let mut space = [MaybeUninit::<u8>::uninit(); READ_CHUNK];
            let mut read = ReadBuf::uninit(&mut space);
            match ready!(Pin::new(&mut this.connection).poll_read(cx, &mut read)) {
                Ok(()) if !read.filled().is_empty() => this.buf.extend_from_slice(read.filled()),
                // The client went away (or the connection broke).
                _ => this.end(),
            }
        }
    }
}
