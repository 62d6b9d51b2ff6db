// Volumes benchmark (issue 21), run by bench/run.js: the same guest
// workloads on four file services, all in the same run, taking turns so that
// drift in machine load hits each alike.
//
// Workloads, each timed inside the guest (one `sh -c`, timestamps from
// /proc/uptime around the command: busybox `date` has no %N, and the 10 ms
// resolution is far below the seconds each step takes), medians of RUNS:
//   seq write  dd if=/dev/zero bs=1M count=MIB conv=fsync to the volume
//   seq read   dd of=/dev/null bs=1M of that file (cache=none: the server reads)
//   small      2,000 files of 1 KiB (shell builtins, no fork per file), then
//              `ls -l` of them (a getattr each), then `rm -r`
//
// Subjects:
//   roost      Sandbox.create({ volumes: [{ source: dir, target: '/v' }] }) as
//              shipped: Roost's file server process, the relay port, jailed.
//   virtio-9p  QEMU's own 9P server (-fsdev local, mapped-xattr) on a
//              virtio-9p-device of its own, msize 512000 (the peer).
//   diod       Debian's diod over the same transport as Roost: the VM's
//              `roost.p9` port, the guest's relay and mount (`mount` CALL with
//              RELAY), the host end in core's RelayLink; the channel's byte
//              stream is piped to `diod -r 0 -w 1` (one connection on its
//              stdin/stdout) instead of a Roost session. The only change to the
//              bytes: Tattach's aname (`v0`, which the relay's mount always
//              sends) is rewritten to the export path diod wants.
//   remote     Roost's remote volume: a second home here serves a directory
//              over loopback TLS 1.3 (serveVolume, `roost volume serve`), the
//              bench's home makes a remote volume of it and a sandbox mounts
//              it: guest -> relay -> its file server -> TLS -> the serving
//              process -> the directory.
//   floor      the transport alone: `dd` to and from a plain virtserialport
//              on the same virtio-serial device, against a Node socket that
//              counts (sink) or sends (source) bytes. No mux frames, no 9P:
//              the most the relay port can carry one way.
//
// virtio-9p, diod and the floor share one VM, started here from qemuArgs()
// (as bench/run.js's bootToPoweroff does) with the agent and the relay port,
// plus the 9P device and the raw port appended; its commands go through an
// AgentConnection. It is not jailed (a peer measurement); Roost's sandbox is,
// as shipped (its figures say so).
//
// Targets (issue 21): sequential within 1.5x of the floor; small files no
// slower than virtio-9p.
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, realpathSync, rmSync, symlinkSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Transform } from 'node:stream';
import { Runtime, Sandbox, serveVolume, Volumes } from '@roost/core';
import { AgentConnection, ensureDebianPackages, qemuArgs, QEMU_BINARY, RelayLink, runCall, vmPaths } from '@roost/core/internal';
import { CallFlags, HelloFlags } from '@roost/protocol';
import { MiB, median } from './stats.js';

const RUNS = Number(process.env.BENCH_VOLUME_RUNS ?? 3);
const VOL_MIB = Number(process.env.BENCH_VOLUME_MIB ?? 256);
const FILES = Number(process.env.BENCH_VOLUME_FILES ?? 2000);
/** msize of the virtio-9p mount (the relay's mounts use 1 MiB; diod caps whatever it is offered at 64 KiB). */
const PEER_MSIZE = 512000;

/**
 * `home`: the throwaway Roost home of the run; `assets`, `accel`: as
 * run.js loaded them (the peer VM boots the same kernel, initramfs and rootfs).
 */
