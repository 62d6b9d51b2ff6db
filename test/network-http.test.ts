import http from 'node:http';
import net from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { isRoostError } from '@roost/api';
import { RoostClient } from '@roost/client';
import { serve, type ServeHandle } from '@roost/server';
import { ApiClient, validated } from './api-client.js';
import { eventually, freePort, qemusOf, TestHome } from './helpers.js';

/*
 * Networking through `roost serve`: a sandbox created with a published port
 * and an egress policy, its ports listed, added and removed while it runs
 * (with real HTTP traffic from this process through them to busybox httpd in
 * the guest), its network and counters, the errors, and the same calls
 * through the SDK. Every response is checked against docs/openapi.json by
 * ApiClient. One booted sandbox; the failing creates fail before a VM starts.
 * Traffic stays on 127.0.0.1 (published ports) or is refused by the policy
 * before it leaves the host (10.0.0.0/8 is denied).
 */

type Json = Record<string, unknown>;
interface Binding {
  guestPort: number;
  hostPort: number;
  hostIp: string;
  protocol: 'tcp' | 'udp';
}
interface Network {
  mode: string;
  address?: string;
  prefix?: number;
  gateway?: string;
  dns?: string;
  mac?: string;
  ports: Binding[];
  egress: { default: string; allow: string[]; deny: string[] };
}
type Info = { id: string; status: string; network?: Network };

const home = new TestHome();
let daemon: ServeHandle;
let api: ApiClient;
let client: RoostClient;
let id: string;
/** The host port of guest port 80 published at create. */
let published: number;
/** A TCP port of 127.0.0.1 that this test holds, so nobody else can publish it. */
let held: net.Server;
let heldPort: number;

const json = { headers: { accept: 'application/json' } };

/** Runs a shell command through the API; its stdout (the exit code must be 0). */
async function sh(cmd: string): Promise<string> {
  const r = await api.post<Json>(`/v1/sandboxes/${id}/exec`, { cmd }, json);
  expect(r.status, cmd).toBe(200);
  expect(r.body, cmd).toMatchObject({ exitCode: 0 });
  return r.body.stdout as string;
}

/** GET http://127.0.0.1:port/path on a connection of its own: the status and body. */
function httpGet(port: number, path = '/'): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = http.get({ host: '127.0.0.1', port, path, agent: false, timeout: 20_000 }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (c: string) => (body += c));
      res.on('end', () => resolve({ status: res.statusCode!, body }));
      res.on('error', reject);
    });
    req.on('timeout', () => req.destroy(new Error(`GET 127.0.0.1:${port}${path} timed out`)));
    req.on('error', reject);
  });
}

/** The error of a TCP connect to 127.0.0.1:port (null when it connected). */
function connectError(port: number): Promise<string | null> {
  return new Promise((resolve) => {
    const s = net.connect({ host: '127.0.0.1', port });
    s.once('connect', () => (s.destroy(), resolve(null)));
    s.once('error', (e: NodeJS.ErrnoException) => resolve(e.code ?? e.message));
  });
}

beforeAll(async () => {
  held = net.createServer();
  await new Promise<void>((r) => held.listen(0, '127.0.0.1', r));
  heldPort = (held.address() as net.AddressInfo).port;
  daemon = await serve({ home: home.root });
  api = new ApiClient({ socketPath: daemon.socketPath }, daemon.token);
  await api.openSession();
  client = new RoostClient({ host: `unix://${daemon.socketPath}`, token: daemon.token });
  const created = await api.post<Info>('/v1/sandboxes', {
    ports: ['127.0.0.1::80'],
    egress: { default: 'allow', deny: ['10.0.0.0/8'] },
    timeoutMs: 60_000,
  });
  expect(created.status, JSON.stringify(created.body)).toBe(201);
  id = created.body.id;
  published = created.body.network!.ports[0]!.hostPort;
  await sh('mkdir -p /tmp/www && echo hello from the guest > /tmp/www/index.html && busybox httpd -p 80 -h /tmp/www');
});

afterAll(async () => {
  api?.close();
  await client?.close();
  await daemon?.close();
  await new Promise((r) => held?.close(r));
  await eventually(() => qemusOf(home.root).length === 0, 10_000, 'no QEMU process left').catch(() => {});
  await home.cleanup();
});

