import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { RoostClient, type RemoteSandbox } from '@roost/client';
import { eventually, ROOST_BIN, TestHome } from './helpers.js';

// Bridge mode for real: a daemon runs inside a network namespace this test
// creates, so its bridge, TAP devices, NAT and egress rules live (and die)
// there; traffic never leaves it. The test talks to the daemon over its unix
// socket in the home (a file: reachable from any namespace).
const NS = `roost-br-${process.pid}`;
const BRIDGE = 'roostbr0';
const SUBNET = '10.89.0.0/24';
const GATEWAY = '10.89.0.1';
const home = new TestHome();
let daemon: ChildProcess | null = null;
let client: RoostClient;
let hostServer: ChildProcess | null = null;

function inNs(args: string[]): { code: number; out: string } {
  const r = spawnSync('ip', ['netns', 'exec', NS, ...args], { encoding: 'utf8', timeout: 20_000 });
  return { code: r.status ?? -1, out: `${r.stdout}${r.stderr}` };
}

async function sh(s: RemoteSandbox, cmd: string): Promise<string> {
  const r = await s.commands.run(cmd);
  if (r.exitCode !== 0) throw new Error(`${cmd}: exit ${r.exitCode}: ${r.stdout}${r.stderr}`);
  return r.stdout;
}

function leasesInDb(): number {
  const db = new Database(join(home.root, 'roost.db'), { readonly: true, fileMustExist: true });
  try {
    return (db.prepare('SELECT count(*) AS n FROM leases').get() as { n: number }).n;
  } finally {
    db.close();
  }
}

