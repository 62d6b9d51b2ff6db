import { createServer, type Server } from 'node:http';
import { connect, createServer as createTcpServer, type AddressInfo } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { SnapshotInfo } from '@roost/api';
import type { RoostEvent, Runtime, Sandbox } from '@roost/core';
import { expectCode, TestHome } from './helpers.js';

// User-mode networking against real guests. One booted sandbox (`web`) runs
// busybox httpd and is the source of a snapshot; the egress tests restore
// copies of it (~0.2 s each) with different policies. A test HTTP server on
// the host's loopback plays "a service on the host".
const home = new TestHome();
let runtime: Runtime;
let web: Sandbox;
let snap: SnapshotInfo;
let hostServer: Server;
let hostPort: number;

async function sh(s: Sandbox, cmd: string): Promise<string> {
  const r = await s.commands.run(cmd);
  if (r.exitCode !== 0) throw new Error(`${cmd}: exit ${r.exitCode}: ${r.stdout}${r.stderr}`);
  return r.stdout;
}

async function httpGet(hostAndPort: string): Promise<string> {
  const res = await fetch(`http://${hostAndPort}/`, { signal: AbortSignal.timeout(10_000) });
  return res.text();
}

/** Runs busybox wget in the guest against the host's test server through the gateway; the exit code, output and time. */
async function guestFetch(s: Sandbox, url = `http://10.0.2.2:${hostPort}/`): Promise<{ exitCode: number; out: string; ms: number }> {
  const t0 = Date.now();
  // Not -q: busybox wget then says nothing about why it failed.
  const r = await s.commands.run(['wget', '-O', '-', url]);
  return { exitCode: r.exitCode, out: r.exitCode === 0 ? r.stdout : r.stderr, ms: Date.now() - t0 };
}

async function eventsOf(type: string, sandboxId: string): Promise<RoostEvent[]> {
  const out: RoostEvent[] = [];
  const ac = new AbortController();
  const timer = setTimeout(() => ac.abort(), 300);
  try {
    for await (const e of runtime.events({ after: 0, signal: ac.signal })) if (e.type === type && e.sandboxId === sandboxId) out.push(e);
  } catch {
    // aborted: the backlog has been read
  } finally {
    clearTimeout(timer);
  }
  return out;
}

beforeAll(async () => {
  hostServer = createServer((req, res) => res.end(`host says hi to ${req.socket.remoteAddress}`));
  await new Promise<void>((r) => hostServer.listen(0, '127.0.0.1', r));
  hostPort = (hostServer.address() as AddressInfo).port;
  runtime = await home.runtime();
  web = await home.create({ ports: ['127.0.0.1::80'] });
  await sh(web, 'mkdir -p /tmp/www && echo hello from the guest > /tmp/www/index.html && busybox httpd -p 80 -h /tmp/www');
  snap = await web.snapshot({ name: 'net-src' });
});

afterAll(async () => {
  await home.cleanup();
  hostServer?.close();
});

describe('the guest network', () => {
  it('configures eth0 from the host: address, MTU, route and resolver', async () => {
    const out = await sh(web, 'cat /sys/class/net/eth0/address /sys/class/net/eth0/mtu; ip -4 addr show eth0; ip route; cat /etc/resolv.conf');
    expect(out).toContain(web.info.network!.mac!);
    expect(out).toContain('65520');
    expect(out).toContain('inet 10.0.2.15/24');
    expect(out).toContain('default via 10.0.2.2');
    expect(out).toContain('nameserver 10.0.2.3');
    expect(web.info.network).toMatchObject({ mode: 'user', address: '10.0.2.15', gateway: '10.0.2.2', egress: { default: 'allow' } });
  });

  it('has no NIC with network none, and refuses ports there', async () => {
    const bare = await home.create({ network: 'none' });
    const nics = (await sh(bare, 'ls /sys/class/net')).split(/\s+/);
    expect(nics).toContain('lo');
    expect(nics).not.toContain('eth0');
    expect(bare.info.network).toMatchObject({ mode: 'none', ports: [] });
    await expectCode(bare.ports.add('8080:80'), 'INVALID_STATE', /no network/);
    await expectCode(runtime.create({ network: 'none', ports: ['80'] }), 'INVALID_ARGUMENT', /network 'none'/);
    await bare.remove({ force: true });
  });
});