describe('create with a network', () => {
  it('records the user-mode network, the published port (a free host port on 127.0.0.1) and the egress policy', async () => {
    const info = (await api.get<Info>(`/v1/sandboxes/${id}`)).body;
    expect(info.network).toMatchObject({
      mode: 'user',
      address: '10.0.2.15',
      prefix: 24,
      gateway: '10.0.2.2',
      dns: '10.0.2.3',
      mac: expect.stringMatching(/^02:52(:[0-9a-f]{2}){4}$/),
      ports: [{ guestPort: 80, hostIp: '127.0.0.1', protocol: 'tcp', hostPort: published }],
      egress: { default: 'allow', allow: [], deny: ['10.0.0.0/8'] },
    });
    expect(published).toBeGreaterThan(0);
    expect((await api.get<{ sandboxes: Info[] }>('/v1/sandboxes')).body.sandboxes[0]!.network!.ports).toEqual(info.network!.ports);
  });

  it('serves the guest port on the published host port', async () => {
    expect(await httpGet(published)).toEqual({ status: 200, body: 'hello from the guest\n' });
    expect((await httpGet(published, '/missing')).status).toBe(404);
  });

  it('refuses bad networks before anything starts: 400 with the reason; a held host port is 503 UNAVAILABLE', async () => {
    const cidr = await api.post<Json>('/v1/sandboxes', { egress: { default: 'deny', allow: ['10.0.0.1/8'] } });
    expect(cidr.status).toBe(400);
    expect(cidr.body).toMatchObject({ error: { code: 'INVALID_ARGUMENT', message: expect.stringContaining('did you mean 10.0.0.0/8') } });
    const rule = await api.post<Json>('/v1/sandboxes', { egress: { default: 'deny', allow: ['example.com:http'] } });
    expect(rule.status).toBe(400);
    expect(rule.body).toMatchObject({ error: { code: 'INVALID_ARGUMENT', message: expect.stringContaining('egress rule "example.com:http"') } });
    const port = await api.post<Json>('/v1/sandboxes', { ports: ['99999:80'] });
    expect(port.status).toBe(400);
    expect(port.body).toMatchObject({ error: { code: 'INVALID_ARGUMENT', message: expect.stringContaining('"99999" is not a port') } });
    for (const body of [
      { ports: [{ guestPort: 0 }] },
      { ports: [{ guestPort: 80, extra: 1 }] },
      { network: 'nat' },
      { egress: 'maybe' },
      { network: 'none', ports: ['80'] },
    ]) {
      const r = await api.post<Json>('/v1/sandboxes', body);
      expect(r.status, JSON.stringify(body)).toBe(400);
      expect(r.body, JSON.stringify(body)).toMatchObject({ error: { code: 'INVALID_ARGUMENT' } });
    }
    const inUse = await api.post<Json>('/v1/sandboxes', { ports: [`127.0.0.1:${heldPort}:80`], timeoutMs: 60_000 });
    expect(inUse.status).toBe(503);
    expect(inUse.body).toMatchObject({ error: { code: 'UNAVAILABLE', message: expect.stringContaining(`127.0.0.1:${heldPort}/tcp is already in use`) } });
    // Nothing is left of the creates that failed.
    expect((await api.get<{ sandboxes: Info[] }>('/v1/sandboxes')).body.sandboxes.map((s) => s.id)).toEqual([id]);
  });
});

