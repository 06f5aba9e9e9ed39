//! A WebSocket connection's incoming bytes, as the session's
//! `WebsocketContext` reads them: [`Incoming`].
//!
//! Memory per connection stays bounded whatever a client sends. A read
//! lands on the stack and only what arrived is copied out, so an idle
//! connection holds no read buffer. actix-http's frame decoder buffers a
//! whole frame before it compares its length with the limit, and
//! actix-web-actors drains the socket into its buffer before decoding one
//! message: so [`FrameGauge`] reads each frame header as it passes, refuses
//! a frame announced larger than `max_frame` at its header, and the stream
//! hands over at most one frame's end per poll, so that pipelined frames
//! wait in the kernel, not in the session.

use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use actix_http::error::PayloadError;
use bytes::Bytes;
use futures_util::Stream;
use tokio::io::{AsyncRead, ReadBuf};

use super::connection::Connection;

/// Bytes read from the socket per poll, at most.
pub const READ_CHUNK: usize = 4096;

/// The error [`Incoming`] ends with when a frame is announced too large;
/// actix-web-actors passes it on as an I/O error carrying this text, which
/// [`is_oversized`] recognises.
fn oversized() -> PayloadError {
    PayloadError::Overflow
}

/// Whether a WebSocket protocol error is [`Incoming`]'s refusal of a frame
/// announced larger than `max_frame` (to be closed with 1009).
pub fn is_oversized(error: &actix_http::ws::ProtocolError) -> bool {
    match error {
        actix_http::ws::ProtocolError::Overflow => true,
        actix_http::ws::ProtocolError::Io(io) => io.to_string() == oversized().to_string(),
        _ => false,
    }
}

/// Follows the frame boundaries of a client's byte stream by reading each
/// header (RFC 6455 §5.2) and skipping its payload.
#[derive(Debug)]
pub struct FrameGauge {
    max_frame: u64,
    /// The header read so far.
    header: [u8; 14],
    have: usize,
    /// Payload bytes of the current frame still to pass.
    payload_left: u64,
}

/// A frame header announced more than `max_frame` payload bytes.
#[derive(Debug, PartialEq, Eq)]
pub struct Oversized;

impl FrameGauge {
    pub fn new(max_frame: u64) -> Self {
        FrameGauge {
            max_frame,
            header: [0; 14],
            have: 0,
            payload_left: 0,
        }
    }

    /// The header's full length, once its first two bytes are known.
    fn header_len(&self) -> usize {
        let extended = match self.header[1] & 0x7f {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        let mask = if self.header[1] & 0x80 != 0 { 4 } else { 0 };
        2 + extended + mask
    }

    fn payload_len(&self) -> u64 {
        match self.header[1] & 0x7f {
            126 => u64::from(u16::from_be_bytes([self.header[2], self.header[3]])),
            127 => {
                let mut len = [0u8; 8];
                len.copy_from_slice(&self.header[2..10]);
                u64::from_be_bytes(len)
            }
            n => u64::from(n),
        }
    }

    /// Passes `bytes` through; answers how many of them make up to the end
    /// of the first frame that ends inside them (all of them if none does).
    pub fn feed(&mut self, bytes: &[u8]) -> Result<usize, Oversized> {
        let mut at = 0;
        while at < bytes.len() {
            if self.payload_left > 0 {
                let take = (bytes.len() - at)
                    .min(usize::try_from(self.payload_left).unwrap_or(usize::MAX));
                at += take;
                self.payload_left -= take as u64;
                if self.payload_left == 0 {
                    return Ok(at);
                }
                continue;
            }
            self.header[self.have] = bytes[at];
            self.have += 1;
            at += 1;
            if self.have < 2 || self.have < self.header_len() {
                continue;
            }
            let len = self.payload_len();
            if len > self.max_frame {
                return Err(Oversized);
            }
            self.have = 0;
            self.payload_left = len;
            if len == 0 {
                return Ok(at);
            }
        }
        Ok(at)
    }
}

/// The client's bytes, handed over at most one frame's end per poll.
pub struct Incoming {
    connection: Connection,
    /// Bytes read but not handed over yet: the client's bytes sent right
    /// behind its handshake, or what followed a frame's end in one read.
    held: Option<Bytes>,
    gauge: FrameGauge,
    /// A frame ended in what was handed over last: the next poll yields
    /// once, so the session decodes it before more is read.
    frame_ended: bool,
    /// A frame was announced too large: the stream has ended.
    refused: bool,
}

impl Incoming {
    pub fn new(connection: Connection, early: Bytes, max_frame: u64) -> Self {
        Incoming {
            connection,
            held: Some(early).filter(|b| !b.is_empty()),
            gauge: FrameGauge::new(max_frame),
            frame_ended: false,
            refused: false,
        }
    }

