//! `SessionActor`: one per connection, WebSocket or server-sent events.
//!
//! It owns the connection's identity and grants, its subscriptions (canonical
//! topic -> spelling and subscription id) and its publish rate limiter. It
//! reads whole messages ([`crate::http::inbound::Incoming`] reassembles
//! fragments and fails bad frames). The registry's keepalive sweep pings
//! it and tells it when to close for silence (4000) or an expired token
//! (4001): see [`crate::outbox::keepalive`]. Its subscriptions live in its [`Outbox`],
//! through which topics write frames to the socket directly; its own replies
//! go the same way, so everything leaves in the order it was written.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use actix_web::web;
use bytestring::ByteString;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use serde_json::Value;

use super::context::SessionContext;
use crate::auth::Identity;
use crate::backend::webhooks::Happening;
use crate::metrics::CloseCause;
use crate::outbox::messages::{ConnId, Disconnect, ToSession};
use crate::outbox::{Outbox, Reserve};
use crate::protocol::client::Envelope;
use crate::protocol::frames::{FrameError, Inbound};
use crate::protocol::server;
use crate::protocol::{ProtocolError, close};
use crate::registry::{SessionClosed, SessionOpened, UnsubscribeFrom};
use crate::state::AppState;

mod decisions;
mod operator;
mod requests;

/// Largest presence state, in bytes of compact JSON.
pub const MAX_PRESENCE_STATE: usize = 4096;

type Ctx = SessionContext<SessionActor>;

pub struct SessionActor {
    conn: ConnId,
    identity: Identity,
    state: web::Data<AppState>,
    next_sub_id: u64,
    publish_limiter: DefaultDirectRateLimiter,
    /// Shared with the topics delivering here, the output stream and the
    /// registry. It holds the `conn` id clients see.
    outbox: Arc<Outbox>,
    /// Topics where this connection tracks presence (or asked to), for
    /// `--max-presence-per-connection`, which keeps them few.
    tracked: Vec<Arc<str>>,
    /// For the log line at close and the admin API: when it opened (ms
    /// since the Unix epoch), frames read, how it ended.
    opened_at: i64,
    frames_in: u64,
    close_code: Option<u16>,
    /// A server-sent-events connection's secret (`welcome.session`).
    event_session: Option<String>,
    /// Requests waiting on the app's backend (subscribe and publish proxies).
    decisions: decisions::Decisions,
}

/// How long a closing session waits for the client's close reply. Closing the
/// TCP connection at once could lose the close frame (a client writing a pong
/// into a closed socket gets a reset, and a reset discards what it had not read).
const CLOSE_LINGER: Duration = Duration::from_secs(2);

impl SessionActor {
    pub fn new(state: web::Data<AppState>, identity: Identity, outbox: Arc<Outbox>) -> Self {
        let rate = NonZeroU32::new(state.config.max_publish_rate).unwrap_or(NonZeroU32::MIN);
        let burst = rate.saturating_mul(NonZeroU32::MIN.saturating_add(1));
        SessionActor {
            conn: state.next_conn_id(),
            identity,
            publish_limiter: RateLimiter::direct(Quota::per_second(rate).allow_burst(burst)),
            next_sub_id: 1,
            outbox,
            tracked: Vec::new(),
            opened_at: crate::clock::now_ms(),
            frames_in: 0,
            close_code: None,
            event_session: None,
            decisions: Default::default(),
            state,
        }
    }

    /// The session of a server-sent-events connection, whose requests come
    /// with `secret`; its welcome tells the client that secret.
    pub fn over_event_stream(mut self, secret: String) -> Self {
        self.event_session = Some(secret);
        self
    }

    /// Writes a frame of the session's own (replies, errors), counted on the outbox.
    /// It goes straight to the socket, in order with what topics send.
    fn send(&self, ctx: &mut Ctx, frame: ByteString) {
        if self.outbox.is_closing() {
            return;
        }
        match self.outbox.send_own(&frame) {
            Reserve::Ok => self.state.metrics.messages_out.inc(),
            Reserve::BecameSlow | Reserve::AlreadySlow => ctx.stop(),
        }
    }

    fn send_error(
        &self,
        ctx: &mut Ctx,
        reference: Option<&Value>,
        topic: Option<&str>,
        error: &ProtocolError,
    ) {
        self.state.metrics.error(error.code);
        self.send(ctx, server::error(reference, topic, error));
    }

    /// Closes with `code`, then waits (briefly) for the client's answer.
    fn close(&mut self, ctx: &mut Ctx, code: u16, why: &str) {
        if self.outbox.is_closing() {
            return;
        }
        self.close_code = Some(code);
        self.outbox.close(Some(code), why);
        // The connection is over for its topics now (presence leaves at once),
        // even while the close handshake lingers.
        self.leave_all_topics();
        ctx.run_later(CLOSE_LINGER, |_, ctx| ctx.stop());
    }

    /// Fails the connection for a bad frame: the close goes out and the
    /// session ends at once, reading nothing more (RFC 6455 §7.1.7).
    fn fail(&mut self, ctx: &mut Ctx, error: &FrameError) {
        tracing::debug!(conn = self.conn.0, %error, "websocket protocol error");
        if !self.outbox.is_closing() {
            self.close_code = Some(error.close_code());
            self.outbox
                .close(Some(error.close_code()), &error.to_string());
        }
        ctx.stop();
    }

    fn leave_all_topics(&mut self) {
        self.tracked.clear();
        for topic in self.outbox.unsubscribe_all() {
            self.state.registry.do_send(UnsubscribeFrom {
                topic,
                conn: self.conn,
                reply: None,
            });
        }
    }

