//! What a connection's kernel has not taken yet: the [`Output`] side of a
//! socket, its [`Backlog`] in wire order with the frame bounds, so that a
//! slow reader's backlog can be cut at a frame boundary before its close.

use std::collections::VecDeque;

use bytes::{Buf, BufMut, BytesMut};
use prometheus::IntGauge;

use super::Phase;

#[derive(Debug)]
pub(super) struct Output {
    pub(super) phase: Phase,
    /// What the kernel has not taken yet; kept only while there is some, so
    /// an idle connection holds no buffer.
    pub(super) backlog: Option<Box<Backlog>>,
    pub(super) slow: bool,
    /// The server's total of backlog bytes, kept up to date with this one.
    pub(super) total: Option<IntGauge>,
}

/// Bytes the kernel has not taken yet.
#[derive(Debug, Default)]
pub(super) struct Backlog {
    /// In wire order.
    pub(super) bytes: BytesMut,
    /// Lengths of the frames in `bytes` (the first possibly part-sent), so
    /// that a slow reader's backlog can be cut at a frame boundary.
    pub(super) frames: VecDeque<usize>,
    /// Whether the kernel has taken part of the first frame.
    pub(super) first_started: bool,
}

impl Output {
    pub(super) fn backlog_len(&self) -> usize {
        self.backlog.as_ref().map_or(0, |b| b.bytes.len())
    }

    pub(super) fn count(&self, delta: i64) {
        if let Some(total) = &self.total {
            total.add(delta);
        }
    }

    /// Queues what the kernel did not take of a frame made of `parts`, of
    /// which it took the first `written` bytes.
    pub(super) fn queue(&mut self, parts: [&[u8]; 2], written: usize) {
        let total = parts[0].len() + parts[1].len();
        let backlog = self.backlog.get_or_insert_default();
        let mut skip = written;
        for part in parts {
            if skip >= part.len() {
                skip -= part.len();
                continue;
            }
            backlog.bytes.put_slice(&part[skip..]);
            skip = 0;
        }
        if backlog.frames.is_empty() {
            backlog.first_started = written > 0;
        }
        backlog.frames.push_back(total - written);
        self.count((total - written) as i64);
    }

    /// Notes that the kernel took `n` bytes from the front of the backlog.
    pub(super) fn consumed(&mut self, mut n: usize) {
        self.count(-(n as i64));
        let Some(backlog) = self.backlog.as_mut() else {
            return;
        };
        backlog.bytes.advance(n);
        if backlog.bytes.is_empty() {
            self.backlog = None;
            return;
        }
        while let Some(first) = backlog.frames.front_mut() {
            if n >= *first {
                n -= *first;
                backlog.frames.pop_front();
                backlog.first_started = false;
            } else {
                *first -= n;
                backlog.first_started |= n > 0;
                break;
            }
        }
    }

    /// Keeps only the frame already half on the wire, then queues `close`.
    pub(super) fn cut_for_close(&mut self, close: &[u8]) {
        let before = self.backlog_len();
        let backlog = self.backlog.get_or_insert_default();
        let keep = match (backlog.first_started, backlog.frames.front()) {
            (true, Some(&first)) => first,
            _ => 0,
        };
        backlog.bytes.truncate(keep);
        backlog.frames.truncate(usize::from(keep > 0));
        backlog.bytes.put_slice(close);
        backlog.frames.push_back(close.len());
        self.count(self.backlog_len() as i64 - before as i64);
    }
}

impl Drop for Output {
    fn drop(&mut self) {
        // What a closed connection never sent leaves the total with it.
        self.count(-(self.backlog_len() as i64));
    }
}
