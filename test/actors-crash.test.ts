import type { ChildProcess } from 'node:child_process';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import type { ActorMessageRecord } from '@roost/api';
import { RoostClient } from '@roost/client';
import { exampleModule } from './actor-modules.js';
import { eventually, startServeProcess, TestHome } from './helpers.js';

/*
 * kill -9 of `roost serve` while messages stream into an actor: every
 * message the daemon acknowledged (202) is handled exactly once after the
 * restart, none twice, and none that was not sent.
 */

const home = new TestHome();
const daemons: ChildProcess[] = [];

afterAll(async () => {
  // Only the daemons this test started, by their pid.
  for (const d of daemons) if (d.exitCode === null && d.signalCode === null) d.kill('SIGKILL');
  await home.cleanup();
});

function client(): RoostClient {
  return new RoostClient({ home: home.root, host: `unix://${join(home.root, 'roost.sock')}` });
}

function startDaemon(): Promise<ChildProcess> {
  return startServeProcess(
    home,
    async () => {
      const c = client();
      try {
        return await c.health({ timeoutMs: 1_000 }).then(
          () => true,
          () => false,
        );
      } finally {
        await c.close();
      }
    },
    daemons,
  );
}

const TOTAL = 2_000;
const IN_FLIGHT = 8;
const KILL_AFTER = 500;

describe('roost serve killed with SIGKILL while messages are sent to an actor', () => {
  it('handles every acknowledged message exactly once after the restart, and none twice', async () => {
    const first = await startDaemon();
    const before = client();
    const mod = await before.actors.deploy(exampleModule('counter'));
    const actor = (await before.actors.create({ name: 'crash-counter', module: mod.digest })).id;

    let attempted = 0;
    const acked: number[] = [];
    let killed = false;
    const exited = new Promise((r) => first.once('exit', r));
    const worker = async () => {
      while (!killed && attempted < TOTAL) {
        attempted++;
        try {
          const { seq } = await before.actors.send(actor, 'tick');
          acked.push(seq);
          if (acked.length >= KILL_AFTER && !killed) {
            killed = true;
            first.kill('SIGKILL');
          }
        } catch (e) {
          // Only the kill may fail a send.
          if (!killed) throw e;
        }
      }
    };
    await Promise.all(Array.from({ length: IN_FLIGHT }, worker));
    await exited;
    await before.close();
    expect(killed).toBe(true);
    expect(acked.length).toBeGreaterThanOrEqual(KILL_AFTER);

    await startDaemon();
    const after = client();
    try {
      await eventually(async () => (await after.actors.get(actor)).mailbox === 0, 30_000, 'the mailbox drained');
      const info = await after.actors.get(actor);
      const state = await after.actors.state(actor);
      const count = Number(state.entries.find((e) => e.key === 'count')?.value ?? 0);
      expect(acked.length).toBeLessThanOrEqual(count);
      expect(count).toBeLessThanOrEqual(attempted);
      // Each message applied once: as many handled (none failed) as the count says.
      expect(info).toMatchObject({ handled: count, failed: 0, version: count });

      const history: ActorMessageRecord[] = [];
      for await (const r of after.actors.messages(actor, { after: 0, limit: 10_000 })) history.push(r);
      const seqs = history.map((r) => r.seq);
      expect(new Set(seqs).size).toBe(seqs.length);
      expect(history.length).toBe(count);
      expect(history.every((r) => r.ok && r.kind === 'message')).toBe(true);
      // None lost: every acknowledged message is in the history.
      const handled = new Set(seqs);
      expect(acked.filter((s) => !handled.has(s))).toEqual([]);
      // The versions are one per message, in order.
      expect(history.map((r) => r.version)).toEqual(history.map((_, i) => i + 1));
    } finally {
      await after.close();
    }
  });
});
