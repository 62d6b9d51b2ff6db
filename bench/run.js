#!/usr/bin/env node
// Roost benchmarks: `npm run bench`. Each figure is printed beside the floor
// it is compared with, measured in the same run, and all of them are written
// as JSON to bench/results/. Medians are quoted: the machines are noisy.
import { spawn } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { roostHome, Sandbox } from '@roost/core';
import { chooseAccel, loadAssets, qemuArgs, QEMU_BINARY, vmPaths } from '@roost/core/internal';
import { ensureTestTools } from '@roost/testkit';
import { pct, ms, mib, sleep } from './stats.js';

const COLD_RUNS = Number(process.env.BENCH_COLD_RUNS ?? 10);
const EXEC_RUNS = Number(process.env.BENCH_EXEC_RUNS ?? 200);
const STREAM_BYTES = Number(process.env.BENCH_STREAM_MIB ?? 256) * 2 ** 20;
const SCALE_PEERS = 4;

// `npm run bench` has run `roost setup` (the guest). The image benchmarks also
// need the tools of the image tests (a registry, skopeo, debootstrap, and
// buildah for the build benchmark): install them as `npm test` does
// (test/global-setup.ts), before any figure is taken, so a fresh machine does
// not stop half-way with `spawn debootstrap ENOENT`.
if (process.env.BENCH_IMAGES !== '0' || process.env.BENCH_PUSH !== '0' || process.env.BENCH_BUILD !== '0')
  await ensureTestTools((line) => console.log(`(setup: ${line})`));

const realHome = roostHome();
const assets = await loadAssets(realHome);
const accel = chooseAccel();
// Sandboxes live in a throwaway home that shares the real cache.
const home = mkdtempSync(join(tmpdir(), 'roost-bench-'));
symlinkSync(join(realHome, 'cache'), join(home, 'cache'));

const results = { date: new Date().toISOString(), accel, host: hostFacts(), figures: {} };
const rows = [];
const row = (name, value, floor, target) => {
  rows.push({ name, value, floor, target });
  console.log(`${name.padEnd(42)} ${value.padEnd(26)} ${(floor ?? '').padEnd(30)} ${target ?? ''}`);
};