describe('published ports', () => {
  it('lists, adds (string and object forms) and removes ports while the sandbox runs', async () => {
    const list = await api.get<{ ports: Binding[] }>(`/v1/sandboxes/${id}/ports`);
    expect(list.status).toBe(200);
    expect(list.body.ports).toEqual([{ guestPort: 80, hostPort: published, hostIp: '127.0.0.1', protocol: 'tcp' }]);

    const fixed = await freePort();
    const added = await api.post<Binding>(`/v1/sandboxes/${id}/ports`, { guestPort: 80, hostPort: fixed });
    expect(added.status).toBe(201);
    expect(added.body).toEqual({ guestPort: 80, hostPort: fixed, hostIp: '127.0.0.1', protocol: 'tcp' });
    expect(await httpGet(fixed)).toEqual({ status: 200, body: 'hello from the guest\n' });

    const udp = await api.post<Binding>(`/v1/sandboxes/${id}/ports`, '127.0.0.1::5353/udp');
    expect(udp.status).toBe(201);
    expect(udp.body).toMatchObject({ guestPort: 5353, hostIp: '127.0.0.1', protocol: 'udp' });
    expect(udp.body.hostPort).toBeGreaterThan(0);

    const all = (await api.get<{ ports: Binding[] }>(`/v1/sandboxes/${id}/ports`)).body.ports;
    expect(all).toHaveLength(3);
    expect(all).toEqual(expect.arrayContaining([added.body, udp.body]));
    expect((await api.get<Info>(`/v1/sandboxes/${id}`)).body.network!.ports).toEqual(all);

    // The same host port twice: this sandbox has it already.
    const dup = await api.post<Json>(`/v1/sandboxes/${id}/ports`, `${fixed}:8080`);
    expect(dup.status).toBe(409);
    expect(dup.body).toMatchObject({ error: { code: 'ALREADY_EXISTS' } });

    // A TCP port and a UDP port are apart: removing the UDP one (?protocol=udp) leaves the TCP ones.
    expect((await api.delete(`/v1/sandboxes/${id}/ports/${udp.body.hostPort}?protocol=udp`)).status).toBe(204);
    expect((await api.delete(`/v1/sandboxes/${id}/ports/${fixed}?hostIp=127.0.0.1`)).status).toBe(204);
    expect(await connectError(fixed)).toBe('ECONNREFUSED');
    expect((await api.get<{ ports: Binding[] }>(`/v1/sandboxes/${id}/ports`)).body.ports).toEqual([
      { guestPort: 80, hostPort: published, hostIp: '127.0.0.1', protocol: 'tcp' },
    ]);
    expect((await httpGet(published)).status).toBe(200);
  });

  it('answers errors: 400 for bad mappings and parameters, 404 for ports not published, 503 for a port another program holds', async () => {
    const bad = await api.post<Json>(`/v1/sandboxes/${id}/ports`, '70000:80');
    expect(bad.status).toBe(400);
    expect(bad.body).toMatchObject({ error: { code: 'INVALID_ARGUMENT', message: expect.stringContaining('"70000" is not a port') } });
    for (const body of [{ guestPort: 0 }, { guestPort: 80, protocol: 'sctp' }, { guestPort: 80, hostIp: '::1' }, '80/sctp', '', 42]) {
      const r = await api.post<Json>(`/v1/sandboxes/${id}/ports`, body);
      expect(r.status, JSON.stringify(body)).toBe(400);
      expect(r.body, JSON.stringify(body)).toMatchObject({ error: { code: 'INVALID_ARGUMENT' } });
    }
    expect((await api.post<Json>(`/v1/sandboxes/${id}/ports`)).status).toBe(400);

    const inUse = await api.post<Json>(`/v1/sandboxes/${id}/ports`, `127.0.0.1:${heldPort}:80`);
    expect(inUse.status).toBe(503);
    expect(inUse.body).toMatchObject({
      error: {
        code: 'UNAVAILABLE',
        message: `host port 127.0.0.1:${heldPort}/tcp is already in use by another program: choose another port, or publish 127.0.0.1::80 for a free one`,
      },
    });

    for (const path of [`ports/abc`, `ports/0`, `ports/65536`, `ports/${published}?protocol=sctp`, `ports/${published}?other=1`]) {
      const r = await api.delete<Json>(`/v1/sandboxes/${id}/${path}`);
      expect(r.status, path).toBe(400);
      expect(r.body, path).toMatchObject({ error: { code: 'INVALID_ARGUMENT' } });
    }
    for (const path of [`ports/${published}?protocol=udp`, `ports/${published}?hostIp=127.0.0.2`, 'ports/1']) {
      const r = await api.delete<Json>(`/v1/sandboxes/${id}/${path}`);
      expect(r.status, path).toBe(404);
      expect(r.body, path).toMatchObject({ error: { code: 'NOT_FOUND' } });
    }
    for (const r of [
      await api.get<Json>('/v1/sandboxes/ffffffffffff/ports'),
      await api.post<Json>('/v1/sandboxes/ffffffffffff/ports', '80'),
      await api.delete<Json>('/v1/sandboxes/ffffffffffff/ports/80'),
      await api.get<Json>('/v1/sandboxes/ffffffffffff/network'),
    ]) {
      expect(r.status).toBe(404);
    }
    expect((await api.get<Json>(`/v1/sandboxes/${id}/ports?x=1`)).status).toBe(400);
    // The published port still works.
    expect((await httpGet(published)).status).toBe(200);
  });

  it('records port.added and port.removed events', async () => {
    const s = await api.stream('GET', `/v1/events?after=0&sandbox=${id}&type=port.added,port.removed`);
    const seen: Json[] = [];
    for await (const e of s.events()) {
      seen.push(e.json);
      if (seen.length === 4) break;
    }
    s.close();
    expect(seen.map((e) => e.type)).toEqual(['port.added', 'port.added', 'port.removed', 'port.removed']);
    expect(seen[0]).toMatchObject({ sandboxId: id, data: { guestPort: 80, hostIp: '127.0.0.1', protocol: 'tcp' } });
  });
});