describe('published ports', () => {
  it('reaches busybox httpd in the guest through the forwarded port, then not after removal', async () => {
    const [binding] = await web.ports.list();
    expect(binding).toMatchObject({ guestPort: 80, hostIp: '127.0.0.1', protocol: 'tcp' });
    expect(binding!.hostPort).toBeGreaterThan(0);
    expect(web.getHost(80)).toBe(`127.0.0.1:${binding!.hostPort}`);
    expect(await httpGet(web.getHost(80))).toBe('hello from the guest\n');

    await web.ports.remove(binding!.hostPort);
    expect(await web.ports.list()).toEqual([]);
    await expectCode(() => web.getHost(80), 'NOT_FOUND', /not published/);
    const refused = await new Promise<string>((resolve) => {
      const s = connect(binding!.hostPort, '127.0.0.1');
      s.on('connect', () => resolve('connected'));
      s.on('error', (e: NodeJS.ErrnoException) => resolve(e.code ?? 'error'));
    });
    expect(refused).toBe('ECONNREFUSED');

    // Added back while running, on a port the test names.
    const again = await web.ports.add(`127.0.0.1:${binding!.hostPort}:80`);
    expect(again.hostPort).toBe(binding!.hostPort);
    expect(await httpGet(web.getHost(80))).toBe('hello from the guest\n');
    expect((await eventsOf('port.removed', web.id)).length).toBeGreaterThanOrEqual(1);
    expect((await eventsOf('port.added', web.id)).length).toBeGreaterThanOrEqual(1);
  });

  it('carries many concurrent connections and a large body both ways', async () => {
    await sh(web, 'dd if=/dev/urandom of=/tmp/www/big bs=1M count=8 2>/dev/null; md5sum /tmp/www/big > /tmp/big.md5');
    const bodies = await Promise.all(Array.from({ length: 16 }, () => httpGet(web.getHost(80))));
    expect(new Set(bodies)).toEqual(new Set(['hello from the guest\n']));
    const res = await fetch(`http://${web.getHost(80)}/big`, { signal: AbortSignal.timeout(60_000) });
    const body = Buffer.from(await res.arrayBuffer());
    expect(body.length).toBe(8 * 2 ** 20);
    const { createHash } = await import('node:crypto');
    expect((await sh(web, 'cat /tmp/big.md5')).split(' ')[0]).toBe(createHash('md5').update(body).digest('hex'));
    const stats = await web.networkStats();
    expect(stats.bytesOut).toBeGreaterThan(8 * 2 ** 20);
    expect(stats.packetsOut).toBeGreaterThan(0);
    expect(stats.bytesIn).toBeGreaterThan(0);
  });

  it('says so when the host port is in use, or the spec is bad', async () => {
    const squatter = createTcpServer();
    await new Promise<void>((r) => squatter.listen(0, '127.0.0.1', r));
    const taken = (squatter.address() as AddressInfo).port;
    try {
      await expectCode(web.ports.add(`127.0.0.1:${taken}:80`), 'UNAVAILABLE', new RegExp(`127.0.0.1:${taken}/tcp is already in use.*127.0.0.1::80`));
      // A create with the port in use fails before a VM boots.
      await expectCode(runtime.create({ ports: [`${taken}:80`] }), 'UNAVAILABLE', /already in use/);
    } finally {
      squatter.close();
    }
    await expectCode(web.ports.add('99999:80'), 'INVALID_ARGUMENT', /from 1 to 65535/);
    await expectCode(web.ports.add('localhost:80:80'), 'INVALID_ARGUMENT', /IPv4/);
    await expectCode(web.ports.remove(1), 'NOT_FOUND', /does not publish host port 1/);
  });
});

