//! Server-sent events (PROTOCOL §11), for networks that refuse WebSocket
//! upgrades and for clients that only listen:
//! - `GET /api/realtime/sse` opens a connection whose server frames are
//!   events: the same session actor as a WebSocket's behind it, writing
//!   through an outbox whose socket is an [`EventStream`];
//! - `POST /api/realtime/sse/<conn>` brings that connection's requests,
//!   with its session secret, to its session's input
//!   ([`crate::session::event_streams`]).

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use bytes::Bytes;
use bytestring::ByteString;
use serde_json::value::RawValue;

use super::{ApiError, MAX_BODY_BYTES, ws};
use crate::outbox::Outbox;
use crate::protocol::ErrorCode;
use crate::session::SessionActor;
use crate::session::context;
use crate::session::event_streams::{InputError, new_secret};
use crate::socket::Socket;
use crate::socket::events::EventStream;
use crate::socket::resume::Positions;
use crate::state::AppState;

/// The header a stream's requests carry its secret in.
pub const SESSION_HEADER: &str = "x-realtide-session";

/// Topics a listen-only stream may name in its query, at most.
const MAX_QUERY_TOPICS: usize = 64;

/// `GET /api/realtime/sse`: opens a connection as the WebSocket handshake
/// would (the same credentials, the same refusals), whose frames leave as
/// events; `subscribe=<topic>` parameters subscribe at once, resuming from
/// `Last-Event-ID` when the client sends one.
pub async fn open(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let peer = req.peer_addr().map(|a| a.ip());
    let wire_id = uuid::Uuid::new_v4();
    let conn = wire_id.simple().to_string();
    let admitted = match ws::admit(req.query_string(), req.headers(), peer, &state) {
        Ok(admission) => admission.identity(&conn, req.head(), &state).await,
        Err(refusal) => Err(refusal),
    };
    let identity = admitted.inspect_err(|e| {
        state
            .metrics
            .handshakes_refused
            .with_label_values(&[e.0.code.as_str()])
            .inc();
    })?;
    let first = subscribes(&req, state.config.max_subscriptions_per_connection)?;

    let stream = EventStream::new();
    let socket = Socket::events(stream.clone());
    let outbox = Outbox::with_wire_id(socket, state.outbox_policy.clone(), wire_id);
    let secret = new_secret();
    let input = state
        .event_streams
        .register(conn.clone(), &secret, first, stream.clone());
    // Findable from every node before the client reads its welcome, so a
    // request it sends at once through another node finds the stream.
    if let Some(broker) = &state.broker
        && let Err(error) = broker.open_stream(&conn, &secret).await
    {
        tracing::warn!(%conn, %error, "this stream's requests can reach it only through this node");
    }
    let session = SessionActor::new(state.clone(), identity, outbox).over_event_stream(secret);
    let body = stream.body();
    actix_web::rt::spawn(async move {
        context::start(session, input).await;
        stream.finish();
        state.event_streams.close(&conn);
        if let Some(broker) = &state.broker {
            broker.close_stream(&conn);
        }
    });
    Ok(HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        // nginx would otherwise hold events back to fill its buffer.
        .insert_header(("X-Accel-Buffering", "no"))
        .streaming(body))
}

/// The `subscribe` requests a listen-only stream's query asks for, with
/// `since` and `epoch` from `Last-Event-ID` (the header, or the query's
/// `lastEventId` that EventSource polyfills send).
fn subscribes(req: &HttpRequest, max: usize) -> Result<Vec<ByteString>, ApiError> {
    let query = form_urlencoded::parse(req.query_string().as_bytes());
    let mut topics = Vec::new();
    let mut last_id = req
        .headers()
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    for (name, value) in query {
        match name.as_ref() {
            "subscribe" => topics.push(value.into_owned()),
            "lastEventId" if last_id.is_none() => last_id = Some(value.into_owned()),
            _ => {}
        }
    }
    if topics.len() > max.min(MAX_QUERY_TOPICS) {
        return Err(ApiError::new(
            ErrorCode::BadRequest,
            format!(
                "{} topics to subscribe; at most {}",
                topics.len(),
                max.min(MAX_QUERY_TOPICS)
            ),
        ));
    }
    let positions = last_id.as_deref().map(Positions::parse).unwrap_or_default();
    Ok(topics
        .iter()
        .map(|topic| {
            let mut request = serde_json::json!({"type": "subscribe", "topic": topic});
            if let Some((epoch, seq)) = positions.of(topic) {
                request["since"] = seq.into();
                request["epoch"] = epoch.into();
            }
            ByteString::from(request.to_string())
        })
        .collect())
}

