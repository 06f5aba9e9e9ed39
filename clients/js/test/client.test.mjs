// The JavaScript client against a real realtide server (the debug binary by
// default, REALTIDE_BIN to choose). Run: node --experimental-websocket --test clients/js/test/
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';

import { createClient } from '../realtide.js';
import { BIN, sleep, freePort, startServer, waitFor } from './helpers.mjs';

test('a channel receives publishes, emits, presence and history', async (t) => {
  const server = await startServer();
  t.after(() => server.kill());
  const ann = createClient({ url: server.ws, userId: 'ann' });
  const bob = createClient({ url: server.ws, userId: 'bob' });
  t.after(() => { ann.disconnect(); bob.disconnect(); });
  const statuses = [];
  ann.onStatusChange((s) => statuses.push(s));

  const annRoom = ann.channel('chat/room');
  const seen = [];
  annRoom.on('message', ({ data, userId }) => seen.push([userId, data.text]));
  await annRoom.subscribe();
  assert.deepEqual(statuses, ['connecting', 'connected']);

  const bobRoom = bob.channel('chat/room');
  await bobRoom.subscribe();
  const ack = await bobRoom.publish('message', { text: 'hi' }, { persist: true });
  assert.equal(typeof ack.message_id, 'string');
  await server.emit({ topic: 'chat/room', event: 'message', data: { text: 'from backend' } });
  await waitFor(() => seen.length === 2);
  assert.deepEqual(seen, [['bob', 'hi'], [null, 'from backend']]);

  await bobRoom.track({ typing: true });
  await waitFor(() => annRoom.presence().bob !== undefined);
  assert.deepEqual(annRoom.presence().bob[0].state, { typing: true });
  await bobRoom.untrack();
  await waitFor(() => annRoom.presence().bob === undefined);

  const history = await annRoom.getHistory(10);
  assert.equal(history.length, 1);
  assert.equal(history[0].data.text, 'hi');
});

test('table changes arrive as INSERT, UPDATE and DELETE', async (t) => {
  const server = await startServer();
  t.after(() => server.kill());
  server.sql("CREATE TABLE orders (id TEXT PRIMARY KEY, status TEXT)");
  const client = createClient({ url: server.ws });
  t.after(() => client.disconnect());
  const got = [];
  const orders = client.channel('orders');
  orders
    .on('INSERT', ({ data }) => got.push(['INSERT', data.status]))
    .on('UPDATE', ({ data, old }) => got.push(['UPDATE', `${old.status}->${data.status}`]))
    .on('DELETE', ({ old }) => got.push(['DELETE', old.id]));
  await orders.subscribe();
  server.sql("INSERT INTO orders VALUES ('1', 'pending'); UPDATE orders SET status = 'shipped'; DELETE FROM orders");
  await waitFor(() => got.length === 3);
  assert.deepEqual(got, [['INSERT', 'pending'], ['UPDATE', 'pending->shipped'], ['DELETE', '1']]);
});

test('a channel with rows holds the table while a writer commits, across a server restart', async (t) => {
  const server = await startServer();
  t.after(() => server.kill());
  server.sql('CREATE TABLE stock (id INTEGER PRIMARY KEY, item TEXT, qty INTEGER)');
  for (let id = 1; id <= 30; id++) server.sql(`INSERT INTO stock VALUES (${id}, 'item${id}', ${id})`);
  let writing = true;
  const writer = (async () => {
    for (let n = 0; writing; n++) {
      const id = (n * 7) % 40 + 1;
      const sql = n % 4 === 0
        ? `DELETE FROM stock WHERE id = ${id}`
        : `INSERT INTO stock VALUES (${id}, 'item${id}', ${n}) ON CONFLICT (id) DO UPDATE SET qty = excluded.qty`;
      try { server.sql(sql); } catch {}
      await sleep(5);
    }
  })();
  await sleep(100);
  const client = createClient({ url: server.ws, minDelayMs: 50 });
  t.after(() => client.disconnect());
  const all = client.channel('stock', { rows: true });
  let rowEvents = 0;
  all.on('rows', () => { rowEvents += 1; });
  await all.subscribe();
  await waitFor(() => rowEvents > 0);
  await sleep(200);
  await server.restart();
  await sleep(300);
  writing = false;
  await writer;
  const table = () => JSON.parse(execFileSync('sqlite3', ['-json', '-cmd', '.timeout 5000', server.dbPath,
    'SELECT id, item, qty FROM stock ORDER BY id']).toString() || '[]');
  const held = () => [...all.rows].sort((a, b) => a.id - b.id);
  await waitFor(() => JSON.stringify(held()) === JSON.stringify(table()), 10000).catch(() => {});
  assert.deepEqual(held(), table());
  assert.ok(table().length > 0);
});

