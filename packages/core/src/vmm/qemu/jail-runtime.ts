import { execFile } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, realpathSync, statSync } from 'node:fs';
import { copyFile, link, mkdir, rename, rm, writeFile } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { promisify } from 'node:util';
import { RoostError } from '../../errors.js';

const execFileP = promisify(execFile);

/**
 * What a confined QEMU runs from: a directory in the cache holding its
 * binary, the shared libraries it loads, the accelerator module and the
 * firmware it reads, at their real paths below `root` (`<root>/usr/bin/qemu-system-x86_64`, ...),
 * so one read-only bind mount gives the jail QEMU and nothing else of the
 * host's software.
 */
export interface QemuRuntime {
  /** The directory (bind-mounted read-only at the same path in each jail). */
  root: string;
  /** QEMU's path inside the jail. */
  qemu: string;
  /** The directories the dynamic loader searches (LD_LIBRARY_PATH): the jail has no ld.so.cache. */
  libraryPath: string[];
  /** Symlinks the jail needs at its top (`/lib64` for the ELF interpreter), as `link=target`. */
  symlinks: string[];
}

const building = new Map<string, Promise<QemuRuntime>>();

/**
 * The runtime of the QEMU binary `qemu` (an absolute path), built once per
 * binary (its path, size and mtime name it) under `<cache>/jail/`. Files
 * are hard links where the cache shares the host's filesystem (no copy,
 * and a package upgrade, which replaces files, leaves them intact), copies
 * elsewhere.
 */
export function qemuRuntime(cache: string, qemu: string): Promise<QemuRuntime> {
  const real = realpathSync(qemu);
  const st = statSync(real);
  const key = createHash('sha256').update(`qemu-runtime-v1:${real}:${st.size}:${st.mtimeMs}`).digest('hex').slice(0, 16);
  const root = join(cache, 'jail', `qemu-${key}`);
  let p = building.get(root);
  if (!p) {
    p = build(root, real).catch((e: unknown) => {
      building.delete(root);
      throw e;
    });
    building.set(root, p);
  }
  return p;
}

/** The ELF interpreter and libraries `ldd` lists for `binary`, as absolute paths. */
async function sharedObjects(binary: string): Promise<string[]> {
  const { stdout } = await execFileP('ldd', [binary]).catch((e: Error) => {
    throw new RoostError('SETUP_REQUIRED', `cannot list the libraries of ${binary} (ldd): ${e.message}`, { cause: e });
  });
  const out: string[] = [];
  for (const line of stdout.split('\n')) {
    // "libz.so.1 => /lib/x86_64-linux-gnu/libz.so.1 (0x...)" or "/lib64/ld-linux-x86-64.so.2 (0x...)"
    const m = /(?:=>\s*)?(\/\S+)\s+\(0x[0-9a-f]+\)/.exec(line);
    if (m) out.push(m[1]!);
    else if (/not found/.test(line)) throw new RoostError('SETUP_REQUIRED', `${binary} needs a library that is not installed: ${line.trim()}`);
  }
  return out;
}

/** A path with its directories resolved (the file's own name kept: sonames are symlinks the loader looks up by name). */
function canonical(path: string): string {
  return join(realpathSync(dirname(path)), basename(path));
}

async function build(root: string, qemu: string): Promise<QemuRuntime> {
  const exeDir = dirname(qemu);
  const prefix = dirname(exeDir); // /usr
  // QEMU finds its modules and firmware relative to its executable (<bindir>/../lib/<arch>/qemu, <bindir>/../share/qemu).
  const wanted = new Set<string>([qemu]);
  const objects = await sharedObjects(qemu);
  const moduleDirs = [join(prefix, 'lib', 'x86_64-linux-gnu', 'qemu'), join(prefix, 'lib', 'qemu'), join(prefix, 'lib64', 'qemu')];
  const accel = moduleDirs.map((d) => join(d, 'accel-tcg-x86_64.so')).filter((f) => existsSync(f));
  for (const m of accel) for (const o of await sharedObjects(m)) objects.push(o);
  for (const f of [...objects, ...accel]) wanted.add(canonical(f));
  for (const firmware of ['qboot.rom', 'bios-microvm.bin']) {
    const f = join(prefix, 'share', 'qemu', firmware);
    if (existsSync(f)) wanted.add(f);
  }
  const interp = objects.find((o) => /\/ld-linux[^/]*\.so/.test(o));
  const libraryPath = [...new Set([...wanted].filter((f) => /\.so(\.|$)/.test(f) && !f.includes('/qemu/')).map((f) => join(root, dirname(f))))];
  const symlinks: string[] = [];
  if (interp) {
    // The interpreter is named in QEMU's ELF header (/lib64/ld-linux-x86-64.so.2): that path must exist in the jail.
    const top = `/${interp.split('/')[1]}`;
    symlinks.push(`${top}=${join(root, realpathSync(top))}`);
  }
  const runtime: QemuRuntime = { root, qemu: join(root, qemu), libraryPath, symlinks };
  const done = join(root, '.complete');
  if (existsSync(done)) return runtime;
  const tmp = `${root}.tmp-${process.pid}-${randomBytes(3).toString('hex')}`;
  try {
    for (const f of wanted) {
      const to = join(tmp, f);
      await mkdir(dirname(to), { recursive: true, mode: 0o755 });
      const from = realpathSync(f);
      await link(from, to).catch(async (e: NodeJS.ErrnoException) => {
        if (e.code !== 'EXDEV' && e.code !== 'EPERM') throw e;
        await copyFile(from, to);
      });
    }
    await writeFile(join(tmp, '.complete'), `${[...wanted].join('\n')}\n`, { mode: 0o644 });
    await mkdir(dirname(root), { recursive: true, mode: 0o755 });
    await rename(tmp, root).catch((e: NodeJS.ErrnoException) => {
      // Another process built it first.
      if (e.code !== 'ENOTEMPTY' && e.code !== 'EEXIST') throw e;
    });
  } finally {
    await rm(tmp, { recursive: true, force: true });
  }
  return runtime;
}
