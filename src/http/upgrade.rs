//! WebSocket upgrades, served beside actix-web's router rather than through
//! it: actix-http hands an upgrade request over together with its
//! connection. Once the `101` is out, nothing of the HTTP layer stays with
//! the connection (its 8 KiB read and write buffers are freed), so an idle
//! WebSocket costs only its session.
//!
//! The session runs in its connection's task ([`SessionDriver`]): its input
//! is the client's messages ([`Incoming`]); everything it writes goes to the
//! socket through its outbox, in order with what topics send.

use std::future::Future;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use actix_codec::Framed;
use actix_http::body::BodySize;
use actix_http::h1::{Codec, Message};
use actix_http::{Request, Response, header};
use actix_service::{ServiceFactory, fn_service};
use actix_web::{ResponseError, web};
use bytes::Bytes;
use futures_util::SinkExt;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::ApiError;
use super::inbound::{Incoming, READ_CHUNK};
use super::ws::{self, Accepted};
use crate::outbox::Outbox;
use crate::protocol::ErrorCode;
use crate::session::SessionActor;
use crate::session::context::{self, SessionTask};
use crate::socket::Connection;
use crate::state::AppState;

/// How long a connection whose last frames are out waits for the client to
/// close its side, when the closing handshake did not complete (the client
/// sent a bad frame, or never answered our close).
const DRAIN_LINGER: Duration = Duration::from_secs(1);

/// Once the client sends anything during that wait (its close answer, which
/// a failed connection no longer decodes), how much longer the connection
/// stays: a client that keeps sending does not extend it.
const DRAIN_QUIET: Duration = Duration::from_millis(100);

/// The path that speaks WebSocket.
pub const PATH: &str = "/api/realtime";

/// The upgrade service actix-http calls with each upgrade request.
pub fn service(
    state: web::Data<AppState>,
) -> impl ServiceFactory<
    (Request, Framed<Connection, Codec>),
    Config = (),
    Response = (),
    Error = actix_web::Error,
    InitError = (),
> {
    fn_service(
        move |(request, framed): (Request, Framed<Connection, Codec>)| {
            let state = state.clone();
            async move { Ok(serve(state, request, framed).await?) }
        },
    )
}

async fn serve(
    state: web::Data<AppState>,
    request: Request,
    mut framed: Framed<Connection, Codec>,
) -> io::Result<()> {
    let accepted = match request.path() {
        PATH => ws::accept(request.head(), &state),
        other => Err(ApiError::new(
            ErrorCode::NotFound,
            format!("no WebSocket endpoint at {other}; it is {PATH}"),
        )),
    };
    let conn = uuid::Uuid::new_v4();
    let accepted = match accepted {
        Ok(Accepted {
            admission,
            protocol,
        }) => match admission
            .identity(&conn.simple().to_string(), request.head(), &state)
            .await
        {
            Ok(identity) => Ok((identity, protocol)),
            Err(refusal) => Err(refusal),
        },
        Err(refusal) => Err(refusal),
    };
    let (identity, protocol) = match accepted {
        Ok(accepted) => accepted,
        Err(refusal) => {
            state
                .metrics
                .handshakes_refused
                .with_label_values(&[refusal.0.code.as_str()])
                .inc();
            tracing::info!(
                peer = %framed
                    .io_ref()
                    .peer_addr()
                    .map_or_else(|| "-".to_string(), |addr| addr.to_string()),
                code = refusal.0.code.as_str(),
                reason = %refusal.0.message,
                "connection refused"
            );
            return refuse(framed, &refusal).await;
        }
    };
    let mut response = actix_http::ws::handshake_response(request.head());
    if let Some(protocol) = protocol {
        response.insert_header((header::SEC_WEBSOCKET_PROTOCOL, protocol));
    }
    let response = response.finish().drop_body();
    // The request's headers are slices of actix-http's read buffer: letting
    // it go lets that buffer go.
    drop(request);
    let socket = framed.io_ref().socket();
    socket.upgrade();
    framed
        .send(Message::Item((response, BodySize::None)))
        .await
        .map_err(io::Error::other)?;
    // Bytes the client sent right behind its handshake are kept; the HTTP
    // layer's buffers and codec go at the end of this statement.
    let (connection, incoming) = {
        let parts = framed.into_parts();
        let max_frame = state.config.max_frame_bytes;
        let incoming = Incoming::new(parts.io.reader(), &parts.read_buf, max_frame);
        (parts.io, incoming)
    };

    let outbox = Outbox::with_wire_id(socket, state.outbox_policy.clone(), conn);
    // A finished session's last frames (a 4008 close behind a slow reader's
    // backlog, say) wait as long as the client could stay silent while
    // connected: a reader that resumes in time gets them, one that never
    // does is dropped then.
    let final_flush = state.config.idle_timeout();
    let session = SessionActor::new(state, identity, outbox.clone());
    // The session runs as a task of its own, so actix-http's connection
    // task (and all it held for HTTP) ends here.
    actix_web::rt::spawn(SessionDriver {
        connection,
        session: context::start(session, incoming),
        outbox,
        flushing: true,
        final_flush,
        phase: Ending::Running,
    });
    Ok(())
}

