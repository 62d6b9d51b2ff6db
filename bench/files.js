// Files and volumes benchmarks (issue 7), run by bench/run.js after the
// foundation ones so files.write/read are printed beside the stdout-streaming
// figure of the same run.
//
// 1. files.write and files.read of a 256 MiB file, streamed (never whole in
//    memory on either side), median of FILE_RUNS, beside stdout streaming.
// 2. A 9P volume: sequential write (with fsync) and read of 256 MiB with dd
//    inside the guest, beside the same dd on the host's disk in the same
//    directory the volume lives in.
import { execFile } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { Sandbox } from '@roost/core';
import { MiB, median } from './stats.js';

const exec = promisify(execFile);

const FILE_RUNS = Number(process.env.BENCH_FILE_RUNS ?? 3);
const FILE_MIB = Number(process.env.BENCH_FILE_MIB ?? 256);

/**
 * `home` is a throwaway Roost home sharing the real cache; `stdoutMbps` the
 * stdout-streaming figure measured earlier in this run (the floor of 1.).
 */
export async function benchFiles({ home, row, results, stdoutMbps }) {
  const volDir = mkdtempSync(join(tmpdir(), 'roost-bench-vol-'));
  const sb = await Sandbox.create({ home, timeoutMs: 60_000, volumes: [{ source: volDir, target: '/vol' }] });
  try {
    // --- files.write / files.read -------------------------------------------
    const bytes = FILE_MIB * MiB;
    // One pseudo-random MiB repeated: the cost is the transfer, not the generator.
    const block = Buffer.alloc(MiB);
    for (let i = 0; i < block.length; i += 4) block.writeUInt32LE((Math.imul(i, 2654435761) ^ (i >>> 7)) >>> 0, i);
    async function* source() {
      for (let n = 0; n < FILE_MIB; n++) yield block;
    }
    const writes = [];
    const reads = [];
    for (let r = 0; r < FILE_RUNS; r++) {
      let t0 = performance.now();
      const info = await sb.files.write('/tmp/bench.bin', source());
      writes.push(performance.now() - t0);
      if (info.size !== bytes) throw new Error(`files.write wrote ${info.size} bytes, expected ${bytes}`);
      t0 = performance.now();
      let got = 0;
      for await (const chunk of await sb.files.read('/tmp/bench.bin', { format: 'stream' })) got += chunk.length;
      reads.push(performance.now() - t0);
      if (got !== bytes) throw new Error(`files.read returned ${got} bytes, expected ${bytes}`);
    }
    await sb.files.remove('/tmp/bench.bin');
    const writeMbps = bytes / 1e6 / (median(writes) / 1000);
    const readMbps = bytes / 1e6 / (median(reads) / 1000);
    results.figures.filesThroughput = {
      unit: 'MB/s',
      bytes,
      runs: FILE_RUNS,
      write: { mbps: writeMbps, ms: writes },
      read: { mbps: readMbps, ms: reads },
      floor: { what: 'stdout streaming of the same run', mbps: stdoutMbps },
    };
    row(`files.write (${FILE_MIB} MiB, median of ${FILE_RUNS})`, `${writeMbps.toFixed(0)} MB/s`, `stdout streaming ${stdoutMbps.toFixed(0)} MB/s`, '');
    row(`files.read (${FILE_MIB} MiB, median of ${FILE_RUNS})`, `${readMbps.toFixed(0)} MB/s`, `stdout streaming ${stdoutMbps.toFixed(0)} MB/s`, '');

    // --- 9P volume vs the host's disk ----------------------------------------
    const count = FILE_MIB;
    const guestWrite = [];
    const guestRead = [];
    const hostWrite = [];
    const hostRead = [];
    for (let r = 0; r < FILE_RUNS; r++) {
      guestWrite.push(await guestTimed(sb, `dd if=/dev/zero of=/vol/g.bin bs=1M count=${count} conv=fsync 2>/dev/null`));
      guestRead.push(await guestTimed(sb, 'dd if=/vol/g.bin of=/dev/null bs=1M 2>/dev/null'));
      await sb.commands.run('rm -f /vol/g.bin');
      hostWrite.push(await hostTimed(['if=/dev/zero', `of=${join(volDir, 'h.bin')}`, 'bs=1M', `count=${count}`, 'conv=fsync', 'status=none']));
      hostRead.push(await hostTimed([`if=${join(volDir, 'h.bin')}`, 'of=/dev/null', 'bs=1M', 'status=none']));
      rmSync(join(volDir, 'h.bin'), { force: true });
    }
    const mbps = (ms) => bytes / 1e6 / (median(ms) / 1000);
    results.figures.volumeThroughput = {
      unit: 'MB/s',
      bytes,
      runs: FILE_RUNS,
      write: { mbps: mbps(guestWrite), ms: guestWrite },
      read: { mbps: mbps(guestRead), ms: guestRead },
      floor: {
        what: 'the same dd on the host, in the volume directory',
        write: { mbps: mbps(hostWrite), ms: hostWrite },
        read: { mbps: mbps(hostRead), ms: hostRead },
      },
    };
    row(`9P volume write (dd ${FILE_MIB} MiB, fsync)`, `${mbps(guestWrite).toFixed(0)} MB/s`, `host disk ${mbps(hostWrite).toFixed(0)} MB/s`, '');
    row(`9P volume read (dd ${FILE_MIB} MiB)`, `${mbps(guestRead).toFixed(0)} MB/s`, `host (page cache) ${mbps(hostRead).toFixed(0)} MB/s`, '');
  } finally {
    await sb.remove({ force: true });
    rmSync(volDir, { recursive: true, force: true });
  }
}

/**
 * Wall time (ms) of a shell command inside the guest, measured by the
 * guest's own clock (no exec overhead). busybox `date` has no `%N`;
 * busybox `time -f %e` prints the elapsed seconds (to 10 ms) on stderr.
 */
async function guestTimed(sb, cmd) {
  const r = await sb.commands.run(['time', '-f', '%e', 'sh', '-c', cmd]);
  if (r.exitCode !== 0) throw new Error(`guest command failed (${r.exitCode}): ${cmd}: ${r.stderr}`);
  return Number(r.stderr.trim().split('\n').at(-1)) * 1000;
}

async function hostTimed(ddArgs) {
  const t0 = performance.now();
  await exec('dd', ddArgs);
  return performance.now() - t0;
}
