// The demo's pages in a real browser: Debian's chromium, driven by
// playwright-core, against `realtide demo` (the debug binary, or
// REALTIDE_BIN). Screenshots land in docs/.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { BIN, root, scratchDatabase, startServer, launchChromium as launch } from './helpers.mjs';

async function startDemo() {
  const { dbPath, sql } = scratchDatabase('realtide-demo-');
  const server = await startServer(dbPath, [], BIN, 'demo');
  return { child: server.child, url: server.http, sql };
}

test('the order dashboard follows the table, from a shell and from its own dropdown', async (t) => {
  const demo = await startDemo();
  const browser = await launch();
  t.after(async () => { await browser.close(); demo.child.kill(); });
  const page = await browser.newPage({ viewport: { width: 900, height: 520 } });
  await page.goto(demo.url);
  await page.waitForSelector('body[data-ready="true"]');
  const status = (id) => page.locator(`.order[data-id="${id}"] .status`);
  assert.equal(await status('101').textContent(), 'pending');

  // Someone runs an UPDATE in a sqlite3 shell: the page follows.
  demo.sql("UPDATE orders SET status = 'shipped' WHERE id = '101'");
  await page.waitForFunction(() => document.querySelector('.order[data-id="101"] .status')?.textContent === 'shipped');
  await page.waitForSelector('#badge.shown');
  assert.match(await page.locator('#badge').textContent(), /Order 101 → shipped/);

  // A new row from the shell appears on top.
  demo.sql("INSERT INTO orders VALUES ('200', 'Margaret Hamilton', 'Apollo guidance', 1969, 'pending', 9999999999999)");
  await page.waitForSelector('.order[data-id="200"]');
  assert.equal(await page.locator('.order').first().getAttribute('data-id'), '200');

  // The dropdown posts to the app, which only runs an UPDATE.
  await page.locator('.order[data-id="102"] select').selectOption('delivered');
  await page.waitForFunction(() => document.querySelector('.order[data-id="102"] .status')?.textContent === 'delivered');
  await page.screenshot({ path: join(root, 'docs/dashboard.png') });
});

test('two people chat, see each other, and watch the assistant stream its answer', async (t) => {
  const demo = await startDemo();
  const browser = await launch();
  t.after(async () => { await browser.close(); demo.child.kill(); });
  const ann = await browser.newPage({ viewport: { width: 900, height: 560 } });
  const bob = await browser.newPage({ viewport: { width: 900, height: 560 } });
  await ann.goto(`${demo.url}/chat?name=ann`);
  await ann.waitForSelector('body[data-ready="true"]');
  await bob.goto(`${demo.url}/chat?name=bob`);
  await bob.waitForSelector('body[data-ready="true"]');

  // Presence: each sees both.
  for (const page of [ann, bob]) {
    await page.waitForSelector('.person[data-key="ann"]');
    await page.waitForSelector('.person[data-key="bob"]');
  }
  // Typing state travels as presence.
  await ann.locator('#text').fill('hello bob');
  await bob.waitForSelector('.person[data-key="ann"] .typing');
  await ann.locator('#send button').click();
  await bob.waitForFunction(() => [...document.querySelectorAll('.message .text')].some((m) => m.textContent === 'hello bob'));
  await bob.waitForFunction(() => !document.querySelector('.person[data-key="ann"] .typing'));

  // The assistant's answer streams into both pages, token by token.
  await bob.locator('#ask').click();
  await ann.waitForFunction(() => (document.querySelector('.message.assistant .text')?.textContent ?? '').length > 0);
  const partial = await ann.locator('.message.assistant .text').textContent();
  await ann.waitForSelector('.message.assistant.done', { timeout: 15000 });
  await bob.waitForSelector('.message.assistant.done', { timeout: 15000 });
  const full = await ann.locator('.message.assistant .text').textContent();
  assert.ok(full.startsWith(partial) && full.length > partial.length, 'seen while it was written');
  assert.equal(await bob.locator('.message.assistant .text').textContent(), full);

  // Persisted history: a newcomer sees the conversation on load.
  const carol = await browser.newPage({ viewport: { width: 900, height: 560 } });
  await carol.goto(`${demo.url}/chat?name=carol`);
  await carol.waitForFunction(() => [...document.querySelectorAll('.message .text')].some((m) => m.textContent === 'hello bob'));
  await ann.waitForSelector('.person[data-key="carol"]');
  await ann.screenshot({ path: join(root, 'docs/chat.png') });
});
