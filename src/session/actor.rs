//! `SessionActor`: one per WebSocket connection.
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
use crate::changes::Filter;
use crate::history;
use crate::metrics::CloseCause;
use crate::outbox::messages::{ConnId, Disconnect, ToSession};
use crate::outbox::{Outbox, Reserve, Subscription};
use crate::protocol::client::{
    Envelope, HistoryRequest, PublishRequest, Request, SubscribeRequest,
};
use crate::protocol::frames::{FrameError, Inbound};
use crate::protocol::server;
use crate::protocol::{ErrorCode, ProtocolError, close};
use crate::registry::{
    ForTopic, PublishTo, SessionClosed, SessionOpened, SubscribeTo, TopicCommand, UnsubscribeFrom,
};
use crate::state::AppState;
use crate::topic::messages::{
    AckTo, Publish, PublishReply, Refilter, Subscribe, SubscriberHandle, Track, UnsubscribeReply,
    Untrack,
};
use crate::topic::{TopicKind, TopicName};

mod operator;

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
            state,
        }
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

    fn dispatch(
        &mut self,
        request: Request,
        reference: Option<Value>,
        ctx: &mut Ctx,
    ) -> Result<(), ProtocolError> {
        match request {
            Request::Ping => {
                self.send(ctx, server::pong(reference.as_ref()));
                Ok(())
            }
            Request::Subscribe(subscribe) => self.subscribe(subscribe, reference),
            Request::Unsubscribe { topic } => {
                let name = self.parse_topic(&topic)?;
                let reply = UnsubscribeReply {
                    reference,
                    spelling: topic.into(),
                    handle: self.subscriber_handle(),
                };
                // The topic answers, behind the `subscribed` of any
                // subscribe still in flight; with no subscription, we do.
                if let Some(reply) = self.drop_subscription(&name.shared(), Some(reply)) {
                    reply.send();
                }
                Ok(())
            }
            Request::Publish(publish) => self.publish(publish, reference),
            Request::Auth { token } => self.reauthenticate(&token, reference, ctx),
            Request::Track { topic, state } => self.track(&topic, state, reference),
            Request::Untrack { topic } => {
                let name = self.parse_topic(&topic)?;
                self.untracked(name.as_str());
                let ack = AckTo {
                    reference,
                    id: None,
                    handle: self.subscriber_handle(),
                };
                self.state.registry.do_send(ForTopic {
                    topic: name.shared(),
                    message: TopicCommand::Untrack(Untrack {
                        conn: self.conn,
                        ack,
                    }),
                });
                Ok(())
            }
            Request::History(request) => self.history(request, reference, ctx),
            Request::Chat(chat) => {
                let publish = PublishRequest {
                    topic: format!("{}{}", server::CHAT_PREFIX, chat.room_id),
                    event: server::CHAT_EVENT.to_string(),
                    data: serde_json::json!({"text": chat.text, "metadata": chat.metadata}),
                    persist: Some(true),
                    id: None,
                };
                self.publish(publish, reference)
            }
        }
    }

    fn parse_topic(&self, spelling: &str) -> Result<TopicName, ProtocolError> {
        TopicName::parse(spelling, &self.state.config.project_id)
    }

    fn subscribe(
        &mut self,
        request: SubscribeRequest,
        reference: Option<Value>,
    ) -> Result<(), ProtocolError> {
        let name = self.parse_topic(&request.topic)?;
        if !self.identity.grants.can_subscribe(name.as_str()) {
            return Err(ProtocolError::forbidden(format!(
                "your token does not allow subscribing to `{name}`"
            )));
        }
        let (own_filter, filter) = match name.kind() {
            TopicKind::Table => self.table_filter(&name, request.filter.as_ref())?,
            TopicKind::PubSub if request.filter.is_some() => {
                return Err(ProtocolError::bad_request(
                    "`filter` applies to table topics only",
                ));
            }
            TopicKind::PubSub => (Filter::default(), Filter::default()),
        };
        let limit = self.state.config.max_subscriptions_per_connection;
        if !self.outbox.is_subscribed(name.as_str()) && self.outbox.subscription_count() >= limit {
            return Err(ProtocolError::new(
                ErrorCode::TooLarge,
                format!("a connection may subscribe to at most {limit} topics"),
            ));
        }
        let sub_id = self.next_sub_id;
        self.next_sub_id += 1;
        // Most clients spell a topic canonically: one string serves both.
        let spelling: Arc<str> = match request.topic == name.as_str() {
            true => name.shared(),
            false => request.topic.into(),
        };
        let subscription = Subscription {
            id: sub_id,
            spelling: spelling.clone(),
            own_filter,
            previous: None,
        };
        self.outbox.subscribe(name.shared(), subscription);
        self.state.registry.do_send(SubscribeTo {
            subscribe: Subscribe {
                conn: self.conn,
                sub_id,
                spelling,
                reference,
                echo: request.echo.unwrap_or(true),
                since: request.since,
                epoch: request.epoch,
                filter,
                history: request.history,
                handle: self.subscriber_handle(),
            },
            topic: name,
        });
        Ok(())
    }

    /// The filter of a table subscription: the client's, and the token's
    /// forced filter for that table. Checks `--tables` first.
    /// Returns the client's own filter and the one the topic applies.
    fn table_filter(
        &self,
        name: &TopicName,
        requested: Option<&serde_json::Map<String, Value>>,
    ) -> Result<(Filter, Filter), ProtocolError> {
        if !self.state.table_allowed(name.as_str()) {
            return Err(ProtocolError::forbidden(format!(
                "table `{name}` is not served (see --tables)"
            )));
        }
        let own = requested
            .map(Filter::parse)
            .transpose()?
            .unwrap_or_default();
        Ok((own.clone(), self.forced_filter(name.as_str())?.and(own)))
    }

    /// The token's `realtime.filters` entry for `table`.
    fn forced_filter(&self, table: &str) -> Result<Filter, ProtocolError> {
        match self.identity.grants.forced_filters.get(table) {
            None => Ok(Filter::default()),
            Some(Value::Object(forced)) => Filter::parse(forced),
            Some(_) => Err(ProtocolError::forbidden(format!(
                "your token's filter for `{table}` is not an object"
            ))),
        }
    }

    /// `track`: the topic must be subscribed; the state is at most
    /// [`MAX_PRESENCE_STATE`] bytes of compact JSON.
    fn track(
        &mut self,
        topic: &str,
        state: serde_json::Map<String, Value>,
        reference: Option<Value>,
    ) -> Result<(), ProtocolError> {
        let name = self.parse_topic(topic)?;
        if !self.outbox.is_subscribed(name.as_str()) {
            return Err(ProtocolError::bad_request(format!(
                "subscribe to `{topic}` before tracking presence there"
            )));
        }
        let size = Value::Object(state.clone()).to_string().len();
        if size > MAX_PRESENCE_STATE {
            return Err(ProtocolError::new(
                ErrorCode::TooLarge,
                format!("presence state is {size} bytes; at most {MAX_PRESENCE_STATE}"),
            ));
        }
        let limit = self.state.config.max_presence_per_connection;
        if !self.tracked.iter().any(|t| **t == *name.as_str()) {
            if self.tracked.len() >= limit {
                return Err(ProtocolError::new(
                    ErrorCode::TooLarge,
                    format!("a connection may track presence on at most {limit} topics"),
                ));
            }
            self.tracked.push(name.shared());
        }
        let key = match &self.identity.user_id {
            Some(user) => user.to_string(),
            None => self.outbox.wire_id().to_string(),
        };
        // The topic acks, ahead of the `presence:join` this client gets too.
        let ack = AckTo {
            reference,
            id: None,
            handle: self.subscriber_handle(),
        };
        self.state.registry.do_send(ForTopic {
            topic: name.shared(),
            message: TopicCommand::Track(Track {
                conn: self.conn,
                key,
                wire_conn: self.outbox.wire_id().to_string(),
                state,
                ack,
            }),
        });
        Ok(())
    }

    /// `history`: a page of a pub/sub topic's stored messages, newest first.
    fn history(
        &mut self,
        request: HistoryRequest,
        reference: Option<Value>,
        ctx: &mut Ctx,
    ) -> Result<(), ProtocolError> {
        let name = self.parse_topic(&request.topic)?;
        if name.kind() == TopicKind::Table {
            return Err(ProtocolError::bad_request(
                "history is kept for pub/sub topics only",
            ));
        }
        if !self.identity.grants.can_subscribe(name.as_str()) {
            return Err(ProtocolError::forbidden(format!(
                "your token does not allow reading `{name}`"
            )));
        }
        let page =
            history::PageRequest::new(request.limit, request.before, request.before_id.as_deref())?;
        let (db, room, topic) = (self.state.db.clone(), name.to_string(), request.topic);
        let read = async move { db.run(move |conn| history::page(conn, &room, page)).await };
        ctx.spawn(
            read.into_actor(self)
                .map(move |messages, session, ctx| match messages {
                    Ok(messages) => {
                        let messages: Vec<Value> = messages
                            .iter()
                            .map(history::StoredMessage::to_json)
                            .collect();
                        session.send(ctx, server::history(reference.as_ref(), &topic, messages));
                    }
                    Err(e) => {
                        let error = ProtocolError::unavailable(format!("history unavailable: {e}"));
                        session.send_error(ctx, reference.as_ref(), Some(&topic), &error);
                    }
                }),
        );
        Ok(())
    }

    /// Where topics send this session's frames.
    fn subscriber_handle(&self) -> SubscriberHandle {
        SubscriberHandle {
            outbox: self.outbox.clone(),
        }
    }

    /// Ends the subscription to `topic`. With one to end, the topic sends
    /// `reply`; else it is handed back for the caller to send.
    fn drop_subscription(
        &mut self,
        topic: &Arc<str>,
        reply: Option<UnsubscribeReply>,
    ) -> Option<UnsubscribeReply> {
        self.untracked(topic);
        if !self.outbox.unsubscribe(topic) {
            return reply;
        }
        self.state.registry.do_send(UnsubscribeFrom {
            topic: topic.clone(),
            conn: self.conn,
            reply,
        });
        None
    }

    fn publish(
        &mut self,
        request: PublishRequest,
        reference: Option<Value>,
    ) -> Result<(), ProtocolError> {
        let name = self.parse_topic(&request.topic)?;
        if name.kind() == TopicKind::Table {
            return Err(ProtocolError::forbidden(
                "table topics receive database changes only; publish to a topic with a `/`",
            ));
        }
        if !self.identity.grants.can_publish(name.as_str()) {
            return Err(ProtocolError::forbidden(format!(
                "your token does not allow publishing to `{name}`"
            )));
        }
        if self.publish_limiter.check().is_err() {
            return Err(ProtocolError::new(
                ErrorCode::RateLimited,
                format!(
                    "more than {} publishes a second",
                    self.state.config.max_publish_rate
                ),
            ));
        }
        // The topic answers, ahead of this client's own echo (and the
        // registry, should the topic not start): see `PublishReply`.
        let ack = AckTo {
            reference,
            id: request.id,
            handle: self.subscriber_handle(),
        };
        self.state.registry.do_send(PublishTo {
            topic: name,
            publish: Publish {
                event: request.event,
                data: request.data,
                user_id: self.identity.user_id.clone(),
                publisher: Some(self.conn),
                persist: request.persist == Some(true),
                stream: None,
                reply: PublishReply::to_client(ack, request.topic),
            },
        });
        Ok(())
    }

    fn reauthenticate(
        &mut self,
        token: &str,
        reference: Option<Value>,
        ctx: &mut Ctx,
    ) -> Result<(), ProtocolError> {
        if self.state.verifier.is_open() {
            // Open mode has no secret to check a token against: nothing changes.
            self.send(ctx, server::ack(reference.as_ref()));
            return Ok(());
        }
        let identity = self.state.verifier.verify(token)?;
        if identity.user_id != self.identity.user_id {
            return Err(ProtocolError::forbidden(
                "the new token is for another identity; reconnect to change identity",
            ));
        }
        self.identity = identity;
        self.outbox.set_expiry(self.identity.expires_at);
        let revoked: Vec<(Arc<str>, Arc<str>)> = self
            .outbox
            .subscriptions()
            .into_iter()
            .filter(|(topic, _)| !self.identity.grants.can_subscribe(topic))
            .collect();
        for (topic, spelling) in revoked {
            self.drop_subscription(&topic, None);
            self.send(
                ctx,
                server::unsubscribed(None, &spelling, Some("forbidden")),
            );
        }
        // The new token's forced filters apply to live table subscriptions too.
        for (topic, spelling, own) in self.outbox.table_filters() {
            match self.forced_filter(&topic) {
                Ok(forced) => self.state.registry.do_send(ForTopic {
                    topic,
                    message: TopicCommand::Refilter(Refilter {
                        conn: self.conn,
                        filter: forced.and(own),
                    }),
                }),
                Err(_) => {
                    self.drop_subscription(&topic, None);
                    self.send(
                        ctx,
                        server::unsubscribed(None, &spelling, Some("forbidden")),
                    );
                }
            }
        }
        self.send(ctx, server::ack(reference.as_ref()));
        Ok(())
    }

    /// The keepalive sweep saw the token's expiry pass. An `auth` frame
    /// may have brought a fresh token since.
    fn token_expired(&mut self, ctx: &mut Ctx) {
        if self.identity.time_left() != Some(Duration::ZERO) {
            return;
        }
        tracing::info!(conn = %self.outbox.wire_id(), user = self.identity.user_id.as_deref().unwrap_or("-"), "token expired: closing with 4001");
        let error = ProtocolError::unauthorized("the token has expired");
        self.send_error(ctx, None, None, &error);
        self.close(ctx, close::TOKEN_EXPIRED, "token expired");
    }

    fn untracked(&mut self, topic: &str) {
        self.tracked.retain(|t| **t != *topic);
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
        let welcome = server::welcome(&server::Welcome {
            conn: &wire_id,
            user_id: self.identity.user_id.as_deref(),
            node: &state.node_id,
            idle_timeout_ms: state.config.idle_timeout_ms,
            max_frame: state.config.max_frame_bytes,
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
