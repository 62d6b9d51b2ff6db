import { randomBytes } from 'node:crypto';
import { mkdirSync, writeFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { buildBusyboxImage, startRegistry, type TestRegistry } from '@roost/testkit';
import { DaemonProcess, prng, roostRun, spawnRoost } from './faults.js';
import { TestHome } from './helpers.js';
import { checkHome, qemuProcesses, readState, type Violation } from './invariants.js';

/*
 * Fault injection (issue 16): the daemon and the CLI are killed with
 * SIGKILL at random points during create, exec, pull, snapshot, restore,
 * fork and file upload; then the home is reopened (the daemon started
 * again, or an embedded command run: opening a home runs recovery) and
 * checked against invariants by an independent checker (test/invariants.ts).
 *
 * A seeded PRNG picks each round's operation, face (embedded CLI, or CLI
 * through a daemon), victim (the CLI or the daemon) and delay (0 .. the
 * operation's duration, measured once in setup); some rounds of create,
 * restore and fork kill instead the moment the operation's QEMU appears
 * (a runtime has started a VM and not yet recorded its pid: a window of
 * milliseconds random delays seldom hit). The seed is printed:
 * replay with ROOST_FAULT_SEED=<seed>; more rounds with
 * ROOST_FAULT_ROUNDS=<n>; only some operations with
 * ROOST_FAULT_OPS=create,fork. One home, one detached sandbox (`base`) and
 * one snapshot of it serve every round; each round boots only what its
 * operation needs, and removes what it made before the next.
 *
 * The rounds collect violations rather than stopping at the first; the
 * tests after them assert one family of invariants each, so a failure
 * names what broke, in which round, with which seed.
 */

const OPS = ['create', 'exec', 'pull', 'snapshot', 'restore', 'fork', 'upload'] as const;
type Op = (typeof OPS)[number];
const SEED = process.env.ROOST_FAULT_SEED ? Number(process.env.ROOST_FAULT_SEED) >>> 0 : randomBytes(4).readUInt32BE(0);
const ROUNDS = Number(process.env.ROOST_FAULT_ROUNDS ?? 30);
const ENABLED: readonly Op[] = process.env.ROOST_FAULT_OPS ? (process.env.ROOST_FAULT_OPS.split(',') as Op[]) : OPS;
/** How long a daemon gets, after its client was killed, to end what the client made (the reconnect grace). */
const OWNER_GRACE_MS = Number(process.env.ROOST_FAULT_OWNER_GRACE_MS ?? 8_000);
const BASE_SNAPSHOT = 'fault-base';
const EXEC_SCRIPT = 'i=0; while [ $i -lt 15 ]; do echo tick $i; i=$((i+1)); sleep 0.05; done';

interface Round {
  n: number;
  op: Op;
  face: 'embedded' | 'daemon';
  victim: 'cli' | 'daemon';
  variant: boolean;
  delayMs: number;
  /** Killed the moment the operation's QEMU appears (between starting a VM and recording it), not after `delayMs`. */
  atVmStart: boolean;
  /** Whether the victim was killed before the operation ended by itself. */
  killed: boolean;
  violations: Violation[];
}

const home = new TestHome();
const daemon = new DaemonProcess(home.root, home.env);
const rounds: Round[] = [];
const durations = new Map<Op, number>();
let baseline: Violation[] = [];
let registry: TestRegistry | undefined;
let work: string | undefined;
let imageRef = '';
let uploadDir = '';
let base = '';
let embeddedOverheadMs = 0;

process.stderr.write(`[fault-injection] seed ${SEED} (replay: ROOST_FAULT_SEED=${SEED}), ${ROUNDS} rounds of ${ENABLED.join(', ')}\n`);

/** `roost ARGS` through the daemon when it runs (explicit --host: never embedded by accident), else embedded. */
function roost(args: string[], timeoutMs = 60_000) {
  return roostRun(daemon.running ? ['--host', daemon.host, ...args] : args, home.env, timeoutMs);
}

async function must(args: string[]): Promise<{ stdout: string; ms: number }> {
  const r = await roost(args);
  if (r.code !== 0) throw new Error(`roost ${args.join(' ')}: exit ${r.code ?? r.signal}: ${r.stderr}`);
  return r;
}

interface Listed {
  id: string;
}

async function makeBase(): Promise<number> {
  const r = await must(['run', '-d', '-l', 'role=fault-base']);
  base = r.stdout.trim();
  return r.ms;
}

/** The command line of an operation in round `n` (variant: detached or not, where that applies). */
function command(op: Op, n: number, variant: boolean): string[] {
  switch (op) {
    case 'create':
      return variant ? ['run', '-d', '-l', `round=${n}`] : ['run', '-l', `round=${n}`, '--', 'sh', '-c', 'sleep 1'];
    case 'exec':
      return ['exec', base, '--', 'sh', '-c', EXEC_SCRIPT];
    case 'pull':
      return ['pull', imageRef];
    case 'snapshot':
      return ['snapshot', base, `fault-${n}`];
    case 'restore':
      return variant ? ['run', '-d', '--snapshot', BASE_SNAPSHOT, '-l', `round=${n}`] : ['run', '--snapshot', BASE_SNAPSHOT, '-l', `round=${n}`, '--', 'true'];
    case 'fork':
      return ['fork', base, '-l', `round=${n}`];
    case 'upload':
      return ['cp', uploadDir, `${base}:/tmp/up-${n}`];
  }
}

beforeAll(async () => {
  work = await mkdtemp(join(tmpdir(), 'roost-faults-'));
  const busybox = await buildBusyboxImage(join(work, 'busybox'), { tag: '1', compression: 'none' });
  registry = await startRegistry({ auth: 'none' });
  await registry.push(busybox.dir, 'roost/busybox:1');
  imageRef = `${registry.host}/roost/busybox:1`;
  uploadDir = join(work, 'upload');
  mkdirSync(uploadDir);
  for (let i = 0; i < 4; i++) writeFileSync(join(uploadDir, `f${i}`), randomBytes(2 << 20));

  // Each operation once, whole, through the daemon: its duration bounds the delays of the rounds.
  await daemon.start();
  durations.set('create', await makeBase());
  durations.set('snapshot', (await must(['snapshot', base, BASE_SNAPSHOT])).ms);
  const restored = await must(['run', '-d', '--snapshot', BASE_SNAPSHOT]);
  durations.set('restore', restored.ms);
  const forked = await must(['fork', base]);
  durations.set('fork', forked.ms);
  await must(['rm', '-f', restored.stdout.trim(), ...forked.stdout.trim().split('\n')]);
  durations.set('exec', (await must(['exec', base, '--', 'sh', '-c', EXEC_SCRIPT])).ms);
  durations.set('upload', (await must(['cp', uploadDir, `${base}:/tmp/up-0`])).ms);
  durations.set('pull', (await must(['pull', imageRef])).ms);
  await must(['rmi', imageRef]);
  await daemon.stop();
  embeddedOverheadMs = (await must(['ps', '-a', '--json'])).ms;
  // The checker on a home nothing happened to: it must find nothing (no false alarms).
  baseline = await checkHome(home.root, { ownersGone: true });
  process.stderr.write(
    `[fault-injection] durations (ms): ${[...durations].map(([op, ms]) => `${op} ${ms.toFixed(0)}`).join(', ')}; embedded CLI overhead ${embeddedOverheadMs.toFixed(0)}\n`,
  );
}, 600_000);

afterAll(async () => {
  await daemon.kill();
  // Only QEMU processes whose command line names this test's own home.
  for (const q of qemuProcesses(home.root)) {
    try {
      process.kill(q.pid, 'SIGKILL');
    } catch {
      // gone
    }
  }
  await home.cleanup();
  await registry?.stop();
  if (work) await rm(work, { recursive: true, force: true });
}, 120_000);

/** Polls the checker until it finds nothing new (not in `known`) or `ms` pass; the last new findings. */
async function settle(ms: number, known: Set<string>): Promise<Violation[]> {
  const end = Date.now() + ms;
  for (;;) {
    const v = (await checkHome(home.root, { ownersGone: true })).filter((x) => !known.has(key(x)));
    if (v.length === 0 || Date.now() >= end) return v;
    await new Promise((r) => setTimeout(r, 250));
  }
}

const BOOTS: ReadonlySet<Op> = new Set(['create', 'restore', 'fork']);
const when = (r: Round) => (r.atVmStart ? 'at QEMU start' : `at ${r.delayMs} ms`);
const key = (v: Violation) => `${v.invariant}|${v.detail}`;

async function runRound(round: Round, known: Set<string>): Promise<void> {
  const add = (invariant: string, detail: string) => round.violations.push({ invariant, detail });
  if (round.face === 'daemon' && !daemon.running) await daemon.start();
  if (round.face === 'embedded' && daemon.running) await daemon.stop();

  const p = spawnRoost(
    daemon.running ? ['--host', daemon.host, ...command(round.op, round.n, round.variant)] : command(round.op, round.n, round.variant),
    home.env,
  );
  let daemonKilled = false;
  const kill = () => {
    if (round.victim === 'cli') p.kill();
    else if (p.child.exitCode === null) {
      daemonKilled = true;
      void daemon.kill();
    }
  };
  const before = new Set(qemuProcesses(home.root).map((q) => q.pid));
  const timer = round.atVmStart
    ? setInterval(() => {
        if (qemuProcesses(home.root).some((q) => !before.has(q.pid))) {
          clearInterval(timer);
          kill();
        }
      }, 0)
    : setTimeout(kill, round.delayMs);
  const guard = setTimeout(() => p.kill(), round.delayMs + 30_000);
  const r = await p.done;
  clearInterval(timer);
  clearTimeout(guard);
  round.killed = r.signal === 'SIGKILL' || daemonKilled;
  if (daemonKilled) await daemon.kill(); // wait for its exit
  if (r.signal === 'SIGKILL' && round.victim === 'daemon') add('cli-ends-with-daemon', `the CLI did not end within 30 s of its daemon's death`);
  if (!round.killed && r.code !== 0)
    add('round-completes', `roost ${command(round.op, round.n, round.variant).join(' ')} failed unprovoked: ${r.code}: ${r.stderr.trim()}`);
  if (r.stderr.match(/^\s+at .+:\d+:\d+\)?$/m)) add('no-stack-trace', `the CLI printed a stack trace: ${r.stderr.trim().slice(0, 500)}`);

  // Reopen: a daemon again after the daemon died, an embedded command after an embedded CLI died.
  if (daemonKilled) {
    try {
      await daemon.start();
    } catch (e) {
      add('daemon-restarts', (e as Error).message);
    }
  } else if (!daemon.running) {
    const ps = await roost(['ps', '-a', '--json']);
    if (ps.code !== 0) add('home-reopens', `roost ps -a after the kill: ${ps.code}: ${ps.stderr.trim()}`);
  }
  // A daemon whose client died may still be finishing (or ending) what that client asked for.
  round.violations.push(...(await settle(daemon.running && !daemonKilled ? OWNER_GRACE_MS : 1_000, known)));
  await tidy(round);
}

