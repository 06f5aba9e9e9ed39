//! Reading many subscribers at once, as the fan-out and stream modes do:
//! raw sockets after the handshake, all read by one thread through one
//! epoll, each whole frame handed to the caller, so that the load client
//! is not the limit.

use super::*;

/// A subscriber's socket, taken from tungstenite after the handshake, to be
/// read as raw frames by [`read_all`] (a `Message` per frame allocates).
/// Nothing is sent to a subscriber between its `subscribed` reply and the
/// first event, so tungstenite holds no unread bytes here; a frame that does
/// not parse would say otherwise.
pub(super) fn raw_socket(ws: Socket) -> std::net::TcpStream {
    let MaybeTlsStream::Plain(stream) = ws.into_inner() else {
        unreachable!("the bench speaks plain ws://")
    };
    stream.into_std().unwrap()
}

/// Reads every subscriber's frames on one thread with one epoll (mio): a
/// delivery costs one `recv` and no task to wake. Readiness is edge
/// triggered, so a short read has emptied the socket (new data raises a new
/// edge) and needs no second `recv` to learn so. Calls `on_text` with each
/// text frame's payload until it answers false or `deadline` passes.
pub(super) fn read_all(
    sockets: Vec<std::net::TcpStream>,
    framing: Framing,
    deadline: Instant,
    mut on_text: impl FnMut(&[u8]) -> bool,
) {
    use mio::{Events, Interest, Poll, Token};
    use std::io::Read;
    let mut poll = Poll::new().unwrap();
    let mut connections: Vec<(mio::net::TcpStream, Vec<u8>)> = sockets
        .into_iter()
        .enumerate()
        .map(|(i, socket)| {
            socket.set_nonblocking(true).unwrap();
            let mut stream = mio::net::TcpStream::from_std(socket);
            poll.registry()
                .register(&mut stream, Token(i), Interest::READABLE)
                .unwrap();
            (stream, Vec::with_capacity(512))
        })
        .collect();
    let mut events = Events::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        poll.poll(&mut events, Some(left.min(Duration::from_millis(100))))
            .unwrap();
        for event in &events {
            let (stream, pending) = &mut connections[event.token().0];
            loop {
                match stream.read(&mut chunk) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        pending.extend_from_slice(&chunk[..n]);
                        let go_on = match framing {
                            Framing::WebSocket => take_frames(pending, &mut on_text),
                            Framing::Events => take_events(pending, &mut on_text),
                        };
                        if !go_on {
                            return;
                        }
                        if n < chunk.len() {
                            break;
                        }
                    }
                }
            }
        }
    }
}

/// What the subscribers' bytes are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Framing {
    /// WebSocket frames.
    WebSocket,
    /// A server-sent-events body: events end at a blank line (actix-http's
    /// chunk sizes fall between events, never inside one).
    Events,
}

/// Hands each whole event at the front of `pending` to `on_text`.
fn take_events(pending: &mut Vec<u8>, on_text: &mut impl FnMut(&[u8]) -> bool) -> bool {
    let mut start = 0;
    let mut go_on = true;
    while go_on {
        let Some(end) = pending[start..].windows(2).position(|w| w == b"\n\n") else {
            break;
        };
        go_on = on_text(&pending[start..start + end]);
        start += end + 2;
    }
    pending.drain(..start);
    go_on
}

/// Hands each whole text frame at the front of `pending` to `on_text`,
/// keeping a partial one; false once `on_text` is.
fn take_frames(pending: &mut Vec<u8>, on_text: &mut impl FnMut(&[u8]) -> bool) -> bool {
    use tokio_tungstenite::tungstenite::protocol::frame::FrameHeader;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::OpCode;
    let mut start = 0;
    let mut go_on = true;
    while go_on {
        let mut cursor = std::io::Cursor::new(&pending[start..]);
        let Some((header, len)) = FrameHeader::parse(&mut cursor).expect("a frame header") else {
            break;
        };
        let body = start + cursor.position() as usize;
        if body + len as usize > pending.len() {
            break;
        }
        start = body + len as usize;
        if let OpCode::Data(_) = header.opcode {
            go_on = on_text(&pending[body..start]);
        }
    }
    pending.drain(..start);
    go_on
}