export async function benchVolumes({ home, assets, accel, row, results }) {
  const work = mkdtempSync(join(tmpdir(), 'roost-bench-volumes-'));
  const cleanup = [];
  try {
    // diod is installed as a test tool (packages/testkit TEST_PACKAGES); make sure of it here too.
    await ensureDebianPackages(['diod'], (line) => console.log(`  (setup: ${line})`));

    // --- Roost, as shipped -----------------------------------------------------
    const roostDir = mkdtempSync(join(work, 'roost-'));
    const sb = await Sandbox.create({ home, timeoutMs: 120_000, network: 'none', volumes: [{ source: roostDir, target: '/v' }] });
    cleanup.push(() => sb.remove({ force: true }));
    const roostSh = (script) => sb.commands.run(['sh', '-c', script], { timeoutMs: 600_000 });

    // --- Roost, a remote volume over loopback TLS ------------------------------
    const serveHome = mkdtempSync(join(work, 'serve-home-'));
    const served = mkdtempSync(join(work, 'served-'));
    const server = await serveVolume({ home: serveHome, source: served, listen: '127.0.0.1:0', credentialsOut: join(work, 'remote.credentials') });
    cleanup.push(() => server.close());
    const remoteName = `bench-remote-${process.pid}`;
    await new Volumes({ home }).create({ name: remoteName, remote: readFileSync(join(work, 'remote.credentials'), 'utf8') });
    const rsb = await Sandbox.create({ home, timeoutMs: 120_000, network: 'none', volumes: [{ source: remoteName, target: '/r' }] });
    cleanup.push(async () => {
      await rsb.remove({ force: true });
      await new Volumes({ home }).remove(remoteName);
    });
    const remoteSh = (script) => rsb.commands.run(['sh', '-c', script], { timeoutMs: 600_000 });

    // Opt-in (BENCH_VOLUME_JAIL_OFF=1): the same with `jail: false`, which tells the jail's share (QEMU's
    // cgroup, the file server's dropped privileges) from the server's.
    let free = null;
    if (process.env.BENCH_VOLUME_JAIL_OFF === '1') {
      const freeHome = mkdtempSync(join(work, 'home-'));
      symlinkSync(realpathSync(join(home, 'cache')), join(freeHome, 'cache'));
      const runtime = await Runtime.open({ home: freeHome, jail: false, owner: 'bench volumes' });
      cleanup.push(() => runtime.close());
      const freeDir = mkdtempSync(join(work, 'roost-free-'));
      free = await runtime.create({ timeoutMs: 120_000, network: 'none', volumes: [{ source: freeDir, target: '/v' }] });
      cleanup.push(() => free.remove({ force: true }));
    }

    // --- the peer VM: virtio-9p, diod behind the relay port, the raw port ----
    const peer = await startPeerVm({ work, assets, accel, cpus: sb.info.cpus, memoryMiB: sb.info.memoryMiB });
    cleanup.push(() => peer.stop());
    const peerSh = (script) => peer.sh(script);
    await peer.mountVirtio('/peer');
    await peer.mountDiod('/diod');

    const subjects = [
      { key: 'roost', label: 'Roost', sh: roostSh, dir: '/v' },
      ...(free
        ? [{ key: 'roostNoJail', label: 'Roost, jail: false', sh: (script) => free.commands.run(['sh', '-c', script], { timeoutMs: 600_000 }), dir: '/v' }]
        : []),
      { key: 'remote', label: 'Roost, remote over loopback TLS', sh: remoteSh, dir: '/r' },
      { key: 'virtio9p', label: 'virtio-9p', sh: peerSh, dir: '/peer' },
      { key: 'diod', label: 'diod', sh: peerSh, dir: '/diod' },
    ];
    const m = Object.fromEntries(subjects.map((s) => [s.key, { write: [], read: [], create: [], stat: [], remove: [] }]));
    const floor = { write: [], read: [] };
    for (let r = 0; r < RUNS; r++) {
      for (const s of subjects) {
        const seq = await sequential(s.sh, s.dir);
        m[s.key].write.push(seq.write);
        m[s.key].read.push(seq.read);
        const small = await smallFiles(s.sh, s.dir);
        m[s.key].create.push(small.create);
        m[s.key].stat.push(small.stat);
        m[s.key].remove.push(small.remove);
      }
      floor.write.push(await peer.rawWrite());
      floor.read.push(await peer.rawRead());
    }

    // --- figures ---------------------------------------------------------------
    const bytes = VOL_MIB * MiB;
    const mbps = (samples) => bytes / 1e6 / (median(samples) / 1000);
    const perSubject = (k) => {
      const x = m[k];
      const total = x.create.map((c, i) => c + x.stat[i] + x.remove[i]);
      return {
        write: { mbps: mbps(x.write), ms: x.write },
        read: { mbps: mbps(x.read), ms: x.read },
        smallFiles: {
          files: FILES,
          totalMs: median(total),
          filesPerSec: FILES / (median(total) / 1000),
          createMs: x.create,
          statMs: x.stat,
          removeMs: x.remove,
        },
      };
    };
    const fig = {
      unit: 'MB/s',
      bytes,
      runs: RUNS,
      roost: { ...perSubject('roost'), confinement: sb.info.confinement ?? null, msize: 1048576, transport: 'relay port (virtio-serial roost.p9), trans=fd' },
      remote: { ...perSubject('remote'), transport: 'relay port, then TLS 1.3 over loopback to a volume server (serveVolume)' },
      ...(free ? { roostNoJail: { ...perSubject('roostNoJail'), confinement: null, msize: 1048576, jailed: false } } : {}),
      virtio9p: { ...perSubject('virtio9p'), msize: PEER_MSIZE, transport: 'virtio-9p-device, -fsdev local security_model=mapped-xattr', jailed: false },
      diod: {
        ...perSubject('diod'),
        msize: peer.diodMsize,
        transport: 'relay port (virtio-serial roost.p9), trans=fd',
        jailed: false,
        version: peer.diodVersion,
      },
      floor: {
        what: 'dd to/from a plain virtserialport on the same virtio-serial device, a Node socket sink/source on the host (no mux, no 9P)',
        write: { mbps: mbps(floor.write), ms: floor.write },
        read: { mbps: mbps(floor.read), ms: floor.read },
      },
      vm: { cpus: sb.info.cpus, memoryMiB: sb.info.memoryMiB },
      target: 'sequential within 1.5x of the floor; small files no slower than virtio-9p',
    };
    results.figures.volumes = fig;

    const ratio = (a, b) => `${(a / b).toFixed(2)}x`;
    for (const dir of ['write', 'read']) {
      const R = fig.roost[dir].mbps;
      const V = fig.virtio9p[dir].mbps;
      const D = fig.diod[dir].mbps;
      const F = fig.floor[dir].mbps;
      row(`volume ${dir} ${VOL_MIB} MiB (Roost)`, `${R.toFixed(0)} MB/s`, `virtio-9p ${V.toFixed(0)} MB/s (${ratio(R, V)})`, '');
      if (free)
        row(
          `volume ${dir} ${VOL_MIB} MiB (Roost, jail: false)`,
          `${fig.roostNoJail[dir].mbps.toFixed(0)} MB/s`,
          `virtio-9p ${V.toFixed(0)} MB/s (${ratio(fig.roostNoJail[dir].mbps, V)})`,
          '',
        );
      row(
        `volume ${dir} ${VOL_MIB} MiB (Roost, remote TLS)`,
        `${fig.remote[dir].mbps.toFixed(0)} MB/s`,
        `local Roost ${R.toFixed(0)} MB/s (${ratio(fig.remote[dir].mbps, R)})`,
        '',
      );
      row(`volume ${dir} ${VOL_MIB} MiB (diod, relay port)`, `${D.toFixed(0)} MB/s`, `virtio-9p ${V.toFixed(0)} MB/s (${ratio(D, V)})`, '');
      row(
        `volume ${dir}: Roost vs the port's floor`,
        `${R.toFixed(0)} MB/s`,
        `raw virtio-serial ${F.toFixed(0)} MB/s`,
        `${(F / R).toFixed(2)}x below (target <= 1.5x)`,
      );
    }
    const fps = (k) => fig[k].smallFiles.filesPerSec;
    row(
      `volume ${FILES} small files (Roost)`,
      `${fps('roost').toFixed(0)} files/s`,
      `virtio-9p ${fps('virtio9p').toFixed(0)} files/s (${ratio(fps('roost'), fps('virtio9p'))})`,
      'target >= 1.00x',
    );
    if (free)
      row(
        `volume ${FILES} small files (Roost, jail: false)`,
        `${fps('roostNoJail').toFixed(0)} files/s`,
        `virtio-9p ${fps('virtio9p').toFixed(0)} files/s (${ratio(fps('roostNoJail'), fps('virtio9p'))})`,
        '',
      );
    row(
      `volume ${FILES} small files (Roost, remote TLS)`,
      `${fps('remote').toFixed(0)} files/s`,
      `local Roost ${fps('roost').toFixed(0)} files/s (${ratio(fps('remote'), fps('roost'))})`,
      '',
    );
    row(
      `volume ${FILES} small files (diod, relay)`,
      `${fps('diod').toFixed(0)} files/s`,
      `virtio-9p ${fps('virtio9p').toFixed(0)} files/s (${ratio(fps('diod'), fps('virtio9p'))})`,
      '',
    );
    console.log(
      `  (small files: create+write 1 KiB, ls -l, rm -r; msize Roost 1 MiB, virtio-9p ${PEER_MSIZE}, diod ${peer.diodMsize} (its cap); Roost jailed, peers not)`,
    );
  } finally {
    for (const fn of cleanup.reverse()) await Promise.resolve(fn()).catch((e) => console.error(`  (volumes cleanup: ${e.message})`));
    rmSync(work, { recursive: true, force: true });
  }
}

