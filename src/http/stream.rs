//! `POST /api/realtime/stream?topic=<t>&event=ai:token&done=ai:done`: the
//! backend streams newline-delimited JSON values (an LLM's tokens) into a
//! pub/sub topic. Each line is published the moment it arrives, not when the
//! body ends; the end of the body publishes `done`. Server key or loopback,
//! as for emit.

use std::sync::Arc;

use actix_web::{HttpRequest, HttpResponse, web};
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::{Value, json};

use super::ApiError;
use crate::protocol::client::validate_event_name;
use crate::protocol::{ErrorCode, ProtocolError};
use crate::registry;
use crate::state::AppState;
use crate::topic::messages::{Publish, PublishReply, StreamPart};
use crate::topic::{TopicKind, TopicName};

/// Longest line (one token's JSON), in bytes.
pub const MAX_LINE_BYTES: usize = 64 * 1024;

#[derive(Debug, Deserialize)]
pub struct StreamQuery {
    topic: String,
    event: Option<String>,
    done: Option<String>,
}

/// Publishes one event of the stream and waits until the topic took it.
async fn publish(
    state: &AppState,
    topic: &TopicName,
    event: &str,
    data: Value,
    part: StreamPart,
) -> Result<(), ProtocolError> {
    let publish = Publish {
        event: event.to_string(),
        data,
        user_id: None,
        publisher: None,
        persist: false,
        stream: Some(part),
        reply: PublishReply::nobody(),
    };
    registry::publish(&state.registry, topic.clone(), publish)
        .await
        .map(drop)
}

/// Why a stream stopped early.
enum Broken {
    /// A line that is not JSON, or too long: the client's fault (400).
    BadLine(String),
    /// The body itself failed (the client went away) or a topic refused.
    Failed(ProtocolError),
}

pub async fn stream(
    req: HttpRequest,
    query: web::Query<StreamQuery>,
    mut body: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    super::require(&req, &state.server_guard, &state)?;
    let query = query.into_inner();
    let topic = TopicName::parse(&query.topic, &state.config.project_id)?;
    if topic.kind() == TopicKind::Table {
        return Err(ProtocolError::forbidden("streams go to pub/sub topics").into());
    }
    let token_event = query.event.unwrap_or_else(|| "ai:token".into());
    let done_event = query.done.unwrap_or_else(|| "ai:done".into());
    validate_event_name(&token_event)?;
    validate_event_name(&done_event)?;

    let id: Arc<str> = uuid::Uuid::new_v4().simple().to_string().into();
    let mut count: u64 = 0;
    let mut pending: Vec<u8> = Vec::new();
    let mut broken = None;
    // Publishes one complete line; blank lines are skipped.
    let take_line = async |line: &[u8], count: &mut u64| -> Result<(), Broken> {
        let text =
            std::str::from_utf8(line).map_err(|_| Broken::BadLine("a line is not UTF-8".into()))?;
        if text.trim().is_empty() {
            return Ok(());
        }
        let token: Value = serde_json::from_str(text)
            .map_err(|e| Broken::BadLine(format!("line {} is not JSON: {e}", *count + 1)))?;
        let data = json!({"token": token, "index": *count, "stream": &*id});
        publish(
            &state,
            &topic,
            &token_event,
            data,
            StreamPart::Token { stream: id.clone() },
        )
        .await
        .map_err(Broken::Failed)?;
        *count += 1;
        Ok(())
    };
    'body: loop {
        let chunk = match body.next().await {
            None => break,
            Some(Ok(chunk)) => chunk,
            Some(Err(e)) => {
                broken = Some(Broken::Failed(ProtocolError::bad_request(format!(
                    "the body broke off: {e}"
                ))));
                break;
            }
        };
        pending.extend_from_slice(&chunk);
        while let Some(end) = pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            if let Err(e) = take_line(&line, &mut count).await {
                broken = Some(e);
                break 'body;
            }
        }
        if pending.len() > MAX_LINE_BYTES {
            broken = Some(Broken::BadLine(format!(
                "a line is longer than {MAX_LINE_BYTES} bytes"
            )));
            break;
        }
    }
    if broken.is_none() && !pending.is_empty() {
        // The last line may lack its newline.
        let line = std::mem::take(&mut pending);
        if let Err(e) = take_line(&line, &mut count).await {
            broken = Some(e);
        }
    }

    let error = match &broken {
        None => None,
        Some(Broken::BadLine(why)) => Some(ProtocolError::bad_request(why.clone())),
        Some(Broken::Failed(e)) => Some(e.clone()),
    };
    let mut done = json!({"stream": &*id, "count": count});
    if let Some(e) = &error {
        done["error"] = e.message.clone().into();
    }
    publish(
        &state,
        &topic,
        &done_event,
        done,
        StreamPart::Done { stream: id.clone() },
    )
    .await?;
    match error {
        None => Ok(HttpResponse::Ok().json(json!({"ok": true, "stream": &*id, "count": count}))),
        Some(e) => {
            state.metrics.error(ErrorCode::BadRequest);
            Err(e.into())
        }
    }
}
