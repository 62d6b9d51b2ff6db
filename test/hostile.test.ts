import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Sandbox } from '@roost/core';
import { alive, eventually, TestHome } from './helpers.js';

// A guest program that seizes the agent's port and writes garbage must cost
// the host nothing: the host process stays up, other sandboxes keep working,
// and the bad sandbox is reported failed and its VM ended.
const home = new TestHome();
let bystander: Sandbox;
let hostileBinary: Buffer;

beforeAll(async () => {
  const out = join(tmpdir(), `roost-hostile-${process.pid}`);
  execFileSync('musl-gcc', ['-std=c11', '-static', '-Os', '-Wall', '-Wextra', '-Werror', '-o', out, fileURLToPath(new URL('./fixtures/hostile.c', import.meta.url))]);
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
