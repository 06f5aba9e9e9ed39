// The reference peer for realtide's benchmarks: a plain Node `ws` broadcast
// server speaking the subset the load client uses (welcome, subscribe ->
// subscribed, publish -> ack + event to every subscriber, ping -> pong).
// It serialises each event once, as a good Node server would.
// Usage: node server.mjs --port 4100
import { WebSocketServer } from 'ws';

const port = Number(process.argv[process.argv.indexOf('--port') + 1] || 4100);
const topics = new Map();
let seq = 0;

const wss = new WebSocketServer({ host: '127.0.0.1', port, perMessageDeflate: false });
wss.on('connection', (socket) => {
  const mine = new Set();
  socket.send(JSON.stringify({ type: 'welcome', conn: String(Math.random()), userId: null, node: 'node-ws' }));
  socket.on('message', (raw) => {
    let frame;
    try {
      frame = JSON.parse(raw);
    } catch {
      return;
    }
    if (frame.type === 'subscribe') {
      if (!topics.has(frame.topic)) topics.set(frame.topic, new Set());
      topics.get(frame.topic).add(socket);
      mine.add(frame.topic);
      socket.send(JSON.stringify({ type: 'subscribed', ref: frame.ref, topic: frame.topic, seq, epoch: 'node', recovered: false }));
    } else if (frame.type === 'publish') {
      seq += 1;
      socket.send(JSON.stringify({ type: 'ack', ref: frame.ref, seq }));
      const event = JSON.stringify({
        type: 'event', topic: frame.topic, event: frame.event, data: frame.data, userId: null, timestamp: Date.now(), seq,
      });
      for (const subscriber of topics.get(frame.topic) ?? []) subscriber.send(event);
    } else if (frame.type === 'ping') {
      socket.send(JSON.stringify({ type: 'pong', ref: frame.ref }));
    }
  });
  socket.on('close', () => {
    for (const topic of mine) topics.get(topic)?.delete(socket);
  });
});
wss.on('listening', () => console.log(`node-ws peer on 127.0.0.1:${port}`));
