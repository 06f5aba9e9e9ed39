//! `GET /`: a small page for whoever opens the server's address in a
//! browser: what runs here and where to go next.

use actix_web::{HttpResponse, web};

use crate::state::AppState;

pub async fn home(state: web::Data<AppState>) -> HttpResponse {
    let mode = match state.config.jwt_secret {
        Some(_) => "clients need a token or an API key",
        None => "open mode: every client is accepted",
    };
    let page = format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>realtide</title>
<style>body{{font:15px/1.5 system-ui,sans-serif;max-width:42rem;margin:3rem auto;padding:0 1rem;color:#1f2937}}
code{{background:#f3f4f6;padding:.1rem .3rem;border-radius:.25rem}}li{{margin:.25rem 0}}</style></head>
<body>
<h1>realtide</h1>
<p>A realtime server: node <code>{node}</code>, {mode}.</p>
<ul>
<li>WebSocket: <code>/api/realtime</code></li>
<li><a href="/console">Console</a>: nodes, topics, connections, live events (admin key, or loopback)</li>
<li><a href="/realtide.js">/realtide.js</a>: the JavaScript client, as an ES module</li>
<li><a href="/healthz">/healthz</a> and <a href="/readyz">/readyz</a>: liveness and readiness</li>
<li><a href="/metrics">/metrics</a>: Prometheus metrics</li>
</ul>
<pre><code>import {{ createClient }} from '/realtide.js';
const client = createClient({{ url: `ws://${{location.host}}/api/realtime` }});
client.channel('orders').on('UPDATE', ({{ data }}) =&gt; console.log(data)).subscribe();</code></pre>
<p>Documentation: the <code>docs/</code> folder of realtide's repository
(protocol, authorization, deployment, several nodes).</p>
</body></html>
"#,
        // Node ids are letters, digits, `-`, `_` and `.` (`Config::check`).
        node = state.node_id,
    );
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .body(page)
}