/** Removes what the round made (every sandbox and snapshot but the base ones, the pulled image); checks base survived. */
async function tidy(round: Round): Promise<void> {
  const add = (invariant: string, detail: string) => round.violations.push({ invariant, detail });
  const state = readState(home.root);
  const extra = (state?.sandboxes ?? []).filter((s) => s.id !== base).map((s) => s.id);
  if (extra.length) {
    const r = await roost(['rm', '-f', ...extra]);
    if (r.code !== 0) add('leftovers-removable', `roost rm -f ${extra.join(' ')}: ${r.code}: ${r.stderr.trim()}`);
  }
  // Fork snapshots went with their sandboxes; user snapshots of the round are removed here.
  const extraSnaps = (state?.snapshots ?? []).filter((s) => s.name !== BASE_SNAPSHOT && s.kind === 'user').map((s) => s.name);
  if (extraSnaps.length) {
    const r = await roost(['snapshots', 'rm', ...extraSnaps]);
    if (r.code !== 0) add('leftovers-removable', `roost snapshots rm ${extraSnaps.join(' ')}: ${r.code}: ${r.stderr.trim()}`);
  }
  if (round.op === 'pull') await roost(['rmi', '-f', imageRef]); // absent when the kill came first

  // The base sandbox is detached: no client's death may take it down.
  const b = state?.sandboxes.find((s) => s.id === base);
  const alive = b?.status === 'running' && (await roost(['exec', base, '--', 'sh', '-c', 'rm -rf /tmp/up-*'])).code === 0;
  if (!alive) {
    add('detached-survives', `the detached sandbox ${base} is ${b?.status ?? 'gone'} or does not answer after the round`);
    if (b) await roost(['rm', '-f', base]);
    await makeBase();
  }
  if (!state?.snapshots.some((s) => s.name === BASE_SNAPSHOT)) {
    add('record-has-files', `snapshot ${BASE_SNAPSHOT} is gone after the round`);
    await must(['snapshot', base, BASE_SNAPSHOT]);
  }
  const basePid = readState(home.root)?.sandboxes.find((s) => s.id === base)?.pid;
  const left = qemuProcesses(home.root).map((q) => q.pid);
  if (left.some((pid) => pid !== basePid)) add('leftovers-removable', `QEMU processes ${left.join(', ')} remain besides the base sandbox's (${basePid})`);
}