// ---- workloads ------------------------------------------------------------------

/** An awk-free timestamp in ms from /proc/uptime (10 ms resolution). */
const NOW = "$(cut -d' ' -f1 /proc/uptime)";

/** Runs `script` (which echoes `T <name> <seconds>` marks) and returns { name: ms } between consecutive marks. */
async function guestMarks(sh, script) {
  const r = await sh(script);
  if (r.exitCode !== 0) throw new Error(`guest workload failed (${r.exitCode}): ${r.stderr || r.stdout}`);
  const marks = r.stdout
    .split('\n')
    .filter((l) => l.startsWith('T '))
    .map((l) => l.split(' '));
  const out = {};
  for (let i = 1; i < marks.length; i++) out[marks[i][1]] = (Number(marks[i][2]) - Number(marks[i - 1][2])) * 1000;
  return out;
}

async function sequential(sh, dir) {
  const f = `${dir}/seq.bin`;
  const w = await guestMarks(sh, `echo T start ${NOW}; dd if=/dev/zero of=${f} bs=1M count=${VOL_MIB} conv=fsync 2>/dev/null || exit 1; echo T write ${NOW}`);
  const size = (await sh(`stat -c %s ${f}`)).stdout.trim();
  if (Number(size) !== VOL_MIB * MiB) throw new Error(`${f} has ${size} bytes after the write`);
  const r = await guestMarks(sh, `echo T start ${NOW}; dd if=${f} of=/dev/null bs=1M 2>/dev/null || exit 1; echo T read ${NOW}`);
  await sh(`rm -f ${f}`);
  return { write: w.write, read: r.read };
}

