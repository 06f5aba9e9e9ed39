// The seed's Live Order Dashboard as an app would serve it: the seed's
// component read at test time (../shared/seeds), bundled with esbuild with
// `@aerostack/react` resolved to clients/react, served beside the seed's two
// routes by a small app server on the same SQLite file.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { createServer as createHttpServer } from 'node:http';
import { join } from 'node:path';
import { build } from 'esbuild';
import { here, root } from './helpers.mjs';

export const SEED = process.env.SEED_FILE ?? join(root, '../shared/seeds/000_108019943bec17ae.txt');
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

export async function bundle(dir, realtideHttp) {
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
export async function bundleFile(entry, outfile) {
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
export async function startApp(dbPath, script) {
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

/** Waits until the dashboard's row of `name` shows the status pill `status`. */
export function waitForPill(page, name, status) {
  return page.waitForFunction(([n, s]) => [...document.querySelectorAll('.space-y-3 > div')]
    .some((r) => r.textContent.includes(n) && r.querySelector('span.rounded-full')?.textContent === s), [name, status]);
}
