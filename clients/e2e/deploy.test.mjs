// docs/deploy.md's nginx configuration, as written there (TLS lines aside),
// in front of the real server (the debug binary, or REALTIDE_BIN) with every
// key set: a client connects and receives through it, the backend emits
// through it with the server key, admin needs its key, /metrics is denied.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import WebSocket from 'ws';
import { scratchDatabase, startServer, until, mint, startNginx } from './helpers.mjs';

const SECRET = 'deploy-test-secret-of-at-least-32-bytes';

test('the deploy guide\'s nginx configuration carries WebSockets, emit and keys, and hides /metrics', async (t) => {
  const { dir, dbPath } = scratchDatabase('realtide-deploy-');
  const realtide = await startServer(dbPath,
    ['--jwt-secret', SECRET, '--server-key', 'backend-key', '--admin-key', 'ops-key']);
  t.after(() => realtide.stop('SIGKILL'));
  const upstream = realtide.port;
  const nginx = await startNginx(dir, upstream);
  if (!nginx) {
    t.skip('nginx is not installed');
    return;
  }
  t.after(() => nginx.stop());
  const { port, url: proxied } = nginx;

  // A client connects through the proxy with its token, and hears an emit.
  const token = mint('ann', SECRET);
  const socket = new WebSocket(`ws://127.0.0.1:${port}/api/realtime?token=${token}`, ['aerostack-v1']);
  t.after(() => socket.terminate());
  const frames = [];
  socket.on('message', (data) => frames.push(JSON.parse(data.toString())));
  await new Promise((resolve, reject) => {
    socket.once('open', resolve);
    socket.once('error', reject);
  });
  assert.equal(socket.protocol, 'aerostack-v1');
  await until(() => frames.some((f) => f.type === 'welcome'), 'welcome');
  assert.equal(frames.find((f) => f.type === 'welcome').userId, 'ann');
  socket.send(JSON.stringify({ type: 'subscribe', topic: 'news/today', ref: 's' }));
  await until(() => frames.some((f) => f.ref === 's' && f.type === 'subscribed'), 'subscribed');

  const emit = (key) => fetch(`${proxied}/api/realtime/emit`, {
    method: 'POST',
    headers: key ? { Authorization: `Bearer ${key}` } : {},
    body: JSON.stringify({ topic: 'news/today', event: 'headline', data: { text: 'through nginx' } }),
  });
  // Through a proxy every peer is loopback: the key is what keeps emit closed.
  assert.equal((await emit(null)).status, 401);
  assert.equal((await emit('backend-key')).status, 200);
  await until(() => frames.some((f) => f.event === 'headline' && f.data.text === 'through nginx'), 'the emitted event');

  assert.equal((await fetch(`${proxied}/admin/topics`)).status, 401);
  const topics = await fetch(`${proxied}/admin/topics`, { headers: { Authorization: 'Bearer ops-key' } });
  assert.equal(topics.status, 200);
  assert.equal((await fetch(`${proxied}/metrics`)).status, 403);
  assert.equal((await fetch(`http://127.0.0.1:${upstream}/metrics`)).status, 200, 'scraped at realtide itself');
});
