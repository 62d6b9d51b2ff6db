import type { ChildProcess } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { ApiClient } from './api-client.js';
import { alive, eventually, qemusOf, startServeProcess, TestHome } from './helpers.js';

/*
 * kill -9 of `roost serve` while sandboxes run and commands stream: the next
 * daemon finds every sandbox as it was (the detached one re-attached and
 * working, the other recorded as stopped with its owner), every record and
 * event kept, and no QEMU process, socket or directory left over.
 */

const home = new TestHome();
const daemons: ChildProcess[] = [];
afterAll(async () => {
  for (const d of daemons) if (d.exitCode === null && d.signalCode === null) d.kill('SIGKILL');
  await home.cleanup();
});

const socket = join(home.root, 'roost.sock');

/** A client of the daemon now running (every response checked against docs/openapi.json). */
function apiClient(): ApiClient {
  return new ApiClient({ socketPath: socket }, readFileSync(join(home.root, 'api-token'), 'utf8').trim());
}

async function json<T>(api: ApiClient, method: string, path: string, body?: unknown): Promise<T> {
  const r = await api.request<T>(method, path, body === undefined ? {} : { body });
  if (r.status >= 300) throw new Error(`${method} ${path}: ${r.status} ${r.text}`);
  return r.body;
}

/** Starts an exec whose NDJSON stream stays open; resolves once `lines` stdout lines have arrived. */
async function streamingExec(api: ApiClient, id: string, lines: number): Promise<void> {
  const s = await api.stream('POST', `/v1/sandboxes/${id}/exec`, { body: { cmd: 'i=0; while true; do i=$((i+1)); echo tick $i; sleep 0.05; done' } });
  let seen = 0;
  for await (const line of s.lines()) if (line.type === 'stdout' && ++seen >= lines) return; // left open: the daemon dies under it
}

function startDaemon(): Promise<ChildProcess> {
  return startServeProcess(
    home,
    async () => {
      const api = apiClient();
      try {
        return await api.get('/v1/health').then(
          (r) => r.status === 200,
          () => false,
        );
      } finally {
        api.close();
      }
    },
    daemons,
  );
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
    const before = apiClient();
    // The owned sandbox belongs to this client's session (a sandbox that is not detached needs one).
    await before.openSession();
    const kept = await json<Info>(before, 'POST', '/v1/sandboxes', { detached: true, labels: { role: 'kept' } });
    const owned = await json<Info>(before, 'POST', '/v1/sandboxes', { labels: { role: 'owned' } });
    expect(kept.status).toBe('running');
    const marked = await before.post<{ stdout: string }>(
      `/v1/sandboxes/${kept.id}/exec`,
      { cmd: 'echo before > /root/marker; cat /root/marker' },
      { headers: { accept: 'application/json' } },
    );
    expect(marked.body.stdout).toBe('before\n');
    await Promise.all([streamingExec(before, kept.id, 3), streamingExec(before, owned.id, 3)]);

    first.kill('SIGKILL');
    await new Promise((r) => first.once('exit', r));
    // The owned VM dies with its owner (pdeathsig); the detached one runs on.
    await eventually(() => !alive(owned.pid!), 5_000, 'the owned VM gone');
    expect(alive(kept.pid!)).toBe(true);

    before.close();
    await startDaemon();
    const api = apiClient();
    const run = async (cmd: string) =>
      (await api.post<{ stdout: string }>(`/v1/sandboxes/${kept.id}/exec`, { cmd }, { headers: { accept: 'application/json' } })).body.stdout;
    const list = (await json<{ sandboxes: Info[] }>(api, 'GET', '/v1/sandboxes')).sandboxes;
    expect(list.map((s) => s.id).sort()).toEqual([kept.id, owned.id].sort());
    expect(list.find((s) => s.id === kept.id)).toMatchObject({ status: 'running', pid: kept.pid });
    expect(list.find((s) => s.id === owned.id)).toMatchObject({ status: 'stopped', pid: null, reason: expect.stringMatching(/runtime exited/) });

    // The re-attached sandbox works, kept its files, and the stream's command died with its connection.
    expect(await run('cat /root/marker')).toBe('before\n');
    await eventually(async () => (await run('ps -o args | grep -c "[w]hile true" || true')).trim() === '0', 5_000, 'the orphaned stream command ended');

    // Nothing orphaned: one QEMU (the kept one), directories only for records, no socket of a dead VM.
    expect(qemusOf(home.root)).toEqual([kept.pid]);
    expect(readdirSync(join(home.root, 'sandboxes')).sort()).toEqual([kept.id, owned.id].sort());
    expect(readdirSync(join(home.root, 'sandboxes', owned.id)).filter((f) => f.endsWith('.sock'))).toEqual([]);

    // No event lost: both creations, starts, the execs, and the owned sandbox's exit, in id order.
    const events = await readEvents(api, 0);
    api.close();
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
async function readEvents(api: ApiClient, after: number): Promise<Ev[]> {
  const s = await api.stream('GET', `/v1/events?after=${after}`, { headers: { accept: 'text/event-stream' } });
  const events: Ev[] = [];
  let quiet = setTimeout(() => s.close(), 500);
  try {
    for await (const e of s.events()) {
      events.push(e.json as unknown as Ev);
      clearTimeout(quiet);
      quiet = setTimeout(() => s.close(), 500);
    }
  } catch {
    // closed by the quiet timer
  }
  clearTimeout(quiet);
  return events;
}
