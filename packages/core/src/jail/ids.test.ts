import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Worker } from 'node:worker_threads';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { isRoostError } from '../errors.js';
import { closeStateDbs, stateDb } from '../state/db.js';
import { checkJailIdRange, DEFAULT_JAIL_IDS, JailIds, parseJailIds, type JailIdRange } from './ids.js';

// Real SQLite homes and a real claims directory, all under one temporary root (never /run/roost).

let root: string;
let homeA: string;
let homeB: string;
let claimsDir: string;
const range: JailIdRange = { start: 3_000_000, count: 8 };

beforeEach(() => {
  root = mkdtempSync(join(tmpdir(), 'roost-jail-ids-'));
  homeA = join(root, 'home-a');
  homeB = join(root, 'home-b');
  claimsDir = join(root, 'run', 'jail-ids');
  mkdirSync(homeA);
  mkdirSync(homeB);
});

afterEach(() => {
  closeStateDbs();
  rmSync(root, { recursive: true, force: true });
});

function thrown(fn: () => unknown): unknown {
  try {
    fn();
  } catch (e) {
    return e;
  }
  throw new Error('expected a throw');
}

/** A JailIds of `home`, its sandboxes' directories made as a runtime would before acquiring. */
function ids(home: string, r: JailIdRange = range): JailIds & { make(id: string): number } {
  const j = new JailIds(stateDb(home), home, r, { claimsDir }) as JailIds & { make(id: string): number };
  j.make = (id: string) => {
    mkdirSync(join(home, 'sandboxes', id), { recursive: true });
    return j.acquire(id);
  };
  return j;
}

const claimPath = (uid: number) => join(claimsDir, String(uid));
const claimOf = (uid: number) => JSON.parse(readFileSync(claimPath(uid), 'utf8')) as { home: string; sandbox: string };
const claims = () =>
  readdirSync(claimsDir)
    .filter((f) => /^\d+$/.test(f))
    .map(Number)
    .sort();
const writeClaim = (uid: number, content: string) => {
  mkdirSync(claimsDir, { recursive: true });
  writeFileSync(claimPath(uid), content);
};