/// Where a [`SessionDriver`] is in ending its connection.
enum Ending {
    /// The session runs.
    Running,
    /// The session has stopped: its last frames go out, then the FIN, by
    /// the deadline.
    Flushing(Pin<Box<tokio::time::Sleep>>),
    /// Everything is out: the client's last bytes are read until it closes
    /// or the deadline passes.
    Draining(Pin<Box<tokio::time::Sleep>>),
}

/// Runs a session to its end, flushing the socket's backlog whenever it is
/// woken for that, then hands the client its last frames and closes.
///
/// The session (its actor and context) lives inside this task rather than
/// in a box of its own: one allocation per connection fewer.
struct SessionDriver {
    connection: Connection,
    session: SessionTask<SessionActor>,
    /// Says whether the closing handshake completed.
    outbox: Arc<Outbox>,
    /// Cleared once the socket is broken (the read side ends the session).
    flushing: bool,
    /// How long the last frames may take to go once the session has ended.
    final_flush: Duration,
    phase: Ending,
}

impl Future for SessionDriver {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = &mut *self;
        if let Ending::Running = this.phase {
            // The socket wakes this task when it has room for a backlog,
            // and so does a backlog that just started.
            if this.flushing
                && let Poll::Ready(Err(_)) = Pin::new(&mut this.connection).poll_flush(cx)
            {
                this.flushing = false;
            }
            if Pin::new(&mut this.session).poll(cx).is_pending() {
                return Poll::Pending;
            }
            this.phase = Ending::Flushing(Box::pin(tokio::time::sleep(this.final_flush)));
        }
        if let Ending::Flushing(deadline) = &mut this.phase {
            if Pin::new(&mut this.connection)
                .poll_shutdown(cx)
                .is_pending()
            {
                return deadline.as_mut().poll(cx);
            }
            // Everything is out, FIN included. When both close frames have
            // been exchanged nothing more is expected: the connection ends
            // now. Otherwise closing with the client's bytes unread would
            // send a reset, and a reset makes the client's kernel discard
            // what it has not read yet (our close frame): so read until the
            // client closes, briefly.
            if this.outbox.handshake_closed() {
                return Poll::Ready(());
            }
            this.phase = Ending::Draining(Box::pin(tokio::time::sleep(DRAIN_LINGER)));
        }
        let Ending::Draining(deadline) = &mut this.phase else {
            return Poll::Pending;
        };
        let mut heard = false;
        loop {
            let mut space = [MaybeUninit::<u8>::uninit(); READ_CHUNK];
            let mut buf = ReadBuf::uninit(&mut space);
            match Pin::new(&mut this.connection).poll_read(cx, &mut buf) {
                Poll::Ready(Ok(())) if !buf.filled().is_empty() => heard = true,
                Poll::Ready(_) => return Poll::Ready(()),
                Poll::Pending => break,
            }
        }
        if heard {
            let quiet = tokio::time::Instant::now() + DRAIN_QUIET;
            if quiet < deadline.deadline() {
                deadline.as_mut().reset(quiet);
            }
        }
        deadline.as_mut().poll(cx)
    }
}

/// Answers a refused upgrade with the JSON error, then closes.
async fn refuse(mut framed: Framed<Connection, Codec>, refusal: &ApiError) -> io::Result<()> {
    let (mut head, body) = Response::from(refusal.error_response()).into_parts();
    let body = actix_http::body::to_bytes(body)
        .await
        .unwrap_or_else(|_| Bytes::new());
    head.head_mut()
        .set_connection_type(actix_http::ConnectionType::Close);
    let size = BodySize::Sized(body.len() as u64);
    // One write: a client may read the body only as far as the head's segment.
    for message in [
        Message::Item((head, size)),
        Message::Chunk(Some(body)),
        Message::Chunk(None),
    ] {
        framed.feed(message).await.map_err(io::Error::other)?;
    }
    framed.flush().await.map_err(io::Error::other)?;
    let mut connection = framed.into_parts().io;
    std::future::poll_fn(|cx| Pin::new(&mut connection).poll_shutdown(cx)).await
}
