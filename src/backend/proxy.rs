//! The proxy calls (PROTOCOL §10): realtide POSTs a JSON body to the
//! backend's URL and waits at most `--proxy-timeout-ms` for its answer:
//! `{"result":{…}}` decides yes (with what the result adds),
//! `{"error":{"code","message"}}` or a 401/403 decides no, with that code.
//! Anything else (a timeout, a 5xx, no answer, an answer that is neither)
//! fails the request `unavailable`: nothing is applied (fail closed).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use actix_web::http::header::HeaderMap;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::Backend;
use super::signing::SIGNATURE_HEADER;
use crate::auth::Identity;
use crate::auth::grants::{Grants, RealtimeClaim};
use crate::clock::unix_now;
use crate::protocol::{ErrorCode, ProtocolError};

/// The largest answer read from the backend.
const MAX_ANSWER_BYTES: usize = 1024 * 1024;

#[derive(Debug, Clone, Copy)]
enum Proxy {
    Connect,
    Subscribe,
    Publish,
}

impl Proxy {
    fn name(self) -> &'static str {
        match self {
            Proxy::Connect => "connect",
            Proxy::Subscribe => "subscribe",
            Proxy::Publish => "publish",
        }
    }
}

/// The backend's answer, as the protocol has it.
#[derive(Debug, Deserialize)]
struct Answer {
    result: Option<Map<String, Value>>,
    error: Option<AnswerError>,
}

#[derive(Debug, Deserialize)]
struct AnswerError {
    code: Option<String>,
    message: Option<String>,
}

/// What the connect proxy is told about a connection.
pub struct ConnectCall<'a> {
    pub conn: &'a str,
    pub headers: &'a HeaderMap,
    pub query: &'a str,
    pub remote_addr: Option<SocketAddr>,
}

/// A connect proxy's `result`.
#[derive(Debug, Deserialize)]
struct Connected {
    user: Option<String>,
    realtime: Option<RealtimeClaim>,
    expire_at: Option<u64>,
}

impl Backend {
    /// Asks the backend who a connection without credentials is.
    pub async fn connect(&self, call: ConnectCall<'_>) -> Result<Identity, ProtocolError> {
        let url = self.connect_url.as_deref().unwrap_or_default();
        let mut headers = Map::new();
        for name in &self.forwarded_headers {
            let values: Vec<&str> = call
                .headers
                .get_all(name.as_str())
                .filter_map(|v| v.to_str().ok())
                .collect();
            if !values.is_empty() {
                headers.insert(name.clone(), values.join(", ").into());
            }
        }
        let query: Map<String, Value> = form_urlencoded::parse(call.query.as_bytes())
            .map(|(k, v)| (k.into_owned(), Value::from(v.into_owned())))
            .collect();
        let body = json!({
            "conn": call.conn,
            "headers": headers,
            "query": query,
            "remote_addr": call.remote_addr.map(|a| a.ip().to_string()),
        });
        let result = self.call(Proxy::Connect, url, &body).await?;
        let connected: Connected = serde_json::from_value(Value::Object(result)).map_err(|e| {
            ProtocolError::unavailable(format!("the connect proxy's result is not understood: {e}"))
        })?;
        if connected.expire_at.is_some_and(|at| at <= unix_now()) {
            return Err(ProtocolError::unauthorized(
                "the connect proxy's expire_at has passed",
            ));
        }
        Ok(Identity {
            user_id: connected.user.map(Arc::from),
            grants: Grants::from_claim(connected.realtime.as_ref()),
            expires_at: connected.expire_at,
        })
    }

