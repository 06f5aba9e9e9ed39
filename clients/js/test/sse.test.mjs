// The JavaScript client over server-sent events: where a proxy refuses
// WebSocket upgrades, the same API works, across a server restart.
// Run: node --experimental-websocket --test clients/js/test/
import { test } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';

import { createClient } from '../realtide.js';
import { sleep, freePort, startServer, waitFor } from './helpers.mjs';

/** A proxy in front of `target` that passes plain HTTP (streamed, unbuffered) and refuses every WebSocket upgrade. */
async function upgradeRefusingProxy(target) {
  const proxy = http.createServer((req, res) => {
    const upstream = http.request(`${target}${req.url}`, { method: req.method, headers: req.headers }, (answer) => {
      res.writeHead(answer.statusCode, answer.headers);
      answer.pipe(res);
    });
    upstream.on('error', () => res.destroy());
    req.pipe(upstream);
    res.on('close', () => upstream.destroy());
  });
  proxy.on('upgrade', (req, socket) => {
    socket.end('HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n');
  });
  const port = await freePort();
  await new Promise((resolve) => proxy.listen(port, '127.0.0.1', resolve));
  proxy.ws = `ws://127.0.0.1:${port}/api/realtime`;
  proxy.stop = () => {
    proxy.closeAllConnections();
    proxy.close();
  };
  return proxy;
}

test('behind a proxy that refuses upgrades, the client moves to server-sent events and everything works', async (t) => {
  const server = await startServer();
  const proxy = await upgradeRefusingProxy(server.http);
  t.after(() => { proxy.stop(); return server.kill(); });
  const ann = createClient({ url: proxy.ws, userId: 'ann', minDelayMs: 20 });
  const bob = createClient({ url: `ws://127.0.0.1:${server.port}/api/realtime`, userId: 'bob' });
  t.after(() => { ann.disconnect(); bob.disconnect(); });

  const annRoom = ann.channel('chat/room');
  const seen = [];
  annRoom.on('message', ({ data, userId }) => seen.push([userId, data.text]));
  await annRoom.subscribe();
  assert.equal(ann.transport, 'sse');
  assert.equal(ann.status, 'connected');

  const bobRoom = bob.channel('chat/room');
  await bobRoom.subscribe();
  await bobRoom.publish('message', { text: 'hi' });
  const ack = await annRoom.publish('message', { text: 'over sse' }, { persist: true });
  assert.equal(typeof ack.message_id, 'string', 'a request gets its reply');
  await server.emit({ topic: 'chat/room', event: 'message', data: { text: 'from backend' } });
  await waitFor(() => seen.length === 3);
  assert.deepEqual(seen, [['bob', 'hi'], ['ann', 'over sse'], [null, 'from backend']]);

  await annRoom.track({ typing: true });
  const bobSees = () => bobRoom.presence().ann;
  await waitFor(() => bobSees() !== undefined);
  assert.deepEqual(bobSees()[0].state, { typing: true });
  const history = await annRoom.getHistory(10);
  assert.deepEqual(history.map((m) => m.data.text), ['over sse']);
});

test('over server-sent events a server restart in the middle of table changes loses and repeats nothing', async (t) => {
  const server = await startServer();
  t.after(() => server.kill());
  server.sql('CREATE TABLE items (n INTEGER PRIMARY KEY)');
  const client = createClient({
    url: `ws://127.0.0.1:${server.port}/api/realtime`, transports: ['sse'], minDelayMs: 50, maxDelayMs: 500,
  });
  t.after(() => client.disconnect());
  const items = client.channel('items', { rows: true });
  const seen = [];
  items.on('INSERT', ({ data }) => seen.push(data.n));
  let resyncs = 0;
  items.on('resync', () => resyncs++);
  await items.subscribe();

  for (let n = 0; n < 40; n++) {
    server.sql(`INSERT INTO items VALUES (${n})`);
    if (n === 15) await server.restart();
  }
  await waitFor(() => seen.length >= 40, 15000);
  await sleep(300);
  assert.deepEqual(seen, [...Array(40).keys()], 'every row exactly once, in commit order');
  assert.equal(resyncs, 0, 'the resume recovered everything');
  assert.equal(items.rows.length, 40, 'the live rows hold the whole table');
});

test('with only WebSocket allowed, a proxy that refuses upgrades leaves the client reconnecting', async (t) => {
  const server = await startServer();
  const proxy = await upgradeRefusingProxy(server.http);
  t.after(() => { proxy.stop(); return server.kill(); });
  const client = createClient({ url: proxy.ws, transports: ['websocket'], minDelayMs: 20, maxDelayMs: 100 });
  t.after(() => client.disconnect());
  client.connect();
  await sleep(500);
  assert.equal(client.transport, 'websocket');
  assert.notEqual(client.status, 'connected');
});
