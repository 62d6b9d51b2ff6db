import { Command, Option } from 'commander';
import { pullProgressDone, type BuildCacheEntry, type ImageInfoBody, type PullProgress } from '@roost/api';
import { ImageStore, familiarImageReference, normalizeRegistry, parseImageReference, RoostError } from '@roost/core';
import type { WithImages } from './connect.js';
import { ago, bytes, formatTable } from './format.js';

/**
 * `roost pull`, `images`, `rmi`, `tag`, `login`, `logout`. Pull, list,
 * inspect and remove go to the daemon when there is one, else to the home's
 * image store; import, export, tag, prune and the logins always use the
 * home's store (its SQLite database is safe to share with a running daemon).
 */
export function addImageCommands(program: Command, withImages: WithImages): void {
  program
    .command('pull')
    .description('pull an image from its registry (layers already stored are not fetched again)')
    .argument('<image>')
    .option('-q, --quiet', 'print only the image id')
    .action(async (image: string, flags: { quiet?: boolean }) => {
      const info = await withImages((face) => face.images.pull(image, flags.quiet ? {} : { onProgress: pullProgressPrinter() }));
      process.stdout.write(flags.quiet ? `${info.id}\n` : `${familiar(info.tags[0] ?? image)}: ${info.id}\n`);
    });

  const images = program.command('images').alias('image').description('list and manage stored images');
  const list = async (flags: { json?: boolean; quiet?: boolean; all?: boolean }) => {
    const [all, cache] = await withImages(async (face) => [await face.images.list(), flags.all ? await face.images.buildCache() : null] as const);
    if (flags.json) process.stdout.write(JSON.stringify(cache ? { images: all, buildCache: cache } : all, null, 2) + '\n');
    else if (flags.quiet) process.stdout.write(all.map((i) => `${shortId(i.id)}\n`).join(''));
    else process.stdout.write(imageTable(all) + (cache ? `\n${buildCacheTable(cache)}` : ''));
  };
  images
    .command('ls', { isDefault: true })
    .description('list stored images')
    .option('-a, --all', 'also list the build cache: one row per cached step')
    .option('--json', 'print JSON (with --all: { images, buildCache })')
    .option('-q, --quiet', 'print only ids')
    .action(list);
  images
    .command('rm')
    .description('remove images (by name or id)')
    .option('-f, --force', 'remove even if sandboxes use the image')
    .argument('<image...>')
    .action(async (refs: string[], flags: { force?: boolean }) => remove(withImages, refs, flags));
  images
    .command('inspect')
    .description('show everything stored about an image')
    .option('--json', 'print JSON')
    .argument('<image>')
    .action(async (ref: string, flags: { json?: boolean }) => {
      const info = await withImages((face) => face.images.inspect(ref));
      process.stdout.write(flags.json ? JSON.stringify(info, null, 2) + '\n' : describeImage(info));
    });
  images
    .command('prune')
    .description('remove images nothing names, blobs no image uses, and the build cache')
    .option('-a, --all', 'remove every image no sandbox uses')
    .action(async (flags: { all?: boolean }) => {
      const r = await new ImageStore().prune({ all: !!flags.all });
      for (const id of r.deleted) process.stdout.write(`deleted: ${id}\n`);
      process.stdout.write(`cleared ${r.buildCacheEntries} build cache ${r.buildCacheEntries === 1 ? 'entry' : 'entries'}\n`);
      process.stdout.write(`reclaimed ${bytes(r.reclaimedBytes)}\n`);
    });
  images
    .command('import')
    .description('import an image from an OCI layout (directory or tar) or a `docker save` archive')
    .argument('<path>')
    .option('--name <name>', 'which image of a multi-image archive')
    .option('-t, --tag <ref>', 'tag the imported image')
    .action(async (path: string, flags: { name?: string; tag?: string }) => {
      const info = await new ImageStore().import(path, { ...flags, onProgress: pullProgressPrinter() });
      process.stdout.write(`${info.tags.map(familiar).join(', ') || '<untagged>'}: ${info.id}\n`);
    });
  images
    .command('export')
    .description('write an image out as an OCI layout or a `docker save` archive')
    .argument('<image>')
    .argument('<dest>')
    .addOption(
      new Option('--format <format>', 'oci-archive (tar), oci-dir, or docker-archive')
        .choices(['oci-archive', 'oci-dir', 'docker-archive'])
        .default('oci-archive'),
    )
    .action(async (image: string, dest: string, flags: { format: 'oci-archive' | 'oci-dir' | 'docker-archive' }) => {
      await new ImageStore().export(image, dest, { format: flags.format });
      process.stdout.write(`${dest}\n`);
    });

  program
    .command('rmi')
    .description('remove images (by name or id)')
    .option('-f, --force', 'remove even if sandboxes use the image')
    .argument('<image...>')
    .action(async (refs: string[], flags: { force?: boolean }) => remove(withImages, refs, flags));

  program
    .command('tag')
    .description('give a stored image another name')
    .argument('<image>')
    .argument('<name>')
    .action((image: string, name: string) => new ImageStore().tag(image, name));

  program
    .command('login')
    .description('log in to a registry (the credentials are checked, then stored 0600 under the Roost home)')
    .argument('<registry>')
    .option('-u, --username <user>', 'user name')
    .option('-p, --password <password>', 'password (prefer --password-stdin: arguments are visible to other users)')
    .option('--password-stdin', 'read the password from standard input')
    .action(async (registryArg: string, flags: { username?: string; password?: string; passwordStdin?: boolean }) => {
      const registry = normalizeRegistry(registryArg);
      if (!flags.username) throw new RoostError('INVALID_ARGUMENT', 'give a user name: roost login -u USER REGISTRY');
      let password = flags.password;
      if (flags.passwordStdin) password = (await readStdin()).replace(/\r?\n$/, '');
      if (!password) throw new RoostError('INVALID_ARGUMENT', 'give a password: --password-stdin (or -p)');
      const store = new ImageStore();
      await store.client.checkLogin(registry, { username: flags.username, password });
      await store.credentials.login(registry, flags.username, password);
      process.stdout.write(`Login Succeeded (${registry})\n`);
    });

  program
    .command('logout')
    .description('forget the credentials stored for a registry')
    .argument('<registry>')
    .action(async (registryArg: string) => {
      const registry = normalizeRegistry(registryArg);
      await new ImageStore().credentials.logout(registry);
      process.stdout.write(`Removed login credentials for ${registry}\n`);
    });
}