describe('JailIds', () => {
  it('allocates the lowest free uid, keeps it, claims it host-wide, and reuses it after release', () => {
    const a = ids(homeA);
    const s = range.start;
    expect(['s1', 's2', 's3'].map((id) => a.make(id))).toEqual([s, s + 1, s + 2]);
    expect(a.acquire('s2')).toBe(s + 1); // kept
    expect(a.get('s2')).toBe(s + 1);
    expect(a.get('nobody')).toBeNull();
    expect(a.list()).toEqual([
      { uid: s, sandboxId: 's1' },
      { uid: s + 1, sandboxId: 's2' },
      { uid: s + 2, sandboxId: 's3' },
    ]);
    expect(claimOf(s + 1)).toEqual({ home: homeA, sandbox: 's2' });
    expect(statSync(claimsDir).mode & 0o777).toBe(0o700);
    // Only the claims and the lock: no temporary file is left behind.
    expect(readdirSync(claimsDir).sort()).toEqual(['.lock', String(s), String(s + 1), String(s + 2)]);

    a.release('s2');
    a.release('s2'); // nothing left to release
    expect(a.get('s2')).toBeNull();
    expect(existsSync(claimPath(s + 1))).toBe(false);
    expect(a.make('s4')).toBe(s + 1);
    expect(a.make('s5')).toBe(s + 3);
  });

  it('keeps uids across a reopen, and claims them again after a reboot emptied the claims directory', () => {
    const a = ids(homeA);
    const uids = ['s1', 's2'].map((id) => a.make(id));
    closeStateDbs();
    const again = ids(homeA);
    expect(again.get('s1')).toBe(uids[0]);
    expect(again.list().map((r) => r.uid)).toEqual(uids);
    rmSync(claimsDir, { recursive: true }); // /run is a tmpfs
    expect(again.acquire('s2')).toBe(uids[1]);
    expect(again.acquire('s1')).toBe(uids[0]);
    expect(claims()).toEqual(uids);
    // A new sandbox does not get a recorded uid whose claim is gone.
    rmSync(claimPath(uids[0]!));
    expect(again.make('s3')).toBe(range.start + 2);
  });

  it('says what to do when the range is full', () => {
    const small = { start: 3_000_000, count: 3 };
    const a = ids(homeA, small);
    const b = ids(homeB, small);
    a.make('a1');
    a.make('a2');
    b.make('b1');
    const e = thrown(() => a.make('one-too-many'));
    expect(isRoostError(e, 'RESOURCE_EXHAUSTED'), String(e)).toBe(true);
    expect((e as Error).message).toMatch(/3000000-3000002 \(3\) is taken: 2 by this home's sandboxes, 1 by other Roost homes.*roost rm.*ROOST_JAIL_IDS/);
    expect(a.get('one-too-many')).toBeNull();
    expect(claims()).toHaveLength(3);
    b.release('b1');
    expect(a.acquire('one-too-many')).toBe(3_000_002);
  });

  it('never gives two homes sharing the claims directory the same uid, acquiring in turn', () => {
    const a = ids(homeA, { start: 3_000_000, count: 100 });
    const b = ids(homeB, { start: 3_000_000, count: 100 });
    const got: number[] = [];
    for (let i = 0; i < 10; i++) {
      got.push(a.make(`a${i}`), b.make(`b${i}`));
      if (i % 3 === 2) {
        a.release(`a${i - 1}`);
        b.release(`b${i - 2}`);
      }
    }
    const live = [...a.list(), ...b.list()].map((r) => r.uid);
    expect(new Set(live).size).toBe(live.length);
    expect(live.sort()).toEqual(claims());
    for (const { uid, sandboxId } of a.list()) expect(claimOf(uid)).toEqual({ home: homeA, sandbox: sandboxId });
    for (const { uid, sandboxId } of b.list()) expect(claimOf(uid)).toEqual({ home: homeB, sandbox: sandboxId });
    // Released uids were reused: the 14 live sandboxes hold the lowest 14 uids.
    expect(Math.max(...live)).toBe(3_000_000 + live.length - 1);
  });

  it('gives distinct uids to processes of several homes acquiring at once', async () => {
    const registerTs = new URL('../../../../scripts/ts-register.mjs', import.meta.url).href;
    const idsTs = fileURLToPath(new URL('./ids.ts', import.meta.url));
    const dbTs = fileURLToPath(new URL('../state/db.ts', import.meta.url));
    const perWorker = 15;
    const homes = [homeA, homeB, join(root, 'home-c')];
    const workers = homes.flatMap((home) => [home, home]); // two runtimes per home
    const wide = { start: 3_000_000, count: 1000 };
    const start = new Int32Array(new SharedArrayBuffer(4));
    const script = `
      const { parentPort, workerData } = require('node:worker_threads');
      const { mkdirSync } = require('node:fs');
      const { join } = require('node:path');
      (async () => {
        await import(workerData.registerTs);
        const { stateDb } = await import(workerData.dbTs);
        const { JailIds } = await import(workerData.idsTs);
        const ids = new JailIds(stateDb(workerData.home), workerData.home, workerData.range, { claimsDir: workerData.claimsDir });
        parentPort.postMessage({ ready: true });
        Atomics.wait(workerData.start, 0, 0);
        const got = [];
        const errors = [];
        for (let i = 0; i < workerData.perWorker; i++) {
          const id = 'w' + workerData.n + '-' + i;
          try {
            mkdirSync(join(workerData.home, 'sandboxes', id), { recursive: true });
            got.push(ids.acquire(id));
            if (i % 4 === 3) ids.release('w' + workerData.n + '-' + (i - 1));
          } catch (e) {
            errors.push(String(e && e.code) + ': ' + e.message);
          }
        }
        parentPort.postMessage({ got, errors });
      })().catch((e) => parentPort.postMessage({ got: [], errors: [String(e)] }));
    `;
    for (const home of homes) {
      mkdirSync(home, { recursive: true });
      stateDb(home); // migrated once here: the workers race on uids only
    }
    // The low half of what they will take is claimed by a home that is gone: they race to take those claims over too.
    for (let uid = wide.start; uid < wide.start + 40; uid++) writeClaim(uid, JSON.stringify({ home: join(root, 'gone'), sandbox: `g${uid}` }));
    const ready: Array<Promise<void>> = [];
    const results = workers.map((home, n) => {
      const worker = new Worker(script, { eval: true, workerData: { n, home, registerTs, dbTs, idsTs, perWorker, start, claimsDir, range: wide } });
      let onReady!: () => void;
      ready.push(new Promise((resolve) => (onReady = resolve)));
      return new Promise<{ got: number[]; errors: string[] }>((resolve, reject) => {
        worker.on('message', (m: { ready?: boolean; got: number[]; errors: string[] }) => {
          if (m.ready) onReady();
          else resolve(m);
        });
        worker.on('error', reject);
        worker.on('exit', (code) => reject(new Error(`worker ${n} exited with ${code}`)));
      });
    });
    await Promise.all(ready);
    Atomics.store(start, 0, 1);
    Atomics.notify(start, 0);
    const all = await Promise.all(results);
    expect(all.flatMap((r) => r.errors)).toEqual([]);
    const live = homes.flatMap((home) => new JailIds(stateDb(home), home, wide, { claimsDir }).list());
    expect(live).toHaveLength(workers.length * (perWorker - Math.floor(perWorker / 4)));
    const uids = live.map((r) => r.uid);
    expect(new Set(uids).size).toBe(uids.length);
    expect(uids.sort()).toEqual(claims());
    for (const home of homes) {
      for (const { uid, sandboxId } of new JailIds(stateDb(home), home, wide, { claimsDir }).list()) {
        expect(claimOf(uid)).toEqual({ home, sandbox: sandboxId });
      }
    }
  });

  it("takes over a claim whose home's sandbox directory is gone", () => {
    const a = ids(homeA);
    const b = ids(homeB);
    expect(b.make('b1')).toBe(range.start);
    expect(b.make('b2')).toBe(range.start + 1);
    rmSync(join(homeB, 'sandboxes', 'b1'), { recursive: true }); // removed without a release
    rmSync(homeB, { recursive: true }); // then the whole home went
    expect(a.make('a1')).toBe(range.start);
    expect(a.make('a2')).toBe(range.start + 1);
    expect(claimOf(range.start + 1)).toEqual({ home: homeA, sandbox: 'a2' });
  });

  it('takes over a claim naming this home for a sandbox its table does not give that uid', () => {
    const a = ids(homeA);
    writeClaim(range.start, JSON.stringify({ home: homeA, sandbox: 'gone' })); // its row went with a crash before the unlink
    mkdirSync(join(homeA, 'sandboxes', 'gone'), { recursive: true }); // even if its directory is still there
    writeClaim(range.start + 1, JSON.stringify({ home: homeA, sandbox: 's1' })); // s1's, but s1 has no row yet
    expect(a.make('s1')).toBe(range.start);
    expect(a.make('s2')).toBe(range.start + 1);
    expect(claimOf(range.start + 1)).toEqual({ home: homeA, sandbox: 's2' });
  });

  it("moves a sandbox whose recorded uid another home's live sandbox claimed meanwhile", () => {
    const a = ids(homeA);
    const b = ids(homeB);
    const uid = a.make('a1');
    a.make('a2');
    rmSync(claimsDir, { recursive: true }); // a reboot: a's sandboxes are not running, their claims are gone
    expect(b.make('b1')).toBe(uid); // b does not know a's table
    expect(a.acquire('a2')).toBe(uid + 1); // kept: still free on the host
    expect(a.acquire('a1')).toBe(uid + 2); // moved
    expect(a.get('a1')).toBe(uid + 2);
    expect(claimOf(uid)).toEqual({ home: homeB, sandbox: 'b1' }); // b's claim is left alone
    expect(claimOf(uid + 2)).toEqual({ home: homeA, sandbox: 'a1' });
    // Release removes only a claim that is the sandbox's own.
    writeClaim(uid + 1, JSON.stringify({ home: homeB, sandbox: 'b1' })); // (as if taken over behind a's back)
    a.release('a2');
    expect(claimOf(uid + 1)).toEqual({ home: homeB, sandbox: 'b1' });
    b.release('b1');
    expect(existsSync(claimPath(uid))).toBe(false);
  });

  it('skips a claim it cannot read or parse (held by someone unknown), and moves a sandbox off one', () => {
    const a = ids(homeA);
    writeClaim(range.start, ''); // empty
    writeClaim(range.start + 1, '{"home": "/x"'); // cut short
    writeClaim(range.start + 2, JSON.stringify({ home: 'relative/home', sandbox: 's' })); // not an absolute home
    writeClaim(range.start + 3, JSON.stringify({ home: homeB, sandbox: '../../etc' })); // not a sandbox id
    mkdirSync(claimPath(range.start + 4)); // not a file
    expect(a.make('s1')).toBe(range.start + 5);
    writeClaim(range.start + 5, 'garbage'); // s1's claim damaged
    expect(a.acquire('s1')).toBe(range.start + 6);
    expect(readFileSync(claimPath(range.start + 5), 'utf8')).toBe('garbage'); // left as found
    expect(a.list()).toEqual([{ uid: range.start + 6, sandboxId: 's1' }]);
  });

  it('moves a sandbox recorded under an older range into the new one, giving the old uid back', () => {
    const old = ids(homeA);
    const uid = old.make('s1');
    const moved = ids(homeA, { start: 4_000_000, count: 4 });
    expect(moved.acquire('s1')).toBe(4_000_000);
    expect(existsSync(claimPath(uid))).toBe(false);
    expect(moved.list()).toEqual([{ uid: 4_000_000, sandboxId: 's1' }]);
  });

  it('refuses a bad sandbox id and a bad range, and cannot store a duplicate even if the allocator were wrong', () => {
    const a = ids(homeA);
    expect(
      isRoostError(
        thrown(() => a.acquire('../x')),
        'INVALID_ARGUMENT',
      ),
    ).toBe(true);
    expect(() => new JailIds(stateDb(homeA), homeA, { start: 10, count: 5 }, { claimsDir })).toThrow(/ROOST_JAIL_IDS/);
    a.make('s1');
    const insert = stateDb(homeA).prepare('INSERT INTO jail_ids (uid, sandbox_id, created_at) VALUES (?, ?, ?)');
    expect(() => insert.run(range.start, 's2', 'now')).toThrow(/UNIQUE|PRIMARY/);
    expect(() => insert.run(range.start + 1, 's1', 'now')).toThrow(/UNIQUE/);
  });
});

describe('parseJailIds', () => {
  it('reads START-END and START+COUNT', () => {
    expect(parseJailIds('2000000000-2000065535')).toEqual(DEFAULT_JAIL_IDS);
    expect(parseJailIds(' 2000000000+65536 ')).toEqual(DEFAULT_JAIL_IDS);
    expect(parseJailIds('1000-1000')).toEqual({ start: 1000, count: 1 });
    expect(parseJailIds(`1000+${2 ** 31 - 2 - 1000 + 1}`)).toEqual({ start: 1000, count: 2 ** 31 - 1 - 1000 });
  });

  it('says what is wrong, naming ROOST_JAIL_IDS', () => {
    const cases: Array<[string, RegExp]> = [
      ['', /not a range of uids: write START-END or START\+COUNT/],
      ['2000000000', /not a range of uids/],
      ['-5-10', /not a range of uids/],
      ['abc-def', /not a range of uids/],
      ['1.5-10', /not a range of uids/],
      ['5000-4000', /ends before it starts/],
      ['999+10', /starts at 999, among system and normal users: start at 1000/],
      ['0-100', /starts at 0/],
      ['2000000000+0', /is empty/],
      [`2000000000-${2 ** 31 - 1}`, /ends at 2147483647: uids must stay below 2\^31 - 1/],
      ['2147483000+1000', /ends at 2147483999/],
      ['1000+99999999999999999999', /not a range of uids|ends at/],
    ];
    for (const [text, message] of cases) {
      const e = thrown(() => parseJailIds(text));
      expect(isRoostError(e, 'INVALID_ARGUMENT'), `${text}: ${String(e)}`).toBe(true);
      expect((e as Error).message, text).toMatch(/ROOST_JAIL_IDS/);
      expect((e as Error).message, text).toMatch(message);
    }
  });
});

describe('checkJailIdRange', () => {
  it('warns about users, groups and subordinate ranges inside the range, and nothing else', () => {
    const files = {
      passwd: join(root, 'passwd'),
      group: join(root, 'group'),
      subuid: join(root, 'subuid'),
      subgid: join(root, 'subgid'),
    };
    writeFileSync(
      files.passwd,
      [
        'root:x:0:0:root:/root:/bin/bash',
        'alice:x:1000:1000::/home/alice:/bin/sh',
        'svc:x:5000:5005::/:/bin/false',
        'gidonly:x:10:5001::/:/bin/false',
        '# comment',
        '',
      ].join('\n'),
    );
    writeFileSync(files.group, ['root:x:0:', 'staff:x:5002:alice', 'users:x:100:'].join('\n'));
    writeFileSync(files.subuid, ['alice:100000:65536', 'bob:4990:11', 'carol:5099:10'].join('\n'));
    writeFileSync(files.subgid, ['alice:100000:65536', 'bad:line', ''].join('\n'));
    const warnings = checkJailIdRange({ start: 5000, count: 100 }, files);
    expect(warnings).toHaveLength(3);
    expect(warnings[0]).toMatch(/ROOST_JAIL_IDS 5000-5099 overlaps users in .*passwd: user svc \(uid 5000\), user gidonly \(gid 5001\)/);
    expect(warnings[1]).toMatch(/overlaps groups in .*group: group staff \(gid 5002\)/);
    expect(warnings[2]).toMatch(/overlaps subordinate uids in .*subuid: bob \(4990-5000\), carol \(5099-5108\)/);
    expect(checkJailIdRange({ start: 5109, count: 94891 }, files)).toEqual([]);
    expect(checkJailIdRange({ start: 100000, count: 1 }, files).map((w) => w.replace(/ in .*/, ''))).toEqual([
      'ROOST_JAIL_IDS 100000-100000 overlaps subordinate uids',
      'ROOST_JAIL_IDS 100000-100000 overlaps subordinate gids',
    ]);
    // Missing files are skipped.
    expect(
      checkJailIdRange(DEFAULT_JAIL_IDS, { passwd: join(root, 'none'), group: join(root, 'none'), subuid: join(root, 'none'), subgid: join(root, 'none') }),
    ).toEqual([]);
  });
});