async function smallFiles(sh, dir) {
  const d = `${dir}/small`;
  const script = [
    `rm -rf ${d}; mkdir ${d} || exit 1`,
    // 1023 bytes + echo's newline = 1 KiB, made once; the loop forks nothing.
    `s=$(head -c 1023 /dev/zero | tr '\\0' x)`,
    `echo T start ${NOW}`,
    `i=0; while [ $i -lt ${FILES} ]; do echo "$s" > ${d}/f$i || exit 1; i=$((i+1)); done`,
    `echo T create ${NOW}`,
    `n=$(ls -l ${d} | grep -c '^-')`,
    `echo T stat ${NOW}`,
    `rm -r ${d} || exit 1`,
    `echo T remove ${NOW}`,
    `[ "$n" = ${FILES} ] || { echo "ls saw $n files" >&2; exit 1; }`,
  ].join('\n');
  return guestMarks(sh, script);
}

// ---- the peer VM -----------------------------------------------------------------

/**
 * One VM for the peers and the floor: the sandbox's kernel, initramfs and
 * rootfs with the agent and the relay port (qemuArgs, as a sandbox gets
 * them), plus a virtio-9p device and a plain virtserialport.
 */
async function startPeerVm({ work, assets, accel, cpus, memoryMiB }) {
  const dir = mkdtempSync(join(work, 'peer-'));
  const peerDir = mkdtempSync(join(work, 'virtio9p-'));
  const diodDir = mkdtempSync(join(work, 'diod-'));
  const rawSocket = join(dir, 'raw.sock');
  const paths = vmPaths(dir);
  const config = {
    id: 'bench-volumes-peer',
    dir,
    cpus,
    memoryMiB,
    kernel: assets.kernel,
    initramfs: assets.initramfs,
    rootfs: assets.rootfs,
    kernelHz: assets.kernelHz,
    detached: false,
    accel,
    fileChannel: true,
  };
  const args = qemuArgs(config, paths, { agent: true, rootfs: true });
  // One more port on the same virtio-serial device (agent, roost.p9, the raw one).
  const serial = args.findIndex((a) => a.startsWith('virtio-serial-device,'));
  if (serial < 0) throw new Error('qemuArgs has no virtio-serial-device');
  args[serial] = 'virtio-serial-device,max_ports=4';
  args.push(
    '-chardev',
    `socket,id=raw,path=${rawSocket},server=on,wait=off`,
    '-device',
    'virtserialport,chardev=raw,name=bench.raw',
    '-fsdev',
    `local,id=p,path=${peerDir},security_model=mapped-xattr`,
    // Bus 1 (IRQ 6) is free: the NIC's bus 2 is unused here, 3 is the RTC's, 4-7 the other devices' (see args.ts).
    '-device',
    'virtio-9p-device,fsdev=p,mount_tag=peer,bus=virtio-mmio-bus.1',
  );
  const qemu = spawn(QEMU_BINARY, args, { stdio: ['ignore', 'ignore', 'pipe'] });
  let qemuErr = '';
  qemu.stderr.on('data', (c) => (qemuErr += c).length > 8192 && (qemuErr = qemuErr.slice(-8192)));
  let exited = false;
  const exitedP = new Promise((resolve) => qemu.on('exit', () => resolve((exited = true))));
  qemu.on('error', () => {});

  let conn = null;
  let link = null;
  const diods = [];
  const stop = async () => {
    link?.close();
    conn?.close();
    // diod finishes its connection before it honours SIGTERM: its stdin closed first, SIGKILL after a grace.
    await Promise.all(
      diods.map(async (d) => {
        if (d.exitCode !== null || d.signalCode !== null) return;
        const gone = new Promise((r) => d.once('exit', r));
        d.stdin.destroy();
        d.kill('SIGTERM');
        await Promise.race([gone, sleep(2000)]);
        if (d.exitCode === null && d.signalCode === null) d.kill('SIGKILL');
      }),
    );
    if (!exited) {
      qemu.kill('SIGTERM');
      await Promise.race([exitedP, new Promise((r) => setTimeout(r, 5000))]);
      if (!exited) qemu.kill('SIGKILL');
    }
  };
  try {
    conn = await AgentConnection.connect(paths.agentSocket, {
      flags: HelloFlags.POWEROFF_ON_DISCONNECT,
      timeoutMs: 120_000,
      vmExited: () => exited,
    });
  } catch (e) {
    await stop();
    throw new Error(`the peer VM did not start: ${e.message}; QEMU said: ${qemuErr.trim()}`);
  }
  const sh = (script) => guestRun(conn, script);
  const rawDev = (await sh('for p in /sys/class/virtio-ports/*; do [ "$(cat $p/name)" = bench.raw ] && echo /dev/${p##*/}; done')).stdout.trim();
  if (!rawDev) throw new Error('the peer VM has no bench.raw port');

  // diod behind the relay port: RelayLink (as Roost's file server uses it) hands each channel to a diod of its own.
  const diodVersion = await new Promise((resolve) => {
    const p = spawn('dpkg-query', ['-W', '-f=${Version}', 'diod'], { stdio: ['ignore', 'pipe', 'ignore'] });
    let out = '';
    p.stdout.on('data', (c) => (out += c));
    p.on('close', () => resolve(out.trim() || null));
    p.on('error', () => resolve(null));
  });
  const diodMsize = 65536;
  link = await new Promise((resolve, reject) => {
    const s = net.connect(paths.fileSocket, () => {
      const l = new RelayLink(s, {
        open: (channel) => {
          const stream = l.stream(channel);
          const d = spawn('diod', ['-f', '-n', '-S', '-U', 'root', '-r', '0', '-w', '1', '-e', diodDir, '-L', 'stderr'], { stdio: ['pipe', 'pipe', 'pipe'] });
          diods.push(d);
          d.stderr.on('data', (c) => process.env.BENCH_VERBOSE && process.stderr.write(`  (diod: ${c})`));
          d.on('error', (e) => console.error(`  (diod: ${e.message})`));
          d.stdin.on('error', () => {});
          stream.on('error', () => {});
          stream.pipe(new AttachRewriter(diodDir)).pipe(d.stdin);
          d.stdout.pipe(stream);
          d.on('exit', () => stream.destroy());
          return stream;
        },
        eof: () => {},
        hello: () => {},
        closed: () => {},
      });
      resolve(l);
    });
    s.once('error', reject);
  });

  return {
    sh,
    diodVersion,
    diodMsize,
    stop,
    async mountVirtio(target) {
      const r = await sh(
        `mkdir -p ${target} && mount -t 9p -o trans=virtio,version=9p2000.L,msize=${PEER_MSIZE},cache=none,access=client peer ${target} && grep " ${target} " /proc/mounts`,
      );
      if (r.exitCode !== 0) throw new Error(`cannot mount virtio-9p: ${r.stderr}`);
    },
    async mountDiod(target) {
      await runCall(conn, { op: 'mount', args: ['0', target], flags: CallFlags.RELAY, user: '0' }, {});
      const r = await sh(`grep " ${target} " /proc/mounts`);
      const msize = /msize=(\d+)/.exec(r.stdout)?.[1];
      if (!msize) throw new Error(`diod mount missing: ${r.stdout}`);
    },
    /** Guest dd into the raw port, a host socket counting the bytes: ms by the guest's clock. */
    async rawWrite() {
      const bytes = VOL_MIB * MiB;
      const socket = await connectRaw(rawSocket);
      let got = 0;
      const all = new Promise((resolve) => {
        socket.on('data', (c) => {
          got += c.length;
          if (got >= bytes) resolve();
        });
      });
      const t = await guestMarks(sh, `echo T start ${NOW}; dd if=/dev/zero of=${rawDev} bs=1M count=${VOL_MIB} 2>/dev/null || exit 1; echo T write ${NOW}`);
      await all;
      socket.destroy();
      await sleep(200); // the guest sees the host gone before the next connect
      if (got !== bytes) throw new Error(`raw port sink got ${got} bytes, expected ${bytes}`);
      return t.write;
    },
    /** A host socket sending MIB MiB, guest dd reading them from the raw port. */
    async rawRead() {
      const socket = await connectRaw(rawSocket);
      const block = Buffer.alloc(MiB, 0x61);
      const send = (async () => {
        for (let i = 0; i < VOL_MIB; i++) if (!socket.write(block)) await new Promise((r) => socket.once('drain', r));
      })();
      const t = await guestMarks(
        sh,
        `echo T start ${NOW}; dd if=${rawDev} of=/dev/null bs=1M count=${VOL_MIB} iflag=fullblock 2>/tmp/dd.err || { cat /tmp/dd.err >&2; exit 1; }; echo T read ${NOW}; cat /tmp/dd.err`,
      );
      await send;
      socket.destroy();
      await sleep(200);
      return t.read;
    },
  };
}

