// The jail's cost (issue 17), run by bench/run.js: cold start, restore and
// idle memory of sandboxes whose QEMU is confined (the default) beside the
// same with `jail: false`, in the same run. Two homes sharing the real cache,
// one runtime each, runs interleaved (confined, unconfined, confined, ...)
// so that the machine's drift hits both alike. Target: the jail adds under 5%.
import { mkdtempSync, readFileSync, rmSync, symlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Runtime } from '@roost/core';
import { median, ms, mib, sleep } from './stats.js';

const RUNS = Number(process.env.BENCH_JAIL_RUNS ?? 8);

/** `realHome`: the Roost home whose cache both homes share. */
export async function benchJail({ realHome, row, results }) {
  const homes = [];
  const open = async (jail) => {
    const home = mkdtempSync(join(tmpdir(), 'roost-bench-jail-'));
    symlinkSync(join(realHome, 'cache'), join(home, 'cache'));
    homes.push(home);
    return Runtime.open({ home, jail });
  };
  const jailed = await open(true);
  const unconfined = await open(false);
  const sides = [
    { name: 'jail', runtime: jailed, cold: [], restore: [] },
    { name: 'no jail', runtime: unconfined, cold: [], restore: [] },
  ];
  try {
    const firstRun = async (runtime, options) => {
      const t0 = performance.now();
      const sb = await runtime.create({ timeoutMs: 60_000, ...options });
      await sb.commands.run('true', { args: [] });
      const elapsed = performance.now() - t0;
      await sb.remove({ force: true });
      return elapsed;
    };
    // A warm-up each: the jail's QEMU runtime directory is built on first use.
    for (const side of sides) await firstRun(side.runtime, {});
    for (let i = 0; i < RUNS; i++) for (const side of sides) side.cold.push(await firstRun(side.runtime, {}));

    for (const side of sides) {
      const source = await side.runtime.create({ timeoutMs: 60_000 });
      await source.commands.run('true', { args: [] });
      await source.snapshot({ name: 'bench-jail', timeoutMs: 120_000 });
      await source.remove({ force: true });
    }
    for (let i = 0; i < RUNS; i++) for (const side of sides) side.restore.push(await firstRun(side.runtime, { snapshot: 'bench-jail' }));

    // Idle memory: one sandbox each, after one command; the jailer (QEMU's parent) counted with the jail.
    const idle = [];
    for (const side of sides) {
      const sb = await side.runtime.create({ timeoutMs: 60_000 });
      await sb.commands.run('true', { args: [] });
      idle.push(sb);
    }
    await sleep(2_000);
    const memory = idle.map((sb) => {
      const pid = sb.info.pid;
      const parent = Number(/^PPid:\s+(\d+)/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1]);
      const jailer = sb.info.confinement?.jailed ? rssKiB(parent) : 0;
      return { qemuRssKiB: rssKiB(pid), qemuPssKiB: pssKiB(pid), jailerRssKiB: jailer };
    });
    await Promise.all(idle.map((sb) => sb.remove({ force: true })));

    const [j, u] = sides;
    const coldRatio = median(j.cold) / median(u.cold);
    const restoreRatio = median(j.restore) / median(u.restore);
    results.figures.jail = {
      unit: 'ms',
      runs: RUNS,
      coldStart: { jail: { p50: median(j.cold), samples: j.cold }, noJail: { p50: median(u.cold), samples: u.cold }, ratio: coldRatio },
      restore: { jail: { p50: median(j.restore), samples: j.restore }, noJail: { p50: median(u.restore), samples: u.restore }, ratio: restoreRatio },
      idleMemoryKiB: { jail: memory[0], noJail: memory[1] },
      target: 'the jail adds under 5% (ratio < 1.05); idle memory does not grow',
    };
    row('jail: cold start (create -> run)', `p50 ${ms(median(j.cold))}`, `jail: false p50 ${ms(median(u.cold))}`, `${coldRatio.toFixed(3)}x (target < 1.05x)`);
    row(
      'jail: restore -> first run',
      `p50 ${ms(median(j.restore))}`,
      `jail: false p50 ${ms(median(u.restore))}`,
      `${restoreRatio.toFixed(3)}x (target < 1.05x)`,
    );
    row(
      'jail: idle memory (QEMU PSS + jailer RSS)',
      `${mib(memory[0].qemuPssKiB + memory[0].jailerRssKiB)} (jailer ${mib(memory[0].jailerRssKiB)})`,
      `jail: false ${mib(memory[1].qemuPssKiB)}`,
      'target: no growth',
    );
  } finally {
    for (const side of sides) await side.runtime.snapshots.remove('bench-jail').catch(() => {});
    await jailed.close();
    await unconfined.close();
    for (const home of homes) rmSync(home, { recursive: true, force: true });
  }
}

function rssKiB(pid) {
  try {
    return Number(/^VmRSS:\s+(\d+)/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1] ?? 0);
  } catch {
    return 0;
  }
}

function pssKiB(pid) {
  try {
    return Number(/^Pss:\s+(\d+)/m.exec(readFileSync(`/proc/${pid}/smaps_rollup`, 'utf8'))?.[1] ?? 0);
  } catch {
    return 0;
  }
}