describe('egress', () => {
  it('keeps the host out under allow-all: the gateway is the host, which needs a rule', async () => {
    const r = await guestFetch(web);
    expect(r.exitCode).not.toBe(0);
    expect(r.out).toMatch(/No route to host|unreachable/i);
  });

  it('denies everything under deny-all, fast, counted and reported', async () => {
    const copy = await runtime.create({ snapshot: snap.id, egress: 'deny' });
    try {
      // A user-mode copy keeps the snapshot's MAC (its network is its own; bridge copies get new ones).
      expect(copy.info.network!.mac).toBe(web.info.network!.mac);
      expect((await sh(copy, 'cat /sys/class/net/eth0/address')).trim()).toBe(copy.info.network!.mac);
      const r = await guestFetch(copy);
      expect(r.exitCode).not.toBe(0);
      expect(r.out).toMatch(/No route to host/i);
      expect(r.ms).toBeLessThan(3_000);
      // Names resolve to nothing under deny-all.
      const dns = await copy.commands.run('nslookup example.com 10.0.2.3');
      expect(dns.exitCode).not.toBe(0);
      const stats = await copy.networkStats();
      expect(stats.denied).toBeGreaterThanOrEqual(2);
      const events = await eventsOf('network.denied', copy.id);
      expect(events.some((e) => (e.data as { protocol?: string; port?: number }).protocol === 'tcp' && (e.data as { port?: number }).port === hostPort)).toBe(
        true,
      );
    } finally {
      await copy.remove({ force: true });
    }
  });

  it('denies under an allowlist that does not name the host, allows under one that does', async () => {
    const without = await runtime.create({ snapshot: snap.id, egress: { default: 'deny', allow: ['10.0.0.0/8', '*:53/udp', 'example.com:443'] } });
    const withHost = await runtime.create({ snapshot: snap.id, egress: { default: 'deny', allow: [`host:${hostPort}`] } });
    try {
      const denied = await guestFetch(without);
      expect(denied.exitCode).not.toBe(0);
      expect(denied.out).toMatch(/No route to host/i);
      const allowed = await guestFetch(withHost);
      expect(allowed.out).toBe('host says hi to 127.0.0.1');
      expect(allowed.exitCode).toBe(0);
      // The rule names a port: another port of the host stays closed.
      const other = await guestFetch(withHost, `http://10.0.2.2:${hostPort === 65535 ? 1 : hostPort + 1}/`);
      expect(other.out).toMatch(/No route to host/i);
      // The host's name resolves for a sandbox allowed to reach the host.
      expect((await guestFetch(withHost, `http://host.roost.internal:${hostPort}/`)).out).toBe('host says hi to 127.0.0.1');
    } finally {
      await Promise.all([without.remove({ force: true }), withHost.remove({ force: true })]);
    }
  });

  it('refuses an invalid policy before anything boots', async () => {
    await expectCode(runtime.create({ egress: { default: 'deny', allow: ['10.0.0.1/8'] } }), 'INVALID_ARGUMENT', /did you mean 10.0.0.0\/8/);
    await expectCode(runtime.create({ egress: { default: 'deny', allow: ['::1'] } }), 'INVALID_ARGUMENT', /IPv6|IPv4/);
  });
});

// Last: it closes this file's runtime (the sandboxes above die with it).
describe('a runtime that attaches to a running detached sandbox', () => {
  it("serves its network again: published ports and the guest's own connections", async () => {
    const kept = await home.create({ detached: true, ports: ['127.0.0.1::80'], egress: { default: 'deny', allow: [`host:${hostPort}`] } });
    await sh(kept, 'mkdir -p /tmp/www && echo kept > /tmp/www/index.html && busybox httpd -p 80 -h /tmp/www');
    const where = kept.getHost(80);
    expect(await httpGet(where)).toBe('kept\n');
    await home.release();
    // Nobody serves the port or the guest's network while no runtime holds the home.
    const refused = await fetch(`http://${where}/`).then(
      () => 'answered',
      (e: Error & { cause?: { code?: string } }) => e.cause?.code ?? 'error',
    );
    expect(refused).toBe('ECONNREFUSED');
    runtime = await home.runtime();
    const again = home.track(await runtime.get(kept.id));
    expect(again.status).toBe('running');
    expect(again.getHost(80)).toBe(where);
    expect(await httpGet(where)).toBe('kept\n');
    const out = await guestFetch(again);
    expect(out.out).toBe('host says hi to 127.0.0.1');
    await again.remove({ force: true });
  });
});