function connectRaw(path) {
  return new Promise((resolve, reject) => {
    const s = net.connect(path, () => resolve(s));
    s.once('error', reject);
  });
}

const sleep = (n) => new Promise((r) => setTimeout(r, n));

/** `sh -c script` over a raw agent connection: { exitCode, stdout, stderr }. */
function guestRun(conn, script) {
  return new Promise((resolve, reject) => {
    const out = [[], []];
    const channel = conn.exec(
      { args: ['sh', '-c', script] },
      {
        started: () => {},
        data: (fd, chunk) => {
          out[fd === 1 ? 0 : 1].push(Buffer.from(chunk));
          channel.grant(fd, chunk.length);
        },
        eof: () => {},
        exit: (exit) => resolve({ exitCode: exit.exitCode, stdout: Buffer.concat(out[0]).toString(), stderr: Buffer.concat(out[1]).toString() }),
        failed: (e) => reject(e),
      },
    );
  });
}

/** 9P type numbers. */
const TATTACH = 104;

/**
 * Passes a 9P byte stream through unchanged except Tattach, whose aname is
 * replaced: the relay's mount always attaches `vN` (Roost's export names),
 * and diod wants the exported path. Only frame headers are parsed; other
 * frames' bytes go through as they came, uncopied.
 */
class AttachRewriter extends Transform {
  #aname;
  #left = 0;
  #head = Buffer.alloc(0);
  #gather = 0;