describe(`fault injection (seed ${SEED})`, () => {
  it('a home nothing went wrong in passes the checker', () => {
    expect(baseline).toEqual([]);
  });

  it('the checker finds what is wrong in a home (made by hand)', async () => {
    const bad = join(work!, 'bad-home');
    for (const d of ['sandboxes/aaaaaaaaaaaa', 'sandboxes/bbbbbbbbbbbb', 'snapshots/.tmp-cccccccccccc', 'images/blobs/sha256'])
      mkdirSync(join(bad, d), { recursive: true });
    writeFileSync(join(bad, 'images/blobs/sha256/.tmp-999999999-0a1b2c'), 'partial layer');
    writeFileSync(join(bad, 'sandboxes/bbbbbbbbbbbb/agent.sock'), '');
    const db = new Database(join(bad, 'roost.db'));
    db.exec(`CREATE TABLE sandboxes (id TEXT PRIMARY KEY, status TEXT, pid INTEGER, info_json TEXT);
      CREATE TABLE events (id INTEGER PRIMARY KEY AUTOINCREMENT, time TEXT, type TEXT, sandbox_id TEXT);`);
    const put = db.prepare('INSERT INTO sandboxes VALUES (?, ?, ?, ?)');
    put.run('bbbbbbbbbbbb', 'stopped', null, JSON.stringify({ detached: false, autoRemove: true, startedAt: null }));
    put.run('dddddddddddd', 'running', 999_999_999, JSON.stringify({ detached: true, startedAt: null }));
    const ev = db.prepare('INSERT INTO events (time, type, sandbox_id) VALUES (?, ?, ?)');
    const t = new Date().toISOString();
    for (const [type, id] of [
      ['sandbox.created', 'bbbbbbbbbbbb'],
      ['sandbox.started', 'bbbbbbbbbbbb'],
      ['sandbox.started', 'dddddddddddd'],
      ['sandbox.created', 'eeeeeeeeeeee'],
    ])
      ev.run(t, type, id);
    db.close();
    const found = (await checkHome(bad, { ownersGone: true })).map((v) => v.invariant).sort();
    expect(found).toEqual(
      [
        'dir-has-record', // sandboxes/aaaaaaaaaaaa
        'record-has-files', // dddddddddddd has no directory
        'record-has-qemu', // dddddddddddd running, pid dead
        'no-temp-files', // the blob
        'no-temp-files', // the snapshot's temp directory
        'no-stale-socket', // bbbbbbbbbbbb stopped with agent.sock
        'ends-with-owner', // bbbbbbbbbbbb made with autoRemove, its owner gone
        'events-tell-story', // bbbbbbbbbbbb stopped, last event started
        'events-tell-story', // dddddddddddd: started without created
        'no-lost-record', // eeeeeeeeeeee gone without sandbox.deleted
      ].sort(),
    );
  });

  it(`runs ${ROUNDS} rounds of SIGKILL at random points`, async () => {
    const rand = prng(SEED);
    let face: Round['face'] = 'embedded';
    const started = Date.now();
    const seen = new Set<string>();
    for (let n = 1; n <= ROUNDS; n++) {
      // Every draw is made each round, in one order, so a seed replays the same choices.
      const op = ENABLED[Math.floor(rand() * ENABLED.length)]!;
      if (rand() < 0.4) face = face === 'embedded' ? 'daemon' : 'embedded'; // switching costs a daemon start or stop
      const victim: Round['victim'] = rand() < 0.5 && face === 'daemon' ? 'daemon' : 'cli';
      const variant = rand() < 0.5;
      // 0 .. the operation's duration through the daemon (CLI start included); embedded, the same span also covers opening the home.
      const delayMs = Math.round(rand() * (durations.get(op) ?? 1_000));
      // Some rounds of operations that start a VM kill at the moment its QEMU appears: a window of milliseconds that
      // random delays seldom hit, where a runtime has started a VM and not yet recorded it.
      const atVmStart = rand() < 0.3 && BOOTS.has(op);
      const round: Round = { n, op, face, victim, variant, delayMs, atVmStart, killed: false, violations: [] };
      const t0 = Date.now();
      try {
        await runRound(round, seen);
      } catch (e) {
        round.violations.push({ invariant: 'round-completes', detail: (e as Error).stack ?? String(e) });
      }
      // A violation a round left stays until something removes it: it is reported by the round that caused it.
      round.violations = round.violations.filter((v) => !seen.has(key(v)));
      for (const v of round.violations) seen.add(key(v));
      rounds.push(round);
      process.stderr.write(
        `[fault-injection] round ${n}/${ROUNDS}: ${op}${variant ? '*' : ''} ${face}, SIGKILL ${victim} ${when(round)}${round.killed ? '' : ' (it had ended)'}` +
          ` -> ${round.violations.length} violation(s) in ${((Date.now() - t0) / 1000).toFixed(1)} s\n` +
          round.violations.map((v) => `    ${v.invariant}: ${v.detail}\n`).join(''),
      );
    }
    const all = rounds.flatMap((r) => r.violations.map((v) => ({ round: r.n, op: r.op, face: r.face, victim: r.victim, when: when(r), ...v })));
    process.stderr.write(
      `[fault-injection] seed ${SEED}: ${rounds.length} rounds (${rounds.filter((r) => r.killed).length} killed mid-operation) in ${((Date.now() - started) / 1000).toFixed(0)} s, ` +
        `${all.length} violation(s)${all.length ? `: ${[...new Set(all.map((v) => v.invariant))].join(', ')}` : ''}\n`,
    );
    if (process.env.ROOST_FAULT_REPORT) writeFileSync(process.env.ROOST_FAULT_REPORT, JSON.stringify({ seed: SEED, rounds, violations: all }, null, 2));
    expect(rounds).toHaveLength(ROUNDS);
  }, 1_800_000);

  /** The violations of these invariants, each with the round that found it, for one assertion. */
  function found(...invariants: string[]): string[] {
    return rounds.flatMap((r) =>
      r.violations
        .filter((v) => invariants.includes(v.invariant))
        .map((v) => `seed ${SEED} round ${r.n} (${r.op}${r.variant ? '*' : ''} ${r.face}, SIGKILL ${r.victim} ${when(r)}): ${v.invariant}: ${v.detail}`),
    );
  }

  it('every QEMU of the home has a record, every running record its QEMU, no record left half-way', () => {
    expect(found('qemu-has-record', 'record-has-qemu', 'no-transient-status')).toEqual([]);
  });

  it('no sandbox directory, snapshot or lease without a record, and every record has its files', () => {
    expect(found('dir-has-record', 'record-has-files', 'no-unowned-snapshot', 'lease-has-record', 'no-stale-socket')).toEqual([]);
  });

  it('no temp file of a dead process is left once the home was reopened', () => {
    expect(found('no-temp-files')).toEqual([]);
  });

  it('a non-detached sandbox ends with its owner', () => {
    expect(found('ends-with-owner')).toEqual([]);
  });

  it("events are in order and tell each sandbox's story", () => {
    expect(found('events-in-order', 'events-tell-story', 'no-lost-record')).toEqual([]);
  });

  it('the home reopens, detached sandboxes survive their clients, and whatever is left can be removed', () => {
    expect(
      found('daemon-restarts', 'home-reopens', 'detached-survives', 'leftovers-removable', 'cli-ends-with-daemon', 'round-completes', 'no-stack-trace'),
    ).toEqual([]);
  });

  it('at the end the daemon starts on the home, every sandbox is removed, and no QEMU of the home is left', async () => {
    if (!daemon.running) await daemon.start();
    const list = JSON.parse((await must(['ps', '-a', '--json'])).stdout) as Listed[];
    if (list.length) await must(['rm', '-f', ...list.map((s) => s.id)]);
    const snaps = (await must(['snapshots', 'ls', '-q'])).stdout.split('\n').filter(Boolean);
    if (snaps.length) await must(['snapshots', 'rm', ...snaps]);
    expect(qemuProcesses(home.root)).toEqual([]);
    await daemon.stop();
    expect(await checkHome(home.root, { ownersGone: true })).toEqual([]);
  }, 120_000);
});