describe('the network endpoint', () => {
  it('reports the network and its counters; a denied connection fails at once in the guest and is counted', async () => {
    const before = await api.get<{ network: Network; stats: Json }>(`/v1/sandboxes/${id}/network`);
    expect(before.status).toBe(200);
    expect(before.body.network).toEqual((await api.get<Info>(`/v1/sandboxes/${id}`)).body.network);
    expect(before.body.stats).toMatchObject({
      bytesIn: expect.any(Number),
      packetsIn: expect.any(Number),
      bytesOut: expect.any(Number),
      packetsOut: expect.any(Number),
      denied: expect.any(Number),
    });
    // The HTTP requests above went in and out through the NIC.
    expect(before.body.stats.packetsIn as number).toBeGreaterThan(0);
    expect(before.body.stats.bytesOut as number).toBeGreaterThan(0);

    const started = Date.now();
    const r = await api.post<Json>(`/v1/sandboxes/${id}/exec`, { cmd: 'busybox nc -w 5 10.1.2.3 80 </dev/null; echo "exit $?"' }, json);
    expect(r.body).toMatchObject({ exitCode: 0, stdout: 'exit 1\n' });
    // Refused by the host at once (ICMP prohibited), not after the 5 s timeout.
    expect(Date.now() - started).toBeLessThan(4_000);
    const after = (await api.get<{ stats: Json }>(`/v1/sandboxes/${id}/network`)).body.stats;
    expect(after.denied as number).toBeGreaterThan(before.body.stats.denied as number);
  });
});

describe('the SDK', () => {
  it('publishes, finds (getHost) and removes ports of a RemoteSandbox, and reads its counters', async () => {
    const sandbox = await client.get(id);
    expect(sandbox.getHost(80)).toBe(`127.0.0.1:${published}`);
    expect(await sandbox.ports.list()).toEqual([{ guestPort: 80, hostPort: published, hostIp: '127.0.0.1', protocol: 'tcp' }]);

    const b = await sandbox.ports.add({ guestPort: 8080 });
    expect(b).toMatchObject({ guestPort: 8080, hostIp: '127.0.0.1', protocol: 'tcp' });
    expect(sandbox.getHost(8080)).toBe(`127.0.0.1:${b.hostPort}`);
    await sh('busybox httpd -p 8080 -h /tmp/www');
    expect(await httpGet(b.hostPort)).toEqual({ status: 200, body: 'hello from the guest\n' });
    await expect(sandbox.ports.add(`127.0.0.1:${heldPort}:8080`)).rejects.toMatchObject({ code: 'UNAVAILABLE' });

    await sandbox.ports.remove(b.hostPort);
    expect(() => sandbox.getHost(8080)).toThrow(/port 8080\/tcp .* is not published/);
    try {
      sandbox.getHost(8080);
    } catch (e) {
      expect(isRoostError(e, 'NOT_FOUND')).toBe(true);
    }
    await expect(sandbox.ports.remove(b.hostPort)).rejects.toMatchObject({ code: 'NOT_FOUND' });
    expect(sandbox.getHost(80)).toBe(`127.0.0.1:${published}`);

    const stats = await sandbox.networkStats();
    expect(stats.packetsIn).toBeGreaterThan(0);
    expect(stats.denied).toBeGreaterThan(0);
  });

  it("keeps a stopped sandbox's ports in its record, refuses to add ports, and reads zero counters", async () => {
    expect((await api.post<Info>(`/v1/sandboxes/${id}/stop`, {})).body.status).toBe('stopped');
    expect(await connectError(published)).toBe('ECONNREFUSED');
    const add = await api.post<Json>(`/v1/sandboxes/${id}/ports`, '80');
    expect(add.status).toBe(409);
    expect(add.body).toMatchObject({ error: { code: 'INVALID_STATE', message: expect.stringContaining('start it first') } });
    const netw = await api.get<{ network: Network; stats: Json }>(`/v1/sandboxes/${id}/network`);
    expect(netw.body.network.ports).toEqual([{ guestPort: 80, hostPort: published, hostIp: '127.0.0.1', protocol: 'tcp' }]);
    expect(netw.body.stats).toEqual({ bytesIn: 0, packetsIn: 0, bytesOut: 0, packetsOut: 0, denied: 0 });
  });

  it('checked every response against docs/openapi.json', () => {
    expect(validated.responses).toBeGreaterThan(40);
  });
});
