import { spawn } from 'node:child_process';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { PoolInfo, PoolsApi } from '@roost/api';
import { RoostClient } from '@roost/client';
import type { Runtime, Sandbox } from '@roost/core';
import { serve } from '@roost/server';
import { alive, eventually, expectCode, qemusOf, ROOST_BIN, runRoost, TestHome, type CliResult } from './helpers.js';

/*
 * Warm pools with real VMs (issue 19): what a handed-over sandbox's guest
 * sees (its own randomness, the host's clock, its own disk), refills, the
 * fallback restore, a pool outliving its runtime, removal, and the REST,
 * SDK and CLI faces. Every pool restores one snapshot, taken once.
 */

const home = new TestHome();
let runtime: Runtime;
const SNAPSHOT = 'pool-base';

async function sh(s: Sandbox, cmd: string): Promise<string> {
  const r = await s.commands.run(cmd);
  if (r.exitCode !== 0) throw new Error(`${cmd}: exit ${r.exitCode}: ${r.stderr}`);
  return r.stdout;
}

/** Waits until the pool has `ready` members and no restore in flight. */
async function filled(pools: PoolsApi, name: string, ready: number, timeoutMs = 60_000): Promise<PoolInfo> {
  let info!: PoolInfo;
  await eventually(
    async () => {
      info = await pools.get(name);
      if (info.lastError) throw new Error(`pool ${name}: ${info.lastError.code}: ${info.lastError.message}`);
      return info.ready === ready && info.starting === 0;
    },
    timeoutMs,
    `pool ${name} with ${ready} ready`,
  );
  return info;
}

beforeAll(async () => {
  runtime = await home.runtime();
  const src = await home.create();
  await sh(src, 'echo from-snapshot > /root/base');
  await src.snapshot({ name: SNAPSHOT });
  await src.remove({ force: true });
});

afterAll(async () => {
  await home.cleanup();
});

