import { spawnSync } from 'node:child_process';
import { chmodSync, existsSync, lstatSync, mkdirSync, mkdtempSync, readdirSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { Runtime } from '../runtime.js';
import { runTool } from '../tool.js';
import { FakeVmm, writeFakeAssets } from '../vmm/fake.js';
import { closeStateDbs } from './db.js';
import { privateSpawn, secureHome } from './private.js';

// The home's privacy under a permissive umask (022, as most shells have), with
// the real runtime, records, snapshots and boot code on a fake VMM.

let umask: number;
beforeAll(() => {
  umask = process.umask(0o022);
});
afterAll(() => {
  process.umask(umask);
});

let root: string;
let home: string;
beforeEach(() => {
  root = mkdtempSync(join(tmpdir(), 'roost-private-'));
  home = join(root, 'home');
  // Assets that exist (the fake never reads them), in a cache shared through a symlink as tests do.
  const cache = join(root, 'cache');
  writeFakeAssets(cache);
  // A home made the way a permissive umask makes one.
  mkdirSync(home, { mode: 0o755 });
  symlinkSync(cache, join(home, 'cache'));
});
afterEach(() => {
  closeStateDbs();
  rmSync(root, { recursive: true, force: true });
});

/** Every entry below `dir` (not through the cache link) whose mode lets anyone but its owner in. */
function exposed(dir: string): string[] {
  const out: string[] = [];
  const st = lstatSync(dir);
  if ((st.mode & 0o777) !== 0o700) out.push(`${dir} ${(st.mode & 0o777).toString(8)}`);
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    if (e.isSymbolicLink()) continue;
    if (e.isDirectory()) out.push(...exposed(p));
    else {
      const mode = lstatSync(p).mode & 0o777;
      if (e.isFile() ? mode !== 0o600 : (mode & 0o077) !== 0) out.push(`${p} ${mode.toString(8)}`);
    }
  }
  return out;
}

describe('the home is private under umask 022 (and swept when opened)', () => {
  it('everything the runtime makes is 0600 (files) or 0700 (directories)', async () => {
    const runtime = await Runtime.open({ home, vmm: new FakeVmm() });
    try {
      const sb = await runtime.create({ network: 'none', memoryMiB: 64 });
      await sb.snapshot({ name: 'snap' });
      const copy = await runtime.create({ snapshot: 'snap' });
      expect(exposed(home)).toEqual([]);
      await copy.remove({ force: true });
      await sb.stop();
      expect(exposed(home)).toEqual([]);
    } finally {
      await runtime.close();
    }
    expect(exposed(home)).toEqual([]);
  });

  it('an existing home with loose modes is fixed when a runtime opens it', async () => {
    let runtime = await Runtime.open({ home, vmm: new FakeVmm() });
    const sb = await runtime.create({ network: 'none', memoryMiB: 64 });
    await sb.stop();
    await runtime.close();
    closeStateDbs();
    // As an older Roost left it.
    const dir = join(home, 'sandboxes', sb.id);
    for (const p of [home, join(home, 'sandboxes'), dir]) chmodSync(p, 0o755);
    for (const f of readdirSync(dir)) chmodSync(join(dir, f), 0o644);
    for (const f of readdirSync(home)) if (f.startsWith('roost.')) chmodSync(join(home, f), 0o644);
    expect(exposed(home).length).toBeGreaterThan(3);
    // And a pull killed mid-blob: its temp file goes when the home is opened.
    const blobs = join(home, 'images', 'blobs', 'sha256');
    mkdirSync(blobs, { recursive: true, mode: 0o700 });
    const dead = spawnSync('true').pid!;
    writeFileSync(join(blobs, `.tmp-${dead}-0a1b2c`), 'half a layer', { mode: 0o600 });
    runtime = await Runtime.open({ home, vmm: new FakeVmm() });
    try {
      expect(exposed(home)).toEqual([]);
      expect(existsSync(join(blobs, `.tmp-${dead}-0a1b2c`))).toBe(false);
    } finally {
      await runtime.close();
    }
    // Nothing left to fix.
    expect(secureHome(home)).toEqual([]);
  });

  it('leaves a volume’s data directory as the guest sees it', async () => {
    const runtime = await Runtime.open({ home, vmm: new FakeVmm() });
    try {
      await runtime.volumes.create({ name: 'v' });
    } finally {
      await runtime.close();
    }
    const data = runtime.volumes.dataPath('v');
    expect(lstatSync(data).mode & 0o777).toBe(0o755);
    expect(lstatSync(join(home, 'volumes', 'v')).mode & 0o777).toBe(0o700);
    secureHome(home);
    expect(lstatSync(data).mode & 0o777).toBe(0o755);
  });

  it('starts tools with umask 077, and still tells a missing one', async () => {
    const file = join(root, 'made-by-a-tool');
    await new Promise<void>((resolve, reject) =>
      privateSpawn('touch', [file], { stdio: 'ignore' }).on('exit', (c) => (c === 0 ? resolve() : reject(new Error(`exit ${c}`)))),
    );
    expect(lstatSync(file).mode & 0o777).toBe(0o600);
    // The process's own umask is untouched.
    expect(process.umask(0o022)).toBe(0o022);
    await expect(runTool('roost-no-such-tool', [], { pkg: 'nothing', code: 'VMM' })).rejects.toMatchObject({ code: 'SETUP_REQUIRED' });
  });
});
