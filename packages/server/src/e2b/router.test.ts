import { createServer, request, type IncomingHttpHeaders, type RequestListener, type Server } from 'node:http';
import { connect, type AddressInfo, type Socket } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { RoostError, type PortBinding, type SandboxApi, type SandboxInfo } from '@roost/api';
import { E2bRouter, matchSandboxHost, parseE2bDomain, TRAFFIC_TOKEN_HEADER, type RouterSandboxes } from './router.js';

describe('E2B sandbox hosts: names', () => {
  it('parses a domain, with or without a port; refuses E2B’s own and non-names', () => {
    expect(parseE2bDomain('localhost:7423')).toBe('localhost:7423');
    expect(parseE2bDomain(' Roost.Test ')).toBe('roost.test');
    for (const bad of ['', 'a b', 'http://x', 'x:0', 'x:65536', 'e2b.app', 'E2B.dev:7423', 'x.e2b.app', '-x.test', 'x..test']) {
      expect(() => parseE2bDomain(bad), bad).toThrow(RoostError);
    }
  });

  it('matches <port>-<12 hex id>.<domain> exactly, case-insensitive, with the domain’s port', () => {
    const id = '0123456789ab';
    expect(matchSandboxHost(`8000-${id}.localhost:7423`, 'localhost:7423')).toEqual({ port: 8000, sandboxId: id });
    expect(matchSandboxHost(`8000-${id.toUpperCase()}.LOCALHOST:7423`, 'localhost:7423')).toEqual({ port: 8000, sandboxId: id });
    expect(matchSandboxHost(`49983-${id}.roost.test`, 'roost.test')).toEqual({ port: 49983, sandboxId: id });
    // A domain without a port matches any; one with port 80 matches a Host without one.
    expect(matchSandboxHost(`1-${id}.roost.test:7423`, 'roost.test')).toEqual({ port: 1, sandboxId: id });
    expect(matchSandboxHost(`80-${id}.roost.test`, 'roost.test:80')).toEqual({ port: 80, sandboxId: id });
    for (const host of [
      undefined,
      'localhost:7423',
      `8000-${id}.localhost`,
      `8000-${id}.localhost:7424`,
      `8000-${id}.xlocalhost:7423`,
      `8000-${id}.a.localhost:7423`,
      `x.8000-${id}.localhost:7423`,
      `08000-${id}.localhost:7423`,
      `0-${id}.localhost:7423`,
      `65536-${id}.localhost:7423`,
      `8000-${id}0.localhost:7423`,
      `8000-0123456789ag.localhost:7423`,
      `8000${id}.localhost:7423`,
    ]) {
      expect(matchSandboxHost(host, 'localhost:7423'), host).toBeNull();
    }
  });
});

/** A listening server on 127.0.0.1. */
async function listen(server: Server): Promise<number> {
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return (server.address() as AddressInfo).port;
}

/** A request through the daemon's port with a Host: status, headers and body. */
function send(
  port: number,
  host: string,
  options: { method?: string; path?: string; headers?: Record<string, string>; body?: string; agent?: false } = {},
): Promise<{ status: number; headers: IncomingHttpHeaders; body: string }> {
  return new Promise((resolve, reject) => {
    const req = request(
      { host: '127.0.0.1', port, method: options.method ?? 'GET', path: options.path ?? '/', headers: { ...options.headers, host } },
      (res) => {
        let body = '';
        res.setEncoding('utf8');
        res.on('data', (d: string) => (body += d));
        res.on('end', () => resolve({ status: res.statusCode!, headers: res.headers, body }));
        res.on('error', reject);
      },
    );
    req.on('error', reject);
    req.end(options.body);
  });
}

