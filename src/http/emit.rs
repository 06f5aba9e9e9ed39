//! `POST /api/realtime/emit`: the application's backend publishes to pub/sub
//! topics, one event or a batch in order (server key, or loopback).

use actix_web::{HttpRequest, HttpResponse, web};
use serde::Deserialize;
use serde_json::{Value, json};

use super::ApiError;
use crate::protocol::ProtocolError;
use crate::protocol::client::validate_event_name;
use crate::registry;
use crate::state::AppState;
use crate::topic::messages::{Publish, PublishReply};
use crate::topic::{TopicKind, TopicName};

/// Largest batch of one emit request.
pub const MAX_BATCH: usize = 1000;

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum EmitBody {
    Batch { messages: Vec<EmitMessage> },
    One(EmitMessage),
}

#[derive(Debug, Deserialize)]
struct EmitMessage {
    topic: String,
    event: String,
    data: Value,
    persist: Option<bool>,
}

fn validate(message: &EmitMessage, project_id: &str) -> Result<TopicName, ProtocolError> {
    let name = TopicName::parse(&message.topic, project_id)?;
    if name.kind() == TopicKind::Table {
        return Err(ProtocolError::forbidden(format!(
            "`{name}` is a table topic: its events are the table's changes"
        )));
    }
    validate_event_name(&message.event)?;
    Ok(name)
}

pub async fn emit(
    req: HttpRequest,
    state: web::Data<AppState>,
    body: web::Json<Value>,
) -> Result<HttpResponse, ApiError> {
    super::require(&req, &state.server_guard, &state)?;
    let body: EmitBody = serde_json::from_value(body.into_inner()).map_err(|_| {
        ProtocolError::bad_request(
            "expected {\"topic\",\"event\",\"data\",\"persist\"?} or {\"messages\":[...]}",
        )
    })?;
    let (messages, batch) = match body {
        EmitBody::Batch { messages } => (messages, true),
        EmitBody::One(message) => (vec![message], false),
    };
    if messages.len() > MAX_BATCH {
        return Err(ProtocolError::new(
            crate::protocol::ErrorCode::TooLarge,
            format!("a batch holds at most {MAX_BATCH} messages"),
        )
        .into());
    }
    // Validate the whole batch first: a bad message emits nothing.
    let names = messages
        .iter()
        .map(|m| validate(m, &state.config.project_id))
        .collect::<Result<Vec<_>, _>>()?;
    // Sent all at once, in order (do_send keeps it), then awaited.
    let outcomes: Vec<_> = messages
        .into_iter()
        .zip(names)
        .map(|(message, topic)| {
            let publish = Publish {
                event: message.event,
                data: message.data,
                user_id: None,
                publisher: None,
                persist: message.persist == Some(true),
                stream: None,
                reply: PublishReply::nobody(),
            };
            registry::publish(&state.registry, topic, publish)
        })
        .collect();
    let mut results = Vec::with_capacity(outcomes.len());
    for outcome in futures_util::future::join_all(outcomes).await {
        let published = outcome?;
        let mut result = json!({"seq": published.seq});
        if let Some(id) = published.message_id {
            result["message_id"] = id.into();
        }
        results.push(result);
    }
    Ok(HttpResponse::Ok().json(if batch {
        json!({"ok": true, "results": results})
    } else {
        let mut one = results.swap_remove(0);
        one["ok"] = true.into();
        one
    }))
}
