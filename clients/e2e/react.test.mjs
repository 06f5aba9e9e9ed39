// The Aerostack seed's Live Order Dashboard, verbatim, on realtide's React
// binding (clients/react) in a real browser. The component's code is read
// at test time from the seed (../shared/seeds), bundled with esbuild with
// `@aerostack/react` resolved to clients/react, and served beside the seed's
// two routes by a small app server here; realtide (the debug binary, or
// REALTIDE_BIN) serves the socket on a port of its own.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { writeFileSync, existsSync } from 'node:fs';
import { createServer as createHttpServer } from 'node:http';
import { join } from 'node:path';
import { root, scratchDatabase, startServer, launchChromium } from './helpers.mjs';
import { SEED, bundle, bundleFile, startApp, waitForPill } from './seed-app.mjs';

test('the seed\'s Live Order Dashboard runs verbatim on clients/react and stays live across a restart', async (t) => {
  if (!existsSync(SEED)) {
    console.log(`SKIP the seed's dashboard: ${SEED} is not here`);
    t.skip(`${SEED} is not here`);
    return;
  }
  const { dir, dbPath, sql: shell } = scratchDatabase('realtide-react-');
  shell(`CREATE TABLE orders (id TEXT PRIMARY KEY, customer_name TEXT NOT NULL, product TEXT NOT NULL,
           amount REAL NOT NULL, status TEXT DEFAULT 'pending', created_at INTEGER NOT NULL);
         INSERT INTO orders VALUES ('101', 'Ada Lovelace', 'Analytical engine', 1843, 'pending', 3),
                                   ('102', 'Grace Hopper', 'Compiler', 1952, 'processing', 2),
                                   ('103', 'Alan Turing', 'Bombe', 1939, 'pending', 1);`);
  const realtide = await startServer(dbPath);
  const { app, url } = await startApp(dbPath, await bundle(dir, realtide.http));
  const browser = await launchChromium();
  t.after(async () => {
    await browser.close();
    app.close();
    await realtide.stop('SIGKILL');
  });
  const page = await browser.newPage({ viewport: { width: 900, height: 560 } });
  const problems = [];
  page.on('pageerror', (error) => problems.push(error.message));
  page.on('console', (m) => process.env.DEBUG_PAGE && console.log('page:', m.text()));
  await page.goto(url);

  const row = (name) => page.locator('.space-y-3 > div', { hasText: name });
  const pill = (name) => row(name).locator('span.rounded-full');
  const pillIs = (name, status) => waitForPill(page, name, status);

  // Rows load from the app's route.
  await page.waitForFunction(() => document.querySelectorAll('.space-y-3 > div').length === 3);
  assert.equal(await pill('Ada Lovelace').textContent(), 'pending');
  await page.waitForFunction(() => document.getElementById('status')?.textContent === 'connected');
  await page.waitForFunction(() => document.getElementById('last')?.textContent === 'none');

  // Someone runs an UPDATE in a sqlite3 shell: the pill and the banner follow.
  shell("UPDATE orders SET status = 'shipped' WHERE id = '101'");
  await pillIs('Ada Lovelace', 'shipped');
  await page.waitForFunction(() => document.body.textContent.includes('↻ Order 101 → shipped'));
  await page.waitForFunction(() => document.getElementById('last').textContent === '101:shipped');
  await page.waitForFunction(() => document.getElementById('watching').textContent === '1');

  // The row's <select> posts to the app, which only runs an UPDATE.
  await row('Grace Hopper').locator('select').selectOption('delivered');
  await pillIs('Grace Hopper', 'delivered');

  // An INSERT appears on top.
  shell("INSERT INTO orders VALUES ('104', 'Margaret Hamilton', 'Apollo guidance', 1969, 'pending', 4)");
  await page.waitForFunction(() => document.querySelector('.space-y-3 > div')?.textContent.includes('Margaret Hamilton'));
  await page.screenshot({ path: join(root, 'docs/react-dashboard.png') });

  // A deploy: realtide stops (1012) and comes back; the page follows again.
  await realtide.stop();
  await page.waitForFunction(() => document.getElementById('status').textContent !== 'connected');
  await realtide.launch();
  await page.waitForFunction(() => document.getElementById('status').textContent === 'connected', null, { timeout: 15000 });
  shell("UPDATE orders SET status = 'cancelled' WHERE id = '103'");
  await pillIs('Alan Turing', 'cancelled');
  await page.waitForFunction(() => document.body.textContent.includes('↻ Order 103 → cancelled'));
  assert.deepEqual(problems, []);
});

