//! A server-sent-events client as `curl -N` or a browser's EventSource
//! would be: a GET whose body is read event by event, and POSTs carrying
//! the session secret for its requests.

use std::pin::Pin;
use std::time::Duration;

use futures_util::{Stream, StreamExt};
use serde_json::Value;

use super::{TestApp, WAIT};

/// One SSE event (or comment) as the stream carried it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SseEvent {
    pub id: Option<String>,
    /// `event:`; `None` for plain `data` events.
    pub kind: Option<String>,
    pub data: Option<String>,
    pub comment: Option<String>,
}

impl SseEvent {
    /// The event's data as JSON.
    pub fn json(&self) -> Value {
        serde_json::from_str(self.data.as_deref().expect("an event with data"))
            .expect("data is JSON")
    }
}

type Body = Pin<Box<dyn Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>;

pub struct SseClient {
    body: Body,
    buf: String,
    http: reqwest::Client,
    /// Where the stream's requests go (`http://…/api/realtime/sse/<conn>`).
    pub post_url: String,
    pub welcome: Value,
    pub session: String,
    /// The last `id:` seen, as a browser keeps it for `Last-Event-ID`.
    pub last_id: Option<String>,
    next_ref: u64,
}

/// Why a stream did not open.
#[derive(Debug)]
pub struct Refused {
    pub status: u16,
    pub body: Value,
}

impl SseClient {
    /// Opens `GET /api/realtime/sse<query>` on `base` (`http://host:port`)
    /// with `headers`, and reads its `welcome`.
    pub async fn open_on(
        base: &str,
        query: &str,
        headers: &[(&str, &str)],
    ) -> Result<SseClient, Refused> {
        let http = reqwest::Client::new();
        let mut request = http
            .get(format!("{base}/api/realtime/sse{query}"))
            .header("Accept", "text/event-stream");
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = request.send().await.expect("GET the stream");
        let status = response.status().as_u16();
        if status != 200 {
            let body = response.json().await.unwrap_or(Value::Null);
            return Err(Refused { status, body });
        }
        assert_eq!(
            response.headers()["content-type"].to_str().unwrap(),
            "text/event-stream"
        );
        let mut client = SseClient {
            body: Box::pin(response.bytes_stream()),
            buf: String::new(),
            http,
            post_url: String::new(),
            welcome: Value::Null,
            session: String::new(),
            last_id: None,
            next_ref: 1,
        };
        let welcome = client.frame().await;
        assert_eq!(welcome["type"], "welcome", "first event: {welcome}");
        client.session = welcome["session"]
            .as_str()
            .expect("an SSE welcome carries its session")
            .to_string();
        client.post_url = format!(
            "{base}/api/realtime/sse/{}",
            welcome["conn"].as_str().unwrap()
        );
        client.welcome = welcome;
        Ok(client)
    }

    pub async fn open(app: &TestApp, query: &str) -> SseClient {
        Self::open_on(&app.url(""), query, &[])
            .await
            .expect("the stream opens")
    }

    /// The next event or comment within `wait`; `None` when none came or
    /// the stream ended (see [`SseClient::ended`]).
    pub async fn next_within(&mut self, wait: Duration) -> Option<SseEvent> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let event = parse(&block);
                if event.id.is_some() {
                    self.last_id = event.id.clone();
                }
                return Some(event);
            }
            match tokio::time::timeout_at(deadline, self.body.next()).await {
                Ok(Some(Ok(bytes))) => self.buf.push_str(std::str::from_utf8(&bytes).unwrap()),
                _ => return None,
            }
        }
    }

    /// The next event (comments skipped) within the usual wait.
    pub async fn event(&mut self) -> SseEvent {
        loop {
            let event = self.next_within(WAIT).await.expect("an event in time");
            if event.comment.is_none() {
                return event;
            }
        }
    }

    /// The next server frame (a `data` event) as JSON.
    pub async fn frame(&mut self) -> Value {
        let event = self.event().await;
        assert_eq!(event.kind, None, "a frame, not {event:?}");
        event.json()
    }

    /// The next frame other than a presence event.
    pub async fn frame_skipping_presence(&mut self) -> Value {
        loop {
            let frame = self.frame().await;
            let presence = frame["event"]
                .as_str()
                .is_some_and(|e| e.starts_with("presence"));
            if !presence {
                return frame;
            }
        }
    }

    /// Whether the body ends (after what it still holds) within `wait`.
    pub async fn ended(&mut self, wait: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match tokio::time::timeout_at(deadline, self.body.next()).await {
                Ok(Some(Ok(bytes))) => self.buf.push_str(std::str::from_utf8(&bytes).unwrap()),
                Ok(Some(Err(_)) | None) => return true,
                Err(_) => return false,
            }
        }
    }

    /// POSTs `body` (one request or an array) with `session`; the status
    /// and JSON answer.
    pub async fn post_as(&self, url: &str, session: &str, body: &Value) -> (u16, Value) {
        let response = self
            .http
            .post(url)
            .header("X-Realtide-Session", session)
            .json(body)
            .send()
            .await
            .expect("POST a request");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// POSTs `body` to this stream.
    pub async fn post(&self, body: &Value) -> (u16, Value) {
        self.post_as(&self.post_url, &self.session, body).await
    }

    /// Sends one request with a fresh `ref` and reads frames until its reply.
    pub async fn request(&mut self, mut request: Value) -> Value {
        let reference = self.next_ref;
        self.next_ref += 1;
        request["ref"] = reference.into();
        let (status, answer) = self.post(&request).await;
        assert_eq!(status, 202, "{answer}");
        loop {
            let frame = self.frame().await;
            if frame["ref"] == reference {
                return frame;
            }
        }
    }
}

fn parse(block: &str) -> SseEvent {
    let mut event = SseEvent::default();
    for line in block.lines() {
        if let Some(comment) = line.strip_prefix(':') {
            event.comment = Some(comment.trim().to_string());
            continue;
        }
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value).to_string();
        match field {
            "id" => event.id = Some(value),
            "event" => event.kind = Some(value),
            "data" => event.data = Some(value),
            _ => {}
        }
    }
    event
}
