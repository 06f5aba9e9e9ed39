// docs/backend.md's example backends (examples/backend/node and
// examples/backend/python), each run as written against the real server:
// the connect proxy knows the app's session cookie, the subscribe proxy
// keeps each user to their own orders, the publish proxy cleans words, and
// the webhooks arrive signed (a forged one is refused).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { join } from 'node:path';
import WebSocket from 'ws';
import { root, scratchDatabase, startServer, freePort, until } from './helpers.mjs';

const SECRET = 'example-backend-secret-of-32-bytes-or-more';

/**
 * The Python to run the Flask example with: REALTIDE_EXAMPLE_PYTHON (CI sets
 * it, and then it must have Flask), or python3 if it has Flask.
 */
function python() {
  const chosen = process.env.REALTIDE_EXAMPLE_PYTHON;
  const candidate = chosen ?? 'python3';
  const hasFlask = spawnSync(candidate, ['-c', 'import flask']).status === 0;
  if (chosen && !hasFlask) throw new Error(`REALTIDE_EXAMPLE_PYTHON=${chosen} cannot import flask`);
  return hasFlask ? candidate : null;
}

const BACKENDS = [
  { name: 'node', command: () => [process.execPath, [join(root, 'examples/backend/node/server.mjs')]] },
  {
    name: 'python',
    command: () => {
      const py = python();
      return py ? [py, [join(root, 'examples/backend/python/app.py')]] : null;
    },
  },
];

function connect(url, headers) {
  return new Promise((resolve) => {
    const socket = new WebSocket(url, ['aerostack-v1'], { headers });
    const frames = [];
    socket.on('message', (data) => frames.push(JSON.parse(data.toString())));
    socket.once('open', () => resolve({ socket, frames }));
    socket.once('unexpected-response', (_req, res) => resolve({ refused: res.statusCode }));
  });
}

for (const backend of BACKENDS) {
  test(`the ${backend.name} example backend decides and hears`, async (t) => {
    const command = backend.command();
    if (!command) {
      console.log(`SKIP the ${backend.name} example backend: no Python with Flask (set REALTIDE_EXAMPLE_PYTHON)`);
      t.skip('no Python with Flask');
      return;
    }
    const port = await freePort();
    const app = `http://127.0.0.1:${port}`;
    const child = spawn(command[0], command[1], {
      env: { ...process.env, REALTIDE_WEBHOOK_SECRET: SECRET, PORT: String(port) },
      stdio: 'ignore',
    });
    t.after(() => child.kill('SIGKILL'));
    await until(async () => (await fetch(`${app}/events`)).ok, `the ${backend.name} backend`);

    const { dbPath, sql } = scratchDatabase('realtide-backend-');
    sql('CREATE TABLE orders (id INTEGER PRIMARY KEY, owner TEXT, item TEXT)');
    const realtide = await startServer(dbPath, [
      '--proxy-connect-url', `${app}/realtide/connect`,
      '--proxy-subscribe-url', `${app}/realtide/subscribe`,
      '--proxy-publish-url', `${app}/realtide/publish`,
      '--webhook-url', `${app}/realtide/webhooks`,
      '--webhook-secret', SECRET,
    ]);
    t.after(() => realtide.stop('SIGKILL'));

    assert.equal((await connect(realtide.ws)).refused, 401, 'no session cookie: refused');
    const { socket, frames } = await connect(realtide.ws, { Cookie: 'theme=dark; session=s-ann' });
    const reply = async (ref) => {
      await until(() => frames.some((f) => f.ref === ref), `the reply to ${ref}`);
      return frames.find((f) => f.ref === ref);
    };
    await until(() => frames.some((f) => f.type === 'welcome'), 'welcome');
    assert.equal(frames[0].userId, 'ann');

    socket.send(JSON.stringify({ type: 'subscribe', topic: 'orders', ref: 'o' }));
    assert.equal((await reply('o')).type, 'subscribed');
    sql("INSERT INTO orders VALUES (1, 'bob', 'kettle'); INSERT INTO orders VALUES (2, 'ann', 'teapot')");
    await until(() => frames.some((f) => f.type === 'db_change'), 'ann\'s order');
    socket.send(JSON.stringify({ type: 'subscribe', topic: 'chat/admins', ref: 'a' }));
    assert.equal((await reply('a')).code, 'forbidden');
    socket.send(JSON.stringify({ type: 'subscribe', topic: 'chat/lobby', ref: 'l' }));
    assert.equal((await reply('l')).type, 'subscribed');
    socket.send(JSON.stringify({ type: 'publish', topic: 'chat/lobby', event: 'm', data: { text: 'darn it' }, ref: 'p' }));
    assert.equal((await reply('p')).type, 'ack');
    socket.send(JSON.stringify({ type: 'publish', topic: 'chat/lobby', event: 'm', data: { text: ' ' }, ref: 'q' }));
    assert.equal((await reply('q')).code, 'bad_request');
    const changes = frames.filter((f) => f.type === 'db_change');
    assert.deepEqual(changes.map((c) => c.data.item), ['teapot'], 'ann sees only her orders');
    assert.equal(frames.find((f) => f.type === 'event' && f.event === 'm').data.text, '**** it');

    socket.close();
    let heard = { events: [] };
    await until(async () => {
      heard = await (await fetch(`${app}/events`)).json();
      return heard.events.some((e) => e.type === 'connection.closed');
    }, 'the webhooks');
    const kinds = heard.events.map((e) => e.type);
    for (const kind of ['connection.opened', 'topic.occupied', 'connection.closed']) {
      assert.ok(kinds.includes(kind), `${kind} in ${kinds}`);
    }
    assert.equal(heard.events.find((e) => e.type === 'connection.opened').data.user, 'ann');
    assert.equal(heard.rejected, 0, 'every call from realtide verified');

    const forged = await fetch(`${app}/realtide/webhooks`, {
      method: 'POST',
      headers: { 'X-Realtide-Signature': `t=${Math.floor(Date.now() / 1000)},v1=${'0'.repeat(64)}` },
      body: JSON.stringify({ id: 'forged', type: 'connection.opened', data: {} }),
    });
    assert.equal(forged.status, 401, 'a forged webhook is refused');
  });
}
