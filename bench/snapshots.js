// Snapshot, restore and fork benchmarks (issue 5), run by bench/run.js after
// the foundation ones so a restore is compared with the cold start of the
// same run. Each figure is printed beside its floor and stored in results.figures.
//
// All of it uses one source: an idle default sandbox (256 MiB) that has run
// one command.
//
// 1. Snapshot creation time and size, beside copying the guest's RAM size at
//    page-cache speed (`cp` of a 256 MiB file on tmpfs; and, as context, the
//    same bytes written and fsynced to the home's filesystem, as a snapshot does).
// 2. Restore -> first run('true'), split at create resolving (agent answered),
//    beside the cold start (create -> first run('true')) of this run. Target:
//    at most a tenth of the cold start.
// 3. fork({ count: 10 }): wall time; idle memory of the copies (Pss, private)
//    and the marginal Pss of one more copy, beside the source's own Pss.
//    Target: under 16 MiB per idle copy.
import { execFile } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { Runtime, Sandbox } from '@roost/core';
import { MiB, sum, mean, median, pct, ms, mib, mibB, sleep } from './stats.js';

const exec = promisify(execFile);

const SNAPSHOT_RUNS = Number(process.env.BENCH_SNAPSHOT_RUNS ?? 5);
const RESTORE_RUNS = Number(process.env.BENCH_RESTORE_RUNS ?? 10);
const FORK_ROUNDS = Number(process.env.BENCH_FORK_ROUNDS ?? 3);
const FORK_COUNT = 10;
const IDLE_MS = 2_000;
const MAX_ATTEMPTS = 3;

/**
 * Runs the snapshot benchmarks. `home` is the throwaway Roost home of run.js
 * (it shares the real cache); `coldStartP50` is the cold start (create ->
 * first run('true')) p50 measured earlier in this run.
 */