/// `POST /api/realtime/sse/<conn>`: one request of §3, or an array of them,
/// for stream `conn`; the replies come on the stream.
pub async fn post(
    req: HttpRequest,
    conn: web::Path<String>,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let body = payload
        .to_bytes_limited(MAX_BODY_BYTES)
        .await
        .map_err(|_| {
            ApiError::new(
                ErrorCode::TooLarge,
                format!("a body larger than {MAX_BODY_BYTES} bytes"),
            )
        })?;
    let body: Bytes = body.map_err(|e| ApiError::new(ErrorCode::BadRequest, e.to_string()))?;
    let secret = req
        .headers()
        .get(SESSION_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let requests = requests_in(&body, state.config.max_frame_bytes)?;
    let taken = match state.event_streams.find(&conn, secret) {
        Ok(input) => input.send(requests).await,
        // Held by another node, perhaps.
        Err(local) => match &state.broker {
            Some(broker) => {
                let requests = requests.iter().map(ToString::to_string).collect();
                match broker.forward(&conn, secret, requests).await {
                    Ok(true) => Ok(()),
                    Ok(false) => Err(local),
                    Err(e) => {
                        state.metrics.error(ErrorCode::Unavailable);
                        return Err(ApiError::new(ErrorCode::Unavailable, e.to_string()));
                    }
                }
            }
            None => Err(local),
        },
    };
    taken.map_err(|e| not_found(&conn, e))?;
    Ok(HttpResponse::Accepted().json(serde_json::json!({"ok": true})))
}

fn not_found(conn: &str, error: InputError) -> ApiError {
    ApiError::new(ErrorCode::NotFound, format!("stream `{conn}`: {error}"))
}

/// The requests in a POST's body: one JSON object, or an array of them,
/// each at most `max_frame` bytes as a WebSocket message would be.
fn requests_in(body: &[u8], max_frame: u64) -> Result<Vec<ByteString>, ApiError> {
    let bad = |message: String| ApiError::new(ErrorCode::BadRequest, message);
    let text = std::str::from_utf8(body).map_err(|e| bad(format!("the body is not UTF-8: {e}")))?;
    let raw: Vec<&RawValue> = match text.trim_start().starts_with('[') {
        true => serde_json::from_str(text),
        false => serde_json::from_str(text).map(|one| vec![one]),
    }
    .map_err(|e| {
        bad(format!(
            "the body is not a JSON request or array of requests: {e}"
        ))
    })?;
    raw.into_iter()
        .map(|request| {
            let request = request.get();
            match request.len() as u64 > max_frame {
                true => Err(ApiError::new(
                    ErrorCode::TooLarge,
                    format!(
                        "a request of {} bytes; max_frame is {max_frame}",
                        request.len()
                    ),
                )),
                false => Ok(ByteString::from(request)),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_holds_one_request_or_an_array_of_them() {
        let one = requests_in(br#" {"type":"ping","ref":1} "#, 100).unwrap();
        assert_eq!(one, vec![ByteString::from(r#"{"type":"ping","ref":1}"#)]);
        let two = requests_in(br#"[{"type":"ping"}, {"type":"pong"}]"#, 100).unwrap();
        assert_eq!(two.len(), 2);
        assert_eq!(two[1], r#"{"type":"pong"}"#);
        for bad in [&b"not json"[..], b"[1,", b"\xff"] {
            let error = requests_in(bad, 100).unwrap_err();
            assert_eq!(error.0.code, ErrorCode::BadRequest);
        }
        let error = requests_in(br#"{"type":"ping","ref":"0123456789"}"#, 20).unwrap_err();
        assert_eq!(error.0.code, ErrorCode::TooLarge);
    }
}