  constructor(aname) {
    super();
    this.#aname = Buffer.from(aname);
  }

  _transform(chunk, _encoding, callback) {
    let off = 0;
    while (off < chunk.length) {
      if (this.#left > 0) {
        const n = Math.min(this.#left, chunk.length - off);
        this.push(chunk.subarray(off, off + n));
        off += n;
        this.#left -= n;
        continue;
      }
      const need = this.#gather > 0 ? this.#gather : 5;
      const take = Math.min(need - this.#head.length, chunk.length - off);
      this.#head = Buffer.concat([this.#head, chunk.subarray(off, off + take)]);
      off += take;
      if (this.#head.length < need) break;
      if (this.#gather > 0) {
        this.push(this.#rewrite(this.#head));
        this.#gather = 0;
      } else {
        const size = this.#head.readUInt32LE(0);
        if (this.#head[4] === TATTACH && size <= 65536) {
          this.#gather = size;
          continue;
        }
        this.push(this.#head);
        this.#left = Math.max(0, size - 5);
      }
      this.#head = Buffer.alloc(0);
    }
    callback();
  }

  /** size[4] type[1] tag[2] fid[4] afid[4] uname[s] aname[s] n_uname[4] */
  #rewrite(frame) {
    let p = 15;
    p += 2 + frame.readUInt16LE(p); // uname
    const anameLen = frame.readUInt16LE(p);
    const before = frame.subarray(0, p);
    const after = frame.subarray(p + 2 + anameLen);
    const len = Buffer.alloc(2);
    len.writeUInt16LE(this.#aname.length);
    const out = Buffer.concat([before, len, this.#aname, after]);
    out.writeUInt32LE(out.length, 0);
    return out;
  }
}