beforeAll(async () => {
  const add = spawnSync('ip', ['netns', 'add', NS], { encoding: 'utf8' });
  if (add.status !== 0) throw new Error(`ip netns add ${NS}: ${add.stderr}`);
  inNs(['ip', 'link', 'set', 'lo', 'up']);
  await home.release();
  let stderr = '';
  daemon = spawn('ip', ['netns', 'exec', NS, process.execPath, ROOST_BIN, 'serve', '--max-concurrent-creates', '24'], {
    env: { ...home.env, ROOST_BRIDGE: BRIDGE, ROOST_BRIDGE_SUBNET: SUBNET },
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  daemon.stderr!.on('data', (c: Buffer) => (stderr += c.toString()));
  client = new RoostClient({ home: home.root });
  await eventually(
    async () => {
      if (daemon!.exitCode !== null) throw new Error(`roost serve exited ${daemon!.exitCode}: ${stderr}`);
      if (!existsSync(join(home.root, 'api-token'))) return false;
      return client.list().then(
        () => true,
        () => false,
      );
    },
    20_000,
    'the daemon in the namespace answering',
  );
});

afterAll(async () => {
  try {
    for (const info of await client.list().catch(() => [])) await (await client.get(info.id)).remove({ force: true }).catch(() => {});
    await client.close();
  } finally {
    hostServer?.kill('SIGKILL');
    if (daemon && daemon.exitCode === null) {
      daemon.kill('SIGTERM');
      await new Promise((r) => daemon!.once('exit', r));
    }
    await home.cleanup();
    spawnSync('ip', ['netns', 'del', NS]);
  }
});

describe('bridge mode', () => {
  it('gives two sandboxes leased addresses on the bridge, and they reach each other', async () => {
    const [a, b] = await Promise.all([client.create({ network: 'bridge', ports: ['127.0.0.1::80'] }), client.create({ network: 'bridge' })]);
    try {
      for (const s of [a, b]) {
        expect(s.info.network).toMatchObject({ mode: 'bridge', bridge: BRIDGE, gateway: GATEWAY, dns: GATEWAY, prefix: 24 });
        expect(s.info.network!.address).toMatch(/^10\.89\.0\.\d+$/);
        expect(s.info.network!.address).not.toBe(GATEWAY);
      }
      expect(a.info.network!.address).not.toBe(b.info.network!.address);
      expect(a.info.network!.mac).not.toBe(b.info.network!.mac);
      expect(await sh(a, 'ip -4 addr show eth0')).toContain(`inet ${a.info.network!.address}/24`);

      await sh(a, 'mkdir -p /tmp/www && echo hello from a > /tmp/www/index.html && busybox httpd -p 80 -h /tmp/www');
      expect(await sh(b, `wget -q -O - http://${a.info.network!.address}/`)).toBe('hello from a\n');
      // The host (the namespace) reaches the guest by its address, as getHost says, and through the published port.
      expect(a.getHost(8080)).toBe(`${a.info.network!.address}:8080`);
      expect(inNs(['busybox', 'wget', '-q', '-O', '-', `http://${a.info.network!.address}/`]).out).toBe('hello from a\n');
      expect(inNs(['busybox', 'wget', '-q', '-O', '-', `http://${a.getHost(80)}/`]).out).toBe('hello from a\n');
      const stats = await a.networkStats();
      expect(stats.packetsIn).toBeGreaterThan(0);
      expect(stats.bytesOut).toBeGreaterThan(0);
      // The bridge, the TAPs and NAT are in the namespace, not on this host.
      expect(inNs(['ip', '-o', 'link', 'show', 'master', BRIDGE]).out).toContain(`rt-${a.id}`);
      expect(inNs(['iptables-save', '-t', 'nat']).out).toContain(SUBNET);
      expect(spawnSync('ip', ['link', 'show', BRIDGE]).status).not.toBe(0);

      // A copy restored from a's snapshot has its own lease and MAC, and the guest was told: its httpd
      // (restored from memory) answers b on the new address.
      await a.snapshot({ name: 'bridged' });
      const copy = await client.create({ snapshot: 'bridged' });
      try {
        expect(copy.info.network!.address).not.toBe(a.info.network!.address);
        expect(copy.info.network!.mac).not.toBe(a.info.network!.mac);
        expect(await sh(copy, 'ip -4 addr show eth0; cat /sys/class/net/eth0/address')).toContain(`inet ${copy.info.network!.address}/24`);
        expect(await sh(b, `wget -q -O - http://${copy.info.network!.address}/`)).toBe('hello from a\n');
      } finally {
        await copy.remove({ force: true });
        await client.snapshots.remove('bridged');
      }
    } finally {
      await Promise.all([a.remove({ force: true }), b.remove({ force: true })]);
    }
    expect(inNs(['ip', '-o', 'link', 'show', 'master', BRIDGE]).out).not.toContain('rt-');
  });

  it('enforces egress to the host with iptables: denied fast and counted, allowed by a host rule', async () => {
    const www = join(home.root, 'host-www');
    mkdirSync(www, { recursive: true });
    writeFileSync(join(www, 'index.html'), 'host page\n');
    hostServer = spawn('ip', ['netns', 'exec', NS, 'busybox', 'httpd', '-f', '-p', `${GATEWAY}:8099`, '-h', www], { stdio: 'ignore' });
    await eventually(() => inNs(['busybox', 'wget', '-q', '-O', '-', `http://${GATEWAY}:8099/`]).out === 'host page\n', 10_000, 'the host server');
    const [open, closed] = await Promise.all([
      client.create({ network: 'bridge', egress: { default: 'deny', allow: ['host:8099'] } }),
      client.create({ network: 'bridge' }),
    ]);
    try {
      expect(await sh(open, `wget -q -O - http://${GATEWAY}:8099/`)).toBe('host page\n');
      const t0 = Date.now();
      const r = await closed.commands.run(`wget -q -O - http://${GATEWAY}:8099/`);
      expect(r.exitCode).not.toBe(0);
      expect(r.stdout + r.stderr).toMatch(/No route to host|unreachable|refused/i);
      expect(Date.now() - t0).toBeLessThan(5_000);
      expect((await closed.networkStats()).denied).toBeGreaterThanOrEqual(1);
      // Peers on the bridge are governed by the sender's policy too: the deny-all sandbox cannot open
      // a connection to a peer, while the peer reaches it (its replies are part of the peer's connection).
      await sh(closed, 'mkdir -p /tmp/www && echo peer > /tmp/www/index.html && busybox httpd -p 80 -h /tmp/www');
      await sh(open, 'mkdir -p /tmp/www && echo locked > /tmp/www/index.html && busybox httpd -p 80 -h /tmp/www');
      const toPeer = await open.commands.run(`wget -O - http://${closed.info.network!.address}/`);
      expect(toPeer.exitCode).not.toBe(0);
      expect(toPeer.stderr).toMatch(/No route to host/);
      expect(await sh(closed, `wget -q -O - http://${open.info.network!.address}/`)).toBe('locked\n');
    } finally {
      await Promise.all([open.remove({ force: true }), closed.remove({ force: true })]);
      hostServer.kill('SIGKILL');
      hostServer = null;
    }
  });

  it('leases 20 distinct addresses to 20 concurrent creates, and frees them all on removal', async () => {
    const made = await Promise.all(Array.from({ length: 20 }, () => client.create({ network: 'bridge', timeoutMs: 180_000 })));
    try {
      const addresses = made.map((s) => s.info.network!.address!);
      expect(new Set(addresses).size).toBe(20);
      expect(new Set(made.map((s) => s.info.network!.mac)).size).toBe(20);
      expect(leasesInDb()).toBe(20);
    } finally {
      await Promise.all(made.map((s) => s.remove({ force: true })));
    }
    expect(leasesInDb()).toBe(0);
    expect(inNs(['ip', '-o', 'link', 'show', 'master', BRIDGE]).out).not.toContain('rt-');
  }, 300_000);
});
