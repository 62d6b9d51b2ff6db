import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { createSocket } from 'node:dgram';
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { isRoostError } from '../errors.js';
import {
  allowLearned,
  applyEgress,
  attachToBridge,
  checkBridgePrivileges,
  createTap,
  deleteTap,
  deniedCount,
  ensureBridge,
  pruneLearned,
  removeEgress,
  serveBridgeDns,
  tapName,
  tapStats,
  teardownBridge,
  type BridgeSandbox,
} from './bridge.js';
import { egressRules, MAX_LEARNED_RULES } from './iptables.js';
import { EgressFilter } from './policy.js';

/*
 * Bridge plumbing against the real kernel, inside network namespaces this
 * file creates and deletes: HOST plays the host (bridge, iptables,
 * ebtables), GUEST a sandbox on the bridge (a veth pair stands in for the
 * TAP, so real packets flow), PEER another sandbox on the same bridge,
 * OUTSIDE the rest of the world. Nothing touches the namespace the tests
 * run in, except a DNS socket on 127.0.0.1.
 */

const isRoot = process.getuid?.() === 0;
const HOST = `roost-bt-${process.pid}`;
const GUEST = `${HOST}-g`;
const PEER = `${HOST}-p`;
const OUTSIDE = `${HOST}-o`;
const NAMESPACES = [HOST, GUEST, PEER, OUTSIDE];
const BRIDGE = 'roostbt0';
const SUBNET = '10.77.0.0/24';
const GATEWAY = '10.77.0.1';
const OUTSIDE_ADDRESS = '192.0.2.1';
const sandbox: BridgeSandbox = { id: '0123456789ab', tap: 'rt-0123456789ab', address: '10.77.0.2', mac: '02:52:0a:4d:00:02', bridge: BRIDGE };
const peer: BridgeSandbox = { id: 'abcdef012345', tap: 'rt-abcdef012345', address: '10.77.0.3', mac: '02:52:0a:4d:00:03', bridge: BRIDGE };
/** br_netfilter is a kernel module: loaded (or built in), its sysctls are in every namespace. */
const hasBrNetfilter = existsSync('/proc/sys/net/bridge/bridge-nf-call-iptables');
const net = { netns: HOST };
const children: ChildProcess[] = [];

