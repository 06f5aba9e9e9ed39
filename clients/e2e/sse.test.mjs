// Behind a proxy that refuses WebSocket upgrades (nginx with the deploy
// guide's configuration, answering every upgrade with 403), the seed's
// dashboard on clients/react and the demo still work in a real browser,
// over server-sent events, and keep working across a server restart.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { BIN, scratchDatabase, startServer, launchChromium, startNginx } from './helpers.mjs';
import { SEED, bundle, startApp, waitForPill } from './seed-app.mjs';

/** The upgrades nginx refused (its access log), and the transports of realtide's open connections. */
async function transports(nginx, realtide) {
  const refusedUpgrades = nginx.accessLog().split('\n')
    .filter((l) => /"GET \/api\/realtime(\?[^ ]*)? HTTP\/1.1" 403/.test(l)).length;
  const { connections } = await (await fetch(`${realtide.http}/admin/connections`)).json();
  return { refusedUpgrades, open: connections.map((c) => c.transport) };
}

test('the seed\'s dashboard on clients/react works over server-sent events when upgrades are refused, across a restart', async (t) => {
  if (!existsSync(SEED)) {
    console.log(`SKIP the seed's dashboard over SSE: ${SEED} is not here`);
    t.skip(`${SEED} is not here`);
    return;
  }
  const { dir, dbPath, sql: shell } = scratchDatabase('realtide-sse-react-');
  shell(`CREATE TABLE orders (id TEXT PRIMARY KEY, customer_name TEXT NOT NULL, product TEXT NOT NULL,
           amount REAL NOT NULL, status TEXT DEFAULT 'pending', created_at INTEGER NOT NULL);
         INSERT INTO orders VALUES ('101', 'Ada Lovelace', 'Analytical engine', 1843, 'pending', 3),
                                   ('102', 'Grace Hopper', 'Compiler', 1952, 'processing', 2);`);
  const realtide = await startServer(dbPath);
  t.after(() => realtide.stop('SIGKILL'));
  const nginx = await startNginx(dir, realtide.port, { refuseUpgrades: true });
  if (!nginx) {
    t.skip('nginx is not installed');
    return;
  }
  t.after(() => nginx.stop());
  const { app, url } = await startApp(dbPath, await bundle(dir, nginx.url));
  const browser = await launchChromium();
  t.after(async () => {
    await browser.close();
    app.close();
  });
  const page = await browser.newPage({ viewport: { width: 900, height: 560 } });
  const problems = [];
  page.on('pageerror', (error) => problems.push(error.message));
  await page.goto(url);
  const pillIs = (name, status) => waitForPill(page, name, status);

  await page.waitForFunction(() => document.querySelectorAll('.space-y-3 > div').length === 2);
  await page.waitForFunction(() => document.getElementById('status')?.textContent === 'connected', null, { timeout: 15000 });
  // Subscribed (the hook has loaded): changes from now on arrive.
  await page.waitForFunction(() => document.getElementById('last')?.textContent === 'none');
  shell("UPDATE orders SET status = 'shipped' WHERE id = '101'");
  await pillIs('Ada Lovelace', 'shipped');
  await page.waitForFunction(() => document.body.textContent.includes('↻ Order 101 → shipped'));
  await page.waitForFunction(() => document.getElementById('watching').textContent === '1');
  const seen = await transports(nginx, realtide);
  assert.ok(seen.refusedUpgrades >= 1, 'the page tried a WebSocket first, and nginx refused it');
  assert.deepEqual(seen.open, ['sse'], 'then it opened an event stream');

  // A deploy: realtide stops (1012 on the stream) and comes back.
  await realtide.stop();
  await page.waitForFunction(() => document.getElementById('status').textContent !== 'connected');
  await realtide.launch();
  await page.waitForFunction(() => document.getElementById('status').textContent === 'connected', null, { timeout: 15000 });
  shell("UPDATE orders SET status = 'cancelled' WHERE id = '102'");
  await pillIs('Grace Hopper', 'cancelled');
  assert.deepEqual(problems, []);
});

test('the demo\'s dashboard and chat work over server-sent events when upgrades are refused, across a restart', async (t) => {
  const { dir, dbPath, sql } = scratchDatabase('realtide-sse-demo-');
  const demo = await startServer(dbPath, [], BIN, 'demo');
  t.after(() => demo.stop('SIGKILL'));
  const nginx = await startNginx(dir, demo.port, { refuseUpgrades: true });
  if (!nginx) {
    t.skip('nginx is not installed');
    return;
  }
  t.after(() => nginx.stop());
  const browser = await launchChromium();
  t.after(() => browser.close());

  const dashboard = await browser.newPage();
  await dashboard.goto(nginx.url);
  await dashboard.waitForSelector('body[data-ready="true"]', { timeout: 15000 });
  sql("UPDATE orders SET status = 'shipped' WHERE id = '101'");
  await dashboard.waitForFunction(() => document.querySelector('.order[data-id="101"] .status')?.textContent === 'shipped');

  const ann = await browser.newPage();
  const bob = await browser.newPage();
  await ann.goto(`${nginx.url}/chat?name=ann`);
  await bob.goto(`${nginx.url}/chat?name=bob`);
  for (const page of [ann, bob]) {
    await page.waitForSelector('body[data-ready="true"]', { timeout: 15000 });
    await page.waitForSelector('.person[data-key="ann"]');
    await page.waitForSelector('.person[data-key="bob"]');
  }
  await ann.locator('#text').fill('hello over sse');
  await ann.locator('#send button').click();
  await bob.waitForFunction(() => [...document.querySelectorAll('.message .text')].some((m) => m.textContent === 'hello over sse'));
  assert.deepEqual((await transports(nginx, demo)).open, ['sse', 'sse', 'sse'], 'each page is on an event stream');

  await demo.stop();
  await demo.launch();
  sql("UPDATE orders SET status = 'delivered' WHERE id = '102'");
  await dashboard.waitForFunction(() => document.querySelector('.order[data-id="102"] .status')?.textContent === 'delivered',
    null, { timeout: 15000 });
  // A message sent while bob's page is still reconnecting is refused: he sends again, as a person would.
  const arrived = () => ann.waitForFunction(
    () => [...document.querySelectorAll('.message .text')].some((m) => m.textContent === 'still here'), null, { timeout: 1000 });
  for (let attempt = 0; ; attempt++) {
    await bob.locator('#text').fill('still here');
    await bob.locator('#send button').click();
    try {
      await arrived();
      break;
    } catch (error) {
      if (attempt === 15) throw error;
    }
  }
});
