// realtide's JavaScript client (clients/js) under the `ws` package, as a
// Node app that does not use Node's built-in WebSocket runs it, against the
// real server (the debug binary, or REALTIDE_BIN).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, execFileSync } from 'node:child_process';
import { mkdtempSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import WebSocket from 'ws';

import { createClient } from '../js/realtide.js';

const here = dirname(fileURLToPath(import.meta.url));
const BIN = process.env.REALTIDE_BIN ?? join(here, '../../target/debug/realtide');
const SECRET = 'ws-client-test-secret-of-at-least-32-bytes';
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function freePort() {
  return new Promise((resolve) => {
    const server = createServer();
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

async function startServer(extra = []) {
  const dbPath = join(mkdtempSync(join(tmpdir(), 'realtide-ws-')), 'rt.db');
  const port = await freePort();
  const server = { dbPath, http: `http://127.0.0.1:${port}`, ws: `ws://127.0.0.1:${port}/api/realtime` };
  server.launch = async () => {
    server.child = spawn(BIN, ['serve', '--bind', `127.0.0.1:${port}`, '--database-url', `sqlite://${dbPath}`, ...extra], { stdio: 'ignore' });
    for (let i = 0; i < 400; i++) {
      try {
        if ((await fetch(`${server.http}/healthz`)).ok) return;
      } catch {}
      await sleep(25);
    }
    throw new Error('realtide did not start');
  };
  server.stop = (signal = 'SIGTERM') => new Promise((resolve) => {
    server.child.once('exit', resolve);
    server.child.kill(signal);
  });
  server.sql = (sql) => execFileSync('sqlite3', ['-cmd', '.timeout 5000', dbPath, sql]);
  await server.launch();
  return server;
}

async function waitFor(predicate, timeoutMs = 10000) {
  const started = Date.now();
  while (!predicate()) {
    if (Date.now() - started > timeoutMs) throw new Error('timed out');
    await sleep(10);
  }
}

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
