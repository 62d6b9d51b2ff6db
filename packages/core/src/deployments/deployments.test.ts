import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { DEPLOYMENT_LABEL, DEPLOYMENT_REVISION_LABEL, type DeploymentInfo, type DeploymentSpecInput, type RoostEvent } from '@roost/api';
import { Runtime } from '../runtime.js';
import { closeStateDbs, stateDb } from '../state/db.js';
import { FakeVmm, writeFakeAssets } from '../vmm/fake.js';

// Deployments against a fake VMM (vmm/fake.ts): the reconcile loop's
// bookkeeping (counts, replacement, rolling updates, rollback, restart
// policy, adoption by a new owner, orphans) with real records and agent
// connections. The fake agent runs the program `serve` until it is
// signalled and exits `check` with its VM's checkExitCode. Service ports and
// HTTP/TCP checks need a guest network: test/deployments.test.ts boots QEMU.

let home: string;
let vmm: FakeVmm;
let runtime: Runtime;

const base = {
  name: 'web',
  replicas: 2,
  sandbox: { network: 'none', memoryMiB: 64 },
  command: ['serve'],
} satisfies DeploymentSpecInput;

async function until(check: () => boolean | Promise<boolean>, ms = 5_000, what = 'condition'): Promise<void> {
  const end = Date.now() + ms;
  while (!(await check())) {
    if (Date.now() > end) throw new Error(`${what} not met in time`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

/** Waits until the deployment has rolled out: `n` healthy replicas, all current, the generation observed. */
async function settled(name: string, n: number, ms = 5_000): Promise<DeploymentInfo> {
  let info!: DeploymentInfo;
  await until(
    async () => {
      info = await runtime.deployments.get(name);
      return (
        info.healthyReplicas === n &&
        info.members.length === n &&
        info.members.every((m) => m.current && m.state === 'healthy') &&
        info.observedGeneration === info.generation
      );
    },
    ms,
    `deployment ${name} with ${n} healthy replicas`,
  );
  return info;
}

async function events(types?: string[]): Promise<RoostEvent[]> {
  const out: RoostEvent[] = [];
  const ac = new AbortController();
  setTimeout(() => ac.abort(), 50);
  for await (const e of runtime.events({ after: 0, signal: ac.signal })) if (!types || types.includes(e.type)) out.push(e);
  return out;
}

function vmOf(id: string) {
  return vmm.vmOf(join(home, 'sandboxes', id))!;
}

beforeEach(async () => {
  home = await mkdtemp(join(tmpdir(), 'roost-unit-'));
  writeFakeAssets(join(home, 'cache'));
  vmm = new FakeVmm();
  runtime = await Runtime.open({ home, vmm });
});

afterEach(async () => {
  await runtime.close();
  for (const vm of vmm.started) if (!vm.hasExited) vm.kill();
  closeStateDbs();
  await rm(home, { recursive: true, force: true });
});

describe('deployments on a fake VMM', () => {
  it('creates the replicas as labelled detached sandboxes running the workload, with events; an unchanged apply is no new generation', async () => {
    const applied = await runtime.deployments.apply(base);
    expect(applied).toMatchObject({ name: 'web', generation: 1, canRollback: false, lastError: null });
    const info = await settled('web', 2);
    expect(info.replicas).toBe(2);
    expect(info.updatedReplicas).toBe(2);
    for (const m of info.members) {
      const sb = await runtime.get(m.id);
      expect(sb.info.labels).toEqual({ [DEPLOYMENT_LABEL]: 'web', [DEPLOYMENT_REVISION_LABEL]: info.revision });
      expect(sb.info.detached).toBe(true);
      expect(m.startedAt).not.toBeNull();
    }
    expect(info.events.map((e) => e.type)).toEqual(expect.arrayContaining(['deployment.created', 'replica.created', 'replica.healthy']));
    const again = await runtime.deployments.apply(base);
    expect(again.generation).toBe(1);
    expect((await runtime.deployments.list()).map((d) => d.name)).toEqual(['web']);
  });

  it('scales up and down, the least useful replica first', async () => {
    await runtime.deployments.apply(base);
    await settled('web', 2);
    expect((await runtime.deployments.scale('web', 3)).generation).toBe(2);
    await settled('web', 3);
    await runtime.deployments.scale('web', 1);
    const info = await settled('web', 1);
    expect(info.generation).toBe(3);
    expect(await runtime.list({ labels: [`${DEPLOYMENT_LABEL}=web`] })).toHaveLength(1);
    expect((await events(['replica.removed'])).length).toBe(2);
    await expect(runtime.deployments.scale('web', 65)).rejects.toMatchObject({ code: 'INVALID_ARGUMENT' });
    await expect(runtime.deployments.scale('nope', 1)).rejects.toMatchObject({ code: 'NOT_FOUND' });
  });

  it('replaces a replica whose VM died, announcing the replacement', async () => {
    await runtime.deployments.apply(base);
    const before = await settled('web', 2);
    const victim = before.members[0]!.id;
    vmOf(victim).kill();
    await until(async () => {
      const info = await runtime.deployments.get('web');
      return !info.members.some((m) => m.id === victim) && info.healthyReplicas === 2;
    });
    const replaced = await events(['replica.replaced']);
    expect(replaced).toHaveLength(1);
    expect(replaced[0]!.data).toMatchObject({ deployment: 'web', replaced: victim });
    expect(replaced[0]!.data.reason).toMatch(/VM/);
    await expect(runtime.get(victim)).rejects.toMatchObject({ code: 'NOT_FOUND' });
  });

  it('replaces a replica removed by hand; a fork of a replica is no replica', async () => {
    await runtime.deployments.apply(base);
    const before = await settled('web', 2);
    const [gone, kept] = before.members.map((m) => m.id) as [string, string];
    await (await runtime.get(gone)).remove({ force: true });
    await until(async () => {
      const info = await runtime.deployments.get('web');
      return !info.members.some((m) => m.id === gone) && info.healthyReplicas === 2 && info.members.length === 2;
    });
    expect((await events(['replica.replaced'])).map((e) => e.data)).toEqual([expect.objectContaining({ replaced: gone, reason: 'its sandbox was removed' })]);

    const [copy] = await (await runtime.get(kept)).fork({ labels: undefined });
    expect(copy!.info.labels).toEqual({});
    await new Promise((r) => setTimeout(r, 100));
    expect((await runtime.deployments.get('web')).members).toHaveLength(2);
    await copy!.remove({ force: true });
  });

  it('replaces a replica that fails its exec health check past its retries', async () => {
    await runtime.deployments.apply({ ...base, health: { exec: ['check'], intervalMs: 100, retries: 2 } });
    const before = await settled('web', 2);
    const sick = before.members[1]!.id;
    vmOf(sick).checkExitCode = 1;
    await until(async () => {
      const info = await runtime.deployments.get('web');
      return !info.members.some((m) => m.id === sick) && info.healthyReplicas === 2;
    });
    const types = (await events()).filter((e) => e.sandboxId === sick || e.data.replaced === sick).map((e) => e.type);
    expect(types).toEqual(expect.arrayContaining(['replica.healthy', 'replica.unhealthy', 'replica.replaced']));
  });

  it('rolls a changed command out within maxSurge and maxUnavailable, never below the healthy count, and rolls back', async () => {
    await runtime.deployments.apply({ ...base, replicas: 3 });
    const first = await settled('web', 3);
    let least = Infinity;
    let most = 0;
    let watching = true;
    const watch = (async () => {
      while (watching) {
        const info = await runtime.deployments.get('web');
        least = Math.min(least, info.healthyReplicas);
        most = Math.max(most, info.members.length);
        await new Promise((r) => setTimeout(r, 2));
      }
    })();
    const updated = await runtime.deployments.apply({ ...base, replicas: 3, command: ['serve', '--v2'] });
    expect(updated.generation).toBe(2);
    expect(updated.revision).not.toBe(first.revision);
    expect(updated.canRollback).toBe(true);
    const second = await settled('web', 3);
    watching = false;
    await watch;
    expect(least).toBeGreaterThanOrEqual(3);
    // maxSurge 1: at most one replica above the count, those being removed included.
    expect(most).toBeLessThanOrEqual(4);
    expect(second.members.map((m) => m.id).some((id) => first.members.some((m) => m.id === id))).toBe(false);

    const back = await runtime.deployments.rollback('web');
    expect(back.generation).toBe(3);
    expect(back.revision).toBe(first.revision);
    expect(back.spec.command).toEqual(['serve']);
    await settled('web', 3);
    expect((await events(['deployment.rolledback'])).length).toBe(1);
  });

  it('with maxSurge 0 replaces one replica at a time without going above the count', async () => {
    await runtime.deployments.apply({ ...base, update: { maxSurge: 0, maxUnavailable: 1 } });
    await settled('web', 2);
    let most = 0;
    let watching = true;
    const watch = (async () => {
      while (watching) {
        most = Math.max(most, (await runtime.deployments.get('web')).members.length);
        await new Promise((r) => setTimeout(r, 2));
      }
    })();
    await runtime.deployments.apply({ ...base, update: { maxSurge: 0, maxUnavailable: 1 }, command: ['serve', '--v2'] });
    await settled('web', 2);
    watching = false;
    await watch;
    expect(most).toBeLessThanOrEqual(2);
  });

  it('a change of the count, health check or restart policy replaces no replica; rollback without a previous spec is refused', async () => {
    await expect(runtime.deployments.rollback('nope')).rejects.toMatchObject({ code: 'NOT_FOUND' });
    await runtime.deployments.apply(base);
    await expect(runtime.deployments.rollback('web')).rejects.toMatchObject({ code: 'INVALID_STATE' });
    const before = await settled('web', 2);
    await runtime.deployments.apply({ ...base, restart: 'on-failure', health: { exec: ['check'], intervalMs: 100 } });
    const after = await runtime.deployments.get('web');
    expect(after.revision).toBe(before.revision);
    expect(after.members.map((m) => m.id).sort()).toEqual(before.members.map((m) => m.id).sort());
  });

  it('restart policy: a workload that exits is started again with back-off (always), or left exited (never)', async () => {
    await runtime.deployments.apply({ ...base, replicas: 1, command: ['true'] });
    await until(async () => (await runtime.deployments.get('web')).members[0]?.restarts === 1, 5_000, 'a restart');
    const info = await runtime.deployments.get('web');
    expect(info.members[0]!.lastExit).toMatchObject({ exitCode: 0, signal: null });
    expect((await events(['replica.restarted']))[0]!.data).toMatchObject({ deployment: 'web', restarts: 1 });

    await runtime.deployments.apply({ name: 'once', replicas: 1, sandbox: base.sandbox, command: ['true'], restart: 'never' });
    await until(async () => (await runtime.deployments.get('once')).members[0]?.state === 'exited', 5_000, 'an exited replica');
    await new Promise((r) => setTimeout(r, 300));
    const once = await runtime.deployments.get('once');
    expect(once.members).toHaveLength(1);
    expect(once.members[0]!.restarts).toBe(0);
    expect(once.healthyReplicas).toBe(0);
  });

  it('a new owner adopts the replicas (no new ones) and starts their workloads again; removal leaves nothing', async () => {
    await runtime.deployments.apply(base);
    const before = await settled('web', 2);
    await runtime.close();
    // The replicas are detached: their VMs outlive the owner.
    expect(vmm.started.filter((vm) => !vm.hasExited)).toHaveLength(2);
    runtime = await Runtime.open({ home, vmm });
    const after = await settled('web', 2);
    expect(after.members.map((m) => m.id).sort()).toEqual(before.members.map((m) => m.id).sort());
    expect(after.members.every((m) => m.restarts === 1)).toBe(true);
    expect((await events(['replica.restarted'])).map((e) => e.data.reason)).toEqual([
      'adopted by a new owner of the home',
      'adopted by a new owner of the home',
    ]);

    await runtime.deployments.remove('web');
    await expect(runtime.deployments.get('web')).rejects.toMatchObject({ code: 'NOT_FOUND' });
    expect(await runtime.list()).toEqual([]);
    expect(vmm.started.filter((vm) => !vm.hasExited)).toHaveLength(0);
    expect((await events(['deployment.removed'])).length).toBe(1);
  });

  it('replicas of a deployment whose row is gone are removed when a runtime opens the home', async () => {
    await runtime.deployments.apply(base);
    await settled('web', 2);
    await runtime.close();
    // As if a remove had been cut short after its row was deleted.
    stateDb(home).prepare('DELETE FROM deployments').run();
    runtime = await Runtime.open({ home, vmm });
    await until(async () => (await runtime.list()).length === 0, 5_000, 'orphans removed');
    expect(vmm.started.filter((vm) => !vm.hasExited)).toHaveLength(0);
  });

  it('a runtime opened with reconcile off records specs but starts nothing', async () => {
    await runtime.close();
    runtime = await Runtime.open({ home, vmm, reconcile: false });
    const info = await runtime.deployments.apply(base);
    expect(info).toMatchObject({ generation: 1, replicas: 0 });
    await new Promise((r) => setTimeout(r, 100));
    expect(await runtime.list()).toEqual([]);
  });

  it('refuses bad specs naming the field, and the reserved labels on a plain create', async () => {
    await expect(runtime.deployments.apply({ ...base, replicas: -1 })).rejects.toMatchObject({
      code: 'INVALID_ARGUMENT',
      message: expect.stringMatching(/replicas/),
    });
    await expect(runtime.deployments.apply({ ...base, ports: ['8080:80'] })).rejects.toMatchObject({
      code: 'INVALID_ARGUMENT',
      message: expect.stringMatching(/ports.*network/),
    });
    await expect(runtime.create({ network: 'none', labels: { [DEPLOYMENT_LABEL]: 'web' } })).rejects.toMatchObject({
      code: 'INVALID_ARGUMENT',
      message: expect.stringMatching(/reserved/),
    });
  });
});