export async function benchSnapshots({ home, row, results, coldStartP50 }) {
  const runtime = await Runtime.shared(home);
  const sandboxes = new Set();
  const snapshots = new Set();
  const track = (sb) => {
    sandboxes.add(sb);
    return sb;
  };
  const drop = async (sb) => {
    await sb.remove({ force: true });
    sandboxes.delete(sb);
  };
  const takeSnapshot = async (sb, name) => {
    snapshots.add(name);
    return sb.snapshot({ name, timeoutMs: 120_000 });
  };
  const removeSnapshot = async (name) => {
    await runtime.snapshots.remove(name);
    snapshots.delete(name);
  };
  // A restore or fork whose VM fails to boot is recorded, printed and tried
  // again (up to MAX_ATTEMPTS), so one failure does not lose the other figures.
  const tries = { restore: { attempts: 0, failures: [] }, fork: { attempts: 0, failures: [] } };
  const attempt = async (kind, fn) => {
    for (let i = 1; ; i++) {
      tries[kind].attempts++;
      try {
        return await fn();
      } catch (e) {
        if (i >= MAX_ATTEMPTS || e?.code !== 'BOOT_FAILED') throw e;
        const failure = { code: e.code, message: String(e.message).split('\n')[0], console: e.details?.console, qemu: e.details?.qemu };
        if (typeof e.details?.dir === 'string') failure.consoleLog = tail(join(e.details.dir, 'console.log'), 40);
        tries[kind].failures.push(failure);
        // A sandbox that failed to boot is kept (for its logs) and counts as a dependent of its snapshot.
        for (const info of await runtime.list({ status: 'failed' })) await (await runtime.get(info.id)).remove({ force: true });
        console.log(`  (snapshots: a ${kind} failed, trying again: ${failure.message}; console: ${(failure.console ?? []).join(' | ')})`);
      }
    }
  };
  const scratch = mkdtempSync(join(existsSync('/dev/shm') ? '/dev/shm' : tmpdir(), 'roost-bench-snap-'));
  // On the filesystem of the throwaway home (which run.js makes in tmpdir()).
  const homeScratch = mkdtempSync(join(tmpdir(), 'roost-bench-snap-floor-'));
  try {
    // ---- the source: idle default sandbox that has run one command -------------
    const source = track(await Sandbox.create({ home, timeoutMs: 60_000 }));
    await source.commands.run('true', { args: [] });
    await sleep(IDLE_MS);
    const sourceIdle = memory(source);
    const memoryMiB = source.info.memoryMiB;
    const ramBytes = memoryMiB * MiB;
    const sourceDiskBytes = (await du(join(source.dir, 'disk.qcow2'))).allocated;

    // ---- 1. snapshot creation time and size ---------------------------------
    const create = [];
    const sizeBytes = [];
    const duAllocated = [];
    const duApparent = [];
    for (let i = 0; i < SNAPSHOT_RUNS; i++) {
      const name = `bench-snapshot-${i}`;
      const t = performance.now();
      const info = await takeSnapshot(source, name);
      create.push(performance.now() - t);
      sizeBytes.push(info.sizeBytes);
      const d = await du(join(home, 'snapshots', info.id));
      duAllocated.push(d.allocated);
      duApparent.push(d.apparent);
      await removeSnapshot(name);
    }
    // Floor: the guest's RAM size copied at page-cache speed: `cp` of a file of
    // that size (in the page cache, on tmpfs) to tmpfs. Context: the same bytes
    // written to the home's filesystem and fsynced (a snapshot fsyncs its files).
    const src = join(scratch, 'ram.bin');
    writeFileSync(src, patternBlock(ramBytes));
    const cp = [];
    const fsynced = [];
    for (let i = 0; i < SNAPSHOT_RUNS; i++) {
      cp.push(await timed(() => exec('cp', [src, join(scratch, 'copy.bin')])));
      rmSync(join(scratch, 'copy.bin'), { force: true });
      fsynced.push(await timed(() => exec('dd', [`if=${src}`, `of=${join(homeScratch, 'copy.bin')}`, 'bs=1M', 'conv=fsync', 'status=none'])));
      rmSync(join(homeScratch, 'copy.bin'), { force: true });
    }
    rmSync(src, { force: true });
    const createP50 = median(create);
    results.figures.snapshotCreate = {
      unit: 'ms',
      memoryMiB,
      runs: SNAPSHOT_RUNS,
      p50: createP50,
      samples: create,
      size: {
        unit: 'bytes',
        sizeBytesP50: median(sizeBytes),
        sizeBytes,
        duAllocatedP50: median(duAllocated),
        duAllocated,
        duApparent,
        sourceTouchedRamKiB: sourceIdle.pssShmem,
        sourceDiskAllocated: sourceDiskBytes,
      },
      floor: {
        what: `cp of a ${memoryMiB} MiB file in the page cache, tmpfs to tmpfs (median)`,
        ms: median(cp),
        samples: cp,
        fsyncedToHome: { what: `dd of the same ${memoryMiB} MiB to the home's filesystem, conv=fsync (median)`, ms: median(fsynced), samples: fsynced },
      },
      ratio: createP50 / median(cp),
      target: 'none stated',
    };
    row(
      `snapshot create (idle ${memoryMiB} MiB, median of ${SNAPSHOT_RUNS})`,
      `${ms(createP50)}`,
      `cp ${memoryMiB} MiB tmpfs ${ms(median(cp))}; +fsync to home fs ${ms(median(fsynced))}`,
      `${(createP50 / median(cp)).toFixed(2)}x the cp`,
    );
    row(
      '  snapshot size (sizeBytes; du)',
      `${mibB(median(sizeBytes))}; du ${mibB(median(duAllocated))}`,
      `RAM touched ${mib(sourceIdle.pssShmem)} + disk ${mibB(sourceDiskBytes)}`,
      `of ${memoryMiB} MiB RAM; du apparent ${mibB(median(duApparent))}`,
    );

    // ---- 2. restore -> first run('true') vs the cold start ---------------------
    const restoreName = 'bench-restore';
    await takeSnapshot(source, restoreName);
    const total = [];
    const created = [];
    const firstRun = [];
    const secondRun = [];
    for (let i = 0; i < RESTORE_RUNS; i++) {
      const { sb, t0, t1 } = await attempt('restore', async () => {
        const t0 = performance.now();
        const sb = await Sandbox.create({ home, snapshot: restoreName, timeoutMs: 60_000 });
        return { sb, t0, t1: performance.now() };
      });
      track(sb);
      await sb.commands.run('true', { args: [] });
      const t2 = performance.now();
      total.push(t2 - t0);
      created.push(t1 - t0);
      firstRun.push(t2 - t1);
      // Not part of the figure: the next run('true'), to show what the first one pays once.
      secondRun.push(await timed(() => sb.commands.run('true', { args: [] })));
      await drop(sb);
    }
    await removeSnapshot(restoreName);
    const restoreP50 = median(total);
    results.figures.snapshotRestore = {
      unit: 'ms',
      runs: RESTORE_RUNS,
      p50: restoreP50,
      p90: pct(total, 90),
      min: Math.min(...total),
      samples: total,
      split: {
        createResolvedP50: median(created),
        firstRunP50: median(firstRun),
        secondRunP50: median(secondRun),
        createResolved: created,
        firstRun,
        secondRun,
      },
      floor: { what: 'cold start p50 (create -> first run(true)), this run', p50: coldStartP50 },
      ratio: restoreP50 / coldStartP50,
      target: 'ratio <= 0.1 (a tenth of the cold start)',
    };
    row(
      'restore -> first run(true)',
      `p50 ${ms(restoreP50)} p90 ${ms(pct(total, 90))} min ${ms(Math.min(...total))}`,
      `cold start p50 ${ms(coldStartP50)}`,
      `${(restoreP50 / coldStartP50).toFixed(2)}x (target <= 0.1x)`,
    );
    row('  restore: split (p50)', `create ${ms(median(created))}`, `then first run ${ms(median(firstRun))}`, `(the second run: ${ms(median(secondRun))})`);

    // ---- 3. fork({ count: 10 }): wall time and memory --------------------------
    const forkMs = [];
    const rounds = [];
    for (let r = 0; r < FORK_ROUNDS; r++) {
      const { clones, t } = await attempt('fork', async () => {
        const t0 = performance.now();
        const clones = await source.fork({ count: FORK_COUNT, timeoutMs: 120_000 });
        return { clones, t: performance.now() - t0 };
      });
      forkMs.push(t);
      clones.forEach(track);
      await sleep(IDLE_MS);
      rounds.push({ source: memory(source), clones: clones.map(memory) });
      await Promise.all(clones.map(drop));
    }
    const perRound = rounds.map((r) => ({
      pss: mean(r.clones.map((c) => c.pss)),
      private: mean(r.clones.map((c) => c.private)),
      total: r.source.pss + sum(r.clones.map((c) => c.pss)),
    }));
    const clonePss = median(perRound.map((r) => r.pss));
    const clonePrivate = median(perRound.map((r) => r.private));
    // Where a copy's memory is, from the last round (mean over its copies).
    const last = rounds.at(-1).clones;
    const breakdown = Object.fromEntries(
      ['guestRam', 'tcgCode', 'other'].map((k) => [k, { pss: mean(last.map((c) => c.parts[k].pss)), private: mean(last.map((c) => c.parts[k].private)) }]),
    );

    // Marginal cost: one copy, then nine more from the same source.
    const [first] = await attempt('fork', () => source.fork({ count: 1, timeoutMs: 120_000 }));
    track(first);
    await sleep(IDLE_MS);
    const t1 = memory(source).pss + memory(first).pss;
    const more = await attempt('fork', () => source.fork({ count: FORK_COUNT - 1, timeoutMs: 120_000 }));
    more.forEach(track);
    await sleep(IDLE_MS);
    const after = { source: memory(source), first: memory(first), more: more.map(memory) };
    const t10 = after.source.pss + after.first.pss + sum(after.more.map((c) => c.pss));
    const marginal = (t10 - t1) / (FORK_COUNT - 1);
    // The same from the fork of 10 above (its copies share one snapshot's memory file; the two forks here use two).
    const marginalOneFork = (median(perRound.map((r) => r.total)) - t1) / (FORK_COUNT - 1);
    await Promise.all([first, ...more].map(drop));

    const snapshotFloor = createP50 + median(created);
    results.figures.snapshotFork = {
      unit: 'ms',
      count: FORK_COUNT,
      rounds: FORK_ROUNDS,
      p50: median(forkMs),
      samples: forkMs,
      floor: { what: 'one snapshot create p50 + one restore (create resolved) p50, each measured alone in this run', ms: snapshotFloor },
      target: 'none stated',
    };
    results.figures.snapshotForkMemory = {
      unit: 'KiB',
      count: FORK_COUNT,
      idleMs: IDLE_MS,
      perClone: {
        pss: clonePss,
        private: clonePrivate,
        what: 'mean over the copies of a fork of 10, median over rounds; private = Private_Clean + Private_Dirty',
      },
      perCloneBreakdown: {
        ...breakdown,
        what: 'mean over the copies of the last round, by mapping (/proc/PID/smaps): guest RAM, TCG translated-code buffer (none under KVM), the rest of QEMU',
      },
      marginal: {
        perExtraClone: marginal,
        t1,
        t10,
        what: '(T10 - T1) / 9: T1 = Pss(source) + Pss(1 copy); T10 after 9 more copies from a second fork of the same source',
        perExtraCloneOneFork: marginalOneFork,
        oneForkWhat: '(T10 - T1) / 9 with T10 from the fork of 10 (median over rounds)',
        after,
      },
      rounds,
      floor: {
        what: 'Pss of the source, a booted idle sandbox (before any fork)',
        pss: sourceIdle.pss,
        private: sourceIdle.private,
        touchedRam: sourceIdle.pssShmem,
        parts: sourceIdle.parts,
      },
      target: '< 16 MiB per idle copy',
    };
    row(
      `fork({ count: ${FORK_COUNT} }) wall time (median of ${FORK_ROUNDS})`,
      `${ms(median(forkMs))}`,
      `snapshot ${ms(createP50)} + restore ${ms(median(created))}`,
      'floor: the parts once, alone',
    );
    row(
      `fork x${FORK_COUNT}: per copy, idle (mean)`,
      `Pss ${mib(clonePss)} private ${mib(clonePrivate)}`,
      `source Pss ${mib(sourceIdle.pss)} (private ${mib(sourceIdle.private)})`,
      'target < 16 MiB per copy',
    );
    row(
      '  per copy by mapping (Pss / private)',
      `guest RAM ${mib(breakdown.guestRam.pss)} / ${mib(breakdown.guestRam.private)}`,
      `TCG code ${mib(breakdown.tcgCode.pss)} / ${mib(breakdown.tcgCode.private)}`,
      `rest of QEMU ${mib(breakdown.other.pss)} / ${mib(breakdown.other.private)}`,
    );
    row(
      'fork: marginal Pss per extra copy',
      `${mib(marginal)} ((T10-T1)/9)`,
      `source Pss ${mib(sourceIdle.pss)}`,
      `target < 16 MiB; one fork of 10: ${mib(marginalOneFork)}`,
    );
    results.figures.snapshotBootFailures = {
      ...tries,
      what: 'restores and forks whose VM failed to boot, each tried again (timings are of the attempts that worked)',
    };
    const failed = tries.restore.failures.length + tries.fork.failures.length;
    if (failed > 0) {
      row(
        '  failed to boot (then retried)',
        `restores ${tries.restore.failures.length} of ${tries.restore.attempts}`,
        `forks ${tries.fork.failures.length} of ${tries.fork.attempts}`,
        'see snapshotBootFailures',
      );
    }
  } finally {
    await Promise.allSettled([...sandboxes].map((sb) => sb.remove({ force: true })));
    for (const name of snapshots) await runtime.snapshots.remove(name).catch(() => {});
    rmSync(scratch, { recursive: true, force: true });
    rmSync(homeScratch, { recursive: true, force: true });
  }
}

