// The operators' console (/console) in a real browser, against the real
// server (the debug binary, or REALTIDE_BIN) with an admin key and a JWT
// secret set: sign in, watch the overview and its 15-minute lines, follow a
// pub/sub topic and a table live, page and delete history, publish, open a
// topic that is not running, and disconnect a client (after confirming).
// Screenshots land in docs/.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import WebSocket from 'ws';
import { root, scratchDatabase, startServer, mint, sleep, launchChromium, freePort, until } from './helpers.mjs';

const SECRET = 'console-test-secret-of-at-least-32-bytes';
const ADMIN_KEY = 'console-test-admin-key';

/** A client as an app runs it: a token from `realtide token`, frames in order. */
async function appClient(url, sub) {
  const token = mint(sub, SECRET);
  const socket = new WebSocket(`${url}?token=${token}`);
  const frames = [];
  let closed = null;
  socket.on('message', (data) => frames.push(JSON.parse(data.toString())));
  socket.on('close', (code) => {
    closed = code;
  });
  await new Promise((resolve, reject) => {
    socket.once('open', resolve);
    socket.once('error', reject);
  });
  let ref = 0;
  const request = async (frame) => {
    const id = `r${++ref}`;
    socket.send(JSON.stringify({ ...frame, ref: id }));
    for (let i = 0; i < 500; i++) {
      const reply = frames.find((f) => f.ref === id);
      if (reply) return reply;
      await sleep(10);
    }
    throw new Error(`no reply to ${JSON.stringify(frame)}`);
  };
  return { socket, request, closedWith: () => closed };
}

