import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, symlinkSync, unlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { isRoostError } from '@roost/api';
import { roostHome, Runtime } from '@roost/core';
import { closeStateDbs } from '@roost/core/internal';
import { exampleModule, text } from './actor-modules.js';
import { eventually, fillFilesystem } from './helpers.js';

/*
 * Actors in a home on a full filesystem (a small tmpfs, mounted as root):
 * sends are refused with the full-disk error once SQLite cannot write, the
 * messages accepted before are not lost while their commits fail, and all of
 * them are handled, once each, when space is freed. No VM.
 */

const asRoot = process.getuid?.() === 0;
let mount = '';
let mounted = false;
let runtime: Runtime | undefined;
const filler = () => join(mount, 'filler');

beforeAll(async () => {
  if (!asRoot) return;
  mount = mkdtempSync(join(tmpdir(), 'roost-actors-full-'));
  execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=16m,mode=0700', 'roost-actors-full', mount]);
  mounted = true;
  symlinkSync(process.env.ROOST_TEST_CACHE ?? join(roostHome(), 'cache'), join(mount, 'cache'));
  runtime = await Runtime.open({ home: mount });
});

afterAll(async () => {
  await runtime?.close().catch(() => {});
  closeStateDbs();
  if (mounted) {
    try {
      execFileSync('umount', [mount]);
    } catch {
      execFileSync('umount', ['-l', mount]);
    }
  }
  if (mount) rmSync(mount, { recursive: true, force: true });
});

describe.skipIf(!asRoot)('actors on a full disk', () => {
  it('refuses sends with the full-disk error, keeps what it accepted, and handles all of it once space is back', async () => {
    const actors = runtime!.actors;
    const mod = await actors.deploy(exampleModule('counter'));
    const a = await actors.create({ name: 'full', module: mod.digest, limits: { mailbox: 100_000 } });
    expect(text((await actors.call(a.id, 'x')).reply)).toBe('1');

    // Room for some sends, not for handling them all: commits fail while sends are still taken, then sends fail too.
    fillFilesystem(mount, filler(), 256 * 1024);
    // Send until a send is refused (bounded).
    let accepted = 0;
    let refusal: unknown = null;
    for (let i = 0; i < 20_000 && refusal === null; i++) {
      try {
        await actors.send(a.id, 'x'.repeat(512));
        accepted++;
      } catch (e) {
        refusal = e;
      }
    }
    expect(isRoostError(refusal, 'RESOURCE_EXHAUSTED'), String(refusal)).toBe(true);
    expect((refusal as { details: Record<string, unknown> }).details).toMatchObject({ resource: 'disk', errno: 'ENOSPC' });

    // Some were taken before the disk filled (their handling's commits then failed, and were retried).
    expect(accepted).toBeGreaterThan(0);
    // Space again: every accepted message is handled, once.
    unlinkSync(filler());
    await eventually(async () => (await actors.get(a.id)).mailbox === 0, 30_000, 'the mailbox drained');
    const info = await actors.get(a.id);
    expect(info.handled).toBe(1 + accepted);
    expect((await actors.state(a.id)).entries).toEqual([{ key: 'count', value: String(1 + accepted) }]);
    expect(text((await actors.call(a.id, 'x')).reply)).toBe(String(2 + accepted));
  });
});