/** Idle memory of a sandbox's QEMU from /proc/PID/smaps_rollup, in KiB. */
function memory(sb) {
  const pid = sb.vmPid;
  if (pid === null) throw new Error(`sandbox ${sb.id} has no running VM`);
  const text = readFileSync(`/proc/${pid}/smaps_rollup`, 'utf8');
  const field = (name) => {
    const m = new RegExp(`^${name}:\\s+(\\d+)`, 'm').exec(text);
    if (!m) throw new Error(`no ${name} in /proc/${pid}/smaps_rollup`);
    return Number(m[1]);
  };
  return { pss: field('Pss'), private: field('Private_Clean') + field('Private_Dirty'), pssShmem: field('Pss_Shmem'), rss: field('Rss'), parts: parts(pid) };
}

/**
 * Pss and private KiB of a QEMU process by mapping (/proc/PID/smaps): the
 * guest's RAM (the memfd of a booted VM, the snapshot's memory file of a
 * restored one), TCG's translated-code buffer (an anonymous rwx mapping, or
 * the tcg-jit memfd with split W^X; KVM has none), and the rest of QEMU.
 */
function parts(pid) {
  const out = { guestRam: { pss: 0, private: 0 }, tcgCode: { pss: 0, private: 0 }, other: { pss: 0, private: 0 } };
  let part = out.other;
  for (const line of readFileSync(`/proc/${pid}/smaps`, 'utf8').split('\n')) {
    const head = /^[0-9a-f]+-[0-9a-f]+ (\S+) \S+ \S+ \d+\s*(.*)$/.exec(line);
    if (head) {
      const [, perms, path] = head;
      if (path.includes('memory-backend') || /\/snapshots\/[0-9a-f]{12}\/memory( \(deleted\))?$/.test(path)) part = out.guestRam;
      else if ((path === '' && perms === 'rwxp') || path.includes('tcg-jit')) part = out.tcgCode;
      else part = out.other;
      continue;
    }
    const m = /^(Pss|Private_Clean|Private_Dirty):\s+(\d+)/.exec(line);
    if (m) part[m[1] === 'Pss' ? 'pss' : 'private'] += Number(m[2]);
  }
  return out;
}

/** The last `n` lines of a text file ([] if it cannot be read). */
function tail(path, n) {
  try {
    return readFileSync(path, 'utf8').trimEnd().split('\n').slice(-n);
  } catch {
    return [];
  }
}

/** Bytes `du` reports for a path: allocated (the default) and apparent. */
async function du(path) {
  const bytes = async (flags) => Number((await exec('du', ['-s', ...flags, path])).stdout.split('\t')[0]);
  return { allocated: await bytes(['-B1']), apparent: await bytes(['-b']) };
}

/** `bytes` of a pseudo-random MiB repeated (not zeros: nothing may make it sparse). */
function patternBlock(bytes) {
  const block = Buffer.alloc(MiB);
  for (let i = 0; i < block.length; i += 4) block.writeUInt32LE((Math.imul(i, 2654435761) ^ (i >>> 7)) >>> 0, i);
  const out = Buffer.allocUnsafe(bytes);
  for (let off = 0; off < bytes; off += MiB) block.copy(out, off);
  return out;
}

async function timed(fn) {
  const t0 = performance.now();
  await fn();
  return performance.now() - t0;
}
