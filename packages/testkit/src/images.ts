import { createHash, randomBytes } from 'node:crypto';
import type { Stats } from 'node:fs';
import { copyFile, mkdir, mkdtemp, readdir, readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { roostHome } from '@roost/core';
import {
  clean,
  FIXED_MTIME,
  initLayout,
  MEDIA_TYPES,
  tagInIndex,
  tarEntries,
  treeEntries,
  writeLayerFile,
  writeOciLayout,
  type BuiltImage,
  type ImageConfig,
  type LayerEntry,
} from './oci-layout.js';
import { exists, run, writeAtomic } from './util.js';

/**
 * Real OCI images for the image tests, built from host parts with the
 * layout writer of oci-layout.ts: busybox, a debootstrapped Debian
 * minbase, and an E2B-style Debian with python3 and a `user` account. Each
 * says what its root filesystem must hold once unpacked.
 */

// ---- what a test can assert ------------------------------------------------

/** What the root filesystem of an image must hold once its layers are applied. Paths are absolute. */
export interface ExpectedRoot {
  /** Regular files, with their exact content and metadata where given. */
  files: Record<string, { content?: string; mode?: number; uid?: number; gid?: number }>;
  /** Directories; `entries` is the exact sorted listing where given. */
  dirs: Record<string, { mode?: number; uid?: number; gid?: number; entries?: string[] }>;
  symlinks: Record<string, string>;
  /** Groups of paths that must be one inode. */
  hardlinks: string[][];
  /** Paths that must not exist (removed by whiteouts and opaque directories). */
  absent: string[];
}

export interface ExpectedConfig {
  Entrypoint?: string[];
  Cmd: string[];
  Env: string[];
  WorkingDir: string;
  User?: string;
}

// ---- busybox ---------------------------------------------------------------

export interface BusyboxImageOptions {
  /** Default 'latest'. */
  tag?: string;
  entrypoint?: string[];
  cmd?: string[];
  /** The image's User: a name ('app'), uid, or uid:gid. */
  user?: string;
  /** Default 'gzip'. */
  compression?: 'gzip' | 'none';
}

export interface BusyboxImage extends BuiltImage {
  expected: ExpectedRoot;
  config: ExpectedConfig;
  /** stdout of the image's default command (Entrypoint + Cmd) when neither option changed them. */
  defaultOutput: string | null;
}

const BUSYBOX = '/bin/busybox';

/**
 * A three-layer linux/amd64 image from the host's static busybox:
 * 1. /bin/busybox, its applets (symlinks; /bin/sh a hardlink), /etc/passwd
 *    with root and app (1000:1000), /etc/group, /etc/os-release;
 * 2. files with owners and modes, a hardlink pair, a directory layer 3 makes
 *    opaque, files layer 3 removes, /etc/motd that layer 3 replaces;
 * 3. whiteouts, the opaque marker with a new file under it, new files.
 * `expected` says what the final root holds and lacks.
 */
export async function buildBusyboxImage(dir: string, options: BusyboxImageOptions = {}): Promise<BusyboxImage> {
  const tag = options.tag ?? 'latest';
  const list = await run(BUSYBOX, ['--list']);
  // Applets the tests lean on, whatever --list says.
  const applets = [...new Set(list.split('\n').filter((a) => a && a !== 'busybox' && a !== 'sh'))].sort();
  const files: ExpectedRoot['files'] = {
    '/etc/passwd': { content: 'root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' },
    '/etc/group': { content: 'root:x:0:\napp:x:1000:\nnogroup:x:65534:\n' },
    '/etc/os-release': { content: 'NAME="Roost test image"\nID=roost-test\nPRETTY_NAME="Roost test image (busybox)"\nVERSION_ID=1\n' },
  };
  const layer1: LayerEntry[] = [
    { type: 'dir', path: 'bin' },
    { type: 'file', path: 'bin/busybox', source: BUSYBOX, mode: 0o755 },
    { type: 'hardlink', path: 'bin/sh', target: 'bin/busybox' },
    ...applets.map((a): LayerEntry => ({ type: 'symlink', path: `bin/${a}`, target: 'busybox' })),
    { type: 'dir', path: 'dev' },
    { type: 'dir', path: 'etc' },
    { type: 'file', path: 'etc/passwd', content: files['/etc/passwd']!.content! },
    { type: 'file', path: 'etc/group', content: files['/etc/group']!.content! },
    { type: 'file', path: 'etc/os-release', content: files['/etc/os-release']!.content! },
    { type: 'file', path: 'etc/motd', content: 'motd of layer 1\n' },
    { type: 'dir', path: 'home' },
    { type: 'dir', path: 'home/app', uid: 1000, gid: 1000, mode: 0o750 },
    { type: 'dir', path: 'proc' },
    { type: 'dir', path: 'root', mode: 0o700 },
    { type: 'dir', path: 'sys' },
    { type: 'dir', path: 'tmp', mode: 0o1777 },
    { type: 'dir', path: 'usr' },
    { type: 'dir', path: 'usr/bin' },
    // An absolute symlink: legitimate, it must resolve inside the image's root.
    { type: 'symlink', path: 'usr/bin/env', target: '/bin/busybox' },
    { type: 'dir', path: 'var' },
    { type: 'dir', path: 'var/tmp', mode: 0o1777 },
  ];
  const layer2: LayerEntry[] = [
    { type: 'file', path: 'home/app/hello.txt', content: 'hello from layer 2\n', uid: 1000, gid: 1000, mode: 0o640 },
    { type: 'symlink', path: 'home/app/hello-link', target: 'hello.txt', uid: 1000, gid: 1000 },
    { type: 'dir', path: 'data' },
    { type: 'file', path: 'data/original.txt', content: 'one inode, two names\n' },
    { type: 'hardlink', path: 'data/linked.txt', target: 'data/original.txt' },
    { type: 'file', path: 'data/setuid-script', content: '#!/bin/sh\necho setuid\n', mode: 0o4755 },
    { type: 'file', path: 'data/secret', content: 'only root reads this\n', mode: 0o600 },
    { type: 'dir', path: 'data/sticky', mode: 0o1777 },
    { type: 'dir', path: 'data/opaque' },
    { type: 'file', path: 'data/opaque/old-a.txt', content: 'hidden by the opaque marker of layer 3\n' },
    { type: 'dir', path: 'data/opaque/old-sub' },
    { type: 'file', path: 'data/opaque/old-sub/old-b.txt', content: 'hidden too\n' },
    { type: 'file', path: 'data/remove-me.txt', content: 'removed by a whiteout of layer 3\n' },
    { type: 'dir', path: 'data/remove-dir' },
    { type: 'file', path: 'data/remove-dir/inner.txt', content: 'removed with its directory\n' },
    { type: 'file', path: 'etc/motd', content: 'motd of layer 2\n' },
  ];
  const layer3: LayerEntry[] = [
    { type: 'whiteout', path: 'data/remove-me.txt' },
    { type: 'whiteout', path: 'data/remove-dir' },
    { type: 'opaque', path: 'data/opaque' },
    { type: 'file', path: 'data/opaque/new.txt', content: 'added under the opaque marker\n' },
    { type: 'file', path: 'data/layer3.txt', content: 'added by layer 3\n', uid: 1000, gid: 1000 },
    { type: 'file', path: 'etc/motd', content: 'motd of layer 3\n' },
  ];

  const env = ['PATH=/bin:/usr/bin', 'GREETING=hello'];
  const config: ImageConfig = { Env: env, WorkingDir: '/home/app', Cmd: options.cmd ?? ['sh', '-c', 'echo default-cmd'] };
  if (options.entrypoint) config.Entrypoint = options.entrypoint;
  if (options.user) config.User = options.user;
  const compression = options.compression ?? 'gzip';
  const built = await writeOciLayout(dir, {
    tag,
    config,
    layers: [
      { entries: layer1, compression, createdBy: 'busybox, applets, /etc' },
      { entries: layer2, compression, createdBy: 'files, a hardlink pair, directories to remove' },
      { entries: layer3, compression, createdBy: 'whiteouts, an opaque directory, new files' },
    ],
  });

  const expected: ExpectedRoot = {
    files: {
      ...files,
      '/bin/busybox': { mode: 0o755, uid: 0, gid: 0 },
      '/etc/motd': { content: 'motd of layer 3\n' },
      '/home/app/hello.txt': { content: 'hello from layer 2\n', mode: 0o640, uid: 1000, gid: 1000 },
      '/data/original.txt': { content: 'one inode, two names\n' },
      '/data/linked.txt': { content: 'one inode, two names\n' },
      '/data/setuid-script': { mode: 0o4755, uid: 0, gid: 0 },
      '/data/secret': { content: 'only root reads this\n', mode: 0o600 },
      '/data/opaque/new.txt': { content: 'added under the opaque marker\n' },
      '/data/layer3.txt': { content: 'added by layer 3\n', uid: 1000, gid: 1000 },
    },
    dirs: {
      '/home/app': { mode: 0o750, uid: 1000, gid: 1000 },
      '/tmp': { mode: 0o1777 },
      '/root': { mode: 0o700 },
      '/data/sticky': { mode: 0o1777 },
      '/data/opaque': { entries: ['new.txt'] },
      '/data': { entries: ['layer3.txt', 'linked.txt', 'opaque', 'original.txt', 'secret', 'setuid-script', 'sticky'] },
    },
    symlinks: { '/bin/ls': 'busybox', '/bin/cat': 'busybox', '/usr/bin/env': '/bin/busybox', '/home/app/hello-link': 'hello.txt' },
    hardlinks: [
      ['/bin/busybox', '/bin/sh'],
      ['/data/original.txt', '/data/linked.txt'],
    ],
    absent: [
      '/data/remove-me.txt',
      '/data/remove-dir',
      '/data/opaque/old-a.txt',
      '/data/opaque/old-sub',
      '/data/.wh.remove-me.txt',
      '/data/opaque/.wh..wh..opq',
    ],
  };
  const expectedConfig: ExpectedConfig = { Cmd: config.Cmd!, Env: env, WorkingDir: '/home/app' };
  if (config.Entrypoint) expectedConfig.Entrypoint = config.Entrypoint;
  if (config.User) expectedConfig.User = config.User;
  const defaultOutput = options.entrypoint || options.cmd ? null : 'default-cmd\n';
  return { ...built, expected, config: expectedConfig, defaultOutput };
}

// ---- Debian minbase --------------------------------------------------------

export interface DebianImageOptions {
  /** Default 'bookworm'. */
  tag?: string;
  progress?: (line: string) => void;
}

export interface DebianImage extends BuiltImage {
  expected: ExpectedRoot;
  config: ExpectedConfig;
  /** The cached debootstrap tarball the layers come from. */
  rootTarball: string;
  /** Sum of the layers' uncompressed tar sizes and of their blob sizes. */
  tarBytes: number;
  blobBytes: number;
}

const DEBIAN_SUITE = 'bookworm';
/** Bump when what goes into the tarball changes: it keys the cached tarball. */
const TARBALL_VERSION = 'debian-minbase-v2';
/** Bump when the layer split changes: it keys the cached layout. */
const DEBIAN_LAYOUT_VERSION = 'debian-layout-v1';
const DEBIAN_ENV = ['PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin', 'LANG=C.UTF-8'];
/** The config of the Debian images: bash in /, as Debian's own. */
const DEBIAN_CONFIG = { Env: DEBIAN_ENV, Cmd: ['bash'], WorkingDir: '/' } satisfies ImageConfig & ExpectedConfig;
const ADDED_FILE = 'etc/roost-test-release';
const ADDED_TEXT = 'roost test image: Debian 12 minbase in three layers\n';

/** The directory for test caches in the real Roost home (not a test's throwaway one). */
function testCacheDir(): string {
  return join(process.env.ROOST_TEST_CACHE ?? join(roostHome(), 'cache'), 'test');
}

/** The Debian mirror apt uses here (deb822 .sources or sources.list), else deb.debian.org. */
export async function debianMirror(): Promise<string> {
  const texts: string[] = [];
  const dir = '/etc/apt/sources.list.d';
  for (const f of (await readdir(dir).catch(() => [] as string[])).filter((n) => n.endsWith('.sources')).sort()) {
    texts.push(await readFile(join(dir, f), 'utf8').catch(() => ''));
  }
  for (const stanza of texts.join('\n\n').split(/\n\s*\n/)) {
    const uri = /^URIs:\s*(\S+)/im.exec(stanza)?.[1];
    const suites = /^Suites:\s*(.+)$/im.exec(stanza)?.[1]?.split(/\s+/) ?? [];
    const enabled = !/^Enabled:\s*no/im.test(stanza) && /^Types:.*\bdeb\b/im.test(stanza);
    if (uri && enabled && suites.includes(DEBIAN_SUITE) && uri.startsWith('http')) return uri;
  }
  const list = await readFile('/etc/apt/sources.list', 'utf8').catch(() => '');
  const m = new RegExp(`^deb\\s+(?:\\[[^\\]]*\\]\\s+)?(https?://\\S+)\\s+${DEBIAN_SUITE}\\s`, 'm').exec(list);
  return m?.[1] ?? 'http://deb.debian.org/debian';
}

/**
 * A tarball of a Debian 12 minbase root (`debootstrap --variant=minbase`),
 * with the packages of `include` added (`--include`), built once and cached
 * under the real Roost home's cache/test/ (a .json beside it records what
 * made it; a different TARBALL_VERSION rebuilds). The packages name the
 * cache: none is debian-minbase-bookworm.tar, ['python3'] is
 * debian-minbase-bookworm+python3.tar. Ownership, modes, symlinks and
 * hardlinks are those of the debootstrap tree; mtimes are fixed; device
 * nodes, downloaded .debs and apt lists are left out, as in Debian's own
 * images.
 */
export async function debianMinbaseTarball(progress: (line: string) => void = () => {}, include: readonly string[] = []): Promise<string> {
  const packages = [...new Set(include)].sort();
  const bad = packages.find((p) => !/^[a-z0-9][a-z0-9+.-]+$/.test(p));
  if (bad !== undefined) throw new Error(`not a Debian package name: ${JSON.stringify(bad)}`);
  // Without packages, the names and version of the plain minbase tarball, so its cache still hits.
  const name = `debian-minbase-${DEBIAN_SUITE}${packages.map((p) => `+${p}`).join('')}`;
  const version = [TARBALL_VERSION, ...packages].join('+');
  const cache = testCacheDir();
  const out = join(cache, `${name}.tar`);
  const metaPath = join(cache, `${name}.json`);
  const meta = JSON.parse(await readFile(metaPath, 'utf8').catch(() => '{}')) as { version?: string };
  if (meta.version === version && (await exists(out))) return out;
  await mkdir(cache, { recursive: true });
  const mirror = await debianMirror();
  // In the cache directory, not /tmp: same filesystem for the rename, and room for ~200 MB.
  const work = await mkdtemp(join(cache, `.debootstrap-${process.pid}-`));
  const root = join(work, 'root');
  const tmpTar = `${out}.tmp-${process.pid}-${randomBytes(3).toString('hex')}`;
  try {
    const args = ['--variant=minbase', ...(packages.length > 0 ? [`--include=${packages.join(',')}`] : []), DEBIAN_SUITE, root, mirror];
    progress(`debootstrap ${args.slice(0, -2).join(' ')} from ${mirror} (about a minute here; once)`);
    const started = Date.now();
    await run('debootstrap', args);
    const seconds = Math.round((Date.now() - started) / 1000);
    progress(`debootstrap done in ${seconds} s`);
    // Mount points and scratch directories stay, empty.
    const emptied = new Set(['dev', 'proc', 'sys', 'run', 'tmp']);
    const keep = (p: string, st: Stats) => {
      const top = p.split('/')[0]!;
      if (top === 'debootstrap' || (emptied.has(top) && p !== top)) return false;
      if (p.startsWith('var/cache/apt/archives/') && p.endsWith('.deb')) return false;
      if (/^var\/lib\/apt\/lists\/[^/]+$/.test(p) && !st.isDirectory()) return false;
      return true;
    };
    await writeLayerFile(tmpTar, treeEntries(root, { filter: keep }), 'none');
    await rename(tmpTar, out);
    await writeAtomic(
      metaPath,
      JSON.stringify({ version, include: packages, mirror, debootstrapSeconds: seconds, built: new Date().toISOString() }, null, 2) + '\n',
    );
  } finally {
    await rm(tmpTar, { force: true });
    await removeTree(work);
  }
  return out;
}

/** Removes a tree after unmounting whatever is mounted below it (never deletes through a mount). */
async function removeTree(path: string): Promise<void> {
  const mounts = (await readFile('/proc/self/mounts', 'utf8'))
    .split('\n')
    .map((l) => l.split(' ')[1]?.replace(/\\040/g, ' '))
    .filter((m): m is string => !!m && m.startsWith(path + '/'))
    .sort((a, b) => b.length - a.length);
  for (const m of mounts) await run('umount', ['-l', m]);
  await rm(path, { recursive: true, force: true });
}

/**
 * A Debian 12 minbase image in three gzip layers, about 100 MB uncompressed:
 * 1. everything but what is under /usr/share;
 * 2. what is under /usr/share (hardlinks go with the file they link to);
 * 3. whiteouts of every /usr/share/doc/* entry, /etc/roost-test-release and
 *    a hardlink to it.
 * The layout is cached next to the tarball, so a second call only copies it.
 */
export async function buildDebianImage(dir: string, options: DebianImageOptions = {}): Promise<DebianImage> {
  const tag = options.tag ?? DEBIAN_SUITE;
  const progress = options.progress ?? (() => {});
  const tarball = await debianMinbaseTarball(progress);
  const info = await cachedLayout(dir, tag, { name: 'debian-layout', version: DEBIAN_LAYOUT_VERSION, tarball }, (tmp) => {
    progress('debian image: splitting the root into layers');
    return writeDebianLayout(tmp, tarball);
  });
  return { ...info, dir, tag, rootTarball: tarball };
}

/**
 * Copies into the layout `dir`, tagged `tag`, the image `write` makes from
 * `tarball` (and returns what `write` said of it). `write` runs once: its
 * layout is cached in the test cache as NAME-KEY, KEY from the tarball's
 * identity and `version`, so a second call only copies blobs. Other NAME-*
 * layouts (of an older tarball or version) are removed.
 */
async function cachedLayout<T extends { manifestDigest: string; manifestSize: number }>(
  dir: string,
  tag: string,
  cache: { name: string; version: string; tarball: string },
  write: (tmp: string) => Promise<T>,
): Promise<T> {
  const st = await stat(cache.tarball);
  const key = createHash('sha256').update(`${cache.version}:${st.size}:${st.mtimeMs}:${st.ino}`).digest('hex').slice(0, 16);
  const cached = join(testCacheDir(), `${cache.name}-${key}`);
  if (!(await exists(join(cached, 'image.json')))) {
    const tmp = `${cached}.tmp-${process.pid}-${randomBytes(3).toString('hex')}`;
    try {
      const info = await write(tmp);
      await writeFile(join(tmp, 'image.json'), JSON.stringify(info, null, 2) + '\n');
      await rename(tmp, cached).catch((e: NodeJS.ErrnoException) => {
        // A concurrent build got there first: theirs is as good.
        if (e.code !== 'ENOTEMPTY' && e.code !== 'EEXIST') throw e;
      });
      // Layouts of an older tarball or version are garbage now.
      const others = new RegExp(`^${cache.name}-[0-9a-f]{16}$`);
      for (const name of await readdir(testCacheDir())) {
        if (others.test(name) && join(testCacheDir(), name) !== cached) await rm(join(testCacheDir(), name), { recursive: true, force: true });
      }
    } finally {
      await rm(tmp, { recursive: true, force: true });
    }
  }
  const info = JSON.parse(await readFile(join(cached, 'image.json'), 'utf8')) as T;
  await initLayout(dir);
  for (const name of await readdir(join(cached, 'blobs', 'sha256'))) {
    const to = join(dir, 'blobs', 'sha256', name);
    if (!(await exists(to))) await copyFile(join(cached, 'blobs', 'sha256', name), to);
  }
  await tagInIndex(dir, tag, { mediaType: MEDIA_TYPES.manifest, digest: info.manifestDigest, size: info.manifestSize });
  return info;
}

type DebianLayoutInfo = Omit<DebianImage, 'dir' | 'tag' | 'rootTarball'>;

/** What a Debian image builder returns of a layout it wrote (its config, sizes and expected root). */
function debianLayoutInfo(built: Awaited<ReturnType<typeof writeOciLayout>>, expected: ExpectedRoot): DebianLayoutInfo {
  return {
    manifestDigest: built.manifestDigest,
    manifestSize: built.manifestSize,
    configDigest: built.configDigest,
    layers: built.layers,
    expected,
    config: DEBIAN_CONFIG,
    tarBytes: built.layers.reduce((n, l) => n + l.tarSize, 0),
    blobBytes: built.layers.reduce((n, l) => n + l.size, 0),
  };
}

async function writeDebianLayout(dir: string, tarball: string): Promise<DebianLayoutInfo> {
  const inShare = (p: string) => p.startsWith('usr/share/') && p !== 'usr/share/';
  // A hardlink goes to the layer of its target, so no link crosses layers.
  const layerOf = (e: LayerEntry) => ((e.type === 'hardlink' ? inShare(clean(e.target)) : inShare(e.path)) ? 2 : 1);
  const docs: string[] = [];
  const facts: { hardlink?: [string, string]; modes: Record<string, { dir: boolean; mode: number; uid: number; gid: number }> } = { modes: {} };
  const watch = new Set(['etc/shadow', 'usr/bin/passwd', 'tmp', 'var/mail', 'root']);
  async function* select(layer: 1 | 2): AsyncGenerator<LayerEntry> {
    for await (const e of tarEntries(tarball)) {
      if (layerOf(e) !== layer) continue;
      const p = clean(e.path);
      if (layer === 2 && /^usr\/share\/doc\/[^/]+$/.test(p)) docs.push(p);
      if (e.type === 'hardlink' && !facts.hardlink) facts.hardlink = [`/${clean(e.target)}`, `/${p}`];
      if (watch.has(p) && e.type !== 'whiteout' && e.type !== 'opaque')
        facts.modes[`/${p}`] = { dir: e.type === 'dir', mode: e.mode ?? 0, uid: e.uid ?? 0, gid: e.gid ?? 0 };
      yield e;
    }
  }
  const layer3 = async function* (): AsyncGenerator<LayerEntry> {
    for (const d of docs) yield { type: 'whiteout', path: d };
    yield { type: 'file', path: ADDED_FILE, content: ADDED_TEXT };
    yield { type: 'hardlink', path: `${ADDED_FILE}.link`, target: ADDED_FILE };
  };
  const built = await writeOciLayout(dir, {
    tag: DEBIAN_SUITE,
    config: DEBIAN_CONFIG,
    layers: [
      { entries: select(1), createdBy: 'debootstrap --variant=minbase bookworm: all but /usr/share' },
      { entries: select(2), createdBy: 'debootstrap --variant=minbase bookworm: /usr/share' },
      { entries: layer3(), createdBy: 'remove /usr/share/doc/*, add /etc/roost-test-release' },
    ],
  });
  if (docs.length === 0) throw new Error(`${tarball} has nothing under /usr/share/doc: not a Debian root?`);
  const expected: ExpectedRoot = {
    files: { [`/${ADDED_FILE}`]: { content: ADDED_TEXT }, [`/${ADDED_FILE}.link`]: { content: ADDED_TEXT } },
    dirs: { '/usr/share/doc': { entries: [] } },
    symlinks: { '/bin': 'usr/bin', '/lib': 'usr/lib', '/sbin': 'usr/sbin' },
    hardlinks: [[`/${ADDED_FILE}`, `/${ADDED_FILE}.link`], ...(facts.hardlink ? [facts.hardlink] : [])],
    absent: docs.slice(0, 5).map((d) => `/${d}`),
  };
  for (const [p, { dir, ...m }] of Object.entries(facts.modes)) {
    if (dir) expected.dirs[p] = m;
    else expected.files[p] = m;
  }
  expected.files['/etc/debian_version'] = {};
  return debianLayoutInfo(built, expected);
}

// ---- E2B-style Debian ------------------------------------------------------

export interface E2bDebianImageOptions {
  /** Default 'e2b'. */
  tag?: string;
  progress?: (line: string) => void;
}

export interface E2bDebianImage extends DebianImage {
  /** The account E2B's base template has, which E2B's face runs commands as when it exists. */
  user: { name: string; uid: number; gid: number; home: string; shell: string };
}

/** Packages on top of minbase: E2B's base template has python3 (and its stdlib, which tests reach for). */
const E2B_PACKAGES = ['python3'];
/** Bump when the layers change: it keys the cached layout. */
const E2B_LAYOUT_VERSION = 'e2b-layout-v1';
const E2B_USER = { name: 'user', uid: 1000, gid: 1000, home: '/home/user', shell: '/bin/bash' };
/** The account files layer 2 rewrites; gshadow only if the root has one. */
const ACCOUNT_FILES = ['etc/passwd', 'etc/group', 'etc/shadow', 'etc/gshadow'];

/**
 * An image like E2B's base template, for E2B's face: Debian 12 minbase with
 * python3, bash, and the account `user` (1000:1000, /home/user, /bin/bash).
 * Two gzip layers, as a Dockerfile's FROM and `RUN useradd -m` give:
 * 1. the debootstrap root as it is;
 * 2. /etc/passwd, group, shadow (and gshadow) with `user` appended, and
 *    /home/user with the files of /etc/skel.
 * No User in the config: the face picks `user` itself. The layout is cached
 * next to the tarball, so a second call only copies it.
 */
export async function buildE2bDebianImage(dir: string, options: E2bDebianImageOptions = {}): Promise<E2bDebianImage> {
  const tag = options.tag ?? 'e2b';
  const progress = options.progress ?? (() => {});
  const tarball = await debianMinbaseTarball(progress, E2B_PACKAGES);
  const info = await cachedLayout(dir, tag, { name: 'e2b-layout', version: E2B_LAYOUT_VERSION, tarball }, (tmp) => {
    progress('e2b image: adding the user account');
    return writeE2bLayout(tmp, tarball);
  });
  return { ...info, dir, tag, rootTarball: tarball, user: E2B_USER };
}

async function writeE2bLayout(dir: string, tarball: string): Promise<DebianLayoutInfo> {
  // First pass: the account files and /etc/skel, which layer 2 rewrites and copies.
  const found = new Map<string, { content: Buffer; mode: number; uid: number; gid: number }>();
  const skel: string[] = [];
  let python = '';
  for await (const e of tarEntries(tarball)) {
    const p = clean(e.path);
    if (p === 'usr/bin/python3' && e.type === 'symlink') python = e.target;
    if (e.type !== 'file' || (!ACCOUNT_FILES.includes(p) && !p.startsWith('etc/skel/'))) continue;
    const chunks: Uint8Array[] = [];
    for await (const c of e.stream!) chunks.push(c);
    found.set(p, { content: Buffer.concat(chunks), mode: e.mode ?? 0o644, uid: e.uid ?? 0, gid: e.gid ?? 0 });
    if (p.startsWith('etc/skel/') && !p.slice(9).includes('/')) skel.push(p.slice(9));
  }
  if (!python) throw new Error(`${tarball} has no /usr/bin/python3 symlink: debootstrap --include=python3 did not take?`);

  const u = E2B_USER;
  // What `useradd -m -s /bin/bash user` writes; the shadow date is FIXED_MTIME's day, so the layer is reproducible.
  const lines: Record<string, string> = {
    'etc/passwd': `${u.name}:x:${u.uid}:${u.gid}::${u.home}:${u.shell}`,
    'etc/group': `${u.name}:x:${u.gid}:`,
    'etc/shadow': `${u.name}:!:${Math.floor(FIXED_MTIME / 86_400)}:0:99999:7:::`,
    'etc/gshadow': `${u.name}:!::`,
  };
  const account: LayerEntry[] = [];
  const expected: ExpectedRoot = {
    files: { '/etc/debian_version': {}, [`/usr/bin/${python}`]: { mode: 0o755, uid: 0, gid: 0 } },
    dirs: { [u.home]: { mode: 0o755, uid: u.uid, gid: u.gid, entries: [...skel].sort() } },
    symlinks: { '/bin': 'usr/bin', '/lib': 'usr/lib', '/usr/bin/python3': python },
    hardlinks: [],
    absent: [],
  };
  for (const p of ACCOUNT_FILES) {
    const f = found.get(p);
    if (!f) {
      if (p === 'etc/gshadow') continue;
      throw new Error(`${tarball} has no /${p}`);
    }
    const text = f.content.toString('utf8');
    if (text.split('\n').some((l) => l.startsWith(`${u.name}:`))) throw new Error(`/${p} of ${tarball} already has ${u.name}`);
    const content = `${text}${text === '' || text.endsWith('\n') ? '' : '\n'}${lines[p]!}\n`;
    account.push({ type: 'file', path: p, content, mode: f.mode, uid: f.uid, gid: f.gid });
    expected.files[`/${p}`] = { content, mode: f.mode, uid: f.uid, gid: f.gid };
  }
  const home = u.home.slice(1);
  account.push({ type: 'dir', path: home, mode: 0o755, uid: u.uid, gid: u.gid });
  for (const name of skel) {
    const f = found.get(`etc/skel/${name}`)!;
    account.push({ type: 'file', path: `${home}/${name}`, content: f.content, mode: f.mode, uid: u.uid, gid: u.gid });
    expected.files[`${u.home}/${name}`] = { content: f.content.toString('utf8'), mode: f.mode, uid: u.uid, gid: u.gid };
  }

  const built = await writeOciLayout(dir, {
    tag: 'e2b',
    config: DEBIAN_CONFIG,
    layers: [
      { entries: tarEntries(tarball), createdBy: `debootstrap --variant=minbase --include=${E2B_PACKAGES.join(',')} ${DEBIAN_SUITE}` },
      { entries: account, createdBy: `useradd -m -s ${u.shell} ${u.name}` },
    ],
  });
  return debianLayoutInfo(built, expected);
}
