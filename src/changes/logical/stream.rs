//! A replication connection streaming one logical slot (`START_REPLICATION
//! SLOT … LOGICAL`) through libpq, as `pg_recvlogical` does. The walsender
//! keeps one decoding context for the connection's life, so each commit is
//! decoded once, as it is written, and sent at once; the slot's position
//! moves only when [`ReplicationStream::confirm`] says the changes are safe.
//!
//! The copy-both sub-protocol: the server sends `w` (XLogData: start LSN,
//! end LSN, clock, then one `pgoutput` message) and `k` (keepalive: the
//! WAL's end, clock, whether a reply is wanted); the client sends `r`
//! (standby status: received, flushed and applied LSN, clock, no reply).

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use pq_sys::ExecStatusType;

use crate::changes::libpq::{LibpqConnection, LibpqError};

/// Send a status at least this often: the server drops a silent client
/// after `wal_sender_timeout` (60 s by default).
const STATUS_EVERY: Duration = Duration::from_secs(10);
/// Report a new confirmed position at most this often: the walsender may
/// write the slot to disk (an fsync) on each, and sends nothing meanwhile.
const CONFIRM_EVERY: Duration = Duration::from_secs(1);
/// Messages taken off the socket per read: bounds the memory a backlog
/// takes and how long the tracker goes without delivering.
const READ_AT_MOST: usize = 50_000;

#[derive(Debug, thiserror::Error)]
#[error("replication stream: {0}")]
pub struct StreamError(pub String);

impl StreamError {
    /// Another session streams this slot (another node of the cluster).
    pub fn slot_in_use(&self) -> bool {
        self.0.contains("is active for PID")
    }
}

pub struct ReplicationStream {
    conn: LibpqConnection,
    /// The end of the WAL the server last said it has sent everything up to.
    wal_end: u64,
    confirmed: u64,
    /// The confirmed position last sent.
    reported: u64,
    status_sent: Instant,
}

impl From<LibpqError> for StreamError {
    fn from(error: LibpqError) -> Self {
        StreamError(error.0)
    }
}

/// The `replication=database` form of a `postgres://` url.
fn replication_url(url: &str) -> String {
    let separator = if url.contains('?') { '&' } else { '?' };
    format!("{url}{separator}replication=database")
}

fn pg_clock_micros() -> i64 {
    const PG_EPOCH_UNIX_S: u64 = 946_684_800;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    (now.as_micros() as i64) - (PG_EPOCH_UNIX_S as i64) * 1_000_000
}

impl ReplicationStream {
    /// Connects and starts streaming `slot` from its confirmed position.
    pub fn open(url: &str, slot: &str, publication: &str) -> Result<Self, StreamError> {
        let mut conn = LibpqConnection::connect(&replication_url(url))?;
        // Names come from realtide (a hex epoch, a fixed publication), quoted anyway.
        conn.exec(
            &format!(
                "START_REPLICATION SLOT \"{slot}\" LOGICAL 0/0 \
                 (proto_version '1', publication_names '\"{publication}\"')"
            ),
            ExecStatusType::PGRES_COPY_BOTH,
        )?;
        Ok(ReplicationStream {
            conn,
            wal_end: 0,
            confirmed: 0,
            reported: 0,
            status_sent: Instant::now(),
        })
    }

    /// Appends every `pgoutput` message that has arrived (at most
    /// [`READ_AT_MOST`] more), without waiting.
    pub fn read_available(&mut self, messages: &mut Vec<Vec<u8>>) -> Result<(), StreamError> {
        let start = messages.len();
        // Until the socket is empty: one read may bring only part of a
        // message (over TLS, one record at a time), so a read that completed
        // none says nothing about what is still waiting. Stopping there left
        // a backlog in the socket and logged it a transaction per pass.
        while messages.len() - start < READ_AT_MOST {
            self.read_buffered(messages)?;
            if !self.wait(Duration::ZERO) {
                break;
            }
        }
        let due = if self.confirmed > self.reported {
            CONFIRM_EVERY
        } else {
            STATUS_EVERY
        };
        if self.status_sent.elapsed() >= due {
            self.send_status()?;
        }
        Ok(())
    }

    /// What one read of the socket brought.
    fn read_buffered(&mut self, messages: &mut Vec<Vec<u8>>) -> Result<(), StreamError> {
        self.conn.consume_input()?;
        loop {
            let mut buffer: *mut std::os::raw::c_char = std::ptr::null_mut();
            // SAFETY: conn is live; on a positive length, buffer points at
            // that many bytes allocated by libpq, copied then freed.
            let length = unsafe { pq_sys::PQgetCopyData(self.conn.as_ptr(), &mut buffer, 1) };
            if length == 0 {
                break;
            }
            if length < 0 {
                return Err(StreamError(match length {
                    -1 => "the server ended the stream".into(),
                    _ => self.conn.error_message(),
                }));
            }
            let data = unsafe {
                let bytes =
                    std::slice::from_raw_parts(buffer as *const u8, length as usize).to_vec();
                pq_sys::PQfreemem(buffer.cast());
                bytes
            };
            match data.first() {
                Some(b'w') if data.len() >= 25 => messages.push(data[25..].to_vec()),
                Some(b'k') if data.len() >= 18 => {
                    let mut end = [0; 8];
                    end.copy_from_slice(&data[1..9]);
                    self.wal_end = self.wal_end.max(u64::from_be_bytes(end));
                    if data[17] == 1 {
                        self.send_status()?;
                    }
                }
                _ => return Err(StreamError("an unexpected copy message".into())),
            }
        }
        Ok(())
    }

    /// The end of the WAL the server has sent everything up to.
    pub fn wal_end(&self) -> u64 {
        self.wal_end
    }

    /// Waits up to `timeout` for something to read; true when there is.
    pub fn wait(&self, timeout: Duration) -> bool {
        self.conn.wait_readable(timeout)
    }

    /// Every change up to `lsn` is safe: the slot may move there. Told to
    /// the server within [`CONFIRM_EVERY`]; a crash before that only makes
    /// the server send again what is already logged.
    pub fn confirm(&mut self, lsn: u64) -> Result<(), StreamError> {
        if lsn > self.confirmed {
            self.confirmed = lsn;
            if self.status_sent.elapsed() >= CONFIRM_EVERY {
                self.send_status()?;
            }
        }
        Ok(())
    }

    fn send_status(&mut self) -> Result<(), StreamError> {
        let mut message = Vec::with_capacity(34);
        message.push(b'r');
        message.extend_from_slice(&self.wal_end.max(self.confirmed).to_be_bytes());
        message.extend_from_slice(&self.confirmed.to_be_bytes());
        message.extend_from_slice(&self.confirmed.to_be_bytes());
        message.extend_from_slice(&pg_clock_micros().to_be_bytes());
        message.push(0);
        // SAFETY: conn is live; the buffer outlives the calls.
        let sent = unsafe {
            pq_sys::PQputCopyData(
                self.conn.as_ptr(),
                message.as_ptr().cast(),
                message.len() as i32,
            ) == 1
                && pq_sys::PQflush(self.conn.as_ptr()) == 0
        };
        if !sent {
            return Err(StreamError(self.conn.error_message()));
        }
        self.status_sent = Instant::now();
        self.reported = self.confirmed;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_replication_form_of_a_url_keeps_its_parameters() {
        assert_eq!(
            replication_url("postgres://u@h/db"),
            "postgres://u@h/db?replication=database"
        );
        assert_eq!(
            replication_url("postgres://u@h/db?sslmode=disable"),
            "postgres://u@h/db?sslmode=disable&replication=database"
        );
    }
}
