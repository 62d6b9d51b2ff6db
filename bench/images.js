// Image benchmarks (issue 3), run by bench/run.js after the foundation ones so
// the cached-image cold start is compared with the base cold start of the same
// run. Each figure is printed beside its floor and stored in results.figures.
//
// 1. Pull throughput: a ~50 MB gzip (~120 MB unpacked) 3-layer Debian image
//    from a local registry, `store.pull()` vs `skopeo copy` of the same image.
// 2. First sandbox from a newly pulled image (pull + rootfs build + boot ->
//    first exec), the rootfs build alone, and the cached case (image and
//    rootfs present) vs the base cold start.
// 3. Disk used by 10 live sandboxes of the image, each having written 8 MiB.
import { execFile } from 'node:child_process';
import { lstatSync, mkdirSync, mkdtempSync, readdirSync, rmSync, symlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { ImageStore, Sandbox } from '@roost/core';
import { closeStateDbs } from '@roost/core/internal';
import { buildDebianImage, startRegistry } from '@roost/testkit';
import { MiB, median, pct, ms, sec, mibB } from './stats.js';

const exec = promisify(execFile);

const PULL_RUNS = Number(process.env.BENCH_PULL_RUNS ?? 3);
const FIRST_RUNS = Number(process.env.BENCH_FIRST_RUNS ?? 2);
const CACHED_RUNS = Number(process.env.BENCH_IMAGE_COLD_RUNS ?? 10);
const DISK_SANDBOXES = Number(process.env.BENCH_DISK_SANDBOXES ?? 10);
const WRITE_MIB = 8;

/**
 * Runs the image benchmarks. `realHome` is the Roost home whose cache the
 * throwaway homes share; `row` prints a figure; `coldStartP50` is the base
 * rootfs cold start (create -> first run('true')) measured earlier in this run.
 */
export async function benchImages({ realHome, row, results, coldStartP50 }) {
  const work = mkdtempSync(join(tmpdir(), 'roost-bench-images-'));
  const homes = [];
  // Throwaway homes that share the real cache (kernel, agent, disk templates), as in run.js.
  const newHome = () => {
    const h = join(work, `home-${homes.length}`);
    homes.push(h);
    mkdirSync(h);
    symlinkSync(join(realHome, 'cache'), join(h, 'cache'));
    return h;
  };
  const sandboxes = new Set();
  let registry = null;
  try {
    // ---- the image, in a local registry --------------------------------------
    const t0 = performance.now();
    const debian = await buildDebianImage(join(work, 'layout'), { progress: (l) => console.log(`  (images: ${l})`) });
    registry = await startRegistry({ auth: 'none' });
    await registry.push(debian.dir, 'bench/debian:1');
    const ref = `${registry.host}/bench/debian:1`;
    const prepMs = performance.now() - t0;

    // ---- 1. pull throughput vs skopeo ----------------------------------------
    const skopeo = [];
    const roost = [];
    const pulledHomes = [];
    let bytes = 0;
    let skopeoBytes = 0;
    for (let i = 0; i < PULL_RUNS; i++) {
      const runSkopeo = async () => {
        const dest = join(work, `skopeo-${i}`);
        const t = performance.now();
        await exec('skopeo', ['copy', '-q', '--src-tls-verify=false', `docker://${ref}`, `oci:${dest}:1`]);
        skopeo.push(performance.now() - t);
        skopeoBytes = treeBytes(join(dest, 'blobs'));
        rmSync(dest, { recursive: true, force: true });
      };
      const runRoost = async () => {
        const home = newHome();
        const t = performance.now();
        const store = new ImageStore({ home });
        const image = await store.pull(ref);
        roost.push(performance.now() - t);
        bytes = image.size;
        pulledHomes.push({ home, store, id: image.id });
      };
      // Alternate which goes first, so neither always meets a warmer cache.
      if (i % 2 === 0) {
        await runSkopeo();
        await runRoost();
      } else {
        await runRoost();
        await runSkopeo();
      }
    }
    const pullMbps = bytes / 1e6 / (median(roost) / 1000);
    const skopeoMbps = bytes / 1e6 / (median(skopeo) / 1000);
    results.figures.imagePull = {
      unit: 'MB/s',
      value: pullMbps,
      ms: median(roost),
      samples: roost,
      bytes,
      layers: debian.layers.length,
      uncompressedBytes: debian.tarBytes,
      floor: { what: 'skopeo copy docker:// -> oci: of the same image (median)', mbps: skopeoMbps, ms: median(skopeo), samples: skopeo, bytes: skopeoBytes },
      ratio: pullMbps / skopeoMbps,
      target: 'ratio >= 1 (at least as fast as skopeo)',
    };
    row(
      `image pull (${(bytes / 1e6).toFixed(0)} MB gzip, ${debian.layers.length} layers)`,
      `${pullMbps.toFixed(1)} MB/s (${sec(median(roost))})`,
      `skopeo copy ${skopeoMbps.toFixed(1)} MB/s (${sec(median(skopeo))})`,
      `${(pullMbps / skopeoMbps).toFixed(2)}x (target >= 1x)`,
    );

    // ---- 2a. rootfs build alone, on the homes just pulled into ----------------
    const build = [];
    const apply = [];
    const mkfs = [];
    let rootfsFile = '';
    for (const p of pulledHomes) {
      let tMkfs = 0;
      const t = performance.now();
      rootfsFile = await p.store.rootfs(p.id, {
        onProgress: (line) => {
          if (line.startsWith('writing')) tMkfs = performance.now();
        },
      });
      const end = performance.now();
      build.push(end - t);
      apply.push(tMkfs - t);
      mkfs.push(end - tMkfs);
    }
    const rootfsBytes = lstatSync(rootfsFile).size;
    results.figures.imageRootfsBuild = {
      unit: 'ms',
      p50: median(build),
      samples: build,
      applyLayersP50: median(apply),
      mkfsErofsP50: median(mkfs),
      rootfsBytes,
      floor: { what: 'the pull of the same image (median, above)', ms: median(roost) },
      target: 'none (part of the first-sandbox figure)',
    };
    row(
      `image rootfs build (erofs, ${(rootfsBytes / MiB).toFixed(0)} MiB)`,
      `${sec(median(build))}`,
      `apply layers ${sec(median(apply))} + mkfs.erofs ${sec(median(mkfs))}`,
      'part of the first sandbox',
    );
    // The pull homes are done with: free their disk before the rest.
    for (const p of pulledHomes) rmSync(p.home, { recursive: true, force: true });

    // ---- 2b. first sandbox from a newly pulled image --------------------------
    const first = [];
    const firstPull = [];
    let cachedHome = '';
    for (let i = 0; i < FIRST_RUNS; i++) {
      const home = newHome();
      let lastPullEvent = 0;
      const t = performance.now();
      const sb = await Sandbox.create({ home, image: ref, timeoutMs: 60_000, onPullProgress: () => (lastPullEvent = performance.now()) });
      sandboxes.add(sb);
      await sb.commands.run('true', { args: [] });
      first.push(performance.now() - t);
      firstPull.push(lastPullEvent - t);
      await sb.remove({ force: true });
      sandboxes.delete(sb);
      if (i === 0) cachedHome = home;
      else rmSync(home, { recursive: true, force: true });
    }
    // ---- 2c. cached image: create -> first run(true), as the base cold start ---
    const cached = [];
    for (let i = 0; i < CACHED_RUNS; i++) {
      const t = performance.now();
      const sb = await Sandbox.create({ home: cachedHome, image: ref, timeoutMs: 60_000 });
      sandboxes.add(sb);
      await sb.commands.run('true', { args: [] });
      cached.push(performance.now() - t);
      await sb.remove({ force: true });
      sandboxes.delete(sb);
    }
    const cachedP50 = pct(cached, 50);
    const firstP50 = median(first);
    results.figures.imageFirstSandbox = {
      unit: 'ms',
      p50: firstP50,
      samples: first,
      pullPhaseMs: firstPull,
      breakdown: { pullMs: median(roost), rootfsBuildMs: median(build), cachedStartMs: cachedP50 },
      floor: { what: 'pull + rootfs build + cached start, each measured alone in this run', ms: median(roost) + median(build) + cachedP50 },
      target: 'none stated (includes pull and filesystem build)',
    };
    row(
      'first sandbox, newly pulled image',
      `${sec(firstP50)} (pull ${sec(median(firstPull))})`,
      `parts: pull ${sec(median(roost))}+build ${sec(median(build))}+start ${sec(cachedP50)}`,
      'create -> first run(true)',
    );
    results.figures.imageCachedStart = {
      unit: 'ms',
      p50: cachedP50,
      p95: pct(cached, 95),
      samples: cached,
      floor: { what: 'base rootfs cold start p50 (create -> first run(true)), this run', p50: coldStartP50 },
      ratio: cachedP50 / coldStartP50,
      target: 'ratio <= 1.2',
    };
    row(
      'cached image: create -> first run(true)',
      `p50 ${ms(cachedP50)} p95 ${ms(pct(cached, 95))}`,
      `base cold start p50 ${ms(coldStartP50)}`,
      `${(cachedP50 / coldStartP50).toFixed(2)}x (target <= 1.2x)`,
    );

    // ---- 3. disk used by 10 sandboxes of the image -----------------------------
    const live = [];
    const fresh = [];
    for (let i = 0; i < DISK_SANDBOXES; i++) {
      const sb = await Sandbox.create({ home: cachedHome, image: ref, timeoutMs: 60_000 });
      sandboxes.add(sb);
      live.push(sb);
      await sb.commands.run('true', { args: [] });
      fresh.push(allocated([sb.dir]));
      const r = await sb.commands.run(`dd if=/dev/urandom of=/root/data bs=1M count=${WRITE_MIB} status=none && sync`);
      if (r.exitCode !== 0) throw new Error(`writing ${WRITE_MIB} MiB in sandbox ${sb.id} failed (exit ${r.exitCode}): ${r.stderr}`);
    }
    const perSandbox = live.map((sb) => allocated([sb.dir]));
    const perDisk = live.map((sb) => allocated([join(sb.dir, 'disk.qcow2')]));
    const sandboxesTotal = perSandbox.reduce((a, b) => a + b, 0);
    const imageRootfs = allocated([join(cachedHome, 'images', 'rootfs')]);
    const imageBlobs = allocated([join(cachedHome, 'images', 'blobs')]);
    const template = allocated([join(realHome, 'cache', 'disks')]);
    const total = sandboxesTotal + imageRootfs + imageBlobs + template;
    const written = DISK_SANDBOXES * WRITE_MIB * MiB;
    const ideal = imageRootfs + imageBlobs + written;
    const overhead = (sandboxesTotal - written) / DISK_SANDBOXES;
    results.figures.imageDisk = {
      unit: 'bytes',
      sandboxes: DISK_SANDBOXES,
      writtenPerSandbox: WRITE_MIB * MiB,
      total,
      image: { rootfs: imageRootfs, blobs: imageBlobs },
      emptyDiskTemplate: template,
      perSandbox,
      perSandboxDisk: perDisk,
      perSandboxFreshBoot: fresh,
      perSandboxOverheadBytes: overhead,
      floor: { what: 'the image once (rootfs + blobs) + what the sandboxes wrote', bytes: ideal },
      ratio: total / ideal,
      target: 'image once + only what each wrote (per-sandbox overhead ~0)',
    };
    row(
      `disk: ${DISK_SANDBOXES} sandboxes x ${WRITE_MIB} MiB written`,
      `${mibB(total)} (sandboxes ${mibB(sandboxesTotal)})`,
      `image ${mibB(imageRootfs + imageBlobs)} + written ${mibB(written)} = ${mibB(ideal)}`,
      `${(total / ideal).toFixed(2)}x; +${mibB(overhead)}/sandbox`,
    );
    row(
      '  disk: breakdown',
      `erofs ${mibB(imageRootfs)} blobs ${mibB(imageBlobs)}`,
      `ext4 template ${mibB(template)} (shared)`,
      `per sandbox: fresh ${mibB(median(fresh))}, qcow2 ${mibB(median(perDisk))}, other ${mibB(median(perSandbox) - median(perDisk))}`,
    );
    results.figures.imageBenchSetupMs = prepMs;
  } finally {
    await Promise.allSettled([...sandboxes].map((sb) => sb.remove({ force: true })));
    await registry?.stop().catch(() => {});
    closeStateDbs();
    rmSync(work, { recursive: true, force: true });
  }
}

function treeBytes(dir) {
  let n = 0;
  for (const e of readdirSync(dir, { withFileTypes: true, recursive: true })) if (e.isFile()) n += lstatSync(join(e.parentPath ?? e.path, e.name)).size;
  return n;
}

/** Bytes actually allocated (st_blocks * 512) under the paths, each inode once. */
function allocated(paths) {
  const seen = new Set();
  let n = 0;
  const visit = (p) => {
    let st;
    try {
      st = lstatSync(p);
    } catch {
      return;
    }
    const key = `${st.dev}:${st.ino}`;
    if (!seen.has(key)) {
      seen.add(key);
      n += st.blocks * 512;
    }
    if (st.isDirectory()) for (const name of readdirSync(p)) visit(join(p, name));
  };
  paths.forEach(visit);
  return n;
}