    /// Hands over `bytes` up to the first frame end, holding the rest.
    fn pass(&mut self, mut bytes: Bytes) -> Poll<Option<Result<Bytes, PayloadError>>> {
        let Ok(upto) = self.gauge.feed(&bytes) else {
            // Nothing after the refusal is read: the session closes.
            self.refused = true;
            return Poll::Ready(Some(Err(oversized())));
        };
        // A frame that ends where the read ended needs no yield: the next
        // read hands over at most up to the end of the frame after it.
        if upto < bytes.len() {
            self.held = Some(bytes.split_off(upto));
            self.frame_ended = true;
        }
        Poll::Ready(Some(Ok(bytes)))
    }
}

impl Stream for Incoming {
    type Item = Result<Bytes, PayloadError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.refused {
            return Poll::Ready(None);
        }
        if std::mem::take(&mut self.frame_ended) {
            // The reader drains this stream until it is pending, then
            // decodes: pending here makes it decode the frame that ended.
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        if let Some(held) = self.held.take() {
            return self.pass(held);
        }
        let mut space = [MaybeUninit::<u8>::uninit(); READ_CHUNK];
        let mut buf = ReadBuf::uninit(&mut space);
        match ready!(Pin::new(&mut self.connection).poll_read(cx, &mut buf)) {
            Err(e) => Poll::Ready(Some(Err(PayloadError::Io(e)))),
            Ok(()) if buf.filled().is_empty() => Poll::Ready(None),
            Ok(()) => {
                let bytes = Bytes::copy_from_slice(buf.filled());
                self.pass(bytes)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A masked client frame header for a payload of `len` bytes.
    fn header(len: u64) -> Vec<u8> {
        let mut h = vec![0x81];
        match len {
            0..=125 => h.push(0x80 | len as u8),
            126..=65_535 => {
                h.push(0x80 | 126);
                h.extend_from_slice(&(len as u16).to_be_bytes());
            }
            _ => {
                h.push(0x80 | 127);
                h.extend_from_slice(&len.to_be_bytes());
            }
        }
        h.extend_from_slice(&[1, 2, 3, 4]);
        h
    }

    #[test]
    fn frame_ends_are_found_across_any_split() {
        let mut stream = header(3);
        stream.extend_from_slice(b"abc");
        stream.extend(header(0));
        stream.extend(header(300));
        stream.extend(vec![b'x'; 300]);
        let ends = [9, 15, 15 + 8 + 300];
        for split in 1..stream.len() {
            let mut gauge = FrameGauge::new(1000);
            let mut found = Vec::new();
            let mut offset = 0;
            for chunk in stream.chunks(split) {
                let mut at = 0;
                while at < chunk.len() {
                    let upto = gauge.feed(&chunk[at..]).unwrap();
                    at += upto;
                    if gauge.have == 0 && gauge.payload_left == 0 {
                        found.push(offset + at);
                    }
                }
                offset += chunk.len();
            }
            assert_eq!(found, ends, "chunks of {split}");
        }
    }

    #[test]
    fn a_frame_announced_too_large_is_refused_at_its_header() {
        let mut gauge = FrameGauge::new(65_536);
        assert_eq!(gauge.feed(&header(65_536)), Ok(14));
        let mut gauge = FrameGauge::new(65_536);
        assert_eq!(gauge.feed(&header(65_537)), Err(Oversized));
        let mut gauge = FrameGauge::new(65_536);
        assert_eq!(gauge.feed(&header(1 << 62)), Err(Oversized));
    }

    #[test]
    fn the_refusal_is_recognised_through_actix() {
        let io = std::io::Error::other(format!("{}", oversized()));
        assert!(is_oversized(&actix_http::ws::ProtocolError::Io(io)));
        let other = std::io::Error::other("connection reset");
        assert!(!is_oversized(&actix_http::ws::ProtocolError::Io(other)));
    }
}