try {
  console.log(`Roost benchmarks (accel ${accel}, ${results.host.cpu}, ${results.host.cpus} cpus)\n`);
  console.log(`${'benchmark'.padEnd(42)} ${'figure'.padEnd(26)} ${'floor (same run)'.padEnd(30)} target`);

  // --- cold start vs. the floor -------------------------------------------------
  const floor = [];
  for (let i = 0; i < COLD_RUNS; i++) floor.push(await bootToPoweroff(i));
  const cold = [];
  for (let i = 0; i < COLD_RUNS; i++) {
    const t0 = performance.now();
    const sb = await Sandbox.create({ home, timeoutMs: 60_000 });
    await sb.commands.run('true', { args: [] });
    cold.push(performance.now() - t0);
    await sb.remove({ force: true });
  }
  const floorP50 = pct(floor, 50);
  const coldP50 = pct(cold, 50);
  results.figures.coldStart = {
    unit: 'ms',
    p50: coldP50,
    p95: pct(cold, 95),
    samples: cold,
    floor: { p50: floorP50, p95: pct(floor, 95), samples: floor },
    ratio: coldP50 / floorP50,
    target: 'ratio <= 1.2',
  };
  row(
    'cold start: create -> first run(true)',
    `p50 ${ms(coldP50)} p95 ${ms(pct(cold, 95))}`,
    `boot->poweroff p50 ${ms(floorP50)} p95 ${ms(pct(floor, 95))}`,
    `${(coldP50 / floorP50).toFixed(2)}x (target <= 1.2x)`,
  );

  // --- exec round trip, output throughput, idle memory: one sandbox ------------
  const rssBefore = process.memoryUsage().rss;
  const sb = await Sandbox.create({ home, timeoutMs: 60_000 });
  try {
    await sb.commands.run('true', { args: [] });
    // Idle memory first, before exec and streaming warm up caches.
    await sleep(2_000);
    const qemuRss = rssKiB(sb.info.pid);
    const qemuPss = pssKiB(sb.info.pid);
    const qemuAnon = rollup(sb.info.pid, 'Anonymous');
    const runtimeShare = Math.max(0, (process.memoryUsage().rss - rssBefore) / 1024);
    // At scale, file-backed pages (QEMU, its libraries, the kernel image) are shared: PSS per sandbox with several idle.
    const peers = [];
    for (let i = 0; i < SCALE_PEERS; i++) peers.push(await Sandbox.create({ home, timeoutMs: 60_000 }));
    await sleep(2_000);
    const pssAtScale = [sb, ...peers].map((p) => pssKiB(p.info.pid));
    await Promise.all(peers.map((p) => p.remove({ force: true })));
    const perSandboxAtScale = pssAtScale.reduce((a, b) => a + b, 0) / pssAtScale.length;
    results.figures.idleMemory = {
      unit: 'KiB',
      qemuRss,
      qemuPss,
      qemuAnonymous: qemuAnon,
      runtimeShareKiB: Math.round(runtimeShare),
      totalKiB: Math.round(qemuRss + runtimeShare),
      pssPerSandboxWith: { sandboxes: pssAtScale.length, kib: Math.round(perSandboxAtScale) },
      target: '< 80 MiB (RSS + runtime)',
    };
    row(
      'idle sandbox memory (QEMU RSS + runtime)',
      `${mib(qemuRss + runtimeShare)} (QEMU ${mib(qemuRss)})`,
      `private ${mib(qemuAnon)}; PSS of ${pssAtScale.length} ${mib(perSandboxAtScale)}`,
      'target < 80 MiB',
    );

    const ping = [];
    for (let i = 0; i < EXEC_RUNS; i++) ping.push(await sb.ping());
    const exec = [];
    for (let i = 0; i < EXEC_RUNS; i++) {
      const t0 = performance.now();
      await sb.commands.run('true', { args: [] });
      exec.push(performance.now() - t0);
    }
    // The guest's own cost of starting the same program: a shell loop of fork+exec inside the VM.
    const spawns = 100;
    const inGuestSpawn = (await timed(() => sb.commands.run(`i=0; while [ $i -lt ${spawns} ]; do /bin/true; i=$((i+1)); done`))) / spawns;
    results.figures.execRoundTrip = {
      unit: 'ms',
      p50: pct(exec, 50),
      p99: pct(exec, 99),
      floor: {
        what: 'agent PING round trip; fork+exec of /bin/true inside the guest',
        pingP50: pct(ping, 50),
        pingP99: pct(ping, 99),
        inGuestSpawnMean: inGuestSpawn,
      },
      target: 'p50 < 5 ms',
    };
    row(
      `exec round trip: run(true) x${EXEC_RUNS}`,
      `p50 ${ms(pct(exec, 50))} p99 ${ms(pct(exec, 99))}`,
      `ping p50 ${ms(pct(ping, 50))}; in-guest spawn ${ms(inGuestSpawn)}`,
      'target p50 < 5 ms',
    );

    // Floor: the same producer writing to /dev/null inside the guest, so the bytes never leave it.
    const produce = `dd if=/dev/zero bs=65536 count=${STREAM_BYTES / 65536} status=none`;
    const inGuest = await timed(() => sb.commands.run(`${produce} of=/dev/null`));
    const h = await sb.commands.start(produce);
    const t0 = performance.now();
    let bytes = 0;
    for await (const chunk of h.stdout) bytes += chunk.length;
    await h.wait();
    const streamMs = performance.now() - t0;
    if (bytes !== STREAM_BYTES) throw new Error(`streamed ${bytes} bytes, expected ${STREAM_BYTES}`);
    const mbps = STREAM_BYTES / 1e6 / (streamMs / 1000);
    const floorMbps = STREAM_BYTES / 1e6 / (inGuest / 1000);
    results.figures.stdoutThroughput = {
      unit: 'MB/s',
      value: mbps,
      bytes: STREAM_BYTES,
      ms: streamMs,
      floor: { what: 'the same dd writing to /dev/null inside the guest', mbps: floorMbps },
      target: '>= 100 MB/s',
    };
    row(
      `stdout throughput (${STREAM_BYTES / 2 ** 20} MiB)`,
      `${mbps.toFixed(0)} MB/s`,
      `dd to /dev/null in guest ${floorMbps.toFixed(0)} MB/s`,
      'target >= 100 MB/s',
    );
  } finally {
    await sb.remove({ force: true });
  }

  // --- files API and 9P volumes (bench/files.js), beside stdout streaming ------
  if (process.env.BENCH_FILES !== '0') {
    const { benchFiles } = await import('./files.js');
    await benchFiles({ home, row, results, stdoutMbps: results.figures.stdoutThroughput.value });
  }

  // --- volumes (bench/volumes.js): Roost's 9P file server beside QEMU's virtio-9p, diod over the same
  // relay port, and the raw virtio-serial port (the transport's floor), same run.
  if (process.env.BENCH_VOLUMES !== '0') {
    const { benchVolumes } = await import('./volumes.js');
    await benchVolumes({ home, assets, accel, row, results });
  }

  // --- actors (bench/actors.js): WASM actors beside a microVM's cold start and exec from this run.
  if (process.env.BENCH_ACTORS !== '0') {
    const { benchActors } = await import('./actors.js');
    await benchActors({ realHome, row, results, coldStartP50: coldP50, execP50: results.figures.execRoundTrip.p50 });
  }

  // --- control plane (bench/api.js): the daemon vs the embedded runtime --------
  if (process.env.BENCH_API !== '0') {
    const { benchApi } = await import('./api.js');
    await benchApi({ realHome, row, results });
  }

  // --- MCP (bench/mcp.js): sandbox_exec over Streamable HTTP beside REST and the embedded call.
  if (process.env.BENCH_MCP !== '0') {
    const { benchMcp } = await import('./mcp.js');
    await benchMcp({ realHome, row, results });
  }

  // --- E2B (bench/e2b.js): E2B's SDK, unchanged, beside @roost/client through the same daemon.
  if (process.env.BENCH_E2B !== '0') {
    const { benchE2b } = await import('./e2b.js');
    await benchE2b({ realHome, row, results });
  }

  // --- the jail (bench/jail.js): cold start, restore and idle memory, confined beside `jail: false`.
  if (process.env.BENCH_JAIL !== '0') {
    const { benchJail } = await import('./jail.js');
    await benchJail({ realHome, row, results });
  }

  // --- snapshots, restore and fork (bench/snapshots.js): a restore is compared
  // with coldP50 of this run, a copy's memory with its source's.
  if (process.env.BENCH_SNAPSHOTS !== '0') {
    const { benchSnapshots } = await import('./snapshots.js');
    await benchSnapshots({ home, row, results, coldStartP50: coldP50 });
  }

  // --- warm pools (bench/pools.js): a hand-over beside a restore and a cold start of its own, same run.
  if (process.env.BENCH_POOLS !== '0') {
    const { benchPools } = await import('./pools.js');
    await benchPools({ realHome, row, results });
  }

  // --- deployments (bench/deployments.js): replacement after a SIGKILL beside a cold start, the service port beside a direct one.
  if (process.env.BENCH_DEPLOYMENTS !== '0') {
    const { benchDeployments } = await import('./deployments.js');
    await benchDeployments({ realHome, row, results });
  }

  // --- networking (bench/net.js): TCP through forwarded ports beside the host loopback.
  if (process.env.BENCH_NET !== '0') {
    const { benchNet } = await import('./net.js');
    await benchNet({ home, row, results });
  }

  // --- OCI images (bench/images.js): last, so the idle-memory figures above don't
  // carry its heap; its cached-image start is compared with coldP50 of this run.
  if (process.env.BENCH_IMAGES !== '0') {
    const { benchImages } = await import('./images.js');
    await benchImages({ realHome, row, results, coldStartP50: coldP50 });
  }

  // --- image push (bench/push.js): store.push() beside skopeo copy of the same image, to a new local registry each run.
  if (process.env.BENCH_PUSH !== '0') {
    const { benchPush } = await import('./push.js');
    await benchPush({ realHome, row, results });
  }

  // --- image builder (bench/build.js): a 5-step Dockerfile cold and cached, beside `buildah bud` of the same context in the same run.
  if (process.env.BENCH_BUILD !== '0') {
    const { benchBuild } = await import('./build.js');
    await benchBuild({ realHome, row, results });
  }
} finally {
  rmSync(home, { recursive: true, force: true });
}

