// The Aerostack seed's Live Order Dashboard, verbatim, on realtide's React
// binding (clients/react) in a real browser. The component's code is read
// at test time from the seed (../shared/seeds), bundled with esbuild with
// `@aerostack/react` resolved to clients/react, and served beside the seed's
// two routes by a small app server here; realtide (the debug binary, or
// REALTIDE_BIN) serves the socket on a port of its own.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { readFileSync, writeFileSync, existsSync } from 'node:fs';
import { createServer as createHttpServer } from 'node:http';
import { join } from 'node:path';
import { build } from 'esbuild';
import { here, root, scratchDatabase, startServer, launchChromium } from './helpers.mjs';

const SEED = process.env.SEED_FILE ?? join(root, '../shared/seeds/000_108019943bec17ae.txt');
const STATUSES = ['pending', 'processing', 'shipped', 'delivered', 'cancelled'];

/** The seed's client code: the text between its "Client code" and "Server code" headings. */
function seedComponent() {
  const text = readFileSync(SEED, 'utf8');
  const start = text.indexOf('Client code\n');
  const end = text.indexOf('Server code', start);
  assert.ok(start >= 0 && end > start, `the seed ${SEED} holds the component`);
  return text.slice(start + 'Client code\n'.length, end);
}

/** The few Tailwind classes the seed uses, so the screenshot looks as its page would. */
const CSS = `
body { margin: 0; background: #030712; color: #d1d5db; font: 14px system-ui, sans-serif; }
.p-6 { padding: 1.5rem } .p-4 { padding: 1rem } .mb-6 { margin-bottom: 1.5rem }
.flex { display: flex } .items-center { align-items: center } .justify-between { justify-content: space-between }
.gap-3 { gap: .75rem } .space-y-3 > * + * { margin-top: .75rem }
.text-2xl { font-size: 1.5rem; margin: 0 } .text-sm { font-size: .875rem } .text-xs { font-size: .75rem }
.font-bold { font-weight: 700 } .font-medium { font-weight: 500 }
.text-white { color: #fff } .text-gray-300 { color: #d1d5db } .text-gray-400 { color: #9ca3af }
.rounded-full { border-radius: 9999px } .rounded-xl { border-radius: .75rem } .rounded-lg { border-radius: .5rem }
.border { border: 1px solid } .border-gray-800 { border-color: #1f2937 } .border-gray-700 { border-color: #374151 }
.bg-gray-900\\/50 { background: rgba(17,24,39,.5) } .bg-gray-800 { background: #1f2937 }
.px-4 { padding-left: 1rem; padding-right: 1rem } .py-2 { padding-top: .5rem; padding-bottom: .5rem }
.px-3 { padding-left: .75rem; padding-right: .75rem } .py-1 { padding-top: .25rem; padding-bottom: .25rem }
.px-2 { padding-left: .5rem; padding-right: .5rem }
.text-green-400 { color: #4ade80 } .bg-green-500\\/10 { background: rgba(34,197,94,.1) }
.text-yellow-400 { color: #facc15 } .bg-yellow-500\\/10 { background: rgba(234,179,8,.1) }
.text-blue-400 { color: #60a5fa } .bg-blue-500\\/10 { background: rgba(59,130,246,.1) }
.text-purple-400 { color: #c084fc } .bg-purple-500\\/10 { background: rgba(168,85,247,.1) }
.text-red-400 { color: #f87171 } .bg-red-500\\/10 { background: rgba(239,68,68,.1) }
footer { display: flex; gap: 1rem; padding: 0 1.5rem; color: #6b7280; font-size: .75rem }
`;

/** Our own component, written as the README shows: the hooks. */
const OURS = `
import { useRealtimeStatus, useSubscription, usePresence } from '@aerostack/react';
export function LiveStatus() {
  const { status, error } = useRealtimeStatus();
  const updates = useSubscription('orders', { event: 'UPDATE' });
  const here = usePresence('dashboards/orders', { page: 'orders' });
  const last = updates.data?.data;
  return (
    <footer>
      <span>realtide: <b id="status">{status}</b></span>
      <span id="error">{error ? error.code : ''}</span>
      <span>last update: <b id="last">{updates.loading ? 'loading' : last ? last.id + ':' + last.status : 'none'}</b></span>
      <span>dashboards open: <b id="watching">{Object.keys(here).length}</b></span>
    </footer>
  );
}
`;

