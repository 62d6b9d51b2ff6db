// Push benchmark (issue 20), run by bench/run.js: `store.push()` of the
// testkit's Debian image (~50 MB gzip, 3 layers) to a local registry that
// has none of it, beside `skopeo copy` of the same image from its OCI
// layout to the same kind of registry, in the same run. A fresh registry per
// run, so neither finds blobs there (nor mounts them). Also: Roost with every
// blob in one PUT (no chunks), and a second push that finds every blob.
import { execFile } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { ImageStore } from '@roost/core';
import { closeStateDbs } from '@roost/core/internal';
import { buildDebianImage, startRegistry } from '@roost/testkit';
import { median, sec, ms } from './stats.js';

const exec = promisify(execFile);

const RUNS = Number(process.env.BENCH_PUSH_RUNS ?? 3);

/**
 * Runs the push benchmark. `realHome` is the Roost home whose cache the
 * throwaway home shares; `row` prints a figure; figures go to `results.figures.imagePush`.
 */
export async function benchPush({ realHome, row, results }) {
  const work = mkdtempSync(join(tmpdir(), 'roost-bench-push-'));
  const registries = new Set();
  const registry = async () => {
    const r = await startRegistry({ auth: 'none' });
    registries.add(r);
    return r;
  };
  const done = async (r) => {
    registries.delete(r);
    await r.stop();
  };
  try {
    const debian = await buildDebianImage(join(work, 'layout'), { progress: (l) => console.log(`  (push: ${l})`) });
    const source = await registry();
    await source.push(debian.dir, 'bench/debian:1');
    const home = join(work, 'home');
    mkdirSync(home);
    symlinkSync(join(realHome, 'cache'), join(home, 'cache'));
    const store = new ImageStore({ home });
    const image = await store.pull(`${source.host}/bench/debian:1`);
    await done(source);

    const roost = [];
    const roostWhole = [];
    const again = [];
    const skopeo = [];
    let bytes = 0;
    let skopeoDigest = '';
    const runRoost = async (samples, options) => {
      const reg = await registry();
      const dest = `${reg.host}/bench/debian:1`;
      const t = performance.now();
      const r = await store.push(image.id, { destination: dest, ...options });
      samples.push(performance.now() - t);
      if (r.bytes.pushed !== r.bytes.total) throw new Error(`the push to a new registry uploaded ${r.bytes.pushed} of ${r.bytes.total} bytes`);
      bytes = r.bytes.total;
      if (samples === roost) {
        const t2 = performance.now();
        const second = await store.push(image.id, { destination: dest });
        again.push(performance.now() - t2);
        if (second.blobs.pushed + second.blobs.mounted !== 0) throw new Error('the second push sent blobs');
      }
      await done(reg);
    };
    const runSkopeo = async () => {
      const reg = await registry();
      const digestFile = join(work, 'skopeo-digest');
      const t = performance.now();
      await exec('skopeo', [
        'copy',
        '-q',
        '--dest-tls-verify=false',
        '--digestfile',
        digestFile,
        `oci:${debian.dir}:${debian.tag}`,
        `docker://${reg.host}/bench/debian:1`,
      ]);
      skopeo.push(performance.now() - t);
      skopeoDigest = readFileSync(digestFile, 'utf8').trim();
      await done(reg);
    };
    for (let i = 0; i < RUNS; i++) {
      // Alternate which goes first, so neither always meets a warmer page cache.
      if (i % 2 === 0) {
        await runSkopeo();
        await runRoost(roost, {});
      } else {
        await runRoost(roost, {});
        await runSkopeo();
      }
      await runRoost(roostWhole, { chunkThreshold: Number.MAX_SAFE_INTEGER });
    }
    const mbps = bytes / 1e6 / (median(roost) / 1000);
    const wholeMbps = bytes / 1e6 / (median(roostWhole) / 1000);
    const skopeoMbps = bytes / 1e6 / (median(skopeo) / 1000);
    results.figures.imagePush = {
      unit: 'MB/s',
      value: mbps,
      ms: median(roost),
      samples: roost,
      bytes,
      layers: image.layers.length,
      largestLayer: Math.max(...image.layers.map((l) => l.size)),
      chunking: 'PATCH of 8 MiB above 16 MiB, one PUT below (defaults)',
      oneRequestPerBlob: { mbps: wholeMbps, ms: median(roostWhole), samples: roostWhole },
      secondPushAllExist: { ms: median(again), samples: again },
      sameDigestAsSkopeo: skopeoDigest === image.id,
      floor: { what: 'skopeo copy oci: -> docker:// of the same image to a new registry (median)', mbps: skopeoMbps, ms: median(skopeo), samples: skopeo },
      ratio: mbps / skopeoMbps,
      target: 'ratio >= 1 (at least as fast as skopeo)',
    };
    row(
      `image push (${(bytes / 1e6).toFixed(0)} MB gzip, ${image.layers.length} layers)`,
      `${mbps.toFixed(1)} MB/s (${sec(median(roost))})`,
      `skopeo copy ${skopeoMbps.toFixed(1)} MB/s (${sec(median(skopeo))})`,
      `${(mbps / skopeoMbps).toFixed(2)}x (target >= 1x)`,
    );
    row(
      '  push: one PUT per blob; all present',
      `${wholeMbps.toFixed(1)} MB/s (${sec(median(roostWhole))})`,
      `second push ${ms(median(again))}`,
      'chunks vs none',
    );
  } finally {
    await Promise.allSettled([...registries].map((r) => r.stop()));
    closeStateDbs();
    rmSync(work, { recursive: true, force: true });
  }
}
