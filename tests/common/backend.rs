//! The app's backend as a test runs it: a real HTTP server (actix-web, on a
//! thread of its own) whose answer to each call the test decides, and which
//! keeps every call it got (path, body, headers) for the test to read.

use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use serde_json::Value;

/// One call the backend got.
#[derive(Debug, Clone)]
pub struct Call {
    pub path: String,
    pub body: Value,
    /// The raw body, as signed.
    pub raw: Vec<u8>,
    pub headers: Vec<(String, String)>,
}

impl Call {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// What the backend answers a call with.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub body: Value,
    /// How long it takes before answering.
    pub delay: Duration,
}

impl Reply {
    pub fn json(body: Value) -> Reply {
        Reply {
            status: 200,
            body,
            delay: Duration::ZERO,
        }
    }

    pub fn status(status: u16, body: Value) -> Reply {
        Reply {
            status,
            body,
            delay: Duration::ZERO,
        }
    }

    pub fn after(mut self, delay: Duration) -> Reply {
        self.delay = delay;
        self
    }
}

type Decide = dyn Fn(&Call) -> Reply + Send + Sync;

struct Shared {
    calls: Mutex<Vec<Call>>,
    decide: Mutex<Arc<Decide>>,
}

pub struct Backend {
    pub url: String,
    shared: Arc<Shared>,
}

impl Backend {
    /// Starts a backend that answers with `decide`.
    pub fn start(decide: impl Fn(&Call) -> Reply + Send + Sync + 'static) -> Backend {
        let shared = Arc::new(Shared {
            calls: Mutex::new(Vec::new()),
            decide: Mutex::new(Arc::new(decide)),
        });
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let served = shared.clone();
        std::thread::spawn(move || {
            actix_rt::System::new().block_on(async move {
                let data = web::Data::from(served);
                HttpServer::new(move || {
                    App::new()
                        .app_data(data.clone())
                        .app_data(web::PayloadConfig::new(16 * 1024 * 1024))
                        .default_service(web::to(answer))
                })
                .workers(2)
                .listen(listener)
                .unwrap()
                .run()
                .await
                .unwrap();
            })
        });
        Backend { url, shared }
    }

    /// Answers with `decide` from now on.
    pub fn decide(&self, decide: impl Fn(&Call) -> Reply + Send + Sync + 'static) {
        *self.shared.decide.lock().unwrap() = Arc::new(decide);
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.url)
    }

    /// Every call so far, to `path`.
    pub fn calls(&self, path: &str) -> Vec<Call> {
        self.shared
            .calls
            .lock()
            .unwrap()
            .iter()
            .filter(|c| c.path == path)
            .cloned()
            .collect()
    }
}

async fn answer(req: HttpRequest, body: web::Bytes, shared: web::Data<Shared>) -> HttpResponse {
    let call = Call {
        path: req.path().to_string(),
        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
        raw: body.to_vec(),
        headers: req
            .headers()
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_str().unwrap_or_default().to_string()))
            .collect(),
    };
    shared.calls.lock().unwrap().push(call.clone());
    let decide = shared.decide.lock().unwrap().clone();
    let reply = decide(&call);
    if !reply.delay.is_zero() {
        tokio::time::sleep(reply.delay).await;
    }
    HttpResponse::build(actix_web::http::StatusCode::from_u16(reply.status).unwrap())
        .content_type("application/json")
        .body(reply.body.to_string())
}