async function bundle(dir, realtideHttp) {
  writeFileSync(join(dir, 'LiveOrderDashboard.tsx'), seedComponent());
  writeFileSync(join(dir, 'LiveStatus.jsx'), OURS);
  writeFileSync(join(dir, 'main.jsx'), `
import { createRoot } from 'react-dom/client';
import { AerostackProvider } from '@aerostack/react';
import { LiveOrderDashboard } from './LiveOrderDashboard';
import { LiveStatus } from './LiveStatus.jsx';
createRoot(document.getElementById('root')).render(
  <AerostackProvider baseUrl=${JSON.stringify(realtideHttp)}>
    <LiveOrderDashboard />
    <LiveStatus />
  </AerostackProvider>
);
`);
  return bundleFile(join(dir, 'main.jsx'), join(dir, 'app.js'));
}

/** `entry` bundled for the browser, `@aerostack/react` resolved to clients/react. */
async function bundleFile(entry, outfile) {
  await build({
    entryPoints: [entry],
    bundle: true,
    format: 'esm',
    jsx: 'automatic',
    outfile,
    alias: {
      '@aerostack/react': join(root, 'clients/react/index.js'),
      realtide: join(root, 'clients/js/realtide.js'),
      // One React for the page and the binding, whatever clients/react has installed.
      react: join(here, 'node_modules/react'),
      'react-dom': join(here, 'node_modules/react-dom'),
    },
    nodePaths: [join(here, 'node_modules')],
    define: { 'process.env.NODE_ENV': '"production"' },
    logLevel: 'silent',
  });
  return readFileSync(outfile);
}

/** The app's server: the page, its bundle, and the seed's two routes on the same SQLite file. */
async function startApp(dbPath, script) {
  const app = createHttpServer(async (req, res) => {
    const send = (status, type, body) => {
      res.writeHead(status, { 'content-type': type });
      res.end(body);
    };
    if (req.url === '/') {
      return send(200, 'text/html', `<!doctype html><meta charset="utf-8"><style>${CSS}</style><div id="root"></div><script type="module" src="/app.js"></script>`);
    }
    if (req.url === '/app.js') return send(200, 'text/javascript', script);
    if (req.url === '/api/examples/orders') {
      const rows = execFileSync('sqlite3', ['-json', '-cmd', '.timeout 5000', dbPath,
        'SELECT * FROM orders ORDER BY created_at DESC LIMIT 50']).toString();
      return send(200, 'application/json', JSON.stringify({ orders: rows.trim() ? JSON.parse(rows) : [] }));
    }
    if (req.url === '/api/examples/orders/update' && req.method === 'POST') {
      let body = '';
      for await (const chunk of req) body += chunk;
      const { orderId, status } = JSON.parse(body);
      // The fixture runs the sqlite3 shell, which takes no bound values: only known shapes pass.
      if (!STATUSES.includes(status) || !/^[A-Za-z0-9_-]+$/.test(String(orderId))) {
        return send(400, 'application/json', '{"ok":false}');
      }
      execFileSync('sqlite3', ['-cmd', '.timeout 5000', dbPath, `UPDATE orders SET status = '${status}' WHERE id = '${orderId}'`]);
      return send(200, 'application/json', '{"ok":true}');
    }
    send(404, 'text/plain', 'not found');
  });
  await new Promise((resolve) => app.listen(0, '127.0.0.1', resolve));
  return { app, url: `http://127.0.0.1:${app.address().port}` };
}

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
  const pillIs = (name, status) =>
    page.waitForFunction(([n, s]) => [...document.querySelectorAll('.space-y-3 > div')]
      .some((r) => r.textContent.includes(n) && r.querySelector('span.rounded-full')?.textContent === s), [name, status]);

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