async function remove(withImages: WithImages, refs: string[], flags: { force?: boolean }): Promise<void> {
  await withImages(async (face) => {
    for (const ref of refs) {
      const r = await face.images.remove(ref, { force: !!flags.force });
      for (const t of r.untagged) process.stdout.write(`Untagged: ${familiar(t)}\n`);
      for (const d of r.deleted) process.stdout.write(`Deleted: ${d}\n`);
    }
  });
}

function describeImage(i: ImageInfoBody): string {
  const rows: [string, string][] = [
    ['ID', i.id],
    ['Tags', i.tags.map(familiar).join(', ') || '<none>'],
    ['Size', bytes(i.size)],
    ['Layers', String(i.layers)],
    ['Config', i.configDigest],
    ['Created', i.created ? `${i.created} (${ago(i.created)})` : '-'],
    ['Added', `${i.addedAt} (${ago(i.addedAt)})`],
    ['Source', i.source],
    ['Root fs', i.rootfsSize === null ? 'not built yet' : bytes(i.rootfsSize)],
    ['Entrypoint', i.config.entrypoint.length ? JSON.stringify(i.config.entrypoint) : '-'],
    ['Cmd', i.config.cmd.length ? JSON.stringify(i.config.cmd) : '-'],
    ['Working dir', i.config.workingDir || '-'],
    ['User', i.config.user || '-'],
    ['Env', i.config.env.join(' ') || '-'],
  ];
  const width = Math.max(...rows.map(([k]) => k.length)) + 1;
  return rows.map(([k, v]) => `${`${k}:`.padEnd(width)} ${v}\n`).join('');
}

function familiar(name: string): string {
  try {
    return familiarImageReference(parseImageReference(name));
  } catch {
    return name;
  }
}

function shortId(id: string): string {
  return id.replace(/^sha256:/, '').slice(0, 12);
}