    fn handle_text(&mut self, text: &str, ctx: &mut Ctx) {
        if self.outbox.is_closing() {
            return;
        }
        self.state.metrics.messages_in.inc();
        self.frames_in += 1;
        let envelope = Envelope::parse(text);
        let reference = envelope.reference;
        let result = envelope
            .request
            .and_then(|request| self.dispatch(request, reference.clone(), ctx));
        if let Err(error) = result {
            self.send_error(ctx, reference.as_ref(), envelope.topic.as_deref(), &error);
        }
    }

    fn reject_binary(&self, ctx: &mut Ctx) {
        let error =
            ProtocolError::bad_request("binary frames are not supported: send JSON text frames");
        self.send_error(ctx, None, None, &error);
    }
}

impl Actor for SessionActor {
    type Context = Ctx;

    fn started(&mut self, ctx: &mut Self::Context) {
        let state = self.state.clone();
        state.metrics.connections.inc();
        self.outbox.attach(ctx.address().recipient());
        self.outbox.set_expiry(self.identity.expires_at);
        state.registry.do_send(SessionOpened {
            conn: self.conn,
            outbox: self.outbox.clone(),
        });
        let wire_id = self.outbox.wire_id().to_string();
        tracing::info!(conn = %wire_id, user = self.identity.user_id.as_deref().unwrap_or("-"), "connection opened");
        state.webhooks.record(Happening::ConnectionOpened {
            conn: wire_id.clone(),
            user: self.identity.user_id.as_deref().map(str::to_owned),
        });
        let welcome = server::welcome(&server::Welcome {
            conn: &wire_id,
            user_id: self.identity.user_id.as_deref(),
            node: &state.node_id,
            idle_timeout_ms: state.config.idle_timeout_ms,
            max_frame: state.config.max_frame_bytes,
            session: self.event_session.as_deref(),
        });
        self.send(ctx, welcome);
    }

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        let code = match (self.close_code, self.outbox.is_slow()) {
            (Some(code), _) => Some(code),
            (None, true) => Some(close::SLOW_CONSUMER),
            (None, false) => None,
        };
        self.state
            .metrics
            .closes
            .with_label_values(&[CloseCause::of(code).as_str()])
            .inc();
        tracing::info!(
            conn = %self.outbox.wire_id(),
            user = self.identity.user_id.as_deref().unwrap_or("-"),
            code = code.map_or_else(|| "none (connection dropped)".to_string(), |c| c.to_string()),
            duration_ms = (crate::clock::now_ms() - self.opened_at).max(0),
            frames_in = self.frames_in,
            subscriptions = self.outbox.subscription_count(),
            "connection closed"
        );
        self.state.webhooks.record(Happening::ConnectionClosed {
            conn: self.outbox.wire_id().to_string(),
            user: self.identity.user_id.as_deref().map(str::to_owned),
            code,
            reason: CloseCause::of(code).as_str().to_string(),
        });
        self.state.metrics.connections.dec();
        self.leave_all_topics();
        self.state
            .registry
            .do_send(SessionClosed { conn: self.conn });
    }
}

impl StreamHandler<Result<Inbound, FrameError>> for SessionActor {
    fn handle(&mut self, item: Result<Inbound, FrameError>, ctx: &mut Self::Context) {
        self.outbox.heard();
        if self.outbox.is_slow() {
            // Too slow (the 4008 close is queued); whatever the client sends
            // now goes unanswered.
            ctx.stop();
            return;
        }
        match item {
            Ok(Inbound::Close(reason)) => {
                self.outbox.peer_closed();
                if !self.outbox.is_closing() {
                    // A close frame without a code reads as 1005 (RFC 6455 §7.1.5).
                    let code = reason.as_ref().map(|r| u16::from(r.code));
                    self.close_code = Some(code.unwrap_or(1005));
                    // The answer echoes the client's code (§5.5.1).
                    self.outbox.close(code, "");
                }
                ctx.stop();
            }
            Err(error) => self.fail(ctx, &error),
            // Closing: only the client's close answer matters now.
            Ok(_) if self.outbox.is_closing() => {}
            Ok(Inbound::Text(text)) => self.handle_text(&text, ctx),
            Ok(Inbound::Binary(_)) => self.reject_binary(ctx),
            Ok(Inbound::Ping(payload)) => self.outbox.pong(&payload),
            Ok(Inbound::Pong) => {}
        }
    }

    fn finished(&mut self, ctx: &mut Self::Context) {
        ctx.stop();
    }
}

impl Handler<ToSession> for SessionActor {
    type Result = ();

    fn handle(&mut self, msg: ToSession, ctx: &mut Self::Context) {
        match msg {
            ToSession::End(why) => self.disconnect(why, ctx),
            ToSession::Describe(answer) => {
                let _ = answer.send(self.describe());
            }
        }
    }
}

impl SessionActor {
    fn disconnect(&mut self, why: Disconnect, ctx: &mut Ctx) {
        match why {
            // The output stream sends the 4008 close frame itself, ahead of the backlog.
            Disconnect::TooSlow => ctx.stop(),
            Disconnect::Restart => {
                self.close(ctx, close::SERVICE_RESTART, "topic lost continuity: resume")
            }
            Disconnect::Shutdown => self.close(ctx, close::SERVICE_RESTART, "server shutting down"),
            Disconnect::Kicked => {
                tracing::info!(conn = %self.outbox.wire_id(), "disconnected by an operator");
                self.close(ctx, close::DISCONNECTED, "disconnected by an operator");
            }
            Disconnect::IdleTimeout => self.close(ctx, close::IDLE_TIMEOUT, "idle timeout"),
            Disconnect::TokenExpired => self.token_expired(ctx),
        }
    }
}
