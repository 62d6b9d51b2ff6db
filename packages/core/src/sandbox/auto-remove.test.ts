import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { Runtime } from '../runtime.js';
import { closeStateDbs, stateDb } from '../state/db.js';
import { SandboxRecords } from '../state/sandboxes.js';
import { FakeVmm, writeFakeAssets } from '../vmm/fake.js';
import { recoveryDecision, removedAtRecovery } from './recover.js';

// `autoRemove` (as `docker run --rm`, what `roost run` asks for) against a fake VMM:
// a sandbox made to go with its owner is removed, not kept stopped, when its owner
// closes, and when the next runtime finds that its owner died.

let home: string;
let vmm: FakeVmm;
let runtime: Runtime;

/** A home with assets that exist (their contents are never read by the fake). */
async function makeHome(): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'roost-unit-'));
  writeFakeAssets(join(dir, 'cache'));
  return dir;
}

async function eventTypes(id: string): Promise<string[]> {
  const out: string[] = [];
  const ac = new AbortController();
  setTimeout(() => ac.abort(), 50);
  for await (const e of runtime.events({ after: 0, sandboxId: id, signal: ac.signal })) out.push(e.type);
  return out;
}

const small = { network: 'none', memoryMiB: 64 } as const;

beforeEach(async () => {
  home = await makeHome();
  vmm = new FakeVmm();
  runtime = await Runtime.open({ home, vmm });
});

afterEach(async () => {
  await runtime.close();
  closeStateDbs();
  await rm(home, { recursive: true, force: true });
});

describe('autoRemove', () => {
  it('is recorded, and refused with detached (a detached sandbox has no owner to go with)', async () => {
    const sb = await runtime.create({ ...small, autoRemove: true });
    expect(sb.info.autoRemove).toBe(true);
    expect((await runtime.create(small)).info.autoRemove).toBeUndefined();
    await expect(runtime.create({ ...small, detached: true, autoRemove: true })).rejects.toMatchObject({
      code: 'INVALID_ARGUMENT',
      message: expect.stringMatching(/autoRemove: a detached sandbox/),
    });
  });

  it('removes the record and directory when the runtime closes; other sandboxes are kept stopped', async () => {
    const gone = await runtime.create({ ...small, autoRemove: true });
    const kept = await runtime.create(small);
    const vm = vmm.vmOf(gone.dir)!;
    await runtime.close();
    expect(vm.hasExited).toBe(true);
    expect(existsSync(gone.dir)).toBe(false);
    runtime = await Runtime.open({ home, vmm });
    expect((await runtime.list()).map((s) => [s.id, s.status])).toEqual([[kept.id, 'stopped']]);
  });

  it('removes what a dead owner left, running or stopped, when the next runtime opens the home', async () => {
    const running = await runtime.create({ ...small, autoRemove: true });
    const exited = await runtime.create({ ...small, autoRemove: true });
    await exited.stop();
    const plain = await runtime.create(small);
    const left = [running.info, exited.info, plain.info];
    await runtime.close();
    // As an owner killed with SIGKILL leaves them: records as they were, directories still there.
    const records = new SandboxRecords(stateDb(home));
    for (const info of left) {
      records.put(info);
      await mkdir(join(home, 'sandboxes', info.id), { recursive: true });
    }
    runtime = await Runtime.open({ home, vmm: new FakeVmm() });
    expect((await runtime.list()).map((s) => s.id)).toEqual([plain.id]);
    for (const sb of [running, exited]) expect(existsSync(sb.dir)).toBe(false);
    expect(existsSync(plain.dir)).toBe(true);
    expect(await eventTypes(running.id)).toEqual(expect.arrayContaining(['sandbox.exited', 'sandbox.deleted']));
  });

  it('is decided by the record alone: only sandboxes that are not detached', () => {
    expect(removedAtRecovery({ detached: false, autoRemove: true })).toBe(true);
    expect(removedAtRecovery({ detached: false })).toBe(false);
    expect(removedAtRecovery({ detached: true, autoRemove: true })).toBe(false);
    // The VM, if it somehow still runs, is killed first (the decision for a non-detached record).
    expect(recoveryDecision({ status: 'running', detached: false }, true)).toMatchObject({ action: 'record', kill: true });
  });
});
