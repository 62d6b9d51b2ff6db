import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { request } from 'node:http';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';
import { alive, eventually, qemusOf, TestHome } from './helpers.js';

/*
 * kill -9 of `roost serve` while sandboxes run and commands stream: the next
 * daemon finds every sandbox as it was (the detached one re-attached and
 * working, the other recorded as stopped with its owner), every record and
 * event kept, and no QEMU process, socket or directory left over.
 */

const roostBin = fileURLToPath(new URL('../packages/cli/bin/roost.js', import.meta.url));
const home = new TestHome();
const daemons: ChildProcess[] = [];
afterAll(async () => {
  for (const d of daemons) if (d.exitCode === null && d.signalCode === null) d.kill('SIGKILL');
  await home.cleanup();
});

const socket = join(home.root, 'roost.sock');

interface Reply {
  status: number;
  body: string;
}

function call(method: string, path: string, body?: unknown): Promise<Reply> {
  const token = readFileSync(join(home.root, 'api-token'), 'utf8').trim();
  return new Promise((resolve, reject) => {
    const req = request({ socketPath: socket, method, path, headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json', accept: 'application/json' } }, (res) => {
      let text = '';
      res.setEncoding('utf8');
      res.on('data', (c: string) => (text += c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body: text }));
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end(body === undefined ? undefined : JSON.stringify(body));
  });
}

async function json<T>(method: string, path: string, body?: unknown): Promise<T> {
  const r = await call(method, path, body);
  if (r.status >= 300) throw new Error(`${method} ${path}: ${r.status} ${r.body}`);
  return (r.body ? JSON.parse(r.body) : undefined) as T;
}

/** Starts an exec whose NDJSON stream stays open; resolves once `lines` stdout lines have arrived. */
function streamingExec(id: string, lines: number): Promise<void> {
  const token = readFileSync(join(home.root, 'api-token'), 'utf8').trim();
  return new Promise((resolve, reject) => {
    const req = request(
      { socketPath: socket, method: 'POST', path: `/v1/sandboxes/${id}/exec`, headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json', accept: 'application/x-ndjson' } },
      (res) => {
        let seen = 0;
        res.setEncoding('utf8');
        res.on('data', (c: string) => {
          seen += c.split('\n').filter((l) => l.includes('"stdout"')).length;
          if (seen >= lines) resolve();
        });
        res.on('error', () => {});
      },
    );
    req.on('error', () => {}); // the daemon is about to die under it
    req.end(JSON.stringify({ cmd: 'i=0; while true; do i=$((i+1)); echo tick $i; sleep 0.05; done' }));
    setTimeout(() => reject(new Error('no output from the streaming command')), 20_000).unref();
  });
}

async function startDaemon(): Promise<ChildProcess> {
  const d = spawn(process.execPath, [roostBin, 'serve'], { env: home.env, stdio: ['ignore', 'ignore', 'pipe'] });
  daemons.push(d);
  let stderr = '';
  d.stderr!.on('data', (c: Buffer) => (stderr += c.toString()));
  await eventually(
    async () => {
      if (d.exitCode !== null) throw new Error(`roost serve exited ${d.exitCode}: ${stderr}`);
      return existsSync(join(home.root, 'api-token')) && (await call('GET', '/v1/health').then((r) => r.status === 200, () => false));
    },
    20_000,
    'the daemon answering',
  );
  return d;
}

interface Info {
  id: string;
  status: string;
  pid: number | null;
  reason?: string;
  detached: boolean;
}

describe('roost serve killed with SIGKILL', () => {
  it('is found as it was by the next daemon: detached sandboxes re-attached, others recorded, nothing orphaned or lost', async () => {
    const first = await startDaemon();
    const kept = await json<Info>('POST', '/v1/sandboxes', { detached: true, labels: { role: 'kept' } });
    const owned = await json<Info>('POST', '/v1/sandboxes', { labels: { role: 'owned' } });
    expect(kept.status).toBe('running');
    expect((await json<{ stdout: string }>('POST', `/v1/sandboxes/${kept.id}/exec`, { cmd: 'echo before > /root/marker; cat /root/marker' })).stdout).toBe('before\n');
    await Promise.all([streamingExec(kept.id, 3), streamingExec(owned.id, 3)]);

    first.kill('SIGKILL');
    await new Promise((r) => first.once('exit', r));
    // The owned VM dies with its owner (pdeathsig); the detached one runs on.
    await eventually(() => !alive(owned.pid!), 5_000, 'the owned VM gone');
    expect(alive(kept.pid!)).toBe(true);

    await startDaemon();
    const list = (await json<{ sandboxes: Info[] }>('GET', '/v1/sandboxes')).sandboxes;
    expect(list.map((s) => s.id).sort()).toEqual([kept.id, owned.id].sort());
    expect(list.find((s) => s.id === kept.id)).toMatchObject({ status: 'running', pid: kept.pid });
    expect(list.find((s) => s.id === owned.id)).toMatchObject({ status: 'stopped', pid: null, reason: expect.stringMatching(/runtime exited/) });

    // The re-attached sandbox works, kept its files, and the stream's command died with its connection.
    expect((await json<{ stdout: string }>('POST', `/v1/sandboxes/${kept.id}/exec`, { cmd: 'cat /root/marker' })).stdout).toBe('before\n');
    await eventually(
      async () => (await json<{ stdout: string }>('POST', `/v1/sandboxes/${kept.id}/exec`, { cmd: 'ps -o args | grep -c "[w]hile true" || true' })).stdout.trim() === '0',
      5_000,
      'the orphaned stream command ended',
    );

    // Nothing orphaned: one QEMU (the kept one), directories only for records, no socket of a dead VM.
    expect(qemusOf(home.root)).toEqual([kept.pid]);
    expect(readdirSync(join(home.root, 'sandboxes')).sort()).toEqual([kept.id, owned.id].sort());
    expect(readdirSync(join(home.root, 'sandboxes', owned.id)).filter((f) => f.endsWith('.sock'))).toEqual([]);

    // No event lost: both creations, starts, the execs, and the owned sandbox's exit, in id order.
    const events = await readEvents(0);
    const ids = events.map((e) => e.id);
    expect(ids).toEqual([...ids].sort((a, b) => a - b));
    const of = (id: string) => events.filter((e) => e.sandboxId === id).map((e) => e.type);
    expect(of(kept.id).slice(0, 2)).toEqual(['sandbox.created', 'sandbox.started']);
    expect(of(kept.id)).toContain('exec.started');
    expect(of(owned.id)).toEqual(expect.arrayContaining(['sandbox.created', 'sandbox.started', 'exec.started', 'sandbox.exited']));
  });
});

interface Ev {
  id: number;
  type: string;
  sandboxId?: string;
}

/** Reads the SSE stream from `after` until it has been quiet for a moment. */
function readEvents(after: number): Promise<Ev[]> {
  const token = readFileSync(join(home.root, 'api-token'), 'utf8').trim();
  return new Promise((resolve, reject) => {
    const events: Ev[] = [];
    let buf = '';
    let quiet: NodeJS.Timeout | undefined;
    const req = request({ socketPath: socket, method: 'GET', path: `/v1/events?after=${after}`, headers: { authorization: `Bearer ${token}`, accept: 'text/event-stream' } }, (res) => {
      res.setEncoding('utf8');
      const settle = () => {
        clearTimeout(quiet);
        quiet = setTimeout(() => {
          req.destroy();
          resolve(events);
        }, 500);
      };
      settle();
      res.on('data', (c: string) => {
        buf += c;
        let end: number;
        while ((end = buf.indexOf('\n\n')) >= 0) {
          const block = buf.slice(0, end);
          buf = buf.slice(end + 2);
          const data = block
            .split('\n')
            .filter((l) => l.startsWith('data:'))
            .map((l) => l.slice(5).trimStart())
            .join('\n');
          if (data) events.push(JSON.parse(data) as Ev);
        }
        settle();
      });
      res.on('error', () => {});
    });
    req.on('error', reject);
    req.end();
  });
}