const dir = fileURLToPath(new URL('./results/', import.meta.url));
mkdirSync(dir, { recursive: true });
const file = join(dir, `foundation-${results.date.replace(/[:.]/g, '-')}.json`);
writeFileSync(file, JSON.stringify(results, null, 2) + '\n');
console.log(`\nwrote ${file}`);

// ---- helpers -------------------------------------------------------------------

/** The floor: QEMU boots the same kernel and initramfs, and the agent powers off as its first act. */
async function bootToPoweroff(i) {
  const dir = mkdtempSync(join(tmpdir(), 'roost-floor-'));
  try {
    const config = {
      id: `floor${i}`,
      dir,
      cpus: 1,
      memoryMiB: 256,
      kernel: assets.kernel,
      initramfs: assets.initramfs,
      rootfs: assets.rootfs,
      kernelHz: assets.kernelHz,
      detached: false,
      accel,
      append: ['roost.poweroff=1'],
    };
    const args = qemuArgs(config, vmPaths(dir), { agent: false, rootfs: false });
    const t0 = performance.now();
    await new Promise((resolve, reject) => {
      const p = spawn(QEMU_BINARY, args, { stdio: 'ignore' });
      p.on('error', reject);
      p.on('exit', (code) => (code === 0 ? resolve() : reject(new Error(`floor QEMU exited ${code}`))));
    });
    return performance.now() - t0;
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

async function timed(fn) {
  const t0 = performance.now();
  await fn();
  return performance.now() - t0;
}

function rssKiB(pid) {
  return Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1] ?? NaN);
}

function pssKiB(pid) {
  return rollup(pid, 'Pss');
}

/** A field of /proc/PID/smaps_rollup, in KiB. */
function rollup(pid, field) {
  try {
    return Number(new RegExp(`^${field}:\\s+(\\d+)`, 'm').exec(readFileSync(`/proc/${pid}/smaps_rollup`, 'utf8'))?.[1] ?? NaN);
  } catch {
    return NaN;
  }
}

function hostFacts() {
  const cpuinfo = readFileSync('/proc/cpuinfo', 'utf8');
  return { cpu: /model name\s*:\s*(.*)/.exec(cpuinfo)?.[1] ?? 'unknown', cpus: (cpuinfo.match(/^processor/gm) ?? []).length, node: process.version };
}