/** Writes `text` on a new connection and reads until `until` has been seen (or the connection ends). */
function raw(port: number, text: string, until: (seen: string) => boolean): Promise<{ seen: string; socket: Socket }> {
  return new Promise((resolve, reject) => {
    const socket = connect(port, '127.0.0.1', () => socket.write(text));
    let seen = '';
    const done = () => resolve({ seen, socket });
    socket.on('data', (d: Buffer) => {
      seen += d.toString('latin1');
      if (until(seen)) {
        socket.removeAllListeners('data');
        socket.removeAllListeners('end');
        done();
      }
    });
    socket.on('end', done);
    socket.on('error', reject);
  });
}

describe('E2B sandbox hosts: the router', () => {
  const running = 'aaaaaaaaaaaa';
  const paused = 'bbbbbbbbbbbb';
  const privy = 'cccccccccccc';
  const plain = 'dddddddddddd';
  /** The "guest": answers with what it was sent; /stream answers slowly; an Upgrade is echoed after a 101. */
  let hangClosed: Promise<void> | null = null;
  const guest = createServer((req, res) => {
    if (req.url === '/hang') {
      hangClosed = new Promise((r) => res.on('close', () => r()));
      return;
    }
    if (req.url === '/slow') {
      res.writeHead(200, { 'content-type': 'text/plain' });
      res.write('first\n');
      setTimeout(() => res.end('second\n'), 200);
      return;
    }
    let body = '';
    req.setEncoding('utf8');
    req.on('data', (d: string) => (body += d));
    req.on('end', () => {
      res.setHeader('Set-Cookie', ['a=1', 'b=2']);
      res.setHeader('Connection', 'close, x-hop');
      res.setHeader('X-Hop', 'dropped');
      res.end(JSON.stringify({ method: req.method, url: req.url, headers: req.headers, body }));
    });
  });
  guest.on('upgrade', (req, socket: Socket, head: Buffer) => {
    socket.write(`HTTP/1.1 101 Switching Protocols\r\nUpgrade: ${req.headers.upgrade}\r\nConnection: Upgrade\r\nX-Seen-Host: ${req.headers.host}\r\n\r\n`);
    if (head.length) socket.write(head);
    socket.pipe(socket);
  });
  let guestPort = 0;
  /** A port nothing listens on. */
  let deadPort = 0;
  const adds: string[] = [];
  const infos = new Map<string, SandboxInfo>();
  const fake = (id: string, status: SandboxInfo['status'], labels: Record<string, string> = {}): SandboxApi => {
    const info = { id, status, labels, network: { mode: 'user', ports: [] as PortBinding[] } } as unknown as SandboxInfo;
    infos.set(id, info);
    return {
      id,
      get status() {
        return info.status;
      },
      info,
      ports: {
        add: async (spec: string) => {
          adds.push(`${id} ${spec}`);
          await new Promise((r) => setTimeout(r, 20));
          const guestPortAsked = Number(spec.split(':').at(-1));
          const binding: PortBinding = {
            guestPort: guestPortAsked,
            hostIp: '127.0.0.1',
            hostPort: guestPortAsked === 9 ? deadPort : guestPort,
            protocol: 'tcp',
          };
          info.network!.ports.push(binding);
          return binding;
        },
      },
    } as unknown as SandboxApi;
  };
  const sandboxes: Record<string, SandboxApi> = {};
  const control: RouterSandboxes = {
    sandbox: async (id) => {
      const sb = sandboxes[id];
      if (!sb) throw new RoostError('NOT_FOUND', `no sandbox ${id}`);
      return sb;
    },
    trafficAccessToken: (info) => (info.labels.private ? `token-of-${info.id}` : null),
  };
  const seenByApp: { url: string; sandboxId: string | undefined }[] = [];
  const app: RequestListener = (req, res) => {
    seenByApp.push({ url: req.url!, sandboxId: req.headers['e2b-sandbox-id'] as string | undefined });
    req.resume();
    req.on('end', () => res.end(`app ${req.method} ${req.url} ${req.rawHeaders.filter((_, i, a) => a[i - 1]?.toLowerCase() === 'e2b-sandbox-id').join()}`));
  };
  let daemon: Server;
  let router: E2bRouter;
  let port = 0;
  const host = (p: number, id: string) => `${p}-${id}.localhost:${port}`;

  beforeAll(async () => {
    guestPort = await listen(guest);
    const dead = createServer();
    deadPort = await listen(dead);
    await new Promise((r) => dead.close(r));
    sandboxes[running] = fake(running, 'running');
    sandboxes[paused] = fake(paused, 'paused');
    sandboxes[privy] = fake(privy, 'running', { private: 'yes' });
    daemon = createServer((req, res) => router.listener(req, res));
    port = await listen(daemon);
    router = new E2bRouter({ domain: `localhost:${port}`, sandboxes: control, app });
    router.attach(daemon);
  });
  afterAll(async () => {
    router.close();
    daemon.closeAllConnections();
    guest.closeAllConnections();
    await Promise.all([new Promise((r) => daemon.close(r)), new Promise((r) => guest.close(r))]);
  });

  it('proxies HTTP: method, path and query, end-to-end headers, X-Forwarded-*, a streamed body both ways; publishes a port once', async () => {
    const [a, b] = await Promise.all([
      send(port, host(8000, running), { path: '/p?q=1', headers: { 'X-Custom': 'yes', 'X-Forwarded-For': '10.0.0.1', 'Keep-Alive': 'timeout=5' } }),
      send(port, host(8000, running), { method: 'POST', path: '/post', body: 'x'.repeat(100_000) }),
    ]);
    expect(adds.filter((s) => s.startsWith(running))).toEqual([`${running} 127.0.0.1::8000`]);
    expect(a.status).toBe(200);
    const seen = JSON.parse(a.body) as { method: string; url: string; headers: Record<string, string> };
    expect(seen).toMatchObject({ method: 'GET', url: '/p?q=1' });
    expect(seen.headers).toMatchObject({
      host: host(8000, running),
      'x-custom': 'yes',
      'x-forwarded-for': '10.0.0.1, 127.0.0.1',
      'x-forwarded-host': host(8000, running),
      'x-forwarded-proto': 'http',
    });
    expect(seen.headers['keep-alive']).toBeUndefined();
    // The guest's answer, less its hop-by-hop headers; both cookies kept.
    expect(a.headers['set-cookie']).toEqual(['a=1', 'b=2']);
    expect(a.headers['x-hop']).toBeUndefined();
    expect(JSON.parse(b.body)).toMatchObject({ method: 'POST', body: 'x'.repeat(100_000) });
    // Later requests reuse the binding.
    await send(port, host(8000, running));
    expect(adds.filter((s) => s.startsWith(running))).toHaveLength(1);
    const slow = await send(port, host(8000, running), { path: '/slow' });
    expect(slow.body).toBe('first\nsecond\n');
  });

  it('keeps the client’s connection alive across requests', async () => {
    const h = host(8000, running);
    const { seen, socket } = await raw(port, `GET /1 HTTP/1.1\r\nHost: ${h}\r\n\r\nGET /2 HTTP/1.1\r\nHost: ${h}\r\n\r\n`, (s) => s.includes('"url":"/2"'));
    socket.destroy();
    expect(seen).toContain('"url":"/1"');
  });

  it('cuts the request to the guest when the client goes away', async () => {
    const socket = connect(port, '127.0.0.1', () => socket.write(`GET /hang HTTP/1.1\r\nHost: ${host(8000, running)}\r\n\r\n`));
    socket.on('error', () => {});
    while (!hangClosed) await new Promise((r) => setTimeout(r, 10));
    socket.destroy();
    await hangClosed;
  });

  it('answers 502 for an unknown or paused sandbox and a port nothing listens on; 403 without a private sandbox’s token', async () => {
    const unknown = await send(port, host(8000, 'eeeeeeeeeeee'));
    expect(unknown.status).toBe(502);
    expect(JSON.parse(unknown.body)).toMatchObject({ code: 502, message: expect.stringContaining('eeeeeeeeeeee was not found') as unknown });
    const sleeping = await send(port, host(8000, paused));
    expect(sleeping.status).toBe(502);
    expect(sleeping.body).toContain('paused');
    const nothing = await send(port, host(9, running));
    expect(nothing.status).toBe(502);
    expect(JSON.parse(nothing.body)).toMatchObject({ message: expect.stringContaining('nothing answered on port 9') as unknown });
    expect((await send(port, host(8000, privy))).status).toBe(403);
    expect((await send(port, host(8000, privy), { headers: { [TRAFFIC_TOKEN_HEADER]: 'wrong' } })).status).toBe(403);
    const ok = await send(port, host(8000, privy), { headers: { [TRAFFIC_TOKEN_HEADER]: `token-of-${privy}` } });
    expect(ok.status).toBe(200);
    // The token is the edge's business: the guest does not see it.
    expect((JSON.parse(ok.body) as { headers: Record<string, string> }).headers[TRAFFIC_TOKEN_HEADER]).toBeUndefined();
  });

  it('routes port 49983 to the app’s envd routes with the sandbox’s id; other hosts go to the app untouched', async () => {
    const envd = await send(port, host(49983, plain), { path: '/health', headers: { 'E2b-Sandbox-Id': 'ffffffffffff' } });
    expect(envd.body).toBe(`app GET /health ${plain}`);
    expect((await send(port, host(49983, plain), { path: '/v1/sandboxes' })).status).toBe(404);
    expect((await send(port, `localhost:${port}`, { path: '/v1/health' })).body).toBe('app GET /v1/health ');
    expect(seenByApp.map((s) => s.url)).toEqual(['/health', '/v1/health']);
  });

  it('tunnels an upgrade to the guest port, bytes both ways; a failed one is answered 502', async () => {
    const head = `GET /ws HTTP/1.1\r\nHost: ${host(8000, running)}\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\nearly`;
    const { seen, socket } = await raw(port, head, (s) => s.includes('early'));
    expect(seen).toMatch(/^HTTP\/1\.1 101 /);
    expect(seen).toContain(`X-Seen-Host: ${host(8000, running)}`);
    const echoed = await new Promise<string>((resolve) => {
      let got = '';
      socket.on('data', (d: Buffer) => {
        got += d.toString();
        if (got.includes('ping')) resolve(got);
      });
      socket.write('ping');
    });
    expect(echoed).toBe('ping');
    socket.destroy();
    const failed = await raw(port, head.replace('8000-', '9-'), () => false);
    expect(failed.seen).toMatch(/^HTTP\/1\.1 502 [^]*nothing answered on port 9/);
    const gone = await raw(port, head.replace(running, 'eeeeeeeeeeee'), () => false);
    expect(gone.seen).toMatch(/^HTTP\/1\.1 502 [^]*was not found/);
  });

  it('serves an upgrade for any other host as an ordinary request, as before, and the connection’s next request too', async () => {
    const body = 'hello';
    const first = `POST /x HTTP/1.1\r\nHost: localhost:${port}\r\nConnection: Upgrade\r\nUpgrade: h2c\r\nContent-Length: ${body.length}\r\n\r\n${body}`;
    const { seen, socket } = await raw(port, first, (s) => s.includes('app POST /x'));
    expect(seen).toMatch(/^HTTP\/1\.1 200 [^]*app POST \/x $/);
    // (Node's parser stops at an upgrade's end: a request sent in the same packet after it is lost, with or without the router.)
    const next = await new Promise<string>((resolve) => {
      let got = '';
      socket.on('data', (d: Buffer) => {
        got += d.toString();
        if (got.includes('app GET /y')) resolve(got);
      });
      socket.write(`GET /y HTTP/1.1\r\nHost: localhost:${port}\r\n\r\n`);
    });
    socket.destroy();
    expect(next).toMatch(/^HTTP\/1\.1 200 [^]*app GET \/y/);
  });
});
