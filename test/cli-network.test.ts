import { spawn } from 'node:child_process';
import net from 'node:net';
import { afterAll, describe, expect, it } from 'vitest';
import { serve, type ServeHandle } from '@roost/server';
import { eventually, freePort, httpGet, ROOST_BIN, runRoost, TestHome, type CliResult } from './helpers.js';

/*
 * Networking in the CLI: the flags of `roost run` (-p, --network, --egress,
 * --allow, --deny) and their errors, `roost port ls|add|rm`, and the ports
 * and network in `roost ps` and `roost inspect`. First embedded (the CLI
 * process itself serves the published port while `roost run` runs), then
 * against a daemon found on the home's socket (which serves the ports of a
 * `run -d` sandbox after the CLI exits). Two boots: one per face.
 * Traffic stays on 127.0.0.1.
 */

const home = new TestHome();
let daemon: ServeHandle | undefined;

afterAll(async () => {
  await daemon?.close();
  await home.cleanup();
});

function roost(args: string[]): Promise<CliResult> {
  return runRoost(args, { env: home.env });
}

/** Runs the CLI; it must succeed. */
async function ok(args: string[]): Promise<string> {
  const r = await roost(args);
  expect(r, `roost ${args.join(' ')}`).toMatchObject({ code: 0 });
  return r.stdout;
}

/** The whole of what a TCP server at 127.0.0.1:port sends until it closes ('' when the connection failed or was reset). */
function readAll(port: number): Promise<string> {
  return new Promise((resolve) => {
    let data = '';
    const s = net.connect({ host: '127.0.0.1', port });
    s.setEncoding('utf8');
    s.on('data', (c: string) => (data += c));
    s.on('error', () => resolve(data));
    s.on('close', () => resolve(data));
  });
}

describe('roost run network flags (embedded)', () => {
  it('refuses bad flags before anything starts, naming the flag (exit 125)', async () => {
    const cidr = await roost(['run', '--allow', '10.0.0.1/8', '--', 'true']);
    expect(cidr).toMatchObject({ code: 125, stdout: '' });
    expect(cidr.stderr).toBe('roost: --allow 10.0.0.1/8: "10.0.0.1/8" has bits set past its prefix length: did you mean 10.0.0.0/8?\n');
    const deny = await roost(['run', '--deny', 'example.com:https', '--', 'true']);
    expect(deny.code).toBe(125);
    expect(deny.stderr).toMatch(/^roost: --deny example\.com:https: egress rule "example\.com:https" has port "https"/);
    const port = await roost(['run', '-p', '99999:80', '--', 'true']);
    expect(port.code).toBe(125);
    expect(port.stderr).toMatch(/^roost: -p 99999:80: .*"99999" is not a port/);
    const none = await roost(['run', '--network', 'none', '-p', '80', '--', 'true']);
    expect(none.code).toBe(125);
    expect(none.stderr).toMatch(/--network none gives the sandbox no NIC/);
    const mode = await roost(['run', '--network', 'nat', '--', 'true']);
    expect(mode.code).toBe(2);
    expect(mode.stderr).toMatch(/--network.*nat.*none, user, bridge/);
    expect(JSON.parse(await ok(['ps', '-a', '--json']))).toEqual([]);
  });

  it('run -p 127.0.0.1::80 publishes the guest port on a free host port while the command runs, and says which', async () => {
    // The guest answers one connection through the published port, then the command ends.
    const child = spawn(
      process.execPath,
      [ROOST_BIN, 'run', '-p', '127.0.0.1::80', '--egress', 'deny', '--', 'sh', '-c', 'echo hello through the port | busybox nc -l -p 80'],
      {
        env: home.env,
        stdio: ['ignore', 'pipe', 'pipe'],
      },
    );
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (c: Buffer) => (stdout += c.toString()));
    child.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
    const exited = new Promise<number | null>((r) => child.on('close', r));
    try {
      await eventually(() => /roost: published 127\.0\.0\.1:\d+ -> 80\/tcp\n/.test(stderr) || child.exitCode !== null, 90_000, 'the published port announced');
      const port = Number(/roost: published 127\.0\.0\.1:(\d+) -> 80\/tcp\n/.exec(stderr)?.[1]);
      expect(port, stderr).toBeGreaterThan(0);
      // Until nc listens in the guest, the connection is reset: try again.
      let got = '';
      await eventually(async () => (got = await readAll(port)) !== '', 30_000, 'an answer through the published port');
      expect(got).toBe('hello through the port\n');
      expect(await exited).toBe(0);
      expect(stdout).toBe('');
    } finally {
      child.kill('SIGKILL');
    }
    expect(JSON.parse(await ok(['ps', '-a', '--json']))).toEqual([]);
  }, 180_000);
});