test('a dropped socket in the middle of a stream of events loses and repeats nothing', async (t) => {
  const server = await startServer();
  t.after(() => server.kill());
  const client = createClient({ url: server.ws, minDelayMs: 50 });
  t.after(() => client.disconnect());
  const statuses = [];
  client.onStatusChange((s) => statuses.push(s));
  const feed = client.channel('feed/x');
  const seen = [];
  feed.on('tick', ({ data }) => seen.push(data));
  let resyncs = 0;
  feed.on('resync', () => resyncs++);
  await feed.subscribe();

  for (let n = 0; n < 300; n++) {
    await server.emit({ topic: 'feed/x', event: 'tick', data: n });
    if (n === 100) client.socket.close(); // the connection drops mid-stream
    if (n % 50 === 0) await sleep(5);
  }
  await waitFor(() => seen.length >= 300);
  await sleep(200);
  assert.deepEqual(seen, [...Array(300).keys()], 'every event exactly once, in order');
  assert.equal(resyncs, 0);
  assert.ok(statuses.includes('reconnecting'));
  assert.equal(statuses.at(-1), 'connected');
});

test('a server restart in the middle of table changes loses and repeats nothing', async (t) => {
  const server = await startServer();
  t.after(() => server.kill());
  server.sql('CREATE TABLE items (n INTEGER PRIMARY KEY)');
  const client = createClient({ url: server.ws, minDelayMs: 50, maxDelayMs: 500 });
  t.after(() => client.disconnect());
  const items = client.channel('items');
  const seen = [];
  items.on('INSERT', ({ data }) => seen.push(data.n));
  let resyncs = 0;
  items.on('resync', () => resyncs++);
  await items.subscribe();

  for (let n = 0; n < 60; n++) {
    server.sql(`INSERT INTO items VALUES (${n})`);
    if (n === 20) await server.restart(); // rows keep coming while it is down and after
    if (n === 20) server.sql('INSERT INTO items VALUES (1000)');
  }
  await waitFor(() => seen.length >= 61, 15000);
  await sleep(300);
  const expected = [...Array(21).keys(), 1000, ...Array.from({ length: 39 }, (_, i) => i + 21)];
  assert.deepEqual(seen, expected, 'every row exactly once, in commit order');
  assert.equal(resyncs, 0, 'the resume recovered everything');
});

test('when the server cannot recover what was missed, the app is told', async (t) => {
  const server = await startServer();
  t.after(() => server.kill());
  const client = createClient({ url: server.ws, minDelayMs: 50, maxDelayMs: 500 });
  t.after(() => client.disconnect());
  const room = client.channel('chat/volatile');
  let resyncs = 0;
  room.on('resync', () => resyncs++);
  await room.subscribe();
  await server.emit({ topic: 'chat/volatile', event: 'm', data: 1 });
  await sleep(100);
  await server.restart(); // pub/sub replay lives in memory: a restart loses it
  await waitFor(() => resyncs === 1, 10000);
});