test('an operator signs in, follows topics live, pages history, publishes and disconnects a client', async (t) => {
  const { dbPath, sql } = scratchDatabase('realtide-console-');
  sql("CREATE TABLE orders (id TEXT PRIMARY KEY, status TEXT); INSERT INTO orders VALUES ('7', 'pending')");
  const server = await startServer(dbPath, ['--jwt-secret', SECRET, '--admin-key', ADMIN_KEY]);
  const { http, port } = server;
  const browser = await launchChromium();
  t.after(async () => {
    await browser.close();
    await server.stop('SIGKILL');
  });

  // An app's user is on the chat and the orders table, present in the room.
  const ann = await appClient(`ws://127.0.0.1:${port}/api/realtime`, 'ann');
  assert.equal((await ann.request({ type: 'subscribe', topic: 'chat/general' })).type, 'subscribed');
  assert.equal((await ann.request({ type: 'subscribe', topic: 'orders' })).type, 'subscribed');
  assert.equal((await ann.request({ type: 'track', topic: 'chat/general', state: { typing: false } })).type, 'ack');
  for (let n = 1; n <= 25; n++) {
    await ann.request({ type: 'publish', topic: 'chat/general', event: 'message', data: { n }, persist: true });
  }

  const page = await browser.newPage({ viewport: { width: 1100, height: 700 } });
  const problems = [];
  page.on('pageerror', (error) => problems.push(error.message));
  await page.goto(`${http}/console`);

  // The admin key is asked for; a wrong one is refused.
  await page.waitForSelector('#login:not([hidden])');
  await page.fill('#key', 'wrong');
  await page.click('#login button');
  await page.waitForFunction(() => document.querySelector('#login-error').textContent.includes('refused'));
  await page.fill('#key', ADMIN_KEY);
  await page.click('#login button');
  await page.waitForSelector('body[data-ready="overview"]');
  await page.waitForFunction(() => document.querySelector('[data-tile="connections"] b')?.textContent === '1');
  assert.match(await page.locator('#nodes tbody').textContent(), /node-/);
  // The node's last heartbeat is an age: a healthy node was seen just now.
  assert.match(await page.locator('#nodes tbody tr td:nth-child(4)').textContent(), /^(just now|\d+ s ago)$/);
  // Traffic while the overview polls: the rates, the lag and their lines
  // (a sample every 10 s) follow.
  let chatting = true;
  const chatter = (async () => {
    for (let n = 0; chatting; n++) {
      await ann.request({ type: 'publish', topic: 'chat/general', event: 'message', data: { n } });
      await sleep(50);
    }
  })();
  await page.waitForFunction(() => {
    const value = (tile) => document.querySelector(`[data-tile="${tile}"] b`)?.textContent ?? '';
    return /^[1-9]/.test(value('deliveries')) && value('delivery lag p99').startsWith('≤');
  }, null, { timeout: 15000 });
  await page.waitForSelector('[data-tile="deliveries"] svg.spark path', { timeout: 40000 });
  chatting = false;
  await chatter;
  for (const tile of ['connections', 'messages in', 'messages out', 'deliveries', 'delivery lag p99', 'change lag p99']) {
    assert.ok(await page.locator(`[data-tile="${tile}"] svg.spark`).count(), `${tile} has its line`);
  }
  await page.screenshot({ path: join(root, 'docs/console.png') });

  // Topics, filtered by name.
  await page.click('nav a[data-view="topics"]');
  await page.waitForSelector('body[data-ready="topics"]');
  await page.waitForSelector('#topic-list tbody tr');
  await page.fill('#filter', 'chat');
  await page.waitForFunction(() => [...document.querySelectorAll('#topic-list tbody tr')].length === 1);
  assert.match(await page.locator('#topic-list tbody tr').textContent(), /chat\/general.*pubsub/);

  // One topic: presence, history with paging, live events, publishing.
  await page.click('#topic-list tbody tr');
  await page.waitForSelector('body[data-ready="topic"]');
  await page.waitForFunction(() => document.querySelector('#presence').textContent.includes('ann'));
  await page.waitForFunction(() => document.querySelectorAll('#history tbody tr').length === 20);
  assert.match(await page.locator('#history tbody tr').first().textContent(), /"n":25/);
  await page.click('#older');
  await page.waitForFunction(() => document.querySelectorAll('#history tbody tr').length === 25);
  await page.waitForFunction(() => document.querySelector('#tail-state').textContent === 'live');
  await ann.request({ type: 'publish', topic: 'chat/general', event: 'message', data: { text: 'live from ann' } });
  await page.waitForFunction(() => document.querySelector('#tail').textContent.includes('live from ann'));
  await page.fill('#publish-data', '{"text": "from the console"}');
  await page.click('#publish button');
  await page.waitForFunction(() => document.querySelector('#publish-result').textContent.startsWith('published'));
  await page.waitForFunction(() => document.querySelector('#tail').textContent.includes('from the console'));
  await page.screenshot({ path: join(root, 'docs/console-topic.png') });

  // Deleting the history empties it, and the empty panel says so.
  page.once('dialog', (dialog) => dialog.accept());
  await page.click('#delete-history');
  await page.waitForFunction(() => document.querySelector('#history tbody tr.empty')?.textContent.includes('no stored messages'));
  // A message the app's backend stores shows in the history as it arrives.
  const emitted = await fetch(`${http}/api/realtime/emit`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ topic: 'chat/general', event: 'notice', data: { text: 'stored by the backend' }, persist: true }),
  });
  assert.equal(emitted.status, 200);
  await page.waitForFunction(() => {
    const rows = [...document.querySelectorAll('#history tbody tr')];
    return rows.length === 1 && rows[0].textContent.includes('stored by the backend');
  });

  // A topic nobody runs can be opened by name: its panels say they are empty.
  await page.click('nav a[data-view="topics"]');
  await page.waitForSelector('body[data-ready="topics"]');
  await page.fill('#open-name', 'chat/quiet');
  await page.click('#open-topic button');
  await page.waitForSelector('body[data-ready="topic"]');
  assert.equal(await page.locator('#topic-name').textContent(), 'chat/quiet');
  await page.waitForFunction(() => document.querySelector('#presence').textContent.includes('nobody is present'));
  await page.waitForFunction(() => document.querySelector('#history tbody').textContent.includes('no stored messages'));
  assert.match(await page.locator('#tail').textContent(), /no events/);

  // A table topic: changes from a sqlite3 shell, labelled; an UPDATE shows
  // the row before and after, a DELETE the row once.
  await page.goto(`${http}/console#/topic/orders`);
  await page.waitForSelector('body[data-ready="topic"]');
  await page.waitForFunction(() => document.querySelector('#tail-state').textContent === 'live');
  sql("UPDATE orders SET status = 'shipped' WHERE id = '7'");
  const update = page.locator('#tail li.change[data-operation="UPDATE"]');
  await update.waitFor();
  assert.match(await update.locator('.old').textContent(), /^before.*pending/s);
  assert.match(await update.locator('.new').textContent(), /^after.*shipped/s);
  sql("DELETE FROM orders WHERE id = '7'");
  const deletion = page.locator('#tail li.change[data-operation="DELETE"]');
  await deletion.waitFor();
  assert.equal(await deletion.locator('pre').count(), 1, 'a deleted row is shown once');
  assert.match(await deletion.textContent(), /deleted row.*shipped/s);
  assert.ok(await page.locator('#history-panel').isHidden(), 'tables keep no history');

  // Connections: ann is there with her subscriptions; disconnecting her closes 4003.
  await page.click('nav a[data-view="connections"]');
  await page.waitForSelector('body[data-ready="connections"]');
  const annRow = page.locator('#connection-list tbody tr', { hasText: 'ann' });
  await annRow.waitFor();
  assert.match(await annRow.textContent(), /chat\/general, orders/);
  await page.screenshot({ path: join(root, 'docs/console-connections.png') });
  // Disconnecting asks first: dismissed, nothing happens.
  page.once('dialog', (dialog) => dialog.dismiss());
  await annRow.locator('button').click();
  await sleep(300);
  assert.equal(ann.closedWith(), null, 'a dismissed confirmation disconnects nobody');
  let asked = '';
  page.once('dialog', (dialog) => {
    asked = dialog.message();
    dialog.accept();
  });
  await annRow.locator('button').click();
  for (let i = 0; i < 500 && ann.closedWith() === null; i++) await sleep(10);
  assert.match(asked, /Disconnect ann/);
  assert.equal(ann.closedWith(), 4003);
  await page.waitForFunction(() => ![...document.querySelectorAll('#connection-list tbody tr')].some((r) => r.textContent.includes('ann')));

  // Why: the overview counts the disconnection and a refused forged token.
  const forged = new WebSocket(`ws://127.0.0.1:${port}/api/realtime?token=forged`);
  await new Promise((resolve) => forged.once('error', resolve));
  await page.click('nav a[data-view="overview"]');
  await page.waitForSelector('tr[data-ending="closed:disconnected"]');
  await page.waitForSelector('tr[data-ending="refused:unauthorized"]');
  assert.match(await page.locator('tr[data-ending="closed:disconnected"]').textContent(), /closed\s*disconnected\s*1/);
  assert.deepEqual(problems, []);
});

