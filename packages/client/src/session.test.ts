import { spawn } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { createServer, type Server, type ServerResponse } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { parseHost, Transport } from './http.js';
import { SessionLink } from './session.js';

// The client's end of sessions against a small HTTP server on a unix socket
// that plays the daemon's part: it names sessions, holds their streams, and
// ends (forgets) them on DELETE.

let dir: string;
let server: Server;
let transport: Transport;
const log: string[] = [];
/** Open session streams by id. */
const streams = new Map<string, ServerResponse>();
const known = new Set<string>();
let n = 0;

beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'roost-client-session-'));
  log.length = 0;
  streams.clear();
  known.clear();
  server = createServer((req, res) => {
    const resume = req.headers['roost-session'] as string | undefined;
    log.push(`${req.method} ${req.url}${resume ? ` ${resume}` : ''}`);
    if (req.method === 'POST' && req.url === '/v1/sessions') {
      if (resume && !known.has(resume)) {
        res.writeHead(404, { 'content-type': 'application/json' }).end(JSON.stringify({ error: { code: 'NOT_FOUND', message: `no session ${resume}` } }));
        return;
      }
      const id = resume ?? (++n).toString(16).padStart(32, '0');
      known.add(id);
      streams.set(id, res);
      res.writeHead(200, { 'content-type': 'application/x-ndjson' });
      res.write(JSON.stringify({ id, graceMs: 2_000, keepaliveMs: 15_000 }) + '\n');
      return;
    }
    const m = /^\/v1\/sessions\/(\w+)$/.exec(req.url ?? '');
    if (req.method === 'DELETE' && m) {
      known.delete(m[1]!);
      res.writeHead(204).end();
      return;
    }
    res.writeHead(404).end();
  });
  const socketPath = join(dir, 'd.sock');
  await new Promise<void>((r) => server.listen(socketPath, r));
  transport = new Transport(parseHost(`unix://${socketPath}`), async () => undefined, 5_000);
});

afterEach(async () => {
  transport.close();
  server.closeAllConnections();
  await new Promise((r) => server.close(r));
  await rm(dir, { recursive: true, force: true });
});

const until = async (check: () => boolean) => {
  const end = Date.now() + 3_000;
  while (!check()) {
    if (Date.now() > end) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 10));
  }
};

describe('SessionLink', () => {
  it('opens one session on first use, whatever the number of callers; close() ends it on the daemon', async () => {
    const link = new SessionLink(transport);
    const headers = await Promise.all([link.header(), link.header(), link.header()]);
    const id = (1).toString(16).padStart(32, '0');
    expect(headers).toEqual([{ 'Roost-Session': id }, { 'Roost-Session': id }, { 'Roost-Session': id }]);
    expect(log).toEqual(['POST /v1/sessions']);
    await link.close();
    expect(log).toEqual(['POST /v1/sessions', `DELETE /v1/sessions/${id}`]);
    await expect(link.header()).rejects.toMatchObject({ code: 'ABORTED' });
  });

  it('does not keep a process alive: one that holds a session and nothing else exits, and the daemon sees its stream end', async () => {
    const registerTs = new URL('../../../scripts/ts-register.mjs', import.meta.url).href;
    const http = new URL('./http.ts', import.meta.url).href;
    const session = new URL('./session.ts', import.meta.url).href;
    const code = `
      const { parseHost, Transport } = await import(${JSON.stringify(http)});
      const { SessionLink } = await import(${JSON.stringify(session)});
      const link = new SessionLink(new Transport(parseHost(${JSON.stringify(`unix://${join(dir, 'd.sock')}`)}), async () => undefined, 5000));
      console.log(JSON.stringify(await link.header()));`;
    const child = spawn(process.execPath, ['--import', registerTs, '--input-type=module', '-e', code], { stdio: ['ignore', 'pipe', 'inherit'] });
    let out = '';
    child.stdout.on('data', (c: Buffer) => (out += c.toString()));
    const exit = await new Promise<number | null>((r) => child.on('exit', r));
    expect(exit).toBe(0);
    const id = (JSON.parse(out) as Record<string, string>)['Roost-Session']!;
    await until(() => streams.get(id)!.destroyed);
  });

  it('resumes a stream that dropped, with the same id', async () => {
    const link = new SessionLink(transport);
    const { 'Roost-Session': id } = await link.header();
    streams.get(id!)!.socket!.destroy();
    await until(() => log.includes(`POST /v1/sessions ${id}`));
    expect(await link.header()).toEqual({ 'Roost-Session': id });
    await link.close();
  });

  it('opens a new session after the daemon forgot the old one (a resume answered 404), or when told to forget it', async () => {
    const link = new SessionLink(transport);
    const { 'Roost-Session': first } = await link.header();
    known.delete(first!);
    streams.get(first!)!.socket!.destroy();
    await until(() => log.includes(`POST /v1/sessions ${first}`));
    await until(() => log.length === 2);
    await new Promise((r) => setTimeout(r, 50));
    const { 'Roost-Session': second } = await link.header();
    expect(second).not.toBe(first);
    link.forget(second!);
    const { 'Roost-Session': third } = await link.header();
    expect(new Set([first, second, third]).size).toBe(3);
    await link.close();
  });
});