function run(ns: string, cmd: string, ...args: string[]): string {
  return execFileSync('ip', ['netns', 'exec', ns, cmd, ...args], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
}

/** The namespace's iptables as a comparable text: no timestamps, no counters. */
function iptablesSave(): string {
  return run(HOST, 'iptables-save')
    .split('\n')
    .filter((l) => !l.startsWith('#'))
    .map((l) => l.replace(/\[\d+:\d+\]/, '[0:0]'))
    .join('\n');
}

function duplicateRules(save: string): string[] {
  const rules = save.split('\n').filter((l) => l.startsWith('-A '));
  return rules.filter((l, i) => rules.indexOf(l) !== i);
}

/** Starts a node script inside a namespace; resolves once it prints its first line. */
async function startIn(ns: string, script: string, ...args: string[]): Promise<ChildProcess> {
  const child = spawn('ip', ['netns', 'exec', ns, process.execPath, '-e', script, ...args], { stdio: ['ignore', 'pipe', 'inherit'] });
  children.push(child);
  await new Promise<void>((resolve, reject) => {
    child.stdout!.once('data', () => resolve());
    child.once('exit', (code) => reject(new Error(`${script.slice(0, 60)}... exited with ${code}`)));
  });
  return child;
}

/** Servers that answer each connection with the address it came from, then close. */
const SERVER = `
  const net = require('node:net');
  const [address, ...ports] = process.argv.slice(1);
  let listening = 0;
  for (const port of ports) {
    net.createServer((s) => s.end(s.remoteAddress)).listen(Number(port), address, () => {
      if (++listening === ports.length) console.log('ready');
    });
  }
`;

interface ConnectResult {
  ok: boolean;
  code?: string;
  data?: string;
  ms: number;
}

/** A TCP connection from the guest (or from the namespace `opts.from`). */
function connectFromGuest(host: string, port: number, opts: { localAddress?: string; timeoutMs?: number; from?: string } = {}): ConnectResult {
  const script = `
    const net = require('node:net');
    const [host, port, timeout, local] = process.argv.slice(1);
    const started = Date.now();
    const done = (r) => { console.log(JSON.stringify({ ...r, ms: Date.now() - started })); process.exit(0); };
    const s = net.connect({ host, port: Number(port), ...(local ? { localAddress: local } : {}) });
    let data = '';
    s.setTimeout(Number(timeout), () => done({ ok: false, code: 'TIMEOUT' }));
    s.on('data', (d) => (data += d));
    s.on('end', () => done({ ok: true, data }));
    s.on('error', (e) => done({ ok: false, code: e.code }));
  `;
  const out = run(opts.from ?? GUEST, process.execPath, '-e', script, host, String(port), String(opts.timeoutMs ?? 3000), opts.localAddress ?? '');
  return JSON.parse(out) as ConnectResult;
}

function udpFromGuest(host: string, port: number): void {
  const script = `
    const s = require('node:dgram').createSocket('udp4');
    s.bind(() => {
      s.setBroadcast(true);
      s.send(Buffer.from('x'), Number(process.argv[2]), process.argv[1], () => setTimeout(() => s.close(), 100));
    });
  `;
  run(GUEST, process.execPath, '-e', script, host, String(port));
}

/** A namespace playing a sandbox: `port` (a veth end in HOST, standing in for the TAP) attached to the bridge as a TAP is. */
async function addGuest(ns: string, guest: BridgeSandbox): Promise<void> {
  run(HOST, 'ip', 'link', 'add', guest.tap, 'type', 'veth', 'peer', 'name', 'eth0');
  run(HOST, 'ip', 'link', 'set', 'eth0', 'netns', ns);
  await attachToBridge(guest.tap, BRIDGE, net);
  run(ns, 'ip', 'link', 'set', 'eth0', 'address', guest.mac!);
  run(ns, 'ip', 'addr', 'add', `${guest.address}/24`, 'dev', 'eth0');
  run(ns, 'ip', 'link', 'set', 'eth0', 'up');
  run(ns, 'ip', 'route', 'add', 'default', 'via', GATEWAY);
}

function thrown(fn: () => unknown): unknown {
  try {
    fn();
  } catch (e) {
    return e;
  }
  throw new Error('expected a throw');
}

function deleteNamespaces(): void {
  for (const ns of NAMESPACES) {
    try {
      execFileSync('ip', ['netns', 'del', ns], { stdio: 'ignore' });
    } catch {
      // not there
    }
  }
}

describe('egressRules', () => {
  it('orders deny, link-local, allow, learned, default; the host only for DNS and host rules', () => {
    const { egress, host } = egressRules(
      '0123456789ab',
      {
        default: 'deny',
        allow: ['169.254.169.254:80/tcp', '*:443/tcp', 'host:8000-8999', '10.0.0.0/8', 'example.com'],
        deny: ['10.1.0.0/16:22', 'host:8080/tcp'],
      },
      GATEWAY,
    );
    const reject = '-j REJECT --reject-with icmp-admin-prohibited';
    expect(egress.map((r) => r.join(' '))).toEqual([
      `-d 10.1.0.0/16 -p tcp -m multiport --dports 22 ${reject}`,
      `-d 10.1.0.0/16 -p udp -m multiport --dports 22 ${reject}`,
      '-d 169.254.169.254/32 -p tcp -m multiport --dports 80 -j ACCEPT',
      `-d 169.254.0.0/16 ${reject}`,
      '-p tcp -m multiport --dports 443 -j ACCEPT',
      '-d 10.0.0.0/8 -j ACCEPT',
      '-j ROOST-L-0123456789ab',
      reject,
    ]);
    expect(host.map((r) => r.join(' '))).toEqual([
      `-d ${GATEWAY}/32 -p udp --dport 53 -j ACCEPT`,
      `-d ${GATEWAY}/32 -p tcp --dport 53 -j ACCEPT`,
      `-d 10.1.0.0/16 -p tcp -m multiport --dports 22 ${reject}`,
      `-d 10.1.0.0/16 -p udp -m multiport --dports 22 ${reject}`,
      `-p tcp -m multiport --dports 8080 ${reject}`,
      '-p tcp -m multiport --dports 8000:8999 -j ACCEPT',
      '-p udp -m multiport --dports 8000:8999 -j ACCEPT',
      reject,
    ]);
    expect(egressRules('0123456789ab', { default: 'allow', allow: [], deny: [] }, GATEWAY).egress.at(-1)).toEqual(['-j', 'ACCEPT']);
  });

  it('splits long port lists into multiport rules of at most 15 ports', () => {
    const ports = Array.from({ length: 20 }, (_, i) => String(1000 + i)).join(',');
    const { egress } = egressRules('0123456789ab', { default: 'deny', allow: [`1.2.3.4:${ports}/udp`], deny: [] }, GATEWAY);
    const lists = egress.filter((r) => r.includes('multiport')).map((r) => r[r.indexOf('--dports') + 1]!.split(','));
    expect(lists.map((l) => l.length)).toEqual([15, 5]);
  });

  it('refuses ids that would make bad chain names', () => {
    expect(
      isRoostError(
        thrown(() => egressRules('no such id!', { default: 'allow', allow: [], deny: [] }, GATEWAY)),
        'INVALID_ARGUMENT',
      ),
    ).toBe(true);
    expect(() => tapName('XYZ')).toThrow(/12 hex digits/);
    expect(tapName('0123456789ab')).toBe('rt-0123456789ab');
  });
});

describe.skipIf(!isRoot)('bridge plumbing (in network namespaces)', () => {
  let pristine: string;

  beforeAll(async () => {
    deleteNamespaces();
    for (const ns of NAMESPACES) execFileSync('ip', ['netns', 'add', ns]);
    for (const ns of NAMESPACES) run(ns, 'ip', 'link', 'set', 'lo', 'up');
    pristine = iptablesSave();
    // Off for the namespace, as on a host without Docker: the bridge's own option must be what filters its frames.
    if (hasBrNetfilter) run(HOST, 'sh', '-c', 'echo 0 > /proc/sys/net/bridge/bridge-nf-call-iptables');
    // OUTSIDE: 192.0.2.1, reached from HOST by a veth; HOST routes to it (and NATs the sandboxes' traffic).
    run(HOST, 'ip', 'link', 'add', 'o0', 'type', 'veth', 'peer', 'name', 'o1');
    run(HOST, 'ip', 'link', 'set', 'o1', 'netns', OUTSIDE);
    run(HOST, 'ip', 'addr', 'add', '192.0.2.254/24', 'dev', 'o0');
    run(HOST, 'ip', 'link', 'set', 'o0', 'up');
    run(OUTSIDE, 'ip', 'addr', 'add', `${OUTSIDE_ADDRESS}/24`, 'dev', 'o1');
    run(OUTSIDE, 'ip', 'link', 'set', 'o1', 'up');
    run(HOST, 'ip', 'route', 'add', 'default', 'via', OUTSIDE_ADDRESS); // like a real host: everything routes somewhere
    await startIn(OUTSIDE, SERVER, OUTSIDE_ADDRESS, '8080', '8081');
  });

  afterAll(() => {
    for (const child of children) if (child.exitCode === null) child.kill('SIGKILL');
    deleteNamespaces();
  });

  it('checks privileges: root passes, another user is told what to do', () => {
    expect(() => checkBridgePrivileges()).not.toThrow();
    // The module, in a process of user nobody (no capabilities), run from its TypeScript source through the repository's source hooks.
    const source = fileURLToPath(new URL('./bridge.ts', import.meta.url));
    const registerTs = new URL('../../../../scripts/ts-register.mjs', import.meta.url).href;
    const script = `import(process.argv[1]).then((m) => { try { m.checkBridgePrivileges(); console.log('{}'); } catch (e) { console.log(JSON.stringify({ code: e.code, message: e.message })); } })`;
    const out = execFileSync(process.execPath, ['--import', registerTs, '-e', script, source], { uid: 65534, gid: 65534, encoding: 'utf8' });
    expect(JSON.parse(out)).toEqual({
      code: 'PERMISSION_DENIED',
      message:
        "bridge networking needs root (CAP_NET_ADMIN) to create the bridge and TAP devices: run as root (e.g. `sudo roost serve`), or use network mode 'user'",
    });
  });

  it('sets up the bridge once, however often it runs, and repairs a half-done setup', async () => {
    expect(await ensureBridge({ name: BRIDGE, subnet: SUBNET, gateway: GATEWAY }, net)).toEqual({ peersFiltered: hasBrNetfilter });
    if (hasBrNetfilter) {
      expect(run(HOST, 'ip', '-d', 'link', 'show', 'dev', BRIDGE)).toMatch(/nf_call_iptables 1/);
      expect(run(HOST, 'cat', '/proc/sys/net/bridge/bridge-nf-call-iptables').trim()).toBe('0'); // other bridges keep what they had
    }
    const first = iptablesSave();
    expect(first).toContain(`-A POSTROUTING -j ROOST-NAT-${BRIDGE}`);
    expect(first).toContain(`-A ROOST-NAT-${BRIDGE} -s ${SUBNET} ! -o ${BRIDGE} -j MASQUERADE`);
    expect(first).toContain(`-A FORWARD -i ${BRIDGE} -j ROOST-FWD-${BRIDGE}`);
    expect(first).toContain(`-A ROOST-FWD-${BRIDGE} -m pkttype ! --pkt-type unicast -j DROP`);
    expect(first).toContain(`-A INPUT -i ${BRIDGE} -j ROOST-IN-${BRIDGE}`);
    await ensureBridge({ name: BRIDGE, subnet: SUBNET, gateway: GATEWAY }, net);
    expect(iptablesSave()).toBe(first);
    expect(duplicateRules(first)).toEqual([]);
    // A crash halfway: some rules and the address gone, a stale address and MASQUERADE of another subnet there.
    run(HOST, 'iptables', '-t', 'nat', '-D', 'POSTROUTING', '-j', `ROOST-NAT-${BRIDGE}`);
    run(HOST, 'iptables', '-D', `ROOST-FWD-${BRIDGE}`, '-j', 'REJECT', '--reject-with', 'icmp-admin-prohibited');
    run(HOST, 'iptables', '-t', 'nat', '-A', `ROOST-NAT-${BRIDGE}`, '-s', '10.66.0.0/16', '!', '-o', BRIDGE, '-j', 'MASQUERADE');
    run(HOST, 'ip', 'addr', 'del', `${GATEWAY}/24`, 'dev', BRIDGE);
    run(HOST, 'ip', 'addr', 'add', '10.66.0.1/16', 'dev', BRIDGE);
    await ensureBridge({ name: BRIDGE, subnet: SUBNET, gateway: GATEWAY }, net);
    expect(iptablesSave()).toBe(first);
    expect(run(HOST, 'ip', '-4', '-o', 'addr', 'show', 'dev', BRIDGE)).toMatch(new RegExp(`inet ${GATEWAY}/24 .*\\n?$`));
    expect(run(HOST, 'ip', '-4', '-o', 'addr', 'show', 'dev', BRIDGE).trim().split('\n')).toHaveLength(1);
    expect(run(HOST, 'cat', '/proc/sys/net/ipv4/ip_forward').trim()).toBe('1');
    expect(run(HOST, 'ip', '-o', 'link', 'show', 'dev', BRIDGE)).toMatch(/<[^>]*\bUP\b[^>]*>.*link\/ether 02:52:0a:4d:00:01 /); // up (no carrier until a port is)
  });

  it('refuses to take over an interface that is not a bridge', async () => {
    run(HOST, 'ip', 'link', 'add', 'notabr0', 'type', 'veth', 'peer', 'name', 'notabr1');
    const e = await ensureBridge({ name: 'notabr0', subnet: SUBNET, gateway: GATEWAY }, net).catch((err: unknown) => err);
    expect(isRoostError(e, 'INVALID_STATE')).toBe(true);
    expect((e as Error).message).toMatch(/not a bridge/);
    const t = await createTap('notabr0', BRIDGE, net).catch((err: unknown) => err);
    expect(isRoostError(t, 'INVALID_STATE')).toBe(true);
    run(HOST, 'ip', 'link', 'del', 'notabr0');
  });

  it('creates and deletes TAP devices idempotently', async () => {
    const tap = tapName('abcdefabcdef');
    await createTap(tap, BRIDGE, net);
    await createTap(tap, BRIDGE, net);
    expect(run(HOST, 'ip', '-o', 'link', 'show', 'dev', BRIDGE)).toContain('link/ether 02:52:0a:4d:00:01 '); // a port does not change it
    const shown = run(HOST, 'ip', '-d', 'link', 'show', 'dev', tap);
    expect(shown).toMatch(new RegExp(`master ${BRIDGE}`));
    expect(shown).toMatch(/tun type tap/);
    expect(shown).toMatch(hasBrNetfilter ? /isolated off/ : /isolated on/);
    expect(run(HOST, 'ip', '-o', 'link', 'show', 'type', 'tun').match(new RegExp(tap, 'g'))).toHaveLength(1);
    expect(tapStats(tap, net)).toEqual({ bytesIn: 0, packetsIn: 0, bytesOut: 0, packetsOut: 0, denied: 0 });
    await deleteTap(tap, net);
    await deleteTap(tap, net);
    expect(run(HOST, 'ip', '-o', 'link', 'show')).not.toContain(tap);
    expect(tapStats(tap, net)).toEqual({ bytesIn: 0, packetsIn: 0, bytesOut: 0, packetsOut: 0, denied: 0 });
  });

  it('enforces a deny-by-default policy on real packets, counting every rejection', async () => {
    // The guest: a veth whose bridge end stands in for the TAP (a TAP needs a VM behind it to carry packets).
    await addGuest(GUEST, sandbox);
    await startIn(HOST, SERVER, GATEWAY, '9000');

    await applyEgress(sandbox, { default: 'deny', allow: [`${OUTSIDE_ADDRESS}:8080/tcp`], deny: [] }, GATEWAY, net);
    const applied = iptablesSave();
    await applyEgress(sandbox, { default: 'deny', allow: [`${OUTSIDE_ADDRESS}:8080/tcp`], deny: [] }, GATEWAY, net);
    expect(iptablesSave()).toBe(applied);
    expect(duplicateRules(applied)).toEqual([]);
    expect(applied.split('\n').filter((l) => l.includes('-j ROOST-E-0123456789ab'))).toEqual([
      `-A ROOST-FWD-${BRIDGE} -s ${sandbox.address}/32 -i ${BRIDGE} -j ROOST-E-0123456789ab`,
    ]);
    expect(await deniedCount(sandbox, net)).toBe(0);

    // Allowed: through the NAT (the server sees the host's address on its side).
    expect(connectFromGuest(OUTSIDE_ADDRESS, 8080)).toMatchObject({ ok: true, data: '192.0.2.254' });
    // Denied: the connection fails at once with "no route to host" (ICMP administratively prohibited).
    const denied = connectFromGuest(OUTSIDE_ADDRESS, 8081);
    expect(denied).toMatchObject({ ok: false, code: 'EHOSTUNREACH' });
    expect(denied.ms).toBeLessThan(2000);
    // The host, beyond DNS, needs a host rule.
    expect(connectFromGuest(GATEWAY, 9000)).toMatchObject({ ok: false, code: 'EHOSTUNREACH' });
    udpFromGuest('169.254.169.254', 80);
    expect(await deniedCount(sandbox, net)).toBe(3);
    const stats = tapStats(sandbox.tap, net);
    expect(stats.bytesOut).toBeGreaterThan(0); // the bridge port received what the guest sent
    expect(stats.packetsIn).toBeGreaterThan(0);
  });

  it('replaces the policy: deny rules win, default allow does not reach link-local, host rules open the host', async () => {
    await applyEgress(sandbox, { default: 'allow', allow: ['host:9000/tcp'], deny: [`${OUTSIDE_ADDRESS}:8080`] }, GATEWAY, net);
    expect(await deniedCount(sandbox, net)).toBe(0); // counters start again with the new rules
    expect(connectFromGuest(OUTSIDE_ADDRESS, 8080)).toMatchObject({ ok: false, code: 'EHOSTUNREACH' });
    expect(connectFromGuest(OUTSIDE_ADDRESS, 8081)).toMatchObject({ ok: true, data: '192.0.2.254' });
    expect(connectFromGuest(GATEWAY, 9000)).toMatchObject({ ok: true, data: sandbox.address });
    expect(connectFromGuest('169.254.169.254', 80, { timeoutMs: 1500 })).toMatchObject({ ok: false, code: 'EHOSTUNREACH' });
    expect(await deniedCount(sandbox, net)).toBe(2);
    // One set of jumps, whatever happened before.
    expect(
      iptablesSave()
        .split('\n')
        .filter((l) => l.includes('-j ROOST-H-0123456789ab')),
    ).toHaveLength(1);
  });

  it('drops what the guest sends from an address (or MAC) that is not its own', async () => {
    run(GUEST, 'ip', 'addr', 'add', '10.77.0.99/24', 'dev', 'eth0');
    const before = await deniedCount(sandbox, net);
    expect(connectFromGuest(OUTSIDE_ADDRESS, 8081, { localAddress: '10.77.0.99', timeoutMs: 1000 })).toMatchObject({ ok: false, code: 'TIMEOUT' });
    expect(await deniedCount(sandbox, net)).toBe(before);
    run(GUEST, 'ip', 'addr', 'del', '10.77.0.99/24', 'dev', 'eth0');
    expect(connectFromGuest(OUTSIDE_ADDRESS, 8081)).toMatchObject({ ok: true });
    // The right address from another MAC: dropped too (the neighbour entry must be learned again, through ARP).
    run(GUEST, 'ip', 'link', 'set', 'eth0', 'address', '02:52:0a:4d:00:63');
    run(GUEST, 'ip', 'neigh', 'flush', 'dev', 'eth0');
    expect(connectFromGuest(OUTSIDE_ADDRESS, 8081, { timeoutMs: 1000 })).toMatchObject({ ok: false, code: 'TIMEOUT' });
    run(GUEST, 'ip', 'link', 'set', 'eth0', 'address', sandbox.mac!);
    expect(connectFromGuest(OUTSIDE_ADDRESS, 8081)).toMatchObject({ ok: true });
    const ebtables = run(HOST, 'ebtables', '-L');
    expect(ebtables).toContain(`-i ${sandbox.tap} -j ROOST-A-0123456789ab`);
  });

  it.skipIf(!hasBrNetfilter)('lets peers on the bridge reach each other as their own policies allow, answers included', async () => {
    await addGuest(PEER, peer);
    await startIn(GUEST, SERVER, sandbox.address, '80', '81');
    await startIn(PEER, SERVER, peer.address, '80', '81');
    await applyEgress(sandbox, { default: 'allow', allow: [], deny: [] }, GATEWAY, net);
    await applyEgress(peer, { default: 'allow', allow: [], deny: [] }, GATEWAY, net);
    // Default allow: straight to each other over the bridge, no NAT (each sees the other's own address).
    expect(connectFromGuest(peer.address, 80)).toMatchObject({ ok: true, data: sandbox.address });
    expect(connectFromGuest(sandbox.address, 81, { from: PEER })).toMatchObject({ ok: true, data: peer.address });

    // Deny all: the guest cannot open a connection to its peer (it fails at once, and is counted) ...
    await applyEgress(sandbox, { default: 'deny', allow: [], deny: [] }, GATEWAY, net);
    const denied = connectFromGuest(peer.address, 80);
    expect(denied).toMatchObject({ ok: false, code: 'EHOSTUNREACH' });
    expect(denied.ms).toBeLessThan(2000);
    expect(await deniedCount(sandbox, net)).toBe(1);
    // ... but it serves a peer whose policy allows that: its answers get through.
    expect(connectFromGuest(sandbox.address, 80, { from: PEER })).toMatchObject({ ok: true, data: peer.address });
    expect(await deniedCount(sandbox, net)).toBe(1);
    expect(await deniedCount(peer, net)).toBe(0);
    // Broadcast and multicast reach no peer, and are not counted as denied.
    const dropped = () =>
      Number(/^\s*(\d+)\s+\d+\s+DROP\b.*PKTTYPE != unicast/m.exec(run(HOST, 'iptables', '-L', `ROOST-FWD-${BRIDGE}`, '-v', '-x', '-n'))?.[1]);
    const droppedBefore = dropped();
    udpFromGuest('10.77.0.255', 9999);
    udpFromGuest('224.0.0.251', 5353);
    expect(dropped()).toBe(droppedBefore + 2);
    expect(await deniedCount(sandbox, net)).toBe(1);

    // The policy's rules reach peers: address, port and protocol.
    await applyEgress(sandbox, { default: 'deny', allow: [`${peer.address}:80/tcp`], deny: [] }, GATEWAY, net);
    expect(connectFromGuest(peer.address, 80)).toMatchObject({ ok: true, data: sandbox.address });
    expect(connectFromGuest(peer.address, 81)).toMatchObject({ ok: false, code: 'EHOSTUNREACH' });
    await applyEgress(sandbox, { default: 'allow', allow: [], deny: [`${SUBNET}:81/tcp`] }, GATEWAY, net);
    expect(connectFromGuest(peer.address, 80)).toMatchObject({ ok: true });
    expect(connectFromGuest(peer.address, 81)).toMatchObject({ ok: false, code: 'EHOSTUNREACH' });
    expect(await deniedCount(sandbox, net)).toBe(1);
    // A name rule does not open a peer: names are enforced through DNS, and peers are not in it.
    await applyEgress(sandbox, { default: 'deny', allow: ['peer.test'], deny: [] }, GATEWAY, net);
    expect(connectFromGuest(peer.address, 80)).toMatchObject({ ok: false, code: 'EHOSTUNREACH' });

    // Setting the bridge up again brings its ports in line.
    for (const tap of [sandbox.tap, peer.tap]) run(HOST, 'ip', 'link', 'set', 'dev', tap, 'type', 'bridge_slave', 'isolated', 'on');
    await ensureBridge({ name: BRIDGE, subnet: SUBNET, gateway: GATEWAY }, net);
    for (const tap of [sandbox.tap, peer.tap]) expect(run(HOST, 'ip', '-d', 'link', 'show', 'dev', tap)).toMatch(/isolated off/);
    expect(connectFromGuest(sandbox.address, 81, { from: PEER })).toMatchObject({ ok: true, data: peer.address });
    await removeEgress(peer, net);
  });

  it('lets learned addresses through until they expire, boundedly', async () => {
    await applyEgress(sandbox, { default: 'deny', allow: ['example.test:8081/tcp'], deny: [] }, GATEWAY, net);
    expect(connectFromGuest(OUTSIDE_ADDRESS, 8081)).toMatchObject({ ok: false, code: 'EHOSTUNREACH' });
    await allowLearned(sandbox, OUTSIDE_ADDRESS, [[8081, 8081]], 'tcp', 30, net);
    await allowLearned(sandbox, [OUTSIDE_ADDRESS], [[8081, 8081]], 'tcp', 120, net);
    const learned = () =>
      run(HOST, 'iptables', '-S', 'ROOST-L-0123456789ab')
        .split('\n')
        .filter((l) => l.startsWith('-A'));
    expect(learned()).toHaveLength(1); // learned again: replaced, with the later expiry
    const expiry = Number(/roost-expires=(\d+)/.exec(learned()[0]!)?.[1]);
    expect(expiry - Date.now() / 1000).toBeGreaterThan(100);
    expect(connectFromGuest(OUTSIDE_ADDRESS, 8081)).toMatchObject({ ok: true });
    expect(connectFromGuest(OUTSIDE_ADDRESS, 8080)).toMatchObject({ ok: false, code: 'EHOSTUNREACH' });
    // An expired grant goes.
    run(HOST, 'iptables', '-A', 'ROOST-L-0123456789ab', '-d', '192.0.2.7/32', '-m', 'comment', '--comment', 'roost-expires=1000', '-j', 'ACCEPT');
    expect(await pruneLearned(sandbox, net)).toBe(1);
    expect(learned()).toHaveLength(1);
    // Reapplying the policy keeps what was learned.
    await applyEgress(sandbox, { default: 'deny', allow: ['example.test:8081/tcp'], deny: [] }, GATEWAY, net);
    expect(learned()).toHaveLength(1);
    // Bounded: a flood of names keeps at most MAX_LEARNED_RULES rules.
    const many = Array.from({ length: MAX_LEARNED_RULES + 10 }, (_, i) => `198.18.${i >> 8}.${i & 255}`);
    await allowLearned(sandbox, many, undefined, 'udp', 60, net);
    expect(learned()).toHaveLength(MAX_LEARNED_RULES);
  });

  it('answers DNS for known sources, installing learned addresses before the answer', async () => {
    await applyEgress(sandbox, { default: 'deny', allow: ['example.test:8081/tcp'], deny: [] }, GATEWAY, net);
    run(HOST, 'iptables', '-F', 'ROOST-L-0123456789ab');
    const filter = new EgressFilter({ default: 'deny', allow: ['example.test:8081/tcp'], deny: [] }, { hostAddresses: [0x0a4d0001] });
    const deniedNames: string[] = [];
    let known = true;
    // The socket is in this namespace (127.0.0.1 stands in for the gateway); the rules go to HOST's iptables.
    const server = await serveBridgeDns({
      gateway: '127.0.0.1',
      port: 0,
      netns: HOST,
      resolve4: async (name) => (name === 'example.test' ? [{ address: OUTSIDE_ADDRESS, ttl: 5 }] : []),
      lookup: (source) => (known && source === '127.0.0.1' ? { filter, sandboxId: sandbox.id, onDenied: (n) => deniedNames.push(n) } : null),
    });
    try {
      const answer = await dnsQuery(server.port, 'example.test');
      expect(answer?.rcode).toBe(0);
      expect(answer?.addresses).toEqual([OUTSIDE_ADDRESS]);
      // The rule was in place when the answer came.
      expect(run(HOST, 'iptables', '-S', 'ROOST-L-0123456789ab')).toMatch(
        /-A ROOST-L-0123456789ab -d 192\.0\.2\.1\/32 -p tcp -m multiport --dports 8081 .*-j ACCEPT/,
      );
      expect(filter.check(0xc0000201, 8081, 'tcp').allowed).toBe(true);
      expect(connectFromGuest(OUTSIDE_ADDRESS, 8081)).toMatchObject({ ok: true });
      expect((await dnsQuery(server.port, 'evil.test'))?.rcode).toBe(3);
      expect(deniedNames).toEqual(['evil.test']);
      known = false;
      expect(await dnsQuery(server.port, 'example.test', 300)).toBeNull(); // not a sandbox: no answer
    } finally {
      server.close();
    }
  });

  it('tears everything down, even with sandboxes still on the bridge, and twice', async () => {
    await removeEgress(sandbox, net);
    await removeEgress(sandbox, net);
    expect(iptablesSave()).not.toContain('ROOST-E-0123456789ab');
    await applyEgress(sandbox, { default: 'allow', allow: [], deny: [] }, GATEWAY, net);
    await teardownBridge(BRIDGE, net);
    await teardownBridge(BRIDGE, net);
    const save = iptablesSave();
    expect(save).not.toContain('ROOST');
    expect(save.split('\n').filter((l) => l.startsWith('-A'))).toEqual(pristine.split('\n').filter((l) => l.startsWith('-A')));
    expect(run(HOST, 'ebtables', '-L')).not.toContain('ROOST');
    expect(run(HOST, 'ip', '-o', 'link', 'show')).not.toContain(`${BRIDGE}:`);
    // Sandboxes' chains need the bridge's chains.
    const e = await applyEgress(sandbox, { default: 'allow', allow: [], deny: [] }, GATEWAY, net).catch((err: unknown) => err);
    expect(isRoostError(e, 'INVALID_STATE')).toBe(true);
  });
});

/** Sends an A query for `name` to 127.0.0.1:port; null when nothing comes back in time. */
async function dnsQuery(port: number, name: string, timeoutMs = 3000): Promise<{ rcode: number; addresses: string[] } | null> {
  const labels = name.split('.').map((l) => Buffer.concat([Buffer.from([l.length]), Buffer.from(l)]));
  const query = Buffer.concat([Buffer.from([0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]), ...labels, Buffer.from([0, 0, 1, 0, 1])]);
  const socket = createSocket('udp4');
  try {
    const reply = await new Promise<Buffer | null>((resolve) => {
      const timer = setTimeout(() => resolve(null), timeoutMs);
      socket.on('message', (msg) => {
        clearTimeout(timer);
        resolve(msg);
      });
      socket.send(query, port, '127.0.0.1');
    });
    if (reply === null) return null;
    const rcode = reply[3]! & 0x0f;
    const count = reply.readUInt16BE(6);
    // Answers follow the question; each is a compressed name (2 bytes), type, class, ttl, length, data.
    let offset = query.length;
    const addresses: string[] = [];
    for (let i = 0; i < count; i++) {
      const length = reply.readUInt16BE(offset + 10);
      if (reply.readUInt16BE(offset + 2) === 1 && length === 4) addresses.push([...reply.subarray(offset + 12, offset + 16)].join('.'));
      offset += 12 + length;
    }
    return { rcode, addresses };
  } finally {
    socket.close();
  }
}