test('the console shows the webhooks that wait and why, and how the proxies answer', async (t) => {
  const { dbPath } = scratchDatabase('realtide-console-backend-');
  const gone = `http://127.0.0.1:${await freePort()}`;
  const server = await startServer(dbPath, [
    '--webhook-url', `${gone}/hooks`,
    '--webhook-secret', 'console-webhook-secret-of-32-bytes-or-more',
    '--proxy-publish-url', `${gone}/publish`,
  ]);
  const browser = await launchChromium();
  t.after(async () => {
    await browser.close();
    await server.stop('SIGKILL');
  });
  const socket = new WebSocket(`ws://127.0.0.1:${server.port}/api/realtime?userId=ann`);
  const frames = [];
  socket.on('message', (data) => frames.push(JSON.parse(data.toString())));
  await new Promise((resolve) => socket.once('open', resolve));
  socket.send(JSON.stringify({ type: 'publish', topic: 'chat/a', event: 'm', data: 1, ref: 'p' }));
  await until(() => frames.some((f) => f.ref === 'p'), 'the publish refused');
  assert.equal(frames.find((f) => f.ref === 'p').code, 'unavailable');

  const page = await browser.newPage();
  await page.goto(`${server.http}/console`);
  await page.waitForFunction(() => document.querySelector('#webhooks-failing tbody tr[data-webhook]'), null, { timeout: 15000 });
  const failing = await page.locator('#webhooks-failing tbody tr').first().textContent();
  assert.match(failing, /connection\.opened/);
  assert.match(failing, /unreachable/);
  assert.match(await page.locator('#webhooks-pending').textContent(), /\d+ webhooks? waiting/);
  assert.match(await page.locator('#proxies tr[data-proxy="publish"]').textContent(), /publish/);
  socket.terminate();
});
