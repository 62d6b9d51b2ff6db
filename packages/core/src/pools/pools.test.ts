import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { POOL_LABEL, type PoolInfo } from '@roost/api';
import { Runtime } from '../runtime.js';
import { closeStateDbs, stateDb } from '../state/db.js';
import { FakeVmm, writeFakeAssets } from '../vmm/fake.js';

// Warm pools against a fake VMM (vmm/fake.ts): the pool's bookkeeping, refills,
// back-off, hand-over races and recovery, with the real records, restores and
// agent connections (the fake agent answers HELLO, also a second one on an open
// connection). test/pools.test.ts checks what the guest sees with real VMs.

let home: string;
let vmm: FakeVmm;
let runtime: Runtime;

const small = { network: 'none', memoryMiB: 64 } as const;

async function until(check: () => boolean | Promise<boolean>, ms = 5_000, what = 'condition'): Promise<void> {
  const end = Date.now() + ms;
  while (!(await check())) {
    if (Date.now() > end) throw new Error(`${what} not met in time`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

/** Waits until the pool has `ready` members and nothing in flight. */
async function filled(name: string, ready: number): Promise<PoolInfo> {
  let info!: PoolInfo;
  await until(
    async () => {
      info = await runtime.pools.get(name);
      return info.ready === ready && info.starting === 0;
    },
    5_000,
    `pool ${name} with ${ready} ready`,
  );
  return info;
}

/** The types of the events so far (of one sandbox). */
async function eventTypes(sandboxId?: string): Promise<string[]> {
  const out: string[] = [];
  const ac = new AbortController();
  setTimeout(() => ac.abort(), 50);
  for await (const e of runtime.events({ after: 0, ...(sandboxId ? { sandboxId } : {}), signal: ac.signal })) out.push(e.type);
  return out;
}

/** The fake VMs still running. */
function liveVms(): number {
  return vmm.started.filter((vm) => !vm.hasExited).length;
}

beforeEach(async () => {
  home = await mkdtemp(join(tmpdir(), 'roost-unit-'));
  writeFakeAssets(join(home, 'cache'));
  vmm = new FakeVmm();
  runtime = await Runtime.open({ home, vmm });
  const src = await runtime.create(small);
  await src.snapshot({ name: 'base' });
  await src.remove({ force: true });
});

afterEach(async () => {
  await runtime.close();
  for (const vm of vmm.started) if (!vm.hasExited) vm.kill();
  closeStateDbs();
  await rm(home, { recursive: true, force: true });
});

describe('warm pools on a fake VMM', () => {
  it('fills to size with paused, detached, labelled members; hands one over; refills', async () => {
    const created = await runtime.pools.create({ name: 'p', snapshot: 'base', size: 3 });
    expect(created).toMatchObject({ name: 'p', snapshot: 'base', size: 3, maxSize: 32, handedOver: 0, fallbacks: 0, lastError: null });
    const info = await filled('p', 3);
    expect(info.members).toHaveLength(3);
    for (const id of info.members) {
      const m = await runtime.get(id);
      expect(m.status).toBe('paused');
      expect(m.info).toMatchObject({ detached: true, labels: { [POOL_LABEL]: 'p' } });
    }

    const sb = await runtime.create({ pool: 'p', labels: { team: 'a' }, env: { X: '1' }, lifetimeMs: 60_000 });
    expect(info.members).toContain(sb.id);
    expect(sb.status).toBe('running');
    expect(sb.info).toMatchObject({ detached: false, labels: { team: 'a' }, pool: { name: 'p', warm: true }, env: { X: '1' }, onExpiry: 'remove' });
    expect(Date.parse(sb.info.expiresAt!) - Date.now()).toBeGreaterThan(50_000);
    // Resumed, then given a new session on its open connection: a second HELLO, with the owner's poweroff flag.
    const vm = vmm.vmOf(sb.dir)!;
    expect(vm.calls).toEqual(['pause', 'resume']);

    const after = await filled('p', 3);
    expect(after.members).not.toContain(sb.id);
    expect(after.handedOver).toBe(1);
    const types = await eventTypes(sb.id);
    expect(types.slice(-2)).toEqual(['sandbox.resumed', 'pool.handover']);
    expect(await eventTypes()).toContain('pool.created');
    // Its new session carries its new owner's flag: not detached, it powers off when the host goes away.
    sb.disconnect();
    await vm.exited;
    await until(() => sb.status === 'failed');
  });

  it('hands each member to one create when creates race, and restores for the rest', async () => {
    await runtime.pools.create({ name: 'p', snapshot: 'base', size: 3 });
    await filled('p', 3);
    const got = await Promise.all(Array.from({ length: 5 }, () => runtime.create({ pool: 'p', detached: true })));
    expect(new Set(got.map((s) => s.id)).size).toBe(5);
    expect(got.filter((s) => s.info.pool?.warm === true)).toHaveLength(3);
    expect(got.filter((s) => s.info.pool?.warm === false)).toHaveLength(2);
    const info = await filled('p', 3);
    expect(info).toMatchObject({ handedOver: 3, fallbacks: 2 });
    for (const s of got) await s.remove({ force: true });
  });

  it('fills a pool larger than the restores it starts at once, in batches', async () => {
    await runtime.pools.create({ name: 'big', snapshot: 'base', size: 10 });
    const info = await filled('big', 10);
    expect(info.lastError).toBeNull();
    expect(new Set(info.members).size).toBe(10);
  });

  it('an empty pool restores instead, and says so', async () => {
    await runtime.pools.create({ name: 'empty', snapshot: 'base', size: 0 });
    const sb = await runtime.create({ pool: 'empty' });
    expect(sb.info.pool).toEqual({ name: 'empty', warm: false });
    expect(sb.info.labels[POOL_LABEL]).toBeUndefined();
    expect((await runtime.pools.get('empty')).fallbacks).toBe(1);
    await sb.remove({ force: true });
  });

  it('resizes within maxSize, removing extra members', async () => {
    await runtime.pools.create({ name: 'p', snapshot: 'base', size: 2, maxSize: 3 });
    await filled('p', 2);
    await expect(runtime.pools.resize('p', 4)).rejects.toMatchObject({ code: 'INVALID_ARGUMENT', message: /maxSize/ });
    await runtime.pools.resize('p', 3);
    await filled('p', 3);
    await runtime.pools.resize('p', 1);
    await filled('p', 1);
    await until(() => liveVms() === 1);
  });

  it('replaces a member whose VM died', async () => {
    await runtime.pools.create({ name: 'p', snapshot: 'base', size: 2 });
    const before = await filled('p', 2);
    vmm.vmOf(join(home, 'sandboxes', before.members[0]!))!.kill();
    await until(async () => {
      const info = await runtime.pools.get('p');
      return info.ready === 2 && !info.members.includes(before.members[0]!);
    });
    // The dead member is removed, not kept as a failed sandbox.
    await until(async () => (await runtime.list()).length === 2);
  });

  it('records failed refills and backs off; a resize retries at once', async () => {
    vmm.guest = 'exit';
    await runtime.pools.create({ name: 'p', snapshot: 'base', size: 2 });
    await until(async () => (await runtime.pools.get('p')).lastError !== null);
    const info = await runtime.pools.get('p');
    expect(info.lastError).toMatchObject({ code: 'BOOT_FAILED', failures: 1 });
    expect(Date.parse(info.lastError!.retryAt!)).toBeGreaterThan(Date.now() - 100);
    // Nothing failed is kept.
    await until(async () => (await runtime.list()).length === 0);
    vmm.guest = 'answer';
    await runtime.pools.resize('p', 2);
    await filled('p', 2);
    expect((await runtime.pools.get('p')).lastError).toBeNull();
  });

  it('survives the runtime: the next one adopts the members and tops the pool up', async () => {
    await runtime.pools.create({ name: 'p', snapshot: 'base', size: 3 });
    const info = await filled('p', 3);
    await runtime.close();
    // One member dies while no runtime owns the home.
    vmm.vmOf(join(home, 'sandboxes', info.members[0]!))!.kill();
    const started = vmm.started.length;
    runtime = await Runtime.open({ home, vmm });
    const after = await filled('p', 3);
    expect(after.members.filter((id) => info.members.includes(id))).toHaveLength(2);
    expect(vmm.started.length).toBe(started + 1);
  });

  it('removes the members of a pool that no longer exists when a runtime opens', async () => {
    await runtime.pools.create({ name: 'p', snapshot: 'base', size: 2 });
    await filled('p', 2);
    await runtime.close();
    // As a runtime that died between the pool's row and its members' removal leaves it (or a doctor's rebuilt database).
    stateDb(home).prepare('DELETE FROM pools').run();
    runtime = await Runtime.open({ home, vmm });
    await until(async () => (await runtime.list()).length === 0);
    expect(liveVms()).toBe(0);
  });

  it('a runtime with refills off leaves pools as they are, and still hands over', async () => {
    await runtime.pools.create({ name: 'p', snapshot: 'base', size: 2 });
    await filled('p', 2);
    await runtime.close();
    runtime = await Runtime.open({ home, vmm, reconcile: false });
    const sb = await runtime.create({ pool: 'p' });
    expect(sb.info.pool?.warm).toBe(true);
    await new Promise((r) => setTimeout(r, 100));
    expect((await runtime.pools.get('p')).ready).toBe(1);
    await sb.remove({ force: true });
  });

  it('removing a pool removes its members and aborts its restores', async () => {
    await runtime.pools.create({ name: 'p', snapshot: 'base', size: 3 });
    await filled('p', 3);
    await runtime.create({ pool: 'p', detached: true }).then((s) => s.remove({ force: true }));
    await runtime.pools.remove('p');
    expect(await runtime.list()).toEqual([]);
    expect(liveVms()).toBe(0);
    await expect(runtime.pools.get('p')).rejects.toMatchObject({ code: 'NOT_FOUND' });
    await expect(runtime.create({ pool: 'p' })).rejects.toMatchObject({ code: 'NOT_FOUND', message: /no pool p/ });
  });

  it('refuses bad input, naming the field', async () => {
    await expect(runtime.pools.create({ name: 'x', template: 'nope', size: 1 })).rejects.toMatchObject({ code: 'NOT_FOUND', message: /template nope/ });
    await expect(runtime.pools.create({ name: 'x', snapshot: 'nope', size: 1 })).rejects.toMatchObject({ code: 'NOT_FOUND' });
    await expect(runtime.pools.create({ name: 'x', snapshot: 'base', template: 't', size: 1 })).rejects.toMatchObject({
      code: 'INVALID_ARGUMENT',
      message: /one of template and snapshot/,
    });
    await expect(runtime.pools.create({ name: 'x', size: 1 } as never)).rejects.toMatchObject({ code: 'INVALID_ARGUMENT', message: /template/ });
    await expect(runtime.pools.create({ name: 'x', snapshot: 'base', size: 33 })).rejects.toMatchObject({ code: 'INVALID_ARGUMENT', message: /size/ });
    await expect(runtime.pools.create({ name: 'x', snapshot: 'base', size: 3, maxSize: 2 })).rejects.toMatchObject({
      code: 'INVALID_ARGUMENT',
      message: /maxSize/,
    });
    await runtime.pools.create({ name: 'x', snapshot: 'base', size: 0 });
    await expect(runtime.pools.create({ name: 'x', snapshot: 'base', size: 0 })).rejects.toMatchObject({ code: 'ALREADY_EXISTS' });
    await expect(runtime.create({ pool: 'x', image: 'alpine' })).rejects.toMatchObject({ code: 'INVALID_ARGUMENT', message: /^image: / });
    await expect(runtime.create({ pool: 'x', cpus: 2, ports: ['8080:80'] })).rejects.toMatchObject({ code: 'INVALID_ARGUMENT', message: /^cpus, ports: / });
    await expect(runtime.create({ labels: { [POOL_LABEL]: 'x' } })).rejects.toMatchObject({ code: 'INVALID_ARGUMENT', message: /reserved/ });
    // What a hand-over takes is checked as for any create, with a member ready.
    await runtime.pools.resize('x', 1);
    await filled('x', 1);
    await expect(runtime.create({ pool: 'x', lifetimeMs: -1 })).rejects.toMatchObject({ code: 'INVALID_ARGUMENT', message: /lifetimeMs/ });
    await expect(runtime.create({ pool: 'x', onExpiry: 'stop' })).rejects.toMatchObject({ code: 'INVALID_ARGUMENT', message: /^onExpiry/ });
    await expect(runtime.create({ pool: 'x', detached: true, autoRemove: true })).rejects.toMatchObject({ code: 'INVALID_ARGUMENT', message: /^autoRemove/ });
    await expect(runtime.create({ pool: 'x', labels: { 'bad key!': 'v' } })).rejects.toMatchObject({ code: 'INVALID_ARGUMENT', message: /labels/ });
    expect((await runtime.pools.get('x')).ready).toBe(1);
  });
});
