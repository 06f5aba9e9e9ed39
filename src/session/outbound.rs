//! Outbound accounting for one socket: how many bytes were accepted for the
//! client and not yet handed to the HTTP layer, and the slow-consumer cut-off.
//!
//! Why it is shared and atomic: when a client stops reading, actix-http stops
//! polling the response stream, so the session actor itself stops running and
//! cannot notice. The topics that deliver to it can: they reserve bytes on
//! this gauge before each delivery and, past the limit, mark the session slow
//! and stop sending. The [`GaugedStream`] wrapped around the socket's output
//! counts what actually left, and once the session is slow it sends a close
//! frame (4008) ahead of everything still queued, which it discards.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};

use bytes::{BufMut, Bytes, BytesMut};
use futures_util::Stream;

/// Bytes a WebSocket frame of `payload` bytes takes on the wire (server frames are unmasked).
pub fn frame_len(payload: usize) -> u64 {
    let header = match payload {
        0..=125 => 2,
        126..=65_535 => 4,
        _ => 10,
    };
    (payload + header) as u64
}

/// Shared between a session, the topics delivering to it, and its output stream.
#[derive(Debug)]
pub struct OutboundGauge {
    limit: u64,
    queued: AtomicU64,
    flushed: AtomicU64,
    slow: AtomicBool,
}

impl OutboundGauge {
    pub fn new(limit: u64) -> Arc<Self> {
        Arc::new(OutboundGauge {
            limit,
            queued: AtomicU64::new(0),
            flushed: AtomicU64::new(0),
            slow: AtomicBool::new(false),
        })
    }

    /// Counts a frame of `payload` bytes as queued. Returns false, and marks
    /// the client slow, when that would leave more than the limit unsent; the
    /// first caller to cross the limit gets `Reserve::BecameSlow`.
    pub fn reserve(&self, payload: usize) -> Reserve {
        if self.slow.load(Ordering::Relaxed) {
            return Reserve::AlreadySlow;
        }
        let queued =
            self.queued.fetch_add(frame_len(payload), Ordering::Relaxed) + frame_len(payload);
        let pending = queued.saturating_sub(self.flushed.load(Ordering::Relaxed));
        if pending <= self.limit {
            Reserve::Ok
        } else if self.slow.swap(true, Ordering::Relaxed) {
            Reserve::AlreadySlow
        } else {
            Reserve::BecameSlow
        }
    }

    pub fn is_slow(&self) -> bool {
        self.slow.load(Ordering::Relaxed)
    }

    /// Bytes accepted for the client and not yet handed to the HTTP layer.
    pub fn pending(&self) -> u64 {
        self.queued
            .load(Ordering::Relaxed)
            .saturating_sub(self.flushed.load(Ordering::Relaxed))
    }

    /// Gives back a reservation for a frame of `payload` bytes that was not sent.
    pub fn release(&self, payload: usize) {
        self.flushed
            .fetch_add(frame_len(payload), Ordering::Relaxed);
    }

    fn flushed(&self, bytes: usize) {
        self.flushed.fetch_add(bytes as u64, Ordering::Relaxed);
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reserve {
    Ok,
    BecameSlow,
    AlreadySlow,
}

/// The socket's output stream, counted on the gauge; once the client is slow,
/// a close frame with `close_code` and then the end of the stream.
pub struct GaugedStream<S> {
    inner: S,
    gauge: Arc<OutboundGauge>,
    close_code: u16,
    close_sent: bool,
}

impl<S> GaugedStream<S> {
    pub fn new(inner: S, gauge: Arc<OutboundGauge>, close_code: u16) -> Self {
        GaugedStream {
            inner,
            gauge,
            close_code,
            close_sent: false,
        }
    }
}

fn close_frame(code: u16, reason: &str) -> Bytes {
    let mut frame = BytesMut::with_capacity(4 + reason.len());
    frame.put_u8(0x88); // FIN + close opcode
    frame.put_u8((2 + reason.len()) as u8);
    frame.put_u16(code);
    frame.put_slice(reason.as_bytes());
    frame.freeze()
}

impl<S, E> Stream for GaugedStream<S>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
{
    type Item = Result<Bytes, E>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.gauge.is_slow() {
            if !this.close_sent {
                this.close_sent = true;
                return Poll::Ready(Some(Ok(close_frame(this.close_code, "slow consumer"))));
            }
            // Drain what the session still queues (it is stopping) without sending it.
            loop {
                match Pin::new(&mut this.inner).poll_next(cx) {
                    Poll::Ready(Some(Ok(_))) => continue,
                    other => return other.map(|o| o.filter(|r| r.is_err())),
                }
            }
        }
        let next = Pin::new(&mut this.inner).poll_next(cx);
        if let Poll::Ready(Some(Ok(bytes))) = &next {
            this.gauge.flushed(bytes.len());
        }
        next
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_becomes_slow_once_past_the_limit_and_only_once() {
        let gauge = OutboundGauge::new(1000);
        assert_eq!(gauge.reserve(496), Reserve::Ok); // 500 on the wire
        assert_eq!(gauge.reserve(496), Reserve::Ok); // 1000: at the limit
        assert_eq!(gauge.pending(), 1000);
        assert_eq!(gauge.reserve(0), Reserve::BecameSlow);
        assert_eq!(gauge.reserve(0), Reserve::AlreadySlow);
        assert!(gauge.is_slow());
    }

    #[test]
    fn flushed_bytes_make_room() {
        let gauge = OutboundGauge::new(1000);
        assert_eq!(gauge.reserve(898), Reserve::Ok);
        gauge.flushed(902);
        assert_eq!(gauge.pending(), 0);
        assert_eq!(gauge.reserve(898), Reserve::Ok);
    }

    #[test]
    fn frame_lengths_include_the_header() {
        assert_eq!(frame_len(125), 127);
        assert_eq!(frame_len(126), 130);
        assert_eq!(frame_len(70_000), 70_010);
    }
}