describe('roost port, ps and inspect (against a daemon)', () => {
  let id: string;
  let published: number;

  it('run -d -p with an egress policy: the daemon serves the port after the CLI exits', async () => {
    daemon = await serve({ home: home.root });
    const r = await roost([
      'run',
      '-d',
      '-p',
      '127.0.0.1::80',
      '--allow',
      'host:8080',
      '--deny',
      '10.0.0.0/8',
      '--',
      'sh',
      '-c',
      'mkdir -p /tmp/www && echo served > /tmp/www/index.html && busybox httpd -p 80 -h /tmp/www',
    ]);
    expect(r.code, r.stderr).toBe(0);
    id = r.stdout.trim();
    expect(id).toMatch(/^[0-9a-f]{12}$/);
    // With a daemon, nothing to warn about.
    expect(r.stderr).toBe('');

    const ls = await ok(['port', 'ls', id]);
    expect(ls).toMatch(/^80\/tcp -> 127\.0\.0\.1:\d+\n$/);
    published = Number(ls.trim().split(':').pop());
    expect(await ok(['port', id])).toBe(ls);
    expect(await ok(['port', 'ls', id, '80'])).toBe(`127.0.0.1:${published}\n`);
    expect(await ok(['port', 'ls', id, '80/tcp'])).toBe(`127.0.0.1:${published}\n`);
    expect(JSON.parse(await ok(['port', 'ls', '--json', id]))).toEqual([{ guestPort: 80, hostPort: published, hostIp: '127.0.0.1', protocol: 'tcp' }]);
    const missing = await roost(['port', 'ls', id, '81']);
    expect(missing.code).toBe(125);
    expect(missing.stderr).toMatch(/does not publish port 81/);

    let body: string | null = null;
    await eventually(async () => (body = await httpGet(published)) !== null, 30_000, 'httpd answering through the published port');
    expect(body).toBe('served\n');
  }, 180_000);

  it('port add and rm; ps shows the ports; inspect shows the network and its counters', async () => {
    const fixed = await freePort();
    const added = await ok(['port', 'add', id, `${fixed}:80`, '127.0.0.1::53/udp']);
    expect(added).toMatch(new RegExp(`^80/tcp -> 127\\.0\\.0\\.1:${fixed}\\n53/udp -> 127\\.0\\.0\\.1:\\d+\\n$`));
    const udpPort = Number(/53\/udp -> 127\.0\.0\.1:(\d+)/.exec(added)![1]);
    expect(await httpGet(fixed)).toBe('served\n');

    const ps = await ok(['ps']);
    expect(ps.split('\n')[0]).toMatch(/^ID\s+IMAGE\s+STATUS\s+CPUS\s+MEMORY\s+ACCEL\s+CREATED\s+DETACHED\s+PORTS\s+LABELS$/);
    expect(ps).toContain(`127.0.0.1:${published}->80/tcp, 127.0.0.1:${fixed}->80/tcp, 127.0.0.1:${udpPort}->53/udp`);

    const inspect = await ok(['inspect', id]);
    expect(inspect).toMatch(/\nNetwork:\s+user\n/);
    expect(inspect).toMatch(/\nAddress:\s+10\.0\.2\.15\/24, gateway 10\.0\.2\.2, dns 10\.0\.2\.3\n/);
    expect(inspect).toMatch(/\nMAC:\s+02:52(:[0-9a-f]{2}){4}\n/);
    expect(inspect).toContain(`127.0.0.1:${published}->80/tcp, 127.0.0.1:${fixed}->80/tcp, 127.0.0.1:${udpPort}->53/udp`);
    expect(inspect).toMatch(/\nEgress:\s+default deny, allow host:8080, deny 10\.0\.0\.0\/8\n/);
    const traffic = /\nTraffic:\s+in \S+ \((\d+) packets\), out \S+ \((\d+) packets\), (\d+) denied\n/.exec(inspect);
    expect(traffic, inspect).not.toBeNull();
    expect(Number(traffic![1])).toBeGreaterThan(0);
    expect(JSON.parse(await ok(['inspect', '--json', id]))).toMatchObject({
      network: { mode: 'user', egress: { default: 'deny', allow: ['host:8080'], deny: ['10.0.0.0/8'] } },
    });

    expect(await ok(['port', 'rm', id, String(fixed), `127.0.0.1:${udpPort}/udp`])).toBe(`${fixed}\n127.0.0.1:${udpPort}/udp\n`);
    expect(await ok(['port', 'ls', id])).toBe(`80/tcp -> 127.0.0.1:${published}\n`);
    expect(await httpGet(fixed)).toBeNull();
    expect(await httpGet(published)).toBe('served\n');
  });

  it('port errors: not published, malformed, a host port another program holds (exit 125, the reason on stderr)', async () => {
    const gone = await roost(['port', 'rm', id, '1']);
    expect(gone.code).toBe(125);
    expect(gone.stderr).toMatch(/does not publish host port 1\/tcp/);
    const bad = await roost(['port', 'rm', id, '80/sctp']);
    expect(bad.code).toBe(125);
    expect(bad.stderr).toMatch(/"80\/sctp" is not a published host port/);
    const badSpec = await roost(['port', 'add', id, '1:2:3:4']);
    expect(badSpec.code).toBe(125);
    expect(badSpec.stderr).toMatch(/port mapping "1:2:3:4" is malformed/);

    const holder = net.createServer();
    await new Promise<void>((r) => holder.listen(0, '127.0.0.1', r));
    const held = (holder.address() as net.AddressInfo).port;
    try {
      const inUse = await roost(['port', 'add', id, `127.0.0.1:${held}:80`]);
      expect(inUse.code).toBe(125);
      expect(inUse.stderr).toBe(
        `roost: host port 127.0.0.1:${held}/tcp is already in use by another program: choose another port, or publish 127.0.0.1::80 for a free one\n`,
      );
    } finally {
      await new Promise((r) => holder.close(r));
    }
    expect(await ok(['port', 'ls', id])).toBe(`80/tcp -> 127.0.0.1:${published}\n`);
    await ok(['rm', '-f', id]);
  });
});
