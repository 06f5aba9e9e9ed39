// realtide's JavaScript client (clients/js) under the `ws` package, as a
// Node app that does not use Node's built-in WebSocket runs it, against the
// real server (the debug binary, or REALTIDE_BIN).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import WebSocket from 'ws';

import { createClient } from '../js/realtide.js';
import { scratchDatabase, sleep, startServer as start, until } from './helpers.mjs';

const SECRET = 'ws-client-test-secret-of-at-least-32-bytes';

async function startServer(extra = []) {
  const { dbPath, sql } = scratchDatabase('realtide-ws-');
  const server = await start(dbPath, extra);
  server.sql = sql;
  return server;
}

const waitFor = (predicate) => until(predicate, 'the condition');

test('under `ws`, table changes keep arriving across a server restart, none twice', async (t) => {
  const server = await startServer();
  t.after(() => server.stop('SIGKILL'));
  server.sql('CREATE TABLE orders (id TEXT PRIMARY KEY, status TEXT)');
  const client = createClient({ url: server.ws, WebSocket, minDelayMs: 50 });
  t.after(() => client.disconnect());
  const errors = [];
  client.onError((error) => errors.push([error.code, error.closeCode]));
  const got = [];
  const orders = client.channel('orders');
  orders.on('INSERT', ({ data }) => got.push(data.id));
  await orders.subscribe();
  server.sql("INSERT INTO orders VALUES ('1', 'pending')");
  await waitFor(() => got.length === 1);

  await server.stop();
  server.sql("INSERT INTO orders VALUES ('2', 'pending')");
  await server.launch();
  await waitFor(() => client.status === 'connected' && got.length === 2);
  server.sql("INSERT INTO orders VALUES ('3', 'pending')");
  await waitFor(() => got.length === 3);
  assert.deepEqual(got, ['1', '2', '3']);
  assert.deepEqual(errors[0], ['closed', 1012], 'a deploy closes with 1012');
});

test('under `ws`, a refused token is reported as unauthorized and the client stops', async (t) => {
  const server = await startServer(['--jwt-secret', SECRET]);
  t.after(() => server.stop('SIGKILL'));
  const client = createClient({ url: server.ws, token: 'not-a-token', WebSocket });
  t.after(() => client.disconnect());
  const errors = [];
  client.onError((error) => errors.push(error.code));
  client.connect();
  await waitFor(() => client.status === 'disconnected');
  assert.deepEqual(errors, ['unauthorized']);
  await sleep(600);
  assert.equal(client.status, 'disconnected', 'no reconnect loop');
});
