//! WebSocket upgrades, served beside actix-web's router rather than through
//! it: actix-http hands an upgrade request over together with its
//! connection. Once the `101` is out, nothing of the HTTP layer stays with
//! the connection (its 8 KiB read and write buffers are freed), so an idle
//! WebSocket costs only its session.
//!
//! The session still runs in actix-web-actors' `WebsocketContext`: its input
//! is the connection's bytes ([`Incoming`]), its output the control frames
//! it writes, which go to the socket behind everything topics sent.

use std::future::Future;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use actix_codec::Framed;
use actix_http::body::BodySize;
use actix_http::h1::{Codec, Message};
use actix_http::{Request, Response, header};
use actix_service::{ServiceFactory, fn_service};
use actix_web::{ResponseError, web};
use actix_web_actors::ws::WebsocketContext;
use bytes::Bytes;
use futures_util::{SinkExt, Stream, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::ApiError;
use super::connection::Connection;
use super::inbound::{Incoming, READ_CHUNK};
use super::ws;
use crate::protocol::ErrorCode;
use crate::session::SessionActor;
use crate::session::outbound::{Outbox, OutboxStream};
use crate::state::AppState;

/// How long a connection whose last frames are out waits for the client to
/// close its side.
const DRAIN_LINGER: Duration = Duration::from_secs(2);

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
    let accepted = match accepted {
        Ok(accepted) => accepted,
        Err(refusal) => {
            state
                .metrics
                .handshakes_refused
                .with_label_values(&[refusal.0.code.as_str()])
                .inc();
            tracing::info!(
                peer = ?framed.io_ref().peer_addr(),
                code = refusal.0.code.as_str(),
                reason = %refusal.0.message,
                "connection refused"
            );
            return refuse(framed, &refusal).await;
        }
    };
    let mut response = actix_http::ws::handshake_response(request.head());
    if let Some(protocol) = accepted.protocol {
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
    let (connection, early) = {
        let parts = framed.into_parts();
        (parts.io, Bytes::copy_from_slice(&parts.read_buf))
    };

    let outbox = Outbox::new(socket, state.outbox_policy.clone());
    let codec = actix_http::ws::Codec::new().max_size(state.config.max_frame_bytes as usize);
    let incoming = Incoming::new(connection.reader(), early, state.config.max_frame_bytes);
    // A finished session's last frames (a 4008 close behind a slow reader's
    // backlog, say) wait as long as the client could stay silent while
    // connected: a reader that resumes in time gets them, one that never
    // does is dropped then.
    let final_flush = state.config.idle_timeout();
    let session = SessionActor::new(state, accepted.identity, outbox.clone());
    let output = WebsocketContext::with_codec(session, incoming, codec);
    // The session runs as a task of its own, so actix-http's connection
    // task (and all it held for HTTP) ends here.
    actix_web::rt::spawn(SessionDriver {
        connection,
        session: OutboxStream::new(output, outbox),
        flushing: true,
        final_flush,
        shut: false,
        closing: None,
    });
    Ok(())
}

/// Runs a session to its end, flushing the socket's backlog whenever it is
/// woken for that, then hands the client its last frames and closes.
///
/// The session (`S`, its `WebsocketContext`, which writes its control
/// frames) lives inside this task rather than in a box of its own: one
/// allocation per connection fewer.
struct SessionDriver<S> {
    connection: Connection,
    session: OutboxStream<S>,
    /// Cleared once the socket is broken (the read side ends the session).
    flushing: bool,
    /// How long the last frames may take to go once the session has ended.
    final_flush: Duration,
    /// Set once the last frames and the FIN are out.
    shut: bool,
    /// Set when the session has ended: the final flush's deadline.
    closing: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<S> Future for SessionDriver<S>
where
    S: Stream<Item = Result<Bytes, actix_web::Error>> + Unpin,
{
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = &mut *self;
        if this.closing.is_none() {
            // The socket wakes this task when it has room for a backlog,
            // and so does a backlog that just started.
            if this.flushing
                && let Poll::Ready(Err(_)) = Pin::new(&mut this.connection).poll_flush(cx)
            {
                this.flushing = false;
            }
            match this.session.poll_next_unpin(cx) {
                Poll::Ready(None) => {
                    this.closing = Some(Box::pin(tokio::time::sleep(this.final_flush)));
                }
                Poll::Ready(Some(_)) | Poll::Pending => return Poll::Pending,
            }
        }
        if !this.shut {
            if Pin::new(&mut this.connection)
                .poll_shutdown(cx)
                .is_pending()
            {
                return match &mut this.closing {
                    Some(deadline) => deadline.as_mut().poll(cx),
                    None => Poll::Pending,
                };
            }
            // Everything is out, FIN included. Closing now, with the
            // client's close reply unread, would send a reset, and a reset
            // makes the client's kernel discard what it has not read yet:
            // our close frame. So read until the client closes, briefly.
            this.shut = true;
            this.closing = Some(Box::pin(tokio::time::sleep(DRAIN_LINGER)));
        }
        loop {
            let mut space = [MaybeUninit::<u8>::uninit(); READ_CHUNK];
            let mut buf = ReadBuf::uninit(&mut space);
            match Pin::new(&mut this.connection).poll_read(cx, &mut buf) {
                Poll::Ready(Ok(())) if !buf.filled().is_empty() => continue,
                Poll::Ready(_) => return Poll::Ready(()),
                Poll::Pending => break,
            }
        }
        match &mut this.closing {
            Some(deadline) => deadline.as_mut().poll(cx),
            None => Poll::Pending,
        }
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
