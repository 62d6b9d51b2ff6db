// Warm pools (issue 19), run by bench/run.js: `create({ pool })` -> first
// `run('true')`, p50 of 20, beside a restore from the same snapshot
// (`create({ snapshot })`) and a cold start (`create()`), in the same run,
// taking turns so that drift in machine load hits all three alike. Before each
// turn the pool is full and idle again (its refill after the last hand-over is
// done), so every pool sample is a hand-over, not a fallback restore.
// Target: the hand-over under 25 ms.
//
// Beside it, what a ready member costs while it waits: CPU seconds of the
// paused members over IDLE_MS, and of as many restored sandboxes left running.
import { mkdtempSync, readFileSync, rmSync, symlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Runtime } from '@roost/core';
import { pct, ms, sleep } from './stats.js';

const RUNS = Number(process.env.BENCH_POOL_RUNS ?? 20);
const POOL_SIZE = 2;
const IDLE_MS = 5_000;

export async function benchPools({ realHome, row, results }) {
  const home = mkdtempSync(join(tmpdir(), 'roost-bench-pools-'));
  symlinkSync(join(realHome, 'cache'), join(home, 'cache'));
  const runtime = await Runtime.open({ home, owner: 'bench pools' });
  const live = new Set();
  try {
    const src = await runtime.create({ timeoutMs: 60_000 });
    await src.commands.run('true', { args: [] });
    await src.snapshot({ name: 'bench-pool' });
    await src.remove({ force: true });
    await runtime.pools.create({ name: 'bench', snapshot: 'bench-pool', size: POOL_SIZE });
    const full = async () => {
      for (;;) {
        const info = await runtime.pools.get('bench');
        if (info.lastError) throw new Error(`pool refill failed: ${info.lastError.message}`);
        if (info.ready === POOL_SIZE && info.starting === 0) return info;
        await sleep(10);
      }
    };

    // What members cost while they wait (paused), beside restored sandboxes left running.
    const members = await full();
    const running = [];
    for (let i = 0; i < POOL_SIZE; i++) running.push(track(live, await runtime.create({ snapshot: 'bench-pool', detached: true })));
    for (const sb of running) await sb.commands.run('true', { args: [] });
    const memberPids = await Promise.all(members.members.map(async (id) => (await runtime.get(id)).vmPid));
    const runningPids = running.map((sb) => sb.vmPid);
    const before = [...memberPids, ...runningPids].map(cpuSeconds);
    await sleep(IDLE_MS);
    const used = [...memberPids, ...runningPids].map((pid, i) => cpuSeconds(pid) - before[i]);
    const pausedCpu = used.slice(0, POOL_SIZE).reduce((a, b) => a + b, 0) / POOL_SIZE;
    const runningCpu = used.slice(POOL_SIZE).reduce((a, b) => a + b, 0) / POOL_SIZE;
    for (const sb of running) await drop(live, sb);

    const kinds = {
      pool: { create: () => runtime.create({ pool: 'bench' }), samples: [], createSamples: [], fallbacks: 0 },
      restore: { create: () => runtime.create({ snapshot: 'bench-pool' }), samples: [], createSamples: [] },
      cold: { create: () => runtime.create({ timeoutMs: 60_000 }), samples: [], createSamples: [] },
    };
    for (let i = 0; i < RUNS; i++) {
      for (const kind of Object.values(kinds)) {
        await full();
        const t0 = performance.now();
        const sb = track(live, await kind.create());
        const t1 = performance.now();
        await sb.commands.run('true', { args: [] });
        const t2 = performance.now();
        kind.samples.push(t2 - t0);
        kind.createSamples.push(t1 - t0);
        if (kind === kinds.pool && sb.info.pool?.warm !== true) kind.fallbacks++;
        await drop(live, sb);
      }
    }
    const figure = (k) => ({ p50: pct(k.samples, 50), p95: pct(k.samples, 95), createP50: pct(k.createSamples, 50), samples: k.samples });
    const pool = figure(kinds.pool);
    const restore = figure(kinds.restore);
    const cold = figure(kinds.cold);
    results.figures.pools = {
      unit: 'ms',
      runs: RUNS,
      poolSize: POOL_SIZE,
      handOver: { ...pool, fallbacks: kinds.pool.fallbacks },
      restore,
      cold,
      idleCpuSecondsPerMember: { paused: pausedCpu, running: runningCpu, overMs: IDLE_MS },
      target: 'create({ pool }) -> first run(true) p50 < 25 ms',
    };
    row(
      `create({ pool }) -> first run(true) x${RUNS}`,
      `p50 ${ms(pool.p50)} p95 ${ms(pool.p95)}`,
      `restore p50 ${ms(restore.p50)}, cold ${ms(cold.p50)}`,
      `target < 25 ms${kinds.pool.fallbacks ? ` (${kinds.pool.fallbacks} fallbacks)` : ''}`,
    );
    row(`  of which create({ pool }) (the hand-over)`, `p50 ${ms(pool.createP50)}`, `restore's create ${ms(restore.createP50)}`, '');
    row(
      `idle pool member, CPU over ${IDLE_MS / 1000} s`,
      `paused ${(pausedCpu * 1000).toFixed(0)} ms`,
      `running ${(runningCpu * 1000).toFixed(0)} ms`,
      'members are kept paused',
    );
    await runtime.pools.remove('bench');
  } finally {
    for (const sb of live) await sb.remove({ force: true }).catch(() => {});
    await runtime.close().catch(() => {});
    rmSync(home, { recursive: true, force: true });
  }
}

function track(live, sb) {
  live.add(sb);
  return sb;
}

async function drop(live, sb) {
  await sb.remove({ force: true });
  live.delete(sb);
}

/** User + system CPU seconds of a process (its VM), from /proc. */
function cpuSeconds(pid) {
  const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' ');
  return (Number(fields[11]) + Number(fields[12])) / 100;
}
