import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { connect } from 'node:net';
import { readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Sandbox } from '@roost/core';
import { encodeFrame, encodeHostHello, MessageType, VERSION } from '@roost/protocol';
import { alive, eventually, TestHome } from './helpers.js';

// A guest program that seizes the agent's port and writes garbage must cost
// the host nothing: the host process stays up, other sandboxes keep working,
// and the bad sandbox is reported failed and its VM ended.
const home = new TestHome();
let bystander: Sandbox;
let hostileBinary: Buffer;

beforeAll(async () => {
  const out = join(tmpdir(), `roost-hostile-${process.pid}`);
  execFileSync('musl-gcc', [
    '-std=c11',
    '-static',
    '-Os',
    '-Wall',
    '-Wextra',
    '-Werror',
    '-o',
    out,
    fileURLToPath(new URL('./fixtures/hostile.c', import.meta.url)),
  ]);
  hostileBinary = readFileSync(out);
  bystander = await home.create();
});
afterAll(() => home.cleanup());

describe('a hostile guest', () => {
  for (const mode of ['random', 'oversized', 'credit']) {
    it(`writing ${mode} frames to the agent port fails only its own sandbox`, async () => {
      const victim = await home.create();
      const pid = victim.info.pid!;
      await victim.commands.run('cat > /tmp/hostile && chmod +x /tmp/hostile', { stdin: hostileBinary });
      // A command in flight when the guest turns hostile fails with it.
      const inFlight = victim.commands.run('sleep 30');
      const attack = victim.commands.run('/tmp/hostile', { args: [mode] }).catch((e: unknown) => e);

      await expect(inFlight).rejects.toMatchObject({ code: 'AGENT' });
      await eventually(() => victim.status === 'failed', 10_000, 'sandbox marked failed');
      expect(victim.info.reason).toMatch(/protocol|went away/);
      await eventually(() => !alive(pid), 10_000, 'hostile VM killed');
      expect(await attack).toMatchObject({ code: expect.stringMatching(/AGENT|INVALID_STATE/) });
      await expect(victim.commands.run('true')).rejects.toMatchObject({ code: 'INVALID_STATE' });

      // The host and the other sandbox carry on.
      const r = await bystander.commands.run('echo still here');
      expect(r.stdout).toBe('still here\n');
    });
  }

  it('the agent survives garbage from the host side and serves the next client', async () => {
    const sb = await home.create({ detached: true });
    const uptime = async (s: Sandbox) => Number((await s.commands.run('cut -d" " -f1 /proc/uptime')).stdout);
    const before = await uptime(sb);
    sb.disconnect();
    const garbage = [
      randomBytes(256 << 10),
      Buffer.from([0xff, 0xff, 0xff, 0xff, 0, 0, 0, 1, 0x10]), // a 4 GiB frame
      encodeFrame(7, MessageType.EXEC, randomBytes(300)), // EXEC with a random TLV, before HELLO
      encodeHostHello({ version: VERSION, flags: 0, timeNs: 0n, entropy: Buffer.alloc(0), nonce: Buffer.from('x') }),
      encodeFrame(9, MessageType.EXEC, Buffer.from([0, 0x20, 0xff, 0xff, 0xff, 0xff])), // ARG claiming 4 GiB
      encodeFrame(0, 0x7f, randomBytes(10)), // an unknown type
      encodeFrame(12345, MessageType.DATA, Buffer.from([0, 1, 2, 3])), // stdin for a stream never opened
      randomBytes(64 << 10),
    ];
    await new Promise<void>((resolve, reject) => {
      const sock = connect(join(sb.dir, 'agent.sock'), () => {
        for (const g of garbage) sock.write(g);
        sock.end(() => setTimeout(() => (sock.destroy(), resolve()), 500));
      });
      sock.on('data', () => {});
      sock.on('error', reject);
    });
    const again = home.track(await Sandbox.get(sb.id, { home: home.root }));
    expect((await again.commands.run('echo alive')).stdout).toBe('alive\n');
    // The same boot: the agent (PID 1) neither died nor rebooted the guest.
    expect(await uptime(again)).toBeGreaterThan(before);
    expect(again.info.pid).toBe(sb.info.pid);
    await again.kill();
  });

  it('flooding the serial console is capped on the host disk and the guest runs on', async () => {
    const previous = process.env.ROOST_LOG_LIMIT_BYTES;
    process.env.ROOST_LOG_LIMIT_BYTES = String(64 << 10);
    let sb: Sandbox;
    try {
      sb = await home.create();
    } finally {
      if (previous === undefined) delete process.env.ROOST_LOG_LIMIT_BYTES;
      else process.env.ROOST_LOG_LIMIT_BYTES = previous;
    }
    // Four times the cap, written by root straight to the console device.
    await sb.commands.run('head -c 262144 /dev/zero | tr "\\0" x > /dev/console');
    const { readFileSync, statSync } = await import('node:fs');
    // The log keeper writes up to the cap (the head of the flood, as it arrives) and drops the rest.
    await eventually(() => statSync(sb.consoleLogPath).size === 64 << 10, 5_000, 'console log filled to the cap');
    expect(readFileSync(sb.consoleLogPath, 'latin1')).toContain('x'.repeat(1000));
    expect((await sb.commands.run('echo still running')).stdout).toBe('still running\n');
    expect(sb.status).toBe('running');
    await sb.kill();
  });

  it('flooding output is bounded by flow control, not host memory', async () => {
    // 64 MiB of output that nobody reads for a while: the guest must wait for credit.
    const h = await bystander.commands.start('head -c 67108864 /dev/zero');
    const before = process.memoryUsage().rss;
    await new Promise((r) => setTimeout(r, 1500));
    const grown = process.memoryUsage().rss - before;
    expect(grown).toBeLessThan(32 << 20);
    let bytes = 0;
    for await (const c of h.stdout) bytes += c.length;
    expect(bytes).toBe(64 << 20);
    expect((await h.wait()).exitCode).toBe(0);
  }, 120_000);
});
