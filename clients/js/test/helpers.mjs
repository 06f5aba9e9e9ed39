// What the client's tests share: a realtide server of their own (the debug
// binary by default, REALTIDE_BIN to choose) on a free port and a SQLite
// file, restartable; and waiting for a condition.
import { spawn, execFileSync } from 'node:child_process';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, dirname } from 'node:path';
import { createServer } from 'node:net';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
export const BIN = process.env.REALTIDE_BIN ?? join(here, '../../../target/debug/realtide');

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

/** Starts realtide; `restart()` kills it (SIGKILL) and starts it again on the same port and database. */
export async function startServer(extra = []) {
  const dir = mkdtempSync(join(tmpdir(), 'realtide-js-'));
  const dbPath = join(dir, 'rt.db');
  const port = await freePort();
  const server = { dbPath, port, http: `http://127.0.0.1:${port}`, ws: `ws://127.0.0.1:${port}/api/realtime` };
  server.launch = async () => {
    server.child = spawn(BIN, ['serve', '--bind', `127.0.0.1:${port}`, '--database-url', `sqlite://${dbPath}`, ...extra], {
      stdio: 'ignore',
    });
    for (let i = 0; i < 200; i++) {
      try {
        if ((await fetch(`${server.http}/healthz`)).ok) return;
      } catch {}
      await sleep(25);
    }
    throw new Error('realtide did not start');
  };
  server.kill = () => new Promise((resolve) => {
    server.child.once('exit', resolve);
    server.child.kill('SIGKILL');
  });
  server.restart = async () => {
    await server.kill();
    await server.launch();
  };
  server.emit = (body) =>
    fetch(`${server.http}/api/realtime/emit`, { method: 'POST', body: JSON.stringify(body) }).then((r) => r.json());
  server.sql = (sql) => execFileSync('sqlite3', ['-cmd', '.timeout 5000', dbPath, sql]);
  await server.launch();
  return server;
}

export function waitFor(predicate, timeoutMs = 10000) {
  return new Promise((resolve, reject) => {
    const started = Date.now();
    const check = () => {
      if (predicate()) resolve();
      else if (Date.now() - started > timeoutMs) reject(new Error('timed out'));
      else setTimeout(check, 10);
    };
    check();
  });
}