function imageTable(images: ImageInfoBody[]): string {
  const rows: string[][] = [];
  for (const i of images) {
    const names = i.tags.length > 0 ? i.tags : ['<none>'];
    for (const n of names) {
      const { repo, tag } = splitName(n);
      rows.push([repo, tag, shortId(i.id), i.created ? ago(i.created) : '-', bytes(i.size)]);
    }
  }
  return formatTable(['REPOSITORY', 'TAG', 'IMAGE ID', 'CREATED', 'SIZE'], rows);
}

/** The build cache as `images ls --all` shows it: the BUILD CACHE column (a short key) marks its rows. */
export function buildCacheTable(entries: BuildCacheEntry[]): string {
  return formatTable(
    ['BUILD CACHE', 'STEP', 'LAYER', 'SIZE', 'LAST USED'],
    entries.map((e) => [shortId(e.key), truncate(e.step, 48), e.layer ? shortId(e.layer) : '-', e.size === null ? '-' : bytes(e.size), ago(e.usedAt)]),
  );
}

function truncate(s: string, max: number): string {
  const line = s.replace(/\s+/g, ' ');
  return line.length <= max ? line : `${line.slice(0, max - 3)}...`;
}

function splitName(name: string): { repo: string; tag: string } {
  if (name === '<none>') return { repo: '<none>', tag: '<none>' };
  const f = familiar(name);
  const at = f.indexOf('@');
  if (at >= 0) return { repo: f.slice(0, at), tag: '<none>' };
  const colon = f.lastIndexOf(':');
  return colon > f.lastIndexOf('/') ? { repo: f.slice(0, colon), tag: f.slice(colon + 1) } : { repo: f, tag: 'latest' };
}

async function readStdin(): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const c of process.stdin) chunks.push(c as Buffer);
  return Buffer.concat(chunks).toString('utf8');
}

/** `[=====>    ] 1.2MB/3.4MB`: a blob's transfer so far. */
export function progressBar(current: number, total: number): string {
  const width = 30;
  const frac = total > 0 ? Math.min(1, current / total) : 0;
  const full = Math.floor(frac * width);
  const bar = '='.repeat(full) + (full < width ? '>' : '') + ' '.repeat(Math.max(0, width - full - 1));
  return `[${bar}] ${bytes(current)}/${bytes(total)}`;
}

/**
 * Prints per-blob progress on stderr (pulls and pushes): on a terminal, one
 * line per blob redrawn in place; otherwise one line per blob when it is
 * done (or failed). `describe` says where a blob is; `final`, when it is done.
 */
export function blobProgressPrinter<P extends { digest: string; status: string }>(
  describeBlob: (p: P) => string,
  final: (p: P) => boolean,
  stream: NodeJS.WriteStream = process.stderr,
): (p: P) => void {
  const tty = stream.isTTY === true;
  const order: string[] = [];
  const lines = new Map<string, string>();
  let drawn = 0;
  let last = 0;
  const redraw = (force: boolean) => {
    const now = Date.now();
    if (!force && now - last < 100) return;
    last = now;
    const width = Math.max(40, (stream.columns || 80) - 1);
    let out = drawn > 0 ? `\x1b[${drawn}A` : '';
    for (const d of order) out += `\r\x1b[2K${(lines.get(d) ?? '').slice(0, width)}\n`;
    drawn = order.length;
    stream.write(out);
  };
  return (p) => {
    const id = p.digest.replace(/^sha\d+:/, '').slice(0, 12);
    if (!lines.has(p.digest)) order.push(p.digest);
    const line = `${id}: ${describeBlob(p)}`;
    lines.set(p.digest, line);
    const done = final(p) || p.status === 'failed';
    if (tty) redraw(done);
    else if (done) stream.write(`${line}\n`);
  };
}

/** Prints pull progress on stderr (see blobProgressPrinter). */
export function pullProgressPrinter(stream: NodeJS.WriteStream = process.stderr): (p: PullProgress) => void {
  return blobProgressPrinter<PullProgress>(describe, pullProgressDone, stream);
}

function describe(p: PullProgress): string {
  switch (p.status) {
    case 'waiting':
      return 'waiting';
    case 'exists':
      return 'already exists';
    case 'done':
      return `pull complete (${bytes(p.total)})`;
    case 'failed':
      return 'failed';
    case 'retrying':
      return 'retrying';
    case 'verifying':
      return 'verifying';
    case 'downloading':
      return `downloading ${progressBar(p.current, p.total)}`;
  }
}
