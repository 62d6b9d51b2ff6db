import { afterAll, describe, expect, it } from 'vitest';
import { isRoostError, type RoostEvent } from '@roost/api';
import { RoostClient } from '@roost/client';
import { Runtime } from '@roost/core';
import { serve } from '@roost/server';
import { alive, eventually, expectCode, qemusOf, runRoost, TestHome } from './helpers.js';

/*
 * Sandbox lifetimes (`lifetimeMs`, `setLifetime`, `expiresAt`): the runtime
 * that owns the home ends a sandbox when its time comes, as its record says
 * (removed, stopped or paused), embedded and through the daemon, and a
 * runtime opening the home ends what expired while none was open. Real QEMU.
 */

const home = new TestHome();

afterAll(() => home.cleanup());

async function eventsOf(runtime: Runtime, id: string): Promise<RoostEvent[]> {
  const out: RoostEvent[] = [];
  const ac = new AbortController();
  setTimeout(() => ac.abort(), 200);
  for await (const e of runtime.events({ after: 0, signal: ac.signal })) if (e.sandboxId === id) out.push(e);
  return out;
}

describe('sandbox lifetimes', () => {
  it('removes a sandbox when its lifetime ends, with a sandbox.expired event', async () => {
    const runtime = await home.runtime();
    const sb = await runtime.create({ lifetimeMs: 1_500, timeoutMs: 60_000 });
    expect(sb.info.onExpiry).toBe('remove');
    const left = Date.parse(sb.info.expiresAt!) - Date.now();
    expect(left).toBeGreaterThan(0);
    expect(left).toBeLessThanOrEqual(1_500);
    const pid = sb.vmPid!;
    await eventually(
      () =>
        runtime.get(sb.id).then(
          () => false,
          () => true,
        ),
      15_000,
      'the sandbox removed',
    );
    expect(alive(pid)).toBe(false);
    const events = (await eventsOf(runtime, sb.id)).map((e) => e.type);
    expect(events.slice(events.indexOf('sandbox.expired'))).toEqual(['sandbox.expired', 'sandbox.exited', 'sandbox.deleted']);
  });

  it('a lifetime shorter than the boot does not fail the boot: the sandbox ends once it is up', async () => {
    const runtime = await home.runtime();
    const sb = await runtime.create({ lifetimeMs: 1, onExpiry: 'stop', timeoutMs: 60_000 });
    expect(['running', 'stopping', 'stopped']).toContain(sb.status);
    await eventually(() => sb.status === 'stopped', 15_000, 'stopped once up');
    await sb.remove({ force: true });
  });

  it('setLifetime moves the end, extends only when asked, clears it; stop and pause are ends too', async () => {
    const runtime = await home.runtime();
    const sb = await runtime.create({ lifetimeMs: 60_000, timeoutMs: 60_000 });
    const first = sb.info.expiresAt!;
    // Extend only: an earlier end is not taken.
    expect((await sb.setLifetime(1_000, { extendOnly: true })).expiresAt).toBe(first);
    const later = await sb.setLifetime(120_000, { extendOnly: true });
    expect(Date.parse(later.expiresAt!)).toBeGreaterThan(Date.parse(first));
    // Cleared: no end, and nothing outlasts none.
    expect((await sb.setLifetime(null)).expiresAt).toBeNull();
    expect((await sb.setLifetime(5_000, { extendOnly: true })).expiresAt).toBeNull();
    await expectCode(sb.setLifetime(0), 'INVALID_ARGUMENT', /lifetimeMs/);
    await expectCode(runtime.create({ onExpiry: 'stop' }), 'INVALID_ARGUMENT', /onExpiry.*lifetimeMs/);

    await sb.setLifetime(500, { onExpiry: 'pause' });
    await eventually(() => sb.status === 'paused', 15_000, 'paused at the end of its lifetime');
    expect(sb.info.expiresAt).toBeNull();
    await sb.resume();
    expect((await sb.commands.run('echo still here')).stdout).toBe('still here\n');
    await sb.setLifetime(500, { onExpiry: 'stop' });
    await eventually(() => sb.status === 'stopped', 15_000, 'stopped at the end of its lifetime');
    await sb.remove({ force: true });
  });

  it('a runtime opening the home ends what expired while none was open', async () => {
    let runtime = await home.runtime();
    const sb = await runtime.create({ lifetimeMs: 1_500, detached: true, timeoutMs: 60_000 });
    const id = sb.id;
    await home.release();
    await new Promise((r) => setTimeout(r, 2_000));
    // The VM ran on, detached, past its end: nobody was there to end it.
    expect(qemusOf(home.root).length).toBe(1);
    runtime = await home.runtime();
    await eventually(
      () =>
        runtime.get(id).then(
          () => false,
          () => true,
        ),
      15_000,
      'removed once the home was opened',
    );
    await eventually(() => qemusOf(home.root).length === 0, 10_000, 'its QEMU gone');
  });

  it('through the daemon: create with a lifetime, set it, and the daemon ends the sandbox', async () => {
    const runtime = await home.runtime();
    const daemon = await serve({ runtime, socket: `${home.root}/expiry.sock` });
    const client = new RoostClient({ host: `unix://${daemon.socketPath}`, token: daemon.token });
    try {
      const sb = await client.create({ lifetimeMs: 60_000, onExpiry: 'remove', timeoutMs: 60_000 });
      expect(sb.info).toMatchObject({ onExpiry: 'remove', expiresAt: expect.any(String) as string });
      const set = await sb.setLifetime(700);
      expect(Date.parse(set.expiresAt!) - Date.now()).toBeLessThanOrEqual(700);
      await expectCode(sb.setLifetime(-1), 'INVALID_ARGUMENT');
      await eventually(
        () =>
          client.get(sb.id).then(
            () => false,
            (e: unknown) => isRoostError(e, 'NOT_FOUND'),
          ),
        15_000,
        'removed by the daemon',
      );
      // The CLI: `roost run -d --lifetime`, and an action it does not know.
      const host = ['--host', `unix://${daemon.socketPath}`];
      const run = await runRoost([...host, 'run', '-d', '--lifetime', '3000', '--on-expiry', 'stop', '--', 'sleep', '600'], { env: home.env });
      expect(run.code, run.stderr).toBe(0);
      const id = run.stdout.trim();
      expect((await client.get(id)).info.onExpiry).toBe('stop');
      await eventually(async () => (await client.get(id)).status === 'stopped', 15_000, 'stopped by the daemon');
      await (await client.get(id)).remove({ force: true });
      const bad = await runRoost([...host, 'run', '-d', '--lifetime', '800', '--on-expiry', 'explode', '--', 'true'], { env: home.env });
      expect(bad.code).toBe(2);
      expect(bad.stderr).toMatch(/--on-expiry/);
    } finally {
      await client.close();
      await daemon.close();
    }
  });
});
