// An app's backend for realtide, in plain Node (no dependencies): it decides
// who connects (from the app's own session cookie), who may subscribe to
// what, what a publish may say, and it hears realtide's webhooks. Every call
// from realtide is signed; this server checks the signature first.
//
//   REALTIDE_WEBHOOK_SECRET=... PORT=3000 node server.mjs
//   realtide --proxy-connect-url http://127.0.0.1:3000/realtide/connect \
//            --proxy-subscribe-url http://127.0.0.1:3000/realtide/subscribe \
//            --proxy-publish-url http://127.0.0.1:3000/realtide/publish \
//            --webhook-url http://127.0.0.1:3000/realtide/webhooks \
//            --webhook-secret "$REALTIDE_WEBHOOK_SECRET"
import http from 'node:http';
import { createHmac, timingSafeEqual } from 'node:crypto';

const SECRET = process.env.REALTIDE_WEBHOOK_SECRET;
const PORT = Number(process.env.PORT ?? 3000);
if (!SECRET) throw new Error('set REALTIDE_WEBHOOK_SECRET');

// The app's sessions, as its login would have made them.
const SESSIONS = new Map([['s-ann', 'ann'], ['s-bob', 'bob'], ['s-admin', 'admin']]);
const BAD_WORDS = /\b(darn|heck)\b/gi;

/** `X-Realtide-Signature: t=<unix s>,v1=<hex>`: HMAC-SHA256 over `<t>.<body>`, at most 5 minutes old. */
function verified(header, body) {
  const parts = Object.fromEntries((header ?? '').split(',').map((p) => p.split('=', 2)));
  const at = Number(parts.t);
  if (!parts.v1 || !Number.isFinite(at) || Math.abs(Date.now() / 1000 - at) > 300) return false;
  const expected = createHmac('sha256', SECRET).update(`${parts.t}.`).update(body).digest();
  const given = Buffer.from(parts.v1, 'hex');
  return given.length === expected.length && timingSafeEqual(given, expected);
}

function sessionUser(cookieHeader) {
  for (const pair of (cookieHeader ?? '').split(';')) {
    const [name, value] = pair.trim().split('=');
    if (name === 'session' && SESSIONS.has(value)) return SESSIONS.get(value);
  }
  return null;
}

const seen = new Set();      // webhook ids already handled: delivery is at least once
const events = [];           // what the app heard, for GET /events
let rejected = 0;            // calls whose signature did not verify

function decide(path, call) {
  switch (path) {
    case '/realtide/connect': {
      const user = sessionUser(call.headers.cookie);
      if (!user) return [401, { error: { code: 'unauthorized', message: 'log in first' } }];
      return [200, { result: { user, realtime: { subscribe: ['orders', 'chat/*'], publish: ['chat/*'] } } }];
    }
    case '/realtide/subscribe':
      if (call.topic === 'chat/admins' && call.user !== 'admin') {
        return [200, { error: { code: 'forbidden', message: 'admins only' } }];
      }
      // Everyone sees only their own orders.
      if (call.topic === 'orders') return [200, { result: { filter: { owner: { eq: call.user } } } }];
      return [200, { result: {} }];
    case '/realtide/publish': {
      const text = call.data?.text;
      if (typeof text !== 'string' || text.trim() === '') {
        return [200, { error: { code: 'bad_request', message: 'say something' } }];
      }
      const clean = text.replace(BAD_WORDS, (w) => '*'.repeat(w.length));
      return [200, { result: clean === text ? {} : { data: { ...call.data, text: clean } } }];
    }
    case '/realtide/webhooks':
      if (!seen.has(call.id)) {
        seen.add(call.id);
        events.push(call);
      }
      return [200, { ok: true }];
    default:
      return [404, { error: { code: 'not_found', message: path } }];
  }
}

http.createServer(async (req, res) => {
  const send = (status, body) => {
    res.writeHead(status, { 'content-type': 'application/json' });
    res.end(JSON.stringify(body));
  };
  if (req.method === 'GET' && req.url === '/events') return send(200, { events, rejected });
  let body = Buffer.alloc(0);
  for await (const chunk of req) body = Buffer.concat([body, chunk]);
  if (!verified(req.headers['x-realtide-signature'], body)) {
    rejected += 1;
    return send(401, { error: { code: 'unauthorized', message: 'bad signature' } });
  }
  const [status, answer] = decide(req.url, JSON.parse(body.toString('utf8')));
  send(status, answer);
}).listen(PORT, '127.0.0.1', () => console.log(`backend on http://127.0.0.1:${PORT}`));
