// The strongest peer for realtide's benchmarks: uWebSockets.js (a C++ core)
// with its own pub/sub, speaking the subset the load client uses (welcome,
// subscribe -> subscribed, publish -> ack + event to every subscriber,
// ping -> pong). Each event is serialised once and handed to uWS's
// `publish`, which fans it out in C++.
// Usage: node server.mjs --port 4100
import { createRequire } from 'node:module';

const uWS = createRequire(import.meta.url)('uwebsockets');
const port = Number(process.argv[process.argv.indexOf('--port') + 1] || 4100);
const decoder = new TextDecoder();
let seq = 0;
let conns = 0;

const app = uWS.App().ws('/*', {
  compression: uWS.DISABLED,
  maxPayloadLength: 64 * 1024,
  maxBackpressure: 16 * 1024 * 1024,
  idleTimeout: 0,
  open: (ws) => {
    conns += 1;
    ws.send(JSON.stringify({ type: 'welcome', conn: String(conns), userId: null, node: 'uws' }));
  },
  message: (ws, message) => {
    let frame;
    try {
      frame = JSON.parse(decoder.decode(message));
    } catch {
      return;
    }
    if (frame.type === 'subscribe') {
      ws.subscribe(frame.topic);
      ws.send(JSON.stringify({ type: 'subscribed', ref: frame.ref, topic: frame.topic, seq, epoch: 'uws', recovered: false }));
    } else if (frame.type === 'publish') {
      seq += 1;
      ws.send(JSON.stringify({ type: 'ack', ref: frame.ref, seq }));
      const event = JSON.stringify({
        type: 'event', topic: frame.topic, event: frame.event, data: frame.data, userId: null, timestamp: Date.now(), seq,
      });
      app.publish(frame.topic, event);
    } else if (frame.type === 'ping') {
      ws.send(JSON.stringify({ type: 'pong', ref: frame.ref }));
    }
  },
}).listen('127.0.0.1', port, (listening) => {
  if (!listening) {
    console.error(`uws peer: cannot listen on 127.0.0.1:${port}`);
    process.exit(1);
  }
  console.log(`uws peer on 127.0.0.1:${port}`);
});
