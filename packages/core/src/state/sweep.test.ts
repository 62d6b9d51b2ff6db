import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { sweepTempFiles, tempOwner } from './sweep.js';

/** The pid of a process that has exited. */
function deadPid(): number {
  const r = spawnSync('true');
  return r.pid!;
}

describe('sweepTempFiles', () => {
  let home: string;
  let sharedCache: string;
  let live: ReturnType<typeof spawn>;
  beforeAll(() => {
    home = mkdtempSync(join(tmpdir(), 'roost-sweep-'));
    sharedCache = mkdtempSync(join(tmpdir(), 'roost-sweep-cache-'));
    live = spawn('sleep', ['60'], { stdio: 'ignore' });
  });
  afterAll(() => {
    live.kill('SIGKILL');
    rmSync(home, { recursive: true, force: true });
    rmSync(sharedCache, { recursive: true, force: true });
  });

  it('reads the pid of every temp name Roost writes, and nothing else', () => {
    expect(tempOwner('.tmp-123-abcdef')).toBe(123);
    expect(tempOwner('roost.owner.json.tmp-77')).toBe(77);
    expect(tempOwner('0123456789ab.erofs.tmp-9-1a2b3c4d')).toBe(9);
    expect(tempOwner('kernel.tmp-55-a1b2c3.work')).toBe(55);
    expect(tempOwner('tree-42-deadbeef')).toBe(42);
    for (const n of ['roost.db', 'sandboxes', '0123456789ab', '0123456789ab.erofs', 'tmp', 'ext4-64m.raw', 'tree']) expect(tempOwner(n)).toBeNull();
  });

  it('removes temp files of dead processes, keeps those of live ones and a shared cache', async () => {
    const dead = deadPid();
    const livePid = live.pid!;
    const blobs = join(home, 'images', 'blobs', 'sha256');
    mkdirSync(blobs, { recursive: true });
    mkdirSync(join(home, 'images', 'rootfs'), { recursive: true });
    mkdirSync(join(home, 'tmp', `tree-${dead}-aa`, 'usr', 'bin'), { recursive: true });
    mkdirSync(join(home, 'snapshots', `.tmp-${dead}-0123456789ab`), { recursive: true });
    mkdirSync(join(home, 'snapshots', `.tmp-${livePid}-0123456789ac`), { recursive: true });
    mkdirSync(join(home, 'sandboxes', '0123456789ad'), { recursive: true });
    const a = '0'.repeat(64);
    const files = {
      deadBlob: join(blobs, `.tmp-${dead}-0a0b0c`),
      liveBlob: join(blobs, `.tmp-${livePid}-0a0b0c`),
      ownBlob: join(blobs, `.tmp-${process.pid}-0a0b0c`),
      blob: join(blobs, a),
      deadRootfs: join(home, 'images', 'rootfs', `${a}.erofs.tmp-${dead}-1234`),
      deadOwner: join(home, `roost.owner.json.tmp-${dead}`),
      deadWitness: join(home, 'sandboxes', '0123456789ad', `record.json.tmp-${dead}`),
      liveWitness: join(home, 'sandboxes', '0123456789ad', `record.json.tmp-${livePid}`),
      witness: join(home, 'sandboxes', '0123456789ad', 'record.json'),
      db: join(home, 'roost.db'),
      sharedTemp: join(sharedCache, `kernel.tmp-${dead}-abc`),
    };
    for (const f of Object.values(files)) writeFileSync(f, 'x');
    symlinkSync(sharedCache, join(home, 'cache'));

    const { removed } = await sweepTempFiles(home);
    expect(removed.sort()).toEqual(
      [
        files.deadBlob,
        files.deadRootfs,
        files.deadOwner,
        files.deadWitness,
        join(home, 'tmp', `tree-${dead}-aa`),
        join(home, 'snapshots', `.tmp-${dead}-0123456789ab`),
      ].sort(),
    );
    for (const f of removed) expect(existsSync(f), f).toBe(false);
    for (const f of [files.liveBlob, files.ownBlob, files.blob, files.db, files.sharedTemp, files.liveWitness, files.witness])
      expect(existsSync(f), f).toBe(true);
    expect(existsSync(join(home, 'snapshots', `.tmp-${livePid}-0123456789ac`))).toBe(true);
    // Nothing left to do a second time.
    expect((await sweepTempFiles(home)).removed).toEqual([]);
  });
});
