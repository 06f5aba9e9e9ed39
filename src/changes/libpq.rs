//! A connection through libpq itself (pq-sys, the C library diesel's
//! PostgreSQL backend already links), for what diesel does not expose: a
//! socket to wait on, notifications as they arrive, and the replication
//! protocol (`logical/stream.rs`).

use std::ffi::{CStr, CString};
use std::ptr::NonNull;
use std::time::Duration;

use pq_sys::{ConnStatusType, ExecStatusType, PGconn};

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct LibpqError(pub String);

pub struct LibpqConnection {
    conn: NonNull<PGconn>,
}

// SAFETY: a libpq connection may move between threads; this one is only
// ever used by the thread that owns it (the change tracker's).
unsafe impl Send for LibpqConnection {}

impl Drop for LibpqConnection {
    fn drop(&mut self) {
        // SAFETY: `conn` came from PQconnectdb and is finished exactly once.
        unsafe { pq_sys::PQfinish(self.conn.as_ptr()) }
    }
}

fn c_string(text: &str) -> Result<CString, LibpqError> {
    CString::new(text)
        .map_err(|_| LibpqError("a NUL byte in a connection string or command".into()))
}

impl LibpqConnection {
    /// Connects to `conninfo` (a `postgres://` url).
    pub fn connect(conninfo: &str) -> Result<Self, LibpqError> {
        let conninfo = c_string(conninfo)?;
        // SAFETY: conninfo is a valid C string; a null result is checked.
        let raw = unsafe { pq_sys::PQconnectdb(conninfo.as_ptr()) };
        let conn = LibpqConnection {
            conn: NonNull::new(raw).ok_or_else(|| LibpqError("out of memory".into()))?,
        };
        // SAFETY: conn is a live connection.
        if unsafe { pq_sys::PQstatus(conn.as_ptr()) } != ConnStatusType::CONNECTION_OK {
            return Err(LibpqError(conn.error_message()));
        }
        Ok(conn)
    }

    pub fn as_ptr(&self) -> *mut PGconn {
        self.conn.as_ptr()
    }

    /// Runs `command`; an error unless its result has the `expected` status.
    pub fn exec(&mut self, command: &str, expected: ExecStatusType) -> Result<(), LibpqError> {
        let command = c_string(command)?;
        // SAFETY: conn is live and command a valid C string; the result is
        // cleared before returning.
        let status = unsafe {
            let result = pq_sys::PQexec(self.as_ptr(), command.as_ptr());
            let status = pq_sys::PQresultStatus(result);
            pq_sys::PQclear(result);
            status
        };
        if status != expected {
            return Err(LibpqError(self.error_message()));
        }
        Ok(())
    }

    pub fn error_message(&self) -> String {
        // SAFETY: PQerrorMessage returns a string owned by the connection,
        // valid until the next call on it; it is copied at once.
        unsafe {
            let message = pq_sys::PQerrorMessage(self.as_ptr());
            if message.is_null() {
                return "unknown error".into();
            }
            CStr::from_ptr(message)
                .to_string_lossy()
                .trim_end()
                .to_string()
        }
    }

    /// Reads what the socket holds into libpq's buffer, without waiting.
    pub fn consume_input(&mut self) -> Result<(), LibpqError> {
        // SAFETY: conn is live.
        if unsafe { pq_sys::PQconsumeInput(self.as_ptr()) } == 0 {
            return Err(LibpqError(self.error_message()));
        }
        Ok(())
    }

    /// Waits up to `timeout` for something to read; true when there is.
    pub fn wait_readable(&self, timeout: Duration) -> bool {
        // SAFETY: conn is live; PQsocket returns its descriptor or -1.
        let fd = unsafe { pq_sys::PQsocket(self.as_ptr()) };
        if fd < 0 {
            std::thread::sleep(timeout);
            return false;
        }
        let mut poll = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        let millis = timeout.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: one valid pollfd.
        unsafe { libc::poll(&mut poll, 1, millis) > 0 }
    }

    /// How many notifications arrived since the last call (their payloads
    /// are not needed: a notification only says "read the log").
    pub fn take_notifications(&mut self) -> Result<usize, LibpqError> {
        self.consume_input()?;
        let mut count = 0;
        loop {
            // SAFETY: conn is live; each notification returned is freed once.
            let notification = unsafe { pq_sys::PQnotifies(self.as_ptr()) };
            if notification.is_null() {
                return Ok(count);
            }
            unsafe { pq_sys::PQfreemem(notification.cast()) };
            count += 1;
        }
    }
}

/// A connection that LISTENs on the change log's channel, so the tracker
/// can sleep until a commit says "read the log" instead of a full period.
pub struct Listener {
    conn: LibpqConnection,
}

impl Listener {
    pub fn open(url: &str, channel: &str) -> Result<Self, LibpqError> {
        let mut conn = LibpqConnection::connect(url)?;
        conn.exec(
            &format!("LISTEN \"{channel}\""),
            ExecStatusType::PGRES_COMMAND_OK,
        )?;
        Ok(Listener { conn })
    }

    /// Whether a notification came since the last call.
    pub fn notified(&mut self) -> Result<bool, LibpqError> {
        Ok(self.conn.take_notifications()? > 0)
    }

    /// Waits up to `timeout`, less when a notification arrives.
    pub fn wait(&self, timeout: Duration) {
        self.conn.wait_readable(timeout);
    }
}
