import { spawn, spawnSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { chmod, mkdir, readdir, readFile, rename, rm, stat, symlink, writeFile } from 'node:fs/promises';
import { dirname, join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import { RoostError } from './errors.js';
import { HomeLayout, roostHome } from './home.js';
import { writeNewc, type CpioEntry } from './cpio.js';

/** What a sandbox boots: produced by `roost setup`, cached under the Roost home. */
export interface Assets {
  /** Uncompressed kernel ELF with a PVH entry note. */
  kernel: string;
  /** The kernel's CONFIG_HZ, needed to compute `lpj` for TCG boots. */
  kernelHz: number;
  /** initramfs: the agent as /init and nothing else worth its load time. */
  initramfs: string;
  /** The base root filesystem for commands (busybox), an erofs image. */
  rootfs: string;
  /** The agent's source hash: what `roost ps` and snapshots record. */
  agentHash: string;
  /** The jailer that confines each VMM, and the shim it preloads into QEMU (host/jailer); absent from older setups. */
  jailer?: string;
  jailPreload?: string;
}

/** Debian packages Roost needs on the host. */
export const REQUIRED_PACKAGES = [
  'qemu-system-x86',
  'linux-source-6.1',
  'build-essential',
  'bc',
  'bison',
  'flex',
  'libelf-dev',
  'libssl-dev',
  'xz-utils',
  'patch',
  'busybox-static',
  'musl-tools',
  'e2fsprogs',
  'erofs-utils',
  'util-linux',
  'qemu-utils',
  'zstd',
  'attr',
  'iproute2', // bridge mode: the bridge and TAP devices
  'iptables', // bridge mode: NAT and egress rules
] as const;

/** Progress lines from long steps. */
export type ProgressFn = (line: string) => void;

/** The directory holding guest/ (the repository root, or ROOST_SOURCE_DIR). */
export function sourceRoot(): string {
  if (process.env.ROOST_SOURCE_DIR) return process.env.ROOST_SOURCE_DIR;
  // packages/core/dist/assets.js -> repository root
  return join(dirname(fileURLToPath(import.meta.url)), '..', '..', '..');
}

const MANIFEST = 'assets.json';

/**
 * Reads the assets `roost setup` built, without building anything. Throws
 * SETUP_REQUIRED, naming the command to run, when any is missing.
 */
export async function loadAssets(home = roostHome()): Promise<Assets> {
  const layout = new HomeLayout(home);
  let assets: Assets;
  try {
    assets = JSON.parse(await readFile(join(layout.cache, MANIFEST), 'utf8')) as Assets;
  } catch (cause) {
    throw new RoostError('SETUP_REQUIRED', `Roost is not set up in ${home}: run \`roost setup\` (or \`npm run setup\`) first`, { cause });
  }
  for (const key of ['kernel', 'initramfs', 'rootfs'] as const) {
    if (!existsSync(assets[key])) {
      throw new RoostError('SETUP_REQUIRED', `the guest ${key} (${assets[key]}) is missing: run \`roost setup\` to build it again`);
    }
  }
  return assets;
}

export interface SetupOptions {
  home?: string;
  progress?: ProgressFn;
  /** Install missing Debian packages with apt-get (needs root). Default true. */
  installPackages?: boolean;
  signal?: AbortSignal;
}

/**
 * Installs what Roost needs and builds the guest: packages, kernel, agent,
 * initramfs and base root filesystem. Every build is keyed by a hash of its
 * inputs, so a second run only checks. Safe to run concurrently: each build
 * lands in a temp directory renamed into place.
 */
export async function setup(options: SetupOptions = {}): Promise<Assets> {
  const home = roostHome(options.home);
  const progress = options.progress ?? (() => {});
  const layout = new HomeLayout(home);
  await mkdir(layout.cache, { recursive: true, mode: 0o700 });

  const missing = missingPackages();
  if (missing.length > 0) {
    if (options.installPackages === false) {
      throw new RoostError('SETUP_REQUIRED', `missing Debian packages: ${missing.join(' ')}; install them with: apt-get install ${missing.join(' ')}`);
    }
    await installPackages(missing, progress, options.signal);
  }

  const src = sourceRoot();
  const kernelDir = await buildKernel(layout, src, progress, options.signal);
  const agent = await buildAgent(layout, src, progress, options.signal);
  const initramfs = await buildInitramfs(layout, agent, progress);
  const jail = await buildJailer(layout, src, progress, options.signal);
  const rootfs = await buildBaseRootfs(layout, progress, options.signal);

  const config = await readFile(join(kernelDir, 'config'), 'utf8');
  const hz = Number(/^CONFIG_HZ=(\d+)$/m.exec(config)?.[1] ?? NaN);
  if (!Number.isFinite(hz)) throw new RoostError('INTERNAL', `kernel config in ${kernelDir} has no CONFIG_HZ`);

  const assets: Assets = { kernel: join(kernelDir, 'vmlinux'), kernelHz: hz, initramfs, rootfs, agentHash: agent.hash, ...jail };
  await writeAtomic(join(layout.cache, MANIFEST), JSON.stringify(assets, null, 2) + '\n');
  progress(`ready: kernel ${relative(home, assets.kernel)}, rootfs ${relative(home, assets.rootfs)}`);
  return assets;
}

/**
 * Installs the Debian packages of `pkgs` that are missing (apt-get, as root).
 * Throws SETUP_REQUIRED naming them when not root. Used by setup and by the
 * test harness for its own tools.
 */
export async function ensureDebianPackages(pkgs: readonly string[], progress: ProgressFn = () => {}, signal?: AbortSignal): Promise<string[]> {
  const missing = missingPackages(pkgs);
  if (missing.length > 0) await installPackages(missing, progress, signal);
  return missing;
}

function missingPackages(pkgs: readonly string[] = REQUIRED_PACKAGES): string[] {
  const r = spawnSync('dpkg-query', ['-W', '-f=${Package} ${db:Status-Abbrev}\n', ...pkgs], { encoding: 'utf8' });
  if (r.error) {
    // Not a Debian system: check for the commands instead, and let the build steps report what is missing.
    return [];
  }
  const installed = new Set(
    r.stdout
      .split('\n')
      .filter((l) => /\sii\s*$/.test(l))
      .map((l) => l.split(' ')[0]),
  );
  return pkgs.filter((p) => !installed.has(p));
}

async function installPackages(pkgs: string[], progress: ProgressFn, signal?: AbortSignal): Promise<void> {
  if (process.getuid?.() !== 0) {
    throw new RoostError('SETUP_REQUIRED', `missing Debian packages: ${pkgs.join(' ')}; run as root: apt-get install ${pkgs.join(' ')}`);
  }
  progress(`packages: installing ${pkgs.join(' ')}`);
  const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' };
  await run('apt-get', ['update', '-q'], { progress, signal, env, quiet: true });
  await run('apt-get', ['install', '-y', '-q', '--no-install-recommends', ...pkgs], { progress, signal, env, quiet: true });
}

async function buildKernel(layout: HomeLayout, src: string, progress: ProgressFn, signal?: AbortSignal): Promise<string> {
  const kdir = join(src, 'guest', 'kernel');
  const tarball = process.env.ROOST_KERNEL_TARBALL ?? '/usr/src/linux-source-6.1.tar.xz';
  const st = await stat(tarball).catch(() => null);
  if (!st) throw new RoostError('SETUP_REQUIRED', `kernel source ${tarball} is missing: apt-get install linux-source-6.1`);
  const patches = (await readdir(join(kdir, 'patches')).catch(() => [] as string[])).filter((f) => f.endsWith('.patch')).map((f) => join(kdir, 'patches', f));
  const key = await hashOf([join(kdir, 'build.sh'), join(kdir, 'roost.config'), ...patches], `${tarball}:${st.size}:${st.mtimeMs}`);
  const out = join(layout.cache, 'kernel', key);
  if (existsSync(join(out, 'vmlinux'))) {
    progress(`kernel: cached (${key})`);
    return out;
  }
  progress('kernel: building from linux-source-6.1 (about 3-5 minutes on 2 cores)');
  const tmp = `${out}.tmp-${process.pid}-${randomBytes(3).toString('hex')}`;
  await mkdir(dirname(out), { recursive: true });
  try {
    await run('bash', [join(kdir, 'build.sh'), tmp], { progress, signal });
    await renameInto(tmp, out);
  } finally {
    await rm(tmp, { recursive: true, force: true });
    await rm(`${tmp}.work`, { recursive: true, force: true });
  }
  return out;
}

async function buildAgent(layout: HomeLayout, src: string, progress: ProgressFn, signal?: AbortSignal): Promise<{ path: string; hash: string }> {
  const adir = join(src, 'guest', 'agent');
  const files = (await readdir(adir)).filter((f) => /\.(c|h)$/.test(f) || f === 'Makefile').map((f) => join(adir, f));
  const key = await hashOf(files);
  const out = join(layout.cache, 'agent', key);
  const bin = join(out, 'roost-agent');
  if (existsSync(bin)) {
    progress(`agent: cached (${key})`);
    return { path: bin, hash: key };
  }
  progress('agent: compiling');
  const tmp = `${out}.tmp-${process.pid}-${randomBytes(3).toString('hex')}`;
  await mkdir(tmp, { recursive: true });
  try {
    await run('make', ['-s', '-C', adir, `OUT=${tmp}`], { progress, signal });
    await renameInto(tmp, out);
  } finally {
    await rm(tmp, { recursive: true, force: true });
  }
  return { path: bin, hash: key };
}

/** The jailer and its preload shim (host/jailer), built once per source hash. */
async function buildJailer(layout: HomeLayout, src: string, progress: ProgressFn, signal?: AbortSignal): Promise<{ jailer: string; jailPreload: string }> {
  const jdir = join(src, 'host', 'jailer');
  const files = (await readdir(jdir)).filter((f) => /\.(c|h)$/.test(f) || f === 'Makefile').map((f) => join(jdir, f));
  const key = await hashOf(files);
  const out = join(layout.cache, 'jailer', key);
  const built = { jailer: join(out, 'roost-jailer'), jailPreload: join(out, 'roost-jail-preload.so') };
  if (existsSync(built.jailer) && existsSync(built.jailPreload)) {
    progress(`jailer: cached (${key})`);
    return built;
  }
  progress('jailer: compiling');
  const tmp = `${out}.tmp-${process.pid}-${randomBytes(3).toString('hex')}`;
  await mkdir(tmp, { recursive: true });
  try {
    await run('make', ['-s', '-C', jdir, `OUT=${tmp}`, 'all'], { progress, signal });
    // Bind-mounted into every jail and read by QEMU's own uid there.
    await chmod(tmp, 0o755);
    await renameInto(tmp, out);
  } finally {
    await rm(tmp, { recursive: true, force: true });
  }
  return built;
}

async function buildInitramfs(layout: HomeLayout, agent: { path: string; hash: string }, progress: ProgressFn): Promise<string> {
  // Version the layout: changing the entries below must change the key.
  const key = sha256(`initramfs-v1:${agent.hash}`).slice(0, 16);
  const out = join(layout.cache, 'initramfs', `${key}.cpio`);
  if (existsSync(out)) return out;
  progress('initramfs: packing');
  const dirs = ['dev', 'proc', 'sys', 'run', 'tmp', 'mnt'];
  const entries: CpioEntry[] = [
    ...dirs.map((name): CpioEntry => ({ name, type: 'dir', mode: 0o755 })),
    // The kernel opens /dev/console for init's stdio before devtmpfs is mounted.
    { name: 'dev/console', type: 'char', mode: 0o600, rdevMajor: 5, rdevMinor: 1 },
    { name: 'init', type: 'file', mode: 0o755, data: await readFile(agent.path) },
  ];
  await mkdir(dirname(out), { recursive: true });
  await writeAtomic(out, writeNewc(entries));
  return out;
}

async function buildBaseRootfs(layout: HomeLayout, progress: ProgressFn, signal?: AbortSignal): Promise<string> {
  const busybox = '/bin/busybox';
  const bb = await readFile(busybox).catch(() => null);
  if (!bb) throw new RoostError('SETUP_REQUIRED', `${busybox} is missing: apt-get install busybox-static`);
  if (!isStaticElf(bb)) throw new RoostError('SETUP_REQUIRED', `${busybox} is not statically linked: apt-get install busybox-static`);
  const key = sha256(Buffer.concat([Buffer.from('base-rootfs-v1:'), bb])).slice(0, 16);
  const out = join(layout.cache, 'rootfs', `base-${key}.erofs`);
  if (existsSync(out)) return out;
  progress('rootfs: building the busybox base root filesystem (erofs)');
  const stage = join(layout.cache, 'rootfs', `stage-${process.pid}-${randomBytes(3).toString('hex')}`);
  try {
    for (const d of ['bin', 'sbin', 'usr/bin', 'usr/sbin', 'etc', 'dev', 'proc', 'sys', 'tmp', 'run', 'root', 'home', 'var/tmp', 'var/log', 'mnt']) {
      await mkdir(join(stage, d), { recursive: true });
    }
    await chmod(join(stage, 'tmp'), 0o1777);
    await chmod(join(stage, 'var/tmp'), 0o1777);
    await chmod(join(stage, 'root'), 0o700);
    await writeFile(join(stage, 'bin/busybox'), bb, { mode: 0o755 });
    const list = spawnSync(busybox, ['--list-full'], { encoding: 'utf8' });
    if (list.status !== 0) throw new RoostError('SETUP_REQUIRED', `${busybox} --list-full failed: ${list.stderr}`);
    for (const path of list.stdout.split('\n').filter(Boolean)) {
      if (path === 'bin/busybox') continue;
      await mkdir(join(stage, dirname(path)), { recursive: true });
      await symlink('/bin/busybox', join(stage, path)).catch((e: NodeJS.ErrnoException) => {
        if (e.code !== 'EEXIST') throw e;
      });
    }
    const etc = {
      passwd: 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n',
      group: 'root:x:0:\ntty:x:5:\nnogroup:x:65534:\n',
      shadow: 'root:*:19000:0:99999:7:::\nnobody:*:19000:0:99999:7:::\n',
      hostname: 'roost\n',
      hosts: '127.0.0.1\tlocalhost\n::1\tlocalhost\n127.0.1.1\troost\n',
      'os-release': 'NAME="Roost base"\nID=roost\nPRETTY_NAME="Roost base (busybox)"\n',
      profile: 'export PS1="\\h:\\w\\$ "\n',
    };
    for (const [name, text] of Object.entries(etc)) await writeFile(join(stage, 'etc', name), text, { mode: name === 'shadow' ? 0o600 : 0o644 });
    const tmpImage = `${out}.tmp-${process.pid}`;
    await run('mkfs.erofs', ['--quiet', '--all-root', '-T0', tmpImage, stage], { progress, signal });
    await rename(tmpImage, out);
  } finally {
    await rm(stage, { recursive: true, force: true });
  }
  return out;
}

/** A static ELF has no PT_INTERP program header. */
function isStaticElf(elf: Buffer): boolean {
  if (elf.length < 64 || elf.readUInt32BE(0) !== 0x7f454c46 || elf[4] !== 2) return false;
  const phoff = Number(elf.readBigUInt64LE(32));
  const phentsize = elf.readUInt16LE(54);
  const phnum = elf.readUInt16LE(56);
  for (let i = 0; i < phnum; i++) {
    const off = phoff + i * phentsize;
    if (off + 4 > elf.length) return false;
    if (elf.readUInt32LE(off) === 3 /* PT_INTERP */) return false;
  }
  return true;
}

async function hashOf(files: string[], extra = ''): Promise<string> {
  const h = createHash('sha256');
  for (const f of [...files].sort()) {
    h.update(f.split('/').pop()!);
    h.update(await readFile(f));
  }
  h.update(extra);
  return h.digest('hex').slice(0, 16);
}

function sha256(data: string | Buffer): string {
  return createHash('sha256').update(data).digest('hex');
}

async function writeAtomic(path: string, data: string | Buffer): Promise<void> {
  const tmp = `${path}.tmp-${process.pid}-${randomBytes(3).toString('hex')}`;
  await writeFile(tmp, data);
  await rename(tmp, path);
}

/** Renames a finished build into place; a concurrent setup that got there first wins. */
async function renameInto(tmp: string, out: string): Promise<void> {
  try {
    await rename(tmp, out);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code !== 'ENOTEMPTY' && code !== 'EEXIST') throw e;
  }
}

/** Runs a command, streaming its output lines to `progress`, and fails with its last lines. */
function run(
  cmd: string,
  args: string[],
  opts: { progress: ProgressFn; signal?: AbortSignal | undefined; env?: NodeJS.ProcessEnv; quiet?: boolean },
): Promise<void> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'], env: opts.env ?? process.env, signal: opts.signal });
    const tail: string[] = [];
    const onLine = (chunk: Buffer) => {
      for (const line of chunk.toString().split('\n')) {
        if (!line.trim()) continue;
        tail.push(line);
        if (tail.length > 30) tail.shift();
        if (!opts.quiet) opts.progress(line);
      }
    };
    child.stdout.on('data', onLine);
    child.stderr.on('data', onLine);
    child.on('error', (e) => {
      const code = (e as NodeJS.ErrnoException).code;
      reject(
        code === 'ENOENT'
          ? new RoostError('SETUP_REQUIRED', `${cmd} is not installed: run \`roost setup\` as root to install the packages it needs`, { cause: e })
          : new RoostError(code === 'ABORT_ERR' ? 'ABORTED' : 'INTERNAL', `${cmd} failed: ${e.message}`, { cause: e }),
      );
    });
    child.on('close', (status, sig) => {
      if (status === 0) resolve();
      else reject(new RoostError('INTERNAL', `${cmd} ${args.join(' ')} failed (${sig ?? `exit ${status}`}):\n${tail.join('\n')}`));
    });
  });
}
