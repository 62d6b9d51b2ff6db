// Image builder benchmark (issue 20), run by bench/run.js: `images.build()`
// of a 5-step Dockerfile (FROM the testkit's Debian image, two RUNs that
// write files, a COPY of 1,000 small files, CMD), cold and fully cached,
// beside `buildah bud` of the same context in the same run (Debian's
// buildah, vfs storage, chroot isolation, its own storage root in a temp
// directory), taking turns so that drift in machine load hits both alike.
//
// Each sample starts from nothing but the base image, stored and ready to
// use on both sides (untimed, reported): Roost a fresh home with the image
// imported and its root filesystem made; buildah a fresh storage root with
// the image pulled from the same OCI layout and tagged with the same name,
// so that both read the same Dockerfile. Then, timed:
//   cold:   Roost noCache (a fresh build cache too); buildah --layers=false;
//   cached: Roost the same build again (ran must be 0); buildah --layers,
//           a second time after an untimed first --layers build.
// Targets: cold within 2x of buildah despite the VM per RUN; cached < 1 s.
import { execFile, execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdirSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { ImageStore, Runtime } from '@roost/core';
import { closeStateDbs } from '@roost/core/internal';
import { buildDebianImage } from '@roost/testkit';
import { median, ms, sec } from './stats.js';

const exec = promisify(execFile);

const RUNS = Number(process.env.BENCH_BUILD_RUNS ?? 3);
const FILES = 1000;
const BASE = 'roost-bench/debian:bookworm';
const TAG = 'roost-bench/built:1';
const DOCKERFILE = [
  `FROM ${BASE}`,
  'RUN mkdir -p /opt/a && for i in $(seq 1 200); do echo $i > /opt/a/$i; done',
  'RUN dd if=/dev/urandom of=/opt/blob bs=1M count=8',
  'COPY files/ /opt/files/',
  'CMD ["/bin/sh"]',
  '',
].join('\n');

/**
 * Runs the build benchmark. `realHome` is the Roost home whose cache the
 * throwaway homes share; `row` prints a figure; figures go to `results.figures.build`.
 */
export async function benchBuild({ realHome, row, results }) {
  // Lowercase: `buildah pull oci:DIR` names the image after DIR, and a name with capitals is refused.
  const work = join(tmpdir(), `roost-bench-build-${randomBytes(6).toString('hex')}`);
  mkdirSync(work, { mode: 0o700 });
  try {
    const debian = await buildDebianImage(join(work, 'layout'), { progress: (l) => console.log(`  (build: ${l})`) });
    const context = join(work, 'context');
    mkdirSync(join(context, 'files'), { recursive: true });
    for (let i = 1; i <= FILES; i++) writeFileSync(join(context, 'files', `f${String(i).padStart(4, '0')}.txt`), `small file ${i}\n`);
    writeFileSync(join(context, 'Dockerfile'), DOCKERFILE);

    const roost = { cold: [], cached: [], baseReady: [], coldRan: [], coldCached: [], cachedRan: [], cachedCached: [], coldSteps: [], layers: null };
    const buildah = { ok: true, why: null, version: null, cold: [], cached: [], layersFirst: [], baseReady: [], usingCache: [] };
    const bud = buildahRunner(work, debian);
    try {
      buildah.version = await bud.version();
    } catch (e) {
      buildah.ok = false;
      buildah.why = reason(e);
    }

    const runRoost = async (i) => {
      const home = join(work, `home-${i}`);
      mkdirSync(home);
      symlinkSync(join(realHome, 'cache'), join(home, 'cache'));
      // The base image stored and its root filesystem made, as a pull and a first sandbox leave it.
      const t0 = performance.now();
      const store = new ImageStore({ home });
      const base = await store.import(debian.dir, { tag: BASE });
      await store.rootfs(base.id);
      roost.baseReady.push(performance.now() - t0);
      const runtime = await Runtime.open({ home, owner: 'bench build' });
      try {
        const steps = [];
        const t1 = performance.now();
        const cold = await build(runtime, context, 'cold', { noCache: true }, steps);
        roost.cold.push(performance.now() - t1);
        if (cold.cached !== 0) throw new Error(`the noCache build took ${cold.cached} steps from the cache`);
        roost.coldRan.push(cold.ran);
        roost.coldCached.push(cold.cached);
        roost.coldSteps.push(steps);
        roost.layers = cold.image.layers;
        const t2 = performance.now();
        const again = await build(runtime, context, 'cached', {}, []);
        roost.cached.push(performance.now() - t2);
        if (again.ran !== 0) throw new Error(`the second identical build ran ${again.ran} steps (cached ${again.cached}); a fully cached build runs none`);
        roost.cachedRan.push(again.ran);
        roost.cachedCached.push(again.cached);
      } finally {
        await runtime.close();
      }
    };
    const runBuildah = async (i) => {
      if (!buildah.ok) return;
      try {
        const s = await bud.sample(i, context);
        buildah.baseReady.push(s.baseReady);
        buildah.cold.push(s.cold);
        buildah.layersFirst.push(s.layersFirst);
        buildah.cached.push(s.cached);
        buildah.usingCache.push(s.usingCache);
      } catch (e) {
        buildah.ok = false;
        buildah.why = reason(e);
      }
    };
    for (let i = 0; i < RUNS; i++) {
      // Alternate which goes first, so neither always meets a warmer page cache.
      if (i % 2 === 0) {
        await runBuildah(i);
        await runRoost(i);
      } else {
        await runRoost(i);
        await runBuildah(i);
      }
    }

    const coldMs = median(roost.cold);
    const cachedMs = median(roost.cached);
    const stepsText = (roost.coldSteps[roost.cold.indexOf(coldMs)] ?? []).map((s) => `${s.text.split(' ')[0]} ${sec(s.ms)}`).join(', ');
    const b = buildah.ok
      ? {
          version: buildah.version,
          cold: { ms: median(buildah.cold), samples: buildah.cold, flags: '--storage-driver vfs --isolation chroot --layers=false --pull=never' },
          cached: {
            ms: median(buildah.cached),
            samples: buildah.cached,
            flags: '--layers (second build)',
            usingCache: buildah.usingCache,
            note: 'vfs has no copy-on-write: buildah 1.28 makes a container (a full copy of the root) from each cached step image, so its cached build is no faster than its cold one',
          },
          layersFirst: { what: 'the untimed first --layers build before each cached one', ms: median(buildah.layersFirst), samples: buildah.layersFirst },
          baseReady: { what: 'buildah pull oci:<layout> + tag (untimed)', ms: median(buildah.baseReady), samples: buildah.baseReady },
        }
      : { version: buildah.version, ran: false, why: buildah.why };
    results.figures.build = {
      unit: 'ms',
      dockerfile: DOCKERFILE,
      contextFiles: FILES,
      runs: RUNS,
      cold: {
        ms: coldMs,
        samples: roost.cold,
        ran: roost.coldRan,
        cached: roost.coldCached,
        steps: roost.coldSteps,
        what: 'images.build noCache, fresh home and build cache',
      },
      cached: { ms: cachedMs, samples: roost.cached, ran: roost.cachedRan, cached: roost.cachedCached, what: 'the same build again in the same home' },
      baseReady: { what: 'ImageStore.import + rootfs of the base (untimed)', ms: median(roost.baseReady), samples: roost.baseReady },
      imageLayers: roost.layers,
      buildah: b,
      ratio: buildah.ok ? coldMs / b.cold.ms : null,
      target: { cold: 'cold <= 2x buildah bud (vfs, chroot)', cached: 'cached < 1 s' },
    };
    const ran = roost.coldRan[0];
    row(
      `build 5 steps, cold (ran ${ran}, noCache)`,
      sec(coldMs),
      buildah.ok ? `buildah bud (vfs, chroot) ${sec(b.cold.ms)}` : 'buildah bud (vfs, chroot): did not run',
      buildah.ok ? `${(coldMs / b.cold.ms).toFixed(2)}x (target cold <= 2x buildah)` : `target cold <= 2x buildah; buildah: ${buildah.why}`,
    );
    row(
      `build, fully cached (ran ${Math.max(...roost.cachedRan)}, cached ${roost.cachedCached[0]})`,
      ms(cachedMs),
      buildah.ok ? `buildah bud --layers, cached ${sec(b.cached.ms)}` : 'buildah: did not run',
      'target < 1 s',
    );
    row(
      '  build: cold steps (median sample)',
      stepsText,
      `base ready: roost ${sec(median(roost.baseReady))}${buildah.ok ? `, buildah ${sec(b.baseReady.ms)}` : ''}`,
      buildah.ok ? buildah.version : '',
    );
  } finally {
    closeStateDbs();
    removeTree(work);
  }
}

/**
 * `runtime.images.build` of the context, each finished step's duration
 * pushed to `steps`; a failure names the step that was running.
 */
async function build(runtime, context, what, options, steps) {
  let current = null;
  try {
    return await runtime.images.build(context, {
      tags: [TAG],
      ...options,
      onProgress: (e) => {
        if (e.type !== 'step') return;
        current = e;
        if (e.status === 'done' && e.durationMs !== undefined) steps.push({ step: e.step, text: e.text, ms: e.durationMs });
      },
    });
  } catch (e) {
    const at = current ? ` at step ${current.step}/${current.of} (${current.text}, ${current.status})` : '';
    const details = e?.details ? ` ${JSON.stringify(e.details)}` : '';
    throw new Error(`the ${what} Roost build of the bench's Dockerfile failed${at}: ${e?.code ?? ''} ${reason(e)}${details}`, { cause: e });
  }
}

/** buildah with its own storage (vfs) under `work`, the base image from the OCI layout. */
function buildahRunner(work, debian) {
  const env = { ...process.env, TMPDIR: join(work, 'buildah-tmp') };
  mkdirSync(env.TMPDIR, { recursive: true });
  const run = async (args, what = args[args.indexOf('vfs') + 1] ?? args[0]) => {
    try {
      const { stdout, stderr } = await exec('buildah', args, { env, maxBuffer: 64 * 2 ** 20 });
      return stdout + stderr;
    } catch (e) {
      if (e.code === 'ENOENT') throw new Error('buildah is not installed (apt-get install buildah; ensureTestTools installs it as root)');
      const out = `${e.stderr ?? ''}${e.stdout ?? ''}`.trim().split('\n').slice(-4).join(' | ');
      throw new Error(`buildah ${what} failed (exit ${e.code}): ${out || e.message}`);
    }
  };
  const timed = async (args) => {
    const t = performance.now();
    const out = await run(args);
    return { ms: performance.now() - t, out };
  };
  return {
    async version() {
      return (await run(['--version'])).trim();
    },
    async sample(i, context) {
      const root = join(work, `buildah-${i}`);
      const storage = ['--root', join(root, 'root'), '--runroot', join(root, 'run'), '--storage-driver', 'vfs'];
      const bud = (layers) => [...storage, 'bud', '--isolation', 'chroot', `--layers=${layers}`, '--pull=never', '-t', TAG, context];
      try {
        const pull = await timed([...storage, 'pull', '-q', `oci:${debian.dir}:${debian.tag}`]);
        await run([...storage, 'tag', pull.out.trim().split('\n').pop(), BASE]);
        const cold = await timed(bud(false));
        await run([...storage, 'rmi', '-f', TAG]);
        const first = await timed(bud(true));
        const cached = await timed(bud(true));
        const usingCache = (cached.out.match(/Using cache/g) ?? []).length;
        if (usingCache < 4) throw new Error(`the second buildah --layers build used the cache for ${usingCache} of 4 steps`);
        return { baseReady: pull.ms, cold: cold.ms, layersFirst: first.ms, cached: cached.ms, usingCache };
      } finally {
        removeTree(root);
      }
    },
  };
}

function reason(e) {
  return e instanceof Error ? e.message : String(e);
}

/** Removes a tree after unmounting whatever is still mounted below it (never deletes through a mount). */
function removeTree(path) {
  const mounts = readFileSync('/proc/self/mounts', 'utf8')
    .split('\n')
    .map((l) => l.split(' ')[1]?.replace(/\\040/g, ' '))
    .filter((m) => !!m && m.startsWith(path + '/'))
    .sort((a, b) => b.length - a.length);
  for (const m of mounts) execFileSync('umount', ['-l', m], { stdio: 'ignore' });
  rmSync(path, { recursive: true, force: true });
}