test('chat messages arrive as the `chat` event, also to the sender', async (t) => {
  const server = await startServer();
  t.after(() => server.kill());
  const ann = createClient({ url: server.ws, userId: 'ann' });
  const bob = createClient({ url: server.ws, userId: 'bob' });
  t.after(() => { ann.disconnect(); bob.disconnect(); });
  const annLobby = ann.channel('chat/lobby');
  const heard = [];
  annLobby.on('chat', ({ type, data, userId }) => heard.push([type, userId, data.text, data.metadata]));
  await annLobby.subscribe();
  const bobLobby = bob.channel('chat/lobby');
  await bobLobby.subscribe();
  const ack = await bobLobby.sendChat('hello', { mood: 'glad' });
  assert.equal(typeof ack.message_id, 'string');
  await waitFor(() => heard.length === 1);
  assert.deepEqual(heard, [['chat_message', 'bob', 'hello', { mood: 'glad' }]]);
  const [stored] = await annLobby.getHistory(1);
  assert.equal(stored.id, ack.message_id);
});

const SECRET = 'a-js-test-secret-of-at-least-32-bytes';

/** A token signed by `realtide token`, as an app's backend would hand out. */
function mint(sub, ttl) {
  return execFileSync(BIN, ['token', '--sub', sub, '--ttl', ttl, '--jwt-secret', SECRET]).toString().trim();
}

test('a refused token is reported as unauthorized and the client stops trying', async (t) => {
  const server = await startServer(['--jwt-secret', SECRET]);
  t.after(() => server.kill());
  const client = createClient({ url: server.ws, token: 'not-a-token' });
  t.after(() => client.disconnect());
  const errors = [];
  client.onError((error) => errors.push(error.code));
  client.connect();
  await waitFor(() => client.status === 'disconnected');
  assert.deepEqual(errors, ['unauthorized']);
  await sleep(600);
  assert.equal(client.status, 'disconnected', 'no reconnect loop');
});

test('getToken is asked before connecting and again before the token expires', async (t) => {
  const server = await startServer(['--jwt-secret', SECRET]);
  t.after(() => server.kill());
  let asked = 0;
  const client = createClient({
    url: server.ws,
    getToken: async () => {
      asked += 1;
      return mint('ann', '3s');
    },
  });
  t.after(() => client.disconnect());
  const room = client.channel('chat/tokens');
  const reply = await room.subscribe();
  assert.equal(reply.type, 'subscribed');
  assert.equal(client.welcome.userId, 'ann');
  assert.equal(asked, 1);
  // Past the first token's expiry: refreshed in time, the connection stayed.
  await sleep(4000);
  assert.ok(asked >= 2, `asked ${asked} times`);
  assert.equal(client.status, 'connected');
  const ack = await room.publish('m', 1);
  assert.equal(ack.type, 'ack');
});

test('a server that does not answer is reported, and the client keeps trying', async (t) => {
  const port = await freePort();
  const client = createClient({ url: `ws://127.0.0.1:${port}/api/realtime`, minDelayMs: 50, maxDelayMs: 200 });
  t.after(() => client.disconnect());
  const errors = [];
  client.onError((error) => errors.push(error.code));
  client.connect();
  await waitFor(() => errors.length >= 2);
  assert.equal(errors[0], 'server_gone');
  assert.equal(client.status, 'reconnecting');
});

test('a refused subscription whose promise the app ignores reaches the channel\'s error listeners, not an unhandled rejection', async (t) => {
  const server = await startServer();
  t.after(() => server.kill());
  server.sql('CREATE TABLE orders (id TEXT PRIMARY KEY, status TEXT)');
  const unhandled = [];
  const onUnhandled = (reason) => unhandled.push(reason);
  process.on('unhandledRejection', onUnhandled);
  t.after(() => process.off('unhandledRejection', onUnhandled));
  const client = createClient({ url: server.ws });
  t.after(() => client.disconnect());
  const errors = [];
  // Written as the SDKs' examples are: the promise is dropped.
  client.channel('orders', { filter: { nope: 1 } }).on('error', (error) => errors.push(error.code)).subscribe();
  await waitFor(() => errors.length === 1);
  await sleep(50);
  assert.deepEqual(errors, ['bad_request']);
  assert.deepEqual(unhandled, []);
});
