import { createServer as createHttpServer, type Server } from 'node:http';
import net from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import type { HealthCheck } from '@roost/api';
import { HealthTracker, probe, type ProbeTarget } from './health.js';

const servers: (Server | net.Server)[] = [];
const sockets = new Set<net.Socket>();
afterEach(async () => {
  // Servers that never answer keep their connections: cut them, or close() would wait for them.
  for (const s of sockets) s.destroy();
  sockets.clear();
  await Promise.all(servers.splice(0).map((s) => new Promise((r) => s.close(r))));
});

async function listen(server: Server | net.Server): Promise<number> {
  servers.push(server);
  server.on('connection', (s: net.Socket) => sockets.add(s));
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  return (server.address() as net.AddressInfo).port;
}

/** A target whose guest ports are ports of this host (guest port -> host port), and whose exec returns `code`. */
function target(ports: Record<number, number>, exec: (argv: string[]) => Promise<number> = async () => 0): ProbeTarget {
  return {
    connectTcp: (guestPort) => net.connect({ host: '127.0.0.1', port: ports[guestPort] ?? 1 }),
    exec: (argv) => exec(argv),
  };
}

const base = { intervalMs: 1000, timeoutMs: 300, retries: 2, startPeriodMs: 0 };

describe('health probes', () => {
  it('http: 2xx and 3xx are healthy, others and refusals are not; the path is requested', async () => {
    const paths: string[] = [];
    const port = await listen(
      createHttpServer((req, res) => {
        paths.push(req.url!);
        res.statusCode = req.url === '/healthz' ? 200 : req.url === '/moved' ? 302 : 503;
        res.end();
      }),
    );
    const t = target({ 8000: port });
    const check = (path: string): HealthCheck => ({ ...base, http: { port: 8000, path } });
    expect(await probe(check('/healthz'), t)).toEqual({ ok: true, detail: 'GET /healthz on port 8000: 200' });
    expect((await probe(check('/moved'), t)).ok).toBe(true);
    expect(await probe(check('/broken'), t)).toEqual({ ok: false, detail: 'GET /broken on port 8000: 503' });
    expect(paths).toEqual(['/healthz', '/moved', '/broken']);
    expect(await probe({ ...base, http: { port: 9 /* nothing */, path: '/' } }, target({}))).toMatchObject({
      ok: false,
      detail: expect.stringMatching(/ECONNREFUSED/),
    });
  });

  it('http: a server that never answers fails at the timeout', async () => {
    const port = await listen(net.createServer(() => {}));
    const started = Date.now();
    expect(await probe({ ...base, http: { port: 80, path: '/' } }, target({ 80: port }))).toEqual({ ok: false, detail: 'no answer within 300 ms' });
    expect(Date.now() - started).toBeLessThan(2_000);
  });

  it('tcp and exec', async () => {
    const port = await listen(net.createServer((s) => s.end()));
    expect(await probe({ ...base, tcp: { port: 5432 } }, target({ 5432: port }))).toEqual({ ok: true, detail: 'port 5432 accepts connections' });
    expect((await probe({ ...base, tcp: { port: 5433 } }, target({}))).ok).toBe(false);
    const argvs: string[][] = [];
    const exec = async (argv: string[]) => (argvs.push(argv), argv[0] === 'true' ? 0 : 1);
    expect(await probe({ ...base, exec: ['true'] }, target({}, exec))).toEqual({ ok: true, detail: 'exit status 0' });
    expect(await probe({ ...base, exec: ['false'] }, target({}, exec))).toEqual({ ok: false, detail: 'exit status 1' });
    expect(argvs).toEqual([['true'], ['false']]);
  });
});

describe('HealthTracker', () => {
  const ok = { ok: true, detail: '' };
  const bad = { ok: false, detail: 'x' };

  it('starting -> healthy on a success; unhealthy after `retries` failures in a row; a success resets', () => {
    const h = new HealthTracker({ retries: 3, startPeriodMs: 0 }, 0);
    expect(h.state).toBe('starting');
    expect(h.record(ok, 1)).toBe('healthy');
    expect(h.record(bad, 2)).toBe('healthy');
    expect(h.record(bad, 3)).toBe('healthy');
    expect(h.record(ok, 4)).toBe('healthy');
    expect(h.failures).toBe(0);
    h.record(bad, 5);
    h.record(bad, 6);
    expect(h.record(bad, 7)).toBe('unhealthy');
    expect(h.record(ok, 8)).toBe('healthy');
  });

  it('failures in the start period do not count, until the replica was once healthy', () => {
    const h = new HealthTracker({ retries: 1, startPeriodMs: 1_000 }, 10_000);
    expect(h.record(bad, 10_500)).toBe('starting');
    expect(h.failures).toBe(0);
    expect(h.record(bad, 11_001)).toBe('unhealthy');
    const g = new HealthTracker({ retries: 1, startPeriodMs: 1_000 }, 10_000);
    g.record(ok, 10_100);
    expect(g.record(bad, 10_200)).toBe('unhealthy');
  });
});