    /// Asks the backend whether `user` on `conn` may subscribe to `topic`;
    /// answers the forced filter it adds, if any.
    pub async fn subscribe(
        &self,
        conn: &str,
        user: Option<&str>,
        topic: &str,
        filter: Option<&Map<String, Value>>,
    ) -> Result<Option<Map<String, Value>>, ProtocolError> {
        let url = self.subscribe_url.as_deref().unwrap_or_default();
        let body = json!({"conn": conn, "user": user, "topic": topic, "filter": filter});
        let mut result = self.call(Proxy::Subscribe, url, &body).await?;
        match result.remove("filter") {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Object(filter)) => Ok(Some(filter)),
            Some(other) => Err(ProtocolError::unavailable(format!(
                "the subscribe proxy's filter is not an object: {other}"
            ))),
        }
    }

    /// Asks the backend whether a client publish goes out; answers the data
    /// to publish instead, if it replaces it.
    pub async fn publish(
        &self,
        conn: &str,
        user: Option<&str>,
        topic: &str,
        event: &str,
        data: &Value,
    ) -> Result<Option<Value>, ProtocolError> {
        let url = self.publish_url.as_deref().unwrap_or_default();
        let body =
            json!({"conn": conn, "user": user, "topic": topic, "event": event, "data": data});
        let mut result = self.call(Proxy::Publish, url, &body).await?;
        Ok(result.remove("data"))
    }

    /// One proxy call: the answer's `result`, or the refusal or failure as
    /// the protocol error the request fails with.
    async fn call(
        &self,
        proxy: Proxy,
        url: &str,
        body: &Value,
    ) -> Result<Map<String, Value>, ProtocolError> {
        let started = Instant::now();
        let outcome = self.post(url, body).await;
        let metrics = &self.metrics;
        metrics
            .proxy_duration
            .with_label_values(&[proxy.name()])
            .observe(started.elapsed().as_secs_f64());
        let label = match &outcome {
            Ok(_) => "allowed",
            Err(Failure::Refused(_)) => "refused",
            Err(Failure::Timeout) => "timeout",
            Err(Failure::Unreachable(_)) => "unreachable",
            Err(Failure::Error(_)) => "error",
        };
        metrics
            .proxy_calls
            .with_label_values(&[proxy.name(), label])
            .inc();
        outcome.map_err(|failure| {
            let error = failure.into_protocol(proxy);
            if error.code == ErrorCode::Unavailable {
                tracing::warn!(proxy = proxy.name(), %url, reason = %error.message, "a proxy call failed");
            }
            error
        })
    }

    async fn post(&self, url: &str, body: &Value) -> Result<Map<String, Value>, Failure> {
        let body = body.to_string();
        let mut request = self
            .client
            .post(url)
            .timeout(self.timeout)
            .header("content-type", "application/json");
        if let Some(signer) = &self.signer {
            request = request.header(SIGNATURE_HEADER, signer.sign(unix_now(), body.as_bytes()));
        }
        let response = request.body(body).send().await.map_err(|e| match e {
            e if e.is_timeout() => Failure::Timeout,
            e => Failure::Unreachable(e.to_string()),
        })?;
        let status = response.status().as_u16();
        let text = read_limited(response).await?;
        let answer: Option<Answer> = serde_json::from_slice(&text).ok();
        let refusal = |code: ErrorCode, message: Option<String>| {
            let message =
                message.unwrap_or_else(|| format!("refused by the app's backend ({status})"));
            Failure::Refused(ProtocolError::new(code, message))
        };
        let message = || {
            answer
                .as_ref()
                .and_then(|a| a.error.as_ref())
                .and_then(|e| e.message.clone())
        };
        match status {
            401 => return Err(refusal(ErrorCode::Unauthorized, message())),
            403 => return Err(refusal(ErrorCode::Forbidden, message())),
            200..=299 => {}
            _ => return Err(Failure::Error(format!("the backend answered {status}"))),
        }
        match answer {
            Some(Answer {
                error: Some(error), ..
            }) => {
                let code = error
                    .code
                    .as_deref()
                    .and_then(ErrorCode::parse)
                    .unwrap_or(ErrorCode::Forbidden);
                Err(refusal(code, error.message))
            }
            Some(Answer {
                result: Some(result),
                ..
            }) => Ok(result),
            _ => Err(Failure::Error(
                "the backend's answer holds neither `result` nor `error`".into(),
            )),
        }
    }
}

/// Reads at most [`MAX_ANSWER_BYTES`] of an answer.
async fn read_limited(mut response: reqwest::Response) -> Result<Vec<u8>, Failure> {
    let mut body = Vec::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > MAX_ANSWER_BYTES {
                    return Err(Failure::Error(format!(
                        "the backend's answer is larger than {MAX_ANSWER_BYTES} bytes"
                    )));
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(body),
            Err(e) if e.is_timeout() => return Err(Failure::Timeout),
            Err(e) => return Err(Failure::Unreachable(e.to_string())),
        }
    }
}

/// Why a proxy call decided nothing, or decided no.
enum Failure {
    Refused(ProtocolError),
    Timeout,
    Unreachable(String),
    Error(String),
}

impl Failure {
    fn into_protocol(self, proxy: Proxy) -> ProtocolError {
        let name = proxy.name();
        match self {
            Failure::Refused(error) => error,
            Failure::Timeout => {
                ProtocolError::unavailable(format!("the {name} proxy did not answer in time"))
            }
            Failure::Unreachable(e) => {
                ProtocolError::unavailable(format!("the {name} proxy is unreachable: {e}"))
            }
            Failure::Error(e) => {
                ProtocolError::unavailable(format!("the {name} proxy failed: {e}"))
            }
        }
    }
}
