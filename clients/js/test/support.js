// Test helpers: the repository's Python, fixtures made by Python scripts, and the real server.
import { execFileSync, spawn } from 'node:child_process';
import { existsSync, mkdtempSync, openSync, readFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

export const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..', '..');

export function python() {
  const py = process.env.MODELBRIDGE_PYTHON ?? join(ROOT, '.venv', 'bin', 'python');
  if (!existsSync(py)) throw new Error(`no Python at ${py}: run 'make venv' or set MODELBRIDGE_PYTHON`);
  return py;
}

/** Runs a Python fixture script with a fresh output directory; returns [dir, parsed stdout]. */
export function runFixture(script, ...args) {
  const dir = mkdtempSync(join(tmpdir(), 'mb-js-'));
  const out = execFileSync(python(), [join(ROOT, 'clients', 'js', 'test', 'fixtures', script), dir, ...args], {
    cwd: ROOT, encoding: 'utf8',
  });
  return [dir, JSON.parse(out)];
}

export function freePort() {
  return new Promise((ok, fail) => {
    const srv = createServer();
    srv.unref();
    srv.on('error', fail);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => ok(port));
    });
  });
}

/** Starts `python -m server.cli serve` on free loopback ports over `repository`; waits until ready. */
/** Whether this checkout's `serve` knows a flag (the CLI grows while the JS tests stay the same). */
export function serveSupports(flag) {
  return execFileSync(python(), ['-m', 'server.cli', 'serve', '--help'], { cwd: ROOT, encoding: 'utf8' }).includes(flag);
}

export async function startServer({ repository = join(ROOT, 'server', 'examples', 'repository'), args = [],
  timeoutMs = 60000 } = {}) {
  const port = await freePort();
  const log = join(mkdtempSync(join(tmpdir(), 'mb-js-server-')), 'server.log');
  const proc = spawn(python(), ['-m', 'server.cli', 'serve', '--model-repository', repository, '--host', '127.0.0.1',
    '--http-port', String(port), '--grpc-port', '0', '--metrics-port', '0', ...args], {
    cwd: ROOT, stdio: ['ignore', openSync(log, 'w'), openSync(log, 'a')],
  });
  const url = `http://127.0.0.1:${port}`;
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (proc.exitCode !== null) throw new Error(`server exited ${proc.exitCode}:\n${readFileSync(log, 'utf8')}`);
    try {
      if ((await fetch(`${url}/v2/health/ready`)).ok) {
        return { url, proc, stop: () => new Promise((ok) => { proc.once('exit', ok); proc.kill('SIGTERM'); }) };
      }
    } catch {
      // not listening yet
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  proc.kill('SIGKILL');
  throw new Error(`server not ready after ${timeoutMs} ms:\n${readFileSync(log, 'utf8')}`);
}

export function maxAbsDiff(a, b) {
  if (a.length !== b.length) throw new Error(`length ${a.length} != ${b.length}`);
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(Number(a[i]) - Number(b[i])));
  return m;
}
