//! The client's requests (subscribe, publish, presence, history, a fresh
//! token): each is checked here (names, grants, limits) and routed to its
//! topic through the registry; what fails becomes the request's `error`.

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use serde_json::Value;

use crate::changes::Filter;
use crate::history;
use crate::outbox::Subscription;
use crate::protocol::client::{HistoryRequest, PublishRequest, Request, SubscribeRequest};
use crate::protocol::server;
use crate::protocol::{ErrorCode, ProtocolError, close};
use crate::registry::{ForTopic, PublishTo, SubscribeTo, TopicCommand, UnsubscribeFrom};
use crate::topic::messages::{
    AckTo, Publish, PublishReply, Refilter, Subscribe, SubscriberHandle, Track, UnsubscribeReply,
    Untrack,
};
use crate::topic::{TopicKind, TopicName};

use super::{Ctx, MAX_PRESENCE_STATE, SessionActor};

impl SessionActor {
    pub(super) fn dispatch(
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
            Request::Subscribe(subscribe) => self.subscribe(subscribe, reference, ctx),
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
            Request::Publish(publish) => self.publish(publish, reference, ctx),
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
                self.publish(publish, reference, ctx)
            }
        }
    }

    pub(super) fn parse_topic(&self, spelling: &str) -> Result<TopicName, ProtocolError> {
        TopicName::parse(spelling, &self.state.config.project_id)
    }

    pub(super) fn subscribe(
        &mut self,
        request: SubscribeRequest,
        reference: Option<Value>,
        ctx: &mut Ctx,
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
            TopicKind::PubSub if request.snapshot == Some(true) => {
                return Err(ProtocolError::bad_request(
                    "`snapshot` applies to table topics only (a pub/sub topic has `history`)",
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
        if !self.state.backend.decides_subscribes() {
            self.subscribe_now(name, request, own_filter, filter, reference);
            return Ok(());
        }
        // The backend allows it, and may narrow a table's rows.
        let backend = self.state.backend.clone();
        let (conn, user) = (
            self.outbox.wire_id().to_string(),
            self.identity.user_id.clone(),
        );
        let (topic, asked) = (request.topic.clone(), request.filter.clone());
        let call = async move {
            backend
                .subscribe(&conn, user.as_deref(), &topic, asked.as_ref())
                .await
        };
        self.after_backend(ctx, call, move |session, ctx, answer| {
            let narrowed = answer.and_then(|added| match (name.kind(), added) {
                (TopicKind::Table, Some(added)) => {
                    let added = Filter::parse(&added)?;
                    Ok((own_filter.and(added.clone()), filter.and(added)))
                }
                _ => Ok((own_filter, filter)),
            });
            match narrowed {
                Ok((own_filter, filter)) => {
                    session.subscribe_now(name, request, own_filter, filter, reference)
                }
                Err(error) => {
                    let topic = request.topic.as_str();
                    session.send_error(ctx, reference.as_ref(), Some(topic), &error);
                }
            }
        })
    }

    /// Makes the subscription: the outbox learns it, the topic is asked.
    /// `own_filter` is what a fresh token's forced filter is joined to
    /// (the client's, and the subscribe proxy's).
    fn subscribe_now(
        &mut self,
        name: TopicName,
        request: SubscribeRequest,
        own_filter: Filter,
        filter: Filter,
        reference: Option<Value>,
    ) {
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
                snapshot: request.snapshot == Some(true),
                handle: self.subscriber_handle(),
            },
            topic: name,
        });
    }

    /// The filter of a table subscription: the client's, and the token's
    /// forced filter for that table. Checks `--tables` first.
    /// Returns the client's own filter and the one the topic applies.
    pub(super) fn table_filter(
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
    pub(super) fn forced_filter(&self, table: &str) -> Result<Filter, ProtocolError> {
        Filter::forced(self.identity.grants.forced_filters.get(table), table)
    }

    /// `track`: the topic must be subscribed; the state is at most
    /// [`MAX_PRESENCE_STATE`] bytes of compact JSON.
    pub(super) fn track(
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
    pub(super) fn history(
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
    pub(super) fn subscriber_handle(&self) -> SubscriberHandle {
        SubscriberHandle {
            outbox: self.outbox.clone(),
        }
    }

    /// Ends the subscription to `topic`. With one to end, the topic sends
    /// `reply`; else it is handed back for the caller to send.
    pub(super) fn drop_subscription(
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

    pub(super) fn publish(
        &mut self,
        request: PublishRequest,
        reference: Option<Value>,
        ctx: &mut Ctx,
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
        if !self.state.backend.decides_publishes() {
            self.publish_now(name, request, reference);
            return Ok(());
        }
        // The backend passes it, replaces its data, or refuses it.
        let backend = self.state.backend.clone();
        let (conn, user) = (
            self.outbox.wire_id().to_string(),
            self.identity.user_id.clone(),
        );
        let (topic, event, data) = (
            request.topic.clone(),
            request.event.clone(),
            request.data.clone(),
        );
        let call = async move {
            backend
                .publish(&conn, user.as_deref(), &topic, &event, &data)
                .await
        };
        self.after_backend(ctx, call, move |session, ctx, answer| match answer {
            Ok(replaced) => {
                let mut request = request;
                if let Some(data) = replaced {
                    request.data = data;
                }
                session.publish_now(name, request, reference);
            }
            Err(error) => {
                let topic = request.topic.as_str();
                session.send_error(ctx, reference.as_ref(), Some(topic), &error);
            }
        })
    }

    fn publish_now(&mut self, name: TopicName, request: PublishRequest, reference: Option<Value>) {
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
    }

    pub(super) fn reauthenticate(
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
    pub(super) fn token_expired(&mut self, ctx: &mut Ctx) {
        if self.identity.time_left() != Some(Duration::ZERO) {
            return;
        }
        tracing::info!(conn = %self.outbox.wire_id(), user = self.identity.user_id.as_deref().unwrap_or("-"), "token expired: closing with 4001");
        let error = ProtocolError::unauthorized("the token has expired");
        self.send_error(ctx, None, None, &error);
        self.close(ctx, close::TOKEN_EXPIRED, "token expired");
    }

    pub(super) fn untracked(&mut self, topic: &str) {
        self.tracked.retain(|t| **t != *topic);
    }
}