describe('warm pools', () => {
  it('hands over 3 independent sandboxes, each with its own randomness, the host clock and its own disk, then refills', async () => {
    const created = await runtime.pools.create({ name: 'three', snapshot: SNAPSHOT, size: 3 });
    expect(created).toMatchObject({ name: 'three', snapshot: SNAPSHOT, size: 3, handedOver: 0 });
    const full = await filled(runtime.pools, 'three', 3);
    // Paused members' clocks stand still: a hand-over must set it.
    await new Promise((r) => setTimeout(r, 4_000));
    const got: Sandbox[] = [];
    try {
      for (let i = 0; i < 3; i++) got.push(await runtime.create({ pool: 'three', labels: { n: String(i) } }));
      expect(got.map((s) => s.info.pool)).toEqual(Array(3).fill({ name: 'three', warm: true }));
      expect(got.map((s) => s.id).sort()).toEqual([...full.members].sort());
      const seen = await Promise.all(
        got.map(async (s, i) => {
          expect(s.info).toMatchObject({ status: 'running', detached: false, labels: { n: String(i) }, execs: 0 });
          const [clock, random, base] = (await sh(s, 'date +%s; head -c 16 /dev/urandom | od -An -x; cat /root/base')).split('\n');
          expect(Math.abs(Number(clock) - Date.now() / 1000), `guest clock ${clock}`).toBeLessThan(3);
          expect(base).toBe('from-snapshot');
          await sh(s, `echo ${s.id} > /root/own-${i}`);
          return random!.trim();
        }),
      );
      expect(new Set(seen).size).toBe(3);
      for (const [i, s] of got.entries()) {
        expect(await sh(s, 'ls /root | grep own- || true')).toBe(`own-${i}\n`);
      }
      const after = await filled(runtime.pools, 'three', 3);
      expect(after.members.filter((id) => got.some((s) => s.id === id))).toEqual([]);
      expect(after).toMatchObject({ handedOver: 3, fallbacks: 0, lastError: null });
    } finally {
      await Promise.allSettled(got.map((s) => s.remove({ force: true })));
      await runtime.pools.remove('three');
    }
  });

  it('an empty pool restores instead, and says so', async () => {
    await runtime.pools.create({ name: 'empty', snapshot: SNAPSHOT, size: 0 });
    try {
      await using sb = await runtime.create({ pool: 'empty' });
      expect(sb.info.pool).toEqual({ name: 'empty', warm: false });
      expect(await sh(sb, 'cat /root/base')).toBe('from-snapshot\n');
      expect(await runtime.pools.get('empty')).toMatchObject({ ready: 0, starting: 0, fallbacks: 1, handedOver: 0 });
    } finally {
      await runtime.pools.remove('empty');
    }
  });

  it('survives its runtime: the next one adopts the members and tops the pool up', async () => {
    await runtime.pools.create({ name: 'lasting', snapshot: SNAPSHOT, size: 2 });
    try {
      const before = await filled(runtime.pools, 'lasting', 2);
      const pids = await Promise.all(before.members.map(async (id) => (await runtime.get(id)).vmPid!));
      await home.release();
      // A member dies while no runtime owns the home; the other waits, paused.
      process.kill(pids[0]!, 'SIGKILL');
      await eventually(() => !alive(pids[0]!), 5_000, 'the member to die');
      runtime = await home.runtime();
      const after = await filled(runtime.pools, 'lasting', 2);
      expect(after.members).toContain(before.members[1]);
      expect(after.members).not.toContain(before.members[0]);
      expect((await runtime.get(before.members[1]!)).vmPid).toBe(pids[1]);
      await using sb = await runtime.create({ pool: 'lasting' });
      expect(sb.info.pool?.warm).toBe(true);
      expect(await sh(sb, 'cat /root/base')).toBe('from-snapshot\n');
    } finally {
      await runtime.pools.remove('lasting');
    }
  });

  it('removing a pool leaves no member sandbox and no QEMU', async () => {
    await runtime.pools.create({ name: 'gone', snapshot: SNAPSHOT, size: 2 });
    const info = await filled(runtime.pools, 'gone', 2);
    const pids = await Promise.all(info.members.map(async (id) => (await runtime.get(id)).vmPid!));
    // One more restore in flight when the pool goes.
    await runtime.pools.resize('gone', 3);
    await runtime.pools.remove('gone');
    expect(await runtime.list({ labels: ['roost.pool'] })).toEqual([]);
    for (const pid of pids) expect(alive(pid)).toBe(false);
    expect(qemusOf(home.root)).toEqual([]);
    await expectCode(runtime.pools.get('gone'), 'NOT_FOUND');
  });

  it('refuses bad input with errors that name it', async () => {
    await expectCode(runtime.pools.create({ name: 'bad', template: 'no-such-template', size: 1 }), 'NOT_FOUND', /no-such-template/);
    await expectCode(runtime.pools.create({ name: 'bad', snapshot: 'no-such-snapshot', size: 1 }), 'NOT_FOUND', /no-such-snapshot/);
    await runtime.pools.create({ name: 'taken', snapshot: SNAPSHOT, size: 0 });
    try {
      await expectCode(runtime.pools.create({ name: 'taken', snapshot: SNAPSHOT, size: 0 }), 'ALREADY_EXISTS', /taken/);
      await expectCode(runtime.create({ pool: 'taken', image: 'alpine' }), 'INVALID_ARGUMENT', /^image: a sandbox from a pool/);
      await expectCode(runtime.create({ pool: 'no-such-pool' }), 'NOT_FOUND', /no pool no-such-pool/);
    } finally {
      await runtime.pools.remove('taken');
    }
  });
});

describe('warm pools through the daemon and the SDK', () => {
  it('creates, lists, resizes and removes a pool, and hands a sandbox over, over REST', async () => {
    const daemon = await serve({ runtime });
    const client = new RoostClient({ home: home.root });
    try {
      const created = await client.pools.create({ name: 'remote', snapshot: SNAPSHOT, size: 1, maxSize: 2 });
      expect(created).toMatchObject({ name: 'remote', size: 1, maxSize: 2 });
      const full = await filled(client.pools, 'remote', 1);
      expect(await client.pools.list()).toMatchObject([{ name: 'remote', ready: 1 }]);
      await expectCode(client.pools.resize('remote', 3), 'INVALID_ARGUMENT', /maxSize/);
      await expectCode(client.create({ pool: 'remote', cpus: 2 }), 'INVALID_ARGUMENT', /^cpus: /);
      const sb = await client.create({ pool: 'remote', env: { GREETING: 'hi' } });
      try {
        expect(sb.id).toBe(full.members[0]);
        expect(sb.info).toMatchObject({ pool: { name: 'remote', warm: true }, detached: false });
        expect((await sb.commands.run('echo $GREETING; cat /root/base')).stdout).toBe('hi\nfrom-snapshot\n');
      } finally {
        await sb.remove({ force: true });
      }
      expect((await client.pools.resize('remote', 2)).size).toBe(2);
      await filled(client.pools, 'remote', 2);
      await client.pools.remove('remote');
      await expectCode(client.pools.get('remote'), 'NOT_FOUND');
    } finally {
      await client.close();
      await daemon.close();
    }
  });
});

