// What the browser and client tests share: the repository's paths, a free
// port, a realtide server of their own (the debug binary, or REALTIDE_BIN),
// a SQLite shell on its database, and Debian's chromium.
import { spawn, spawnSync, execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

export const here = dirname(fileURLToPath(import.meta.url));
export const root = join(here, '../..');
export const BIN = process.env.REALTIDE_BIN ?? join(root, 'target/debug/realtide');
const CHROMIUM = process.env.CHROMIUM ?? '/usr/bin/chromium';
const NGINX = process.env.NGINX ?? '/usr/sbin/nginx';

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

export async function freePort() {
  return new Promise((resolve) => {
    const server = createServer();
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

/** Waits until `check` answers truthy (errors count as not yet). */
export async function until(check, what, tries = 400) {
  for (let i = 0; i < tries; i++) {
    try {
      if (await check()) return;
    } catch {}
    await sleep(25);
  }
  throw new Error(`${what} did not happen`);
}

/** A scratch folder, its SQLite file, and a `sqlite3` shell on it. */
export function scratchDatabase(prefix) {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  const dbPath = join(dir, 'rt.db');
  const sql = (statement) => execFileSync('sqlite3', ['-cmd', '.timeout 5000', dbPath, statement]);
  return { dir, dbPath, sql };
}

/**
 * `binary` (realtide by default) serving `dbPath` on a free port with
 * `extra` flags, once `/healthz` answers. `stop(signal)` resolves when it
 * has exited; `launch()` starts it again on the same port and file.
 */
export async function startServer(dbPath, extra = [], binary = BIN, command = 'serve') {
  const port = await freePort();
  const server = {
    port,
    http: `http://127.0.0.1:${port}`,
    ws: `ws://127.0.0.1:${port}/api/realtime`,
  };
  server.launch = async () => {
    const args = ['--bind', `127.0.0.1:${port}`, '--database-url', `sqlite://${dbPath}`, ...extra];
    server.child = spawn(binary, command ? [command, ...args] : args, { stdio: 'ignore' });
    await until(async () => (await fetch(`${server.http}/healthz`)).ok, 'the server starting');
  };
  server.stop = (signal = 'SIGTERM') => new Promise((resolve) => {
    if (server.child.exitCode !== null) return resolve();
    server.child.once('exit', resolve);
    server.child.kill(signal);
  });
  await server.launch();
  return server;
}

/** A token for `sub` from `realtide token`, as an app's backend would mint it. */
export function mint(sub, secret) {
  return execFileSync(BIN, ['token', '--sub', sub, '--jwt-secret', secret]).toString().trim();
}

export async function launchChromium() {
  return chromium.launch({
    executablePath: CHROMIUM,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
}

/** docs/deploy.md's nginx block, listening on `port` without TLS, proxying to `upstream`. */
function guideConfig(port, upstream) {
  const guide = readFileSync(join(root, 'docs/deploy.md'), 'utf8');
  const block = guide.match(/```nginx\n([\s\S]*?)```/)[1];
  return block
    .replace(/listen 443 ssl;.*\n/, `listen 127.0.0.1:${port};\n`)
    .replace(/^\s*ssl_certificate.*\n/gm, '')
    .replace('http://127.0.0.1:4000', `http://127.0.0.1:${upstream}`);
}

/**
 * nginx with the deploy guide's configuration in front of realtide on
 * `upstream`, in the scratch folder `dir`; with `refuseUpgrades`, as a
 * corporate proxy that answers every WebSocket upgrade with 403. Its access
 * log is `accessLog()`. Says SKIP and answers null without nginx.
 */
export async function startNginx(dir, upstream, { refuseUpgrades = false } = {}) {
  if (spawnSync(NGINX, ['-v']).error) {
    console.log(`SKIP nginx in front of realtide: no nginx at ${NGINX}`);
    return null;
  }
  const port = await freePort();
  let site = guideConfig(port, upstream);
  if (refuseUpgrades) {
    site = site.replace('    location / {\n', '    location / {\n        if ($http_upgrade) { return 403; }\n');
  }
  const log = join(dir, 'access.log');
  writeFileSync(join(dir, 'nginx.conf'), `
user root;
# One process, so that stopping it leaves no worker behind.
master_process off;
pid ${join(dir, 'nginx.pid')};
error_log ${join(dir, 'error.log')};
events {}
http {
  access_log ${log};
  client_body_temp_path ${join(dir, 'body')};
  proxy_temp_path ${join(dir, 'proxy')};
${site}
}
`);
  const child = spawn(NGINX, ['-p', dir, '-c', join(dir, 'nginx.conf'), '-g', 'daemon off;'], { stdio: 'ignore' });
  const url = `http://127.0.0.1:${port}`;
  await until(async () => (await fetch(`${url}/healthz`)).ok, 'nginx');
  return {
    port,
    url,
    stop: () => child.kill('SIGKILL'),
    accessLog: () => readFileSync(log, 'utf8'),
  };
}