/** A page that shows a table with `useTable`, and nothing else. */
const TABLE_PAGE = `
import { createRoot } from 'react-dom/client';
import { AerostackProvider, useTable } from '@aerostack/react';
function Stock() {
  const { rows, loading, error } = useTable('stock');
  if (error) return <p id="error">{error.code}</p>;
  if (loading) return <p id="loading">loading</p>;
  const sorted = [...rows].sort((a, b) => a.id - b.id);
  return <ul id="rows">{sorted.map((r) => <li key={r.id} data-id={r.id}>{r.id}:{r.qty}</li>)}</ul>;
}
createRoot(document.getElementById('root')).render(
  <AerostackProvider baseUrl={window.REALTIDE}><Stock /></AerostackProvider>
);
`;

test('a useTable page opened while the table is written ends equal to the table', async (t) => {
  const { dir, sql: shell } = scratchDatabase('realtide-usetable-');
  const dbPath = join(dir, 'rt.db');
  shell('CREATE TABLE stock (id INTEGER PRIMARY KEY, qty INTEGER NOT NULL)');
  for (let id = 1; id <= 20; id++) shell(`INSERT INTO stock VALUES (${id}, ${id})`);
  const realtide = await startServer(dbPath);
  writeFileSync(join(dir, 'table.jsx'), TABLE_PAGE);
  const script = await bundleFile(join(dir, 'table.jsx'), join(dir, 'table.js'));
  const app = createHttpServer((req, res) => {
    if (req.url === '/table.js') {
      res.writeHead(200, { 'content-type': 'text/javascript' });
      return res.end(script);
    }
    res.writeHead(200, { 'content-type': 'text/html' });
    res.end(`<!doctype html><meta charset="utf-8"><div id="root"></div>
<script>window.REALTIDE = ${JSON.stringify(realtide.http)};</script><script type="module" src="/table.js"></script>`);
  });
  await new Promise((resolve) => app.listen(0, '127.0.0.1', resolve));
  const browser = await launchChromium();
  t.after(async () => {
    await browser.close();
    app.close();
    await realtide.stop('SIGKILL');
  });

  // Writes run before, while and after the page opens.
  let writing = true;
  const writer = (async () => {
    for (let n = 0; writing; n++) {
      const id = (n * 7) % 30 + 1;
      const statement = n % 5 === 0
        ? `DELETE FROM stock WHERE id = ${id}`
        : `INSERT INTO stock VALUES (${id}, ${n}) ON CONFLICT (id) DO UPDATE SET qty = excluded.qty`;
      try { shell(statement); } catch {}
      await new Promise((resolve) => setTimeout(resolve, 5));
    }
  })();
  const page = await browser.newPage();
  const problems = [];
  page.on('pageerror', (error) => problems.push(error.message));
  await page.goto(`http://127.0.0.1:${app.address().port}/`);
  await page.waitForSelector('#rows');
  await new Promise((resolve) => setTimeout(resolve, 500));
  writing = false;
  await writer;
  const table = JSON.parse(execFileSync('sqlite3', ['-json', '-cmd', '.timeout 5000', dbPath,
    'SELECT id, qty FROM stock ORDER BY id']).toString() || '[]').map((r) => `${r.id}:${r.qty}`);
  await page.waitForFunction((expected) => {
    const shown = [...document.querySelectorAll('#rows li')].map((li) => li.textContent);
    return JSON.stringify(shown) === JSON.stringify(expected);
  }, table, { timeout: 10000 });
  assert.ok(table.length > 0);
  assert.deepEqual(problems, []);
});