describe('roost pool', () => {
  it('creates a pool, lists it, runs from it and removes it (embedded: each command owns the home while it runs)', async () => {
    await home.release();
    // No daemon started for the pool: this is the embedded path.
    const roost = (args: string[]): Promise<CliResult> => runRoost(args, { env: { ...home.env, ROOST_AUTO_DAEMON: '0' } });
    const ok = async (args: string[]): Promise<string> => {
      const r = await roost(args);
      expect(r, `roost ${args.join(' ')}`).toMatchObject({ code: 0 });
      return r.stdout;
    };
    expect(await ok(['pool', 'create', 'cli', '--snapshot', SNAPSHOT, '--size', '2'])).toBe('cli  2/2 ready\n');
    expect(await ok(['pool', 'ls'])).toMatch(
      /^NAME\s+SOURCE\s+READY\s+SIZE\s+MAX\s+STARTING\s+HANDED OVER\s+FALLBACKS\s+CREATED\s+LAST ERROR\ncli\s+snapshot pool-base\s+2\s+2\s+32\s+0\s+0\s+0\s/,
    );
    // Members are not the user's sandboxes: `ps` leaves them out, `ps -a` marks them.
    expect(await ok(['ps', '-q'])).toBe('');
    expect((await ok(['ps', '-a'])).match(/ready \(pool cli\)/g)).toHaveLength(2);
    const run = await roost(['run', '--pool', 'cli', '--', 'cat', '/root/base']);
    expect(run).toMatchObject({ code: 0, stdout: 'from-snapshot\n' });
    const detached = (await ok(['run', '-d', '--pool', 'cli'])).trim();
    expect(JSON.parse(await ok(['inspect', '--json', detached]))).toMatchObject({ pool: { name: 'cli', warm: true }, detached: true });
    expect(await ok(['inspect', detached])).toMatch(/Pool:\s+cli \(handed over warm\)/);
    await ok(['rm', '-f', detached]);
    const refused = await roost(['run', '--pool', 'cli', '--cpus', '2', '--', 'true']);
    expect(refused.code).toBe(125);
    expect(refused.stderr).toMatch(/cpus: a sandbox from a pool/);
    expect(JSON.parse(await ok(['pool', 'ls', '--json']))).toMatchObject([{ name: 'cli', handedOver: 2 }]);
    expect(await ok(['pool', 'resize', 'cli', '1'])).toBe('cli  1/1 ready\n');
    expect(await ok(['pool', 'rm', 'cli'])).toBe('cli\n');
    expect(await ok(['pool', 'ls', '-q'])).toBe('');
    expect(await ok(['ps', '-a', '-q'])).toBe('');
    expect(qemusOf(home.root)).toEqual([]);
  });

  it('starts a daemon to keep the pool filled when none runs, and says so', async () => {
    const roost = (args: string[]): Promise<CliResult> => runRoost(args, { env: home.env });
    await home.release();
    try {
      const created = await roost(['pool', 'create', 'auto', '--snapshot', SNAPSHOT, '-n', '1']);
      expect(created).toMatchObject({ code: 0, stdout: 'auto  1/1 ready\n' });
      expect(created.stderr).toMatch(/started a daemon/);
      expect((await roost(['serve', 'status'])).code).toBe(0);
      expect(await roost(['pool', 'rm', 'auto'])).toMatchObject({ code: 0 });
    } finally {
      expect((await roost(['serve', 'stop', '--force'])).code).toBe(0);
    }
    expect((await roost(['serve', 'status'])).code).toBe(3);
  });

  it('goes through a running roost serve, which refuses to stop while it keeps a pool filled (unless --force)', async () => {
    const roost = (args: string[]): Promise<CliResult> => runRoost(args, { env: home.env });
    await home.release();
    const daemon = spawn(process.execPath, [ROOST_BIN, 'serve'], { env: home.env, stdio: 'ignore' });
    try {
      await eventually(async () => (await roost(['serve', 'status'])).code === 0, 30_000, 'roost serve answering');
      expect(await roost(['pool', 'create', 'served', '--snapshot', SNAPSHOT, '-n', '1'])).toMatchObject({ code: 0, stdout: 'served  1/1 ready\n' });
      const refused = await roost(['serve', 'stop']);
      expect(refused.code).toBe(125);
      expect(refused.stderr).toMatch(/keeps pool served, which nothing keeps filled/);
      expect(await roost(['serve', 'stop', '--force'])).toMatchObject({ code: 0 });
      await eventually(() => daemon.exitCode !== null, 30_000, 'roost serve to exit');
      // Its member outlived it, detached: an embedded command finds it ready.
      expect(JSON.parse((await roost(['pool', 'ls', '--json'])).stdout)).toMatchObject([{ name: 'served', ready: 1 }]);
      expect(await roost(['pool', 'rm', 'served'])).toMatchObject({ code: 0 });
    } finally {
      if (daemon.exitCode === null) daemon.kill('SIGKILL');
    }
  });
});
