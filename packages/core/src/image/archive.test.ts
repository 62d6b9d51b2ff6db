import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, linkSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, symlinkSync, truncateSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { gzipSync } from 'node:zlib';
import * as tar from 'tar-stream';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { isRoostError, type RoostErrorCode } from '../errors.js';
import { type ExportImage, type LocalImageSource, openDockerArchive, openOciLayout, writeOciLayout } from './archive.js';
import { BlobStore } from './blobs.js';
import { type Descriptor, MediaType, parseManifest, selectPlatform } from './manifest.js';

type Entry = { name: string; body?: string | Buffer; type?: tar.Header['type']; linkname?: string };

/** Packs entries into an uncompressed tar. */
async function tarOf(entries: Entry[]): Promise<Buffer> {
  const pack = tar.pack();
  for (const e of entries) {
    const header: Partial<tar.Header> = { name: e.name, mode: e.type === 'directory' ? 0o755 : 0o644, type: e.type ?? 'file' };
    if (e.linkname !== undefined) header.linkname = e.linkname;
    pack.entry(header as tar.Header, e.body ?? '');
  }
  pack.finalize();
  const chunks: Buffer[] = [];
  for await (const c of pack) chunks.push(c as Buffer);
  return Buffer.concat(chunks);
}

const sha = (b: Buffer) => `sha256:${createHash('sha256').update(b).digest('hex')}`;
const hexOf = (digest: string) => digest.slice('sha256:'.length);
const json = (v: unknown) => Buffer.from(JSON.stringify(v));

let base: string;
let store: BlobStore;
beforeEach(() => {
  base = mkdtempSync(join(tmpdir(), 'roost-archive-'));
  store = new BlobStore(join(base, 'store'));
});
afterEach(() => rmSync(base, { recursive: true, force: true }));

type Compression = 'none' | 'gzip' | 'zstd';
const compressors: Record<Compression, { mediaType: string; apply: (b: Buffer) => Buffer }> = {
  none: { mediaType: MediaType.ociLayer, apply: (b) => b },
  gzip: { mediaType: MediaType.ociLayerGzip, apply: (b) => gzipSync(b) },
  zstd: { mediaType: MediaType.ociLayerZstd, apply: (b) => execFileSync('zstd', ['-q', '-c'], { input: b }) },
};

/** A two-layer linux/amd64 image in the test store, as the store would hand it to an export. */
async function makeImage(
  compression: [Compression, Compression] = ['gzip', 'gzip'],
  name: string | undefined = '127.0.0.1:5000/team/app:1.0',
): Promise<ExportImage & { diffIds: string[] }> {
  const tars = [
    await tarOf([
      { name: 'etc/', type: 'directory' },
      { name: 'etc/os-release', body: 'ID=test\n' },
      { name: 'bin/sh', body: '#!fake\n'.repeat(2000) },
    ]),
    await tarOf([{ name: 'app/', type: 'directory' }, { name: 'app/main', body: 'hello\n' }, { name: 'etc/.wh.os-release' }]),
  ];
  const diffIds = tars.map(sha);
  const put = async (b: Buffer) => store.put(sha(b), b.length, Readable.from([b]));
  const layers: Descriptor[] = [];
  for (const [i, t] of tars.entries()) {
    const c = compressors[compression[i]!];
    const blob = c.apply(t);
    await put(blob);
    layers.push({ mediaType: c.mediaType, digest: sha(blob), size: blob.length });
  }
  const configBytes = json({ architecture: 'amd64', os: 'linux', config: { Cmd: ['/bin/sh'] }, rootfs: { type: 'layers', diff_ids: diffIds } });
  await put(configBytes);
  const config = { mediaType: MediaType.ociConfig, digest: sha(configBytes), size: configBytes.length };
  const manifestBytes = json({ schemaVersion: 2, mediaType: MediaType.ociManifest, config, layers });
  await put(manifestBytes);
  return {
    ...(name === undefined ? {} : { name }),
    manifestBytes,
    manifestMediaType: MediaType.ociManifest,
    manifestDigest: sha(manifestBytes),
    config,
    layers,
    blobPath: (d) => store.path(d),
    diffIds,
  };
}

/** Imports as the store will: manifest (through an index if need be), then every blob, verified by BlobStore.put. */
async function importAll(source: LocalImageSource, name?: string) {
  const digest = source.resolve(name);
  let { bytes, mediaType } = await source.getManifest(digest);
  let parsed = parseManifest(bytes, mediaType);
  if (parsed.kind === 'index') {
    const chosen = selectPlatform(parsed.index);
    ({ bytes, mediaType } = await source.getManifest(chosen.digest));
    parsed = parseManifest(bytes, mediaType ?? chosen.mediaType);
  }
  if (parsed.kind !== 'manifest') throw new Error('nested index');
  const into = new BlobStore(mkdtempSync(join(base, 'import-')));
  for (const d of [parsed.manifest.config, ...parsed.manifest.layers]) await into.put(d.digest, d.size, await source.openBlob(d));
  const config = JSON.parse(readFileSync(into.path(parsed.manifest.config.digest), 'utf8')) as { rootfs: { diff_ids: string[] } };
  return { digest, manifestDigest: sha(bytes), manifest: parsed.manifest, mediaType: parsed.mediaType, diffIds: config.rootfs.diff_ids, into };
}

async function rejects(p: Promise<unknown>, code: RoostErrorCode, message: RegExp): Promise<void> {
  const err = await p.then(
    () => new Error('resolved'),
    (e: unknown) => e,
  );
  expect(isRoostError(err, code), String(err)).toBe(true);
  expect((err as Error).message).toMatch(message);
}

function skopeo(...args: string[]): string {
  return execFileSync('skopeo', ['--insecure-policy', ...args], { encoding: 'utf8', env: { ...process.env, TMPDIR: base } });
}

/** Nothing of a failed export is left beside its destination. */
const onlyStoreLeft = () => expect(readdirSync(base)).toEqual(['store']);

describe('OCI layout export and import', () => {
  it('round-trips an oci-dir with the same manifest digest and verified blobs', async () => {
    const image = await makeImage();
    const dest = join(base, 'layout');
    await writeOciLayout(image, dest, { format: 'oci-dir' });
    expect(JSON.parse(readFileSync(join(dest, 'oci-layout'), 'utf8'))).toEqual({ imageLayoutVersion: '1.0.0' });

    const source = await openOciLayout(dest);
    expect(source.description).toBe(`oci:${dest}`);
    expect(source.refs()).toEqual([{ name: '127.0.0.1:5000/team/app:1.0', digest: image.manifestDigest, mediaType: MediaType.ociManifest }]);
    expect(source.resolve('1.0')).toBe(image.manifestDigest);
    expect(source.resolve('127.0.0.1:5000/team/app:1.0')).toBe(image.manifestDigest);
    expect((await source.getManifest('1.0')).bytes.equals(image.manifestBytes)).toBe(true);
    const got = await importAll(source);
    expect(got.manifestDigest).toBe(image.manifestDigest);
    expect(got.diffIds).toEqual(image.diffIds);
  });

  it('writes into an empty directory but refuses a non-empty one', async () => {
    const image = await makeImage();
    const dest = join(base, 'layout');
    mkdirSync(dest);
    await writeOciLayout(image, dest, { format: 'oci-dir' });
    await rejects(writeOciLayout(image, dest, { format: 'oci-dir' }), 'INVALID_ARGUMENT', /not an empty directory/);
    expect((await importAll(await openOciLayout(dest))).manifestDigest).toBe(image.manifestDigest);
  });

  it('round-trips an oci-archive, and a layout tarred by GNU tar', async () => {
    const image = await makeImage(['none', 'zstd']);
    const archive = join(base, 'image.tar');
    await writeOciLayout(image, archive, { format: 'oci-archive' });
    const source = await openOciLayout(archive);
    expect(source.description).toBe(`oci-archive:${archive}`);
    expect((await importAll(source, '1.0')).manifestDigest).toBe(image.manifestDigest);

    const dir = join(base, 'dir');
    await writeOciLayout(image, dir, { format: 'oci-dir' });
    // A long name (a GNU or PAX extended header) and a hard link: sorted first, the blob becomes the link.
    mkdirSync(join(dir, 'x'.repeat(150)));
    writeFileSync(join(dir, 'x'.repeat(150), 'y'.repeat(150)), 'long');
    linkSync(join(dir, 'blobs/sha256', hexOf(image.manifestDigest)), join(dir, 'a-link'));
    for (const format of ['gnu', 'pax']) {
      const gnu = join(base, `${format}.tar`);
      execFileSync('tar', ['-C', dir, `--format=${format}`, '--sort=name', '-cf', gnu, '.']); // names are ./blobs/...
      expect(execFileSync('tar', ['-tvf', gnu], { encoding: 'utf8' })).toMatch(/blobs\/sha256\/[0-9a-f]{64} link to \.\/a-link/);
      expect((await importAll(await openOciLayout(gnu))).manifestDigest).toBe(image.manifestDigest);
    }
  });

  it('names images in index.json as containerd does and resolves names clearly', async () => {
    const a = await makeImage(['gzip', 'gzip'], 'alpine:3.20');
    const dest = join(base, 'layout');
    await writeOciLayout(a, dest, { format: 'oci-dir' });
    const index = JSON.parse(readFileSync(join(dest, 'index.json'), 'utf8')) as { manifests: Descriptor[] };
    expect(index.manifests[0]!.annotations).toEqual({
      'io.containerd.image.name': 'docker.io/library/alpine:3.20',
      'org.opencontainers.image.ref.name': '3.20',
    });

    // A second, unnamed image in the same layout.
    const other = json({ schemaVersion: 2, mediaType: MediaType.ociManifest, config: a.config, layers: a.layers.slice(0, 1) });
    writeFileSync(join(dest, 'blobs/sha256', hexOf(sha(other))), other);
    index.manifests.push({ mediaType: MediaType.ociManifest, digest: sha(other), size: other.length });
    writeFileSync(join(dest, 'index.json'), JSON.stringify(index));

    const source = await openOciLayout(dest);
    expect(source.refs().map((r) => r.name)).toEqual(['docker.io/library/alpine:3.20', undefined]);
    expect(source.resolve('alpine:3.20')).toBe(a.manifestDigest);
    expect(source.resolve(sha(other))).toBe(sha(other));
    expect(() => source.resolve()).toThrow(/holds 2 images; name one of: docker.io\/library\/alpine:3.20, sha256:[0-9a-f]{64} \(unnamed\)/);
    expect(() => source.resolve('busybox')).toThrow(/no image named "busybox"/);
    await rejects(source.getManifest('nope'), 'NOT_FOUND', /no image named "nope"/);
  });
});

describe('docker-archive export and import', () => {
  it('writes uncompressed layers matching the diff_ids and reads them back', async () => {
    const image = await makeImage(['gzip', 'zstd']);
    const archive = join(base, 'docker.tar');
    await writeOciLayout(image, archive, { format: 'docker-archive' });

    const source = await openDockerArchive(archive);
    expect(source.refs()).toEqual([{ name: '127.0.0.1:5000/team/app:1.0', digest: expect.stringMatching(/^sha256:/), mediaType: MediaType.dockerManifest }]);
    const got = await importAll(source, '127.0.0.1:5000/team/app:1.0');
    expect(got.mediaType).toBe(MediaType.dockerManifest);
    expect(got.manifest.config.digest).toBe(image.config.digest); // the image ID survives
    expect(got.manifest.layers.map((l) => l.digest)).toEqual(image.diffIds);
    expect(got.manifest.layers.map((l) => l.mediaType)).toEqual([
      'application/vnd.docker.image.rootfs.diff.tar',
      'application/vnd.docker.image.rootfs.diff.tar',
    ]);
    expect(got.diffIds).toEqual(image.diffIds);
  });

  it('records Docker Hub names in their familiar form', async () => {
    const image = await makeImage(['none', 'none'], 'docker.io/library/alpine:3.20');
    const archive = join(base, 'docker.tar');
    await writeOciLayout(image, archive, { format: 'docker-archive' });
    const source = await openDockerArchive(archive);
    expect(source.refs().map((r) => r.name)).toEqual(['alpine:3.20']);
    expect(source.resolve('docker.io/library/alpine:3.20')).toBe(source.resolve());
  });

  it('reads the legacy docker save form: gzip layers, a duplicate layer linked to the first, several tags', async () => {
    const l1 = await tarOf([{ name: 'a', body: 'a' }]);
    const l2 = await tarOf([{ name: 'b', body: 'b' }]);
    const config = json({ architecture: 'amd64', os: 'linux', rootfs: { type: 'layers', diff_ids: [sha(l1), sha(l2), sha(l1)] } });
    const archive = join(base, 'legacy.tar');
    writeFileSync(
      archive,
      await tarOf([
        {
          name: 'manifest.json',
          body: json([
            { Config: `${hexOf(sha(config))}.json`, RepoTags: ['app:1', 'app:latest'], Layers: ['one/layer.tar', 'two/layer.tar', 'three/layer.tar'] },
          ]),
        },
        { name: `${hexOf(sha(config))}.json`, body: config },
        { name: 'one/', type: 'directory' },
        { name: 'one/layer.tar', body: gzipSync(l1) },
        { name: 'two/layer.tar', body: l2 },
        { name: 'three/layer.tar', type: 'symlink', linkname: '../one/layer.tar' },
        { name: 'repositories', body: '{}' },
      ]),
    );
    const source = await openDockerArchive(archive);
    expect(source.refs().map((r) => r.name)).toEqual(['app:1', 'app:latest']);
    const got = await importAll(source);
    expect(got.manifest.layers.map((l) => l.mediaType)).toEqual([
      MediaType.dockerLayerGzip,
      'application/vnd.docker.image.rootfs.diff.tar',
      MediaType.dockerLayerGzip,
    ]);
    expect(got.manifest.layers[1]!.digest).toBe(sha(l2));
    expect(got.manifest.config.digest).toBe(sha(config));
    expect(source.resolve('app')).toBe(got.digest); // app means app:latest
  });

  it('prefers the OCI layout of a Docker 25 archive', async () => {
    const image = await makeImage(['none', 'none']);
    const dir = join(base, 'layout');
    await writeOciLayout(image, dir, { format: 'oci-dir' });
    const layers = image.layers.map((l) => `blobs/sha256/${hexOf(l.digest)}`);
    writeFileSync(
      join(dir, 'manifest.json'),
      JSON.stringify([{ Config: `blobs/sha256/${hexOf(image.config.digest)}`, RepoTags: ['team/app:1.0'], Layers: layers }]),
    );
    const archive = join(base, 'docker25.tar');
    execFileSync('tar', ['-C', dir, '-cf', archive, '.']);
    const source = await openDockerArchive(archive);
    expect(source.description).toBe(`docker-archive:${archive}`);
    expect((await importAll(source)).manifestDigest).toBe(image.manifestDigest);
  });

  it('leaves nothing behind when an export fails or is aborted', async () => {
    const image = await makeImage(['gzip', 'gzip']);
    // A layer whose content is not what the config says.
    const bad = {
      ...image,
      blobPath: (d: string) => (d === image.layers[1]!.digest ? store.path(image.layers[0]!.digest) : store.path(d)),
      layers: [image.layers[0]!, { ...image.layers[1]!, size: image.layers[0]!.size }],
    };
    await rejects(writeOciLayout(bad, join(base, 'x.tar'), { format: 'docker-archive' }), 'IMAGE', /decompresses to sha256:.*but the image config says/);
    onlyStoreLeft();

    await rejects(writeOciLayout(image, join(base, 'y.tar'), { format: 'oci-archive', signal: AbortSignal.abort() }), 'ABORTED', /aborted/);
    await rejects(writeOciLayout(image, join(base, 'y'), { format: 'oci-dir', signal: AbortSignal.abort() }), 'ABORTED', /aborted/);
    onlyStoreLeft();

    await store.remove(image.layers[1]!.digest);
    await rejects(writeOciLayout(image, join(base, 'z.tar'), { format: 'oci-archive' }), 'NOT_FOUND', new RegExp(`blob ${image.layers[1]!.digest}`));
    await rejects(
      writeOciLayout({ ...image, manifestBytes: Buffer.from('{}') }, join(base, 'z'), { format: 'oci-dir' }),
      'INVALID_ARGUMENT',
      /do not have the digest/,
    );
    await rejects(writeOciLayout(await makeImage(), join(base, 'no/such/dir.tar'), { format: 'oci-archive' }), 'NOT_FOUND', /does not exist/);
    onlyStoreLeft();
  });
});

describe('interoperability with skopeo', () => {
  it('imports what skopeo writes from our layout (docker-archive and oci-archive)', async () => {
    const image = await makeImage(['gzip', 'gzip']);
    const dir = join(base, 'layout');
    await writeOciLayout(image, dir, { format: 'oci-dir' });

    const dockerTar = join(base, 'skopeo-docker.tar');
    skopeo('copy', '-q', `oci:${dir}:1.0`, `docker-archive:${dockerTar}:team/app:2.0`);
    const fromDocker = await openDockerArchive(dockerTar);
    expect(fromDocker.refs().map((r) => r.name)).toEqual(['docker.io/team/app:2.0']);
    const d = await importAll(fromDocker, 'team/app:2.0');
    expect(d.manifest.config.digest).toBe(image.config.digest);
    expect(d.manifest.layers.map((l) => l.digest)).toEqual(image.diffIds);

    const ociTar = join(base, 'skopeo-oci.tar');
    skopeo('copy', '-q', `oci:${dir}:1.0`, `oci-archive:${ociTar}:2.0`);
    const o = await importAll(await openOciLayout(ociTar), '2.0');
    expect(o.manifest.config.digest).toBe(image.config.digest);
    expect(o.diffIds).toEqual(image.diffIds);
  });

  it('writes archives skopeo reads', async () => {
    const image = await makeImage(['gzip', 'zstd']);
    const ociTar = join(base, 'ours-oci.tar');
    await writeOciLayout(image, ociTar, { format: 'oci-archive' });
    expect(skopeo('inspect', '--raw', `oci-archive:${ociTar}`)).toBe(image.manifestBytes.toString());
    expect(JSON.parse(skopeo('inspect', `oci-archive:${ociTar}:1.0`))).toMatchObject({
      Digest: image.manifestDigest,
      Layers: image.layers.map((l) => l.digest),
    });

    const dockerTar = join(base, 'ours-docker.tar');
    await writeOciLayout(image, dockerTar, { format: 'docker-archive' });
    const inspected = JSON.parse(skopeo('inspect', `docker-archive:${dockerTar}`)) as { RepoTags: string[]; Layers: string[] };
    expect(inspected.Layers).toEqual(image.diffIds);
    expect(JSON.parse(skopeo('inspect', '--config', `docker-archive:${dockerTar}`))).toMatchObject({ rootfs: { diff_ids: image.diffIds } });
    // What docker load would do: copy it out of the archive, every digest checked by skopeo.
    const out = join(base, 'from-ours');
    skopeo('copy', '-q', `docker-archive:${dockerTar}`, `oci:${out}:x`);
    expect((await importAll(await openOciLayout(out), 'x')).diffIds).toEqual(image.diffIds);
  });
});

describe('hostile archives', () => {
  async function layout(entries: Entry[]): Promise<string> {
    const path = join(base, `hostile-${Math.random().toString(16).slice(2)}.tar`);
    writeFileSync(path, await tarOf(entries));
    return path;
  }
  const marker: Entry = { name: 'oci-layout', body: '{"imageLayoutVersion":"1.0.0"}' };
  const indexOf = (manifestBytes: Buffer): Entry => ({
    name: 'index.json',
    body: json({ schemaVersion: 2, manifests: [{ mediaType: MediaType.ociManifest, digest: sha(manifestBytes), size: manifestBytes.length }] }),
  });

  it('reports a blob the index references but the layout lacks', async () => {
    const image = await makeImage();
    const dir = join(base, 'layout');
    await writeOciLayout(image, dir, { format: 'oci-dir' });
    rmSync(join(dir, 'blobs/sha256', hexOf(image.layers[1]!.digest)));
    const source = await openOciLayout(dir);
    await rejects(source.openBlob(image.layers[1]!), 'IMAGE', new RegExp(`blob ${image.layers[1]!.digest} is referenced but missing`));
    rmSync(join(dir, 'blobs/sha256', hexOf(image.manifestDigest)));
    await rejects(source.getManifest(source.resolve()), 'IMAGE', new RegExp(`blob ${image.manifestDigest} is referenced but missing`));
    // A symlink in a layout directory is not a blob either.
    symlinkSync('/etc/passwd', join(dir, 'blobs/sha256', hexOf(image.manifestDigest)));
    await rejects(source.getManifest(source.resolve()), 'IMAGE', /referenced but missing/);
  });

  it('ignores ../ entries, absolute names and a symlinked blob pointing at /etc/passwd', async () => {
    const manifest = json({
      schemaVersion: 2,
      mediaType: MediaType.ociManifest,
      config: { mediaType: MediaType.ociConfig, digest: sha(Buffer.from('x')), size: 1 },
      layers: [],
    });
    const blob = `blobs/sha256/${hexOf(sha(manifest))}`;
    const path = await layout([
      marker,
      indexOf(manifest),
      { name: `../${blob}`, body: manifest },
      { name: `/${blob}`, body: manifest },
      { name: `blobs/../../${blob}`, body: manifest },
      { name: '../evil', body: 'escaped' },
      { name: blob, type: 'symlink', linkname: '/etc/passwd' },
    ]);
    const source = await openOciLayout(path);
    await rejects(source.getManifest(source.resolve()), 'IMAGE', new RegExp(`blob ${sha(manifest)} is referenced but missing`));
    expect(existsSync(join(base, '..', 'evil'))).toBe(false);
  });

  it('refuses a descriptor that lies about a blob size', async () => {
    const image = await makeImage();
    const archive = join(base, 'image.tar');
    await writeOciLayout(image, archive, { format: 'oci-archive' });
    const source = await openOciLayout(archive);
    await rejects(source.openBlob({ ...image.layers[0]!, size: image.layers[0]!.size - 1 }), 'IMAGE', /descriptor says/);
  });

  it('refuses a truncated tar, a corrupt one and a gzip-compressed one', async () => {
    const image = await makeImage();
    const archive = join(base, 'image.tar');
    await writeOciLayout(image, archive, { format: 'oci-archive' });
    const whole = readFileSync(archive);
    // Inside a blob, inside the first entry's padding, inside a header, at an entry boundary (no end marker).
    for (const cut of [whole.length - 1024 - 700, 700, 1024 + 100, whole.length - 1024]) {
      writeFileSync(archive, whole.subarray(0, cut));
      await rejects(openOciLayout(archive), 'IMAGE', /truncated/);
    }
    const corrupt = Buffer.from(whole);
    corrupt[0] = corrupt[0]! ^ 1;
    writeFileSync(archive, corrupt);
    await rejects(openOciLayout(archive), 'IMAGE', /bad header checksum/);
    writeFileSync(archive, gzipSync(whole));
    await rejects(openOciLayout(archive), 'IMAGE', /gzip-compressed/);
    truncateSync(archive, 0);
    await rejects(openOciLayout(archive), 'IMAGE', /truncated/);
  });

  it('refuses an index.json over 4 MiB in a tar and in a directory, before parsing it', async () => {
    const huge = Buffer.alloc(5 * 2 ** 20, 0x20);
    await rejects(
      openOciLayout(await layout([marker, { name: 'index.json', body: huge }])),
      'IMAGE',
      /index.json is 5242880 bytes, over the 4194304-byte limit/,
    );
    const dir = join(base, 'dir');
    mkdirSync(dir);
    writeFileSync(join(dir, 'oci-layout'), '{"imageLayoutVersion":"1.0.0"}');
    writeFileSync(join(dir, 'index.json'), huge);
    await rejects(openOciLayout(dir), 'IMAGE', /over the 4194304-byte limit/);
  });

  it('refuses more tar entries than it indexes', async () => {
    const one = (await tarOf([{ name: 'x' }])).subarray(0, 512);
    const many = Buffer.alloc(512 * 100_001);
    for (let i = 0; i < 100_001; i++) one.copy(many, i * 512);
    const path = join(base, 'many.tar');
    writeFileSync(path, many);
    await rejects(openOciLayout(path), 'IMAGE', /more than 100000 entries/);
  });

  it('refuses a wrong layout version, a missing path and a non-layout', async () => {
    await rejects(openOciLayout(await layout([{ name: 'oci-layout', body: '{"imageLayoutVersion":"2.0.0"}' }])), 'IMAGE', /imageLayoutVersion 1.0.0/);
    await rejects(openOciLayout(join(base, 'nothing')), 'NOT_FOUND', /does not exist/);
    await rejects(
      openOciLayout(await layout([marker, { name: 'index.json', body: '{"schemaVersion":2,"manifests":[{"digest":"../../x"}]}' }])),
      'IMAGE',
      /index.json: invalid image index/,
    );
    await rejects(openOciLayout(await layout([{ name: 'manifest.json', body: '[]' }])), 'IMAGE', /not an OCI image layout/);
    await rejects(openDockerArchive(await layout([{ name: 'hello', body: 'x' }])), 'IMAGE', /no manifest.json/);
  });

  it('refuses docker manifest.json paths that escape the archive', async () => {
    const config = json({ rootfs: { type: 'layers', diff_ids: [] } });
    for (const [Config, Layers] of [
      ['../../etc/passwd', []],
      ['/etc/passwd', []],
      ['c.json', ['../../../../etc/passwd']],
    ] as const) {
      const path = await layout([
        { name: 'manifest.json', body: json([{ Config, RepoTags: null, Layers }]) },
        { name: 'c.json', body: config },
      ]);
      await rejects(openDockerArchive(path), 'IMAGE', /a path outside the archive; refused/);
    }
    // A layer that is a symlink out of the archive is not there.
    const diff = sha(Buffer.from('x'));
    const linked = await layout([
      { name: 'manifest.json', body: json([{ Config: 'c.json', Layers: ['l/layer.tar'] }]) },
      { name: 'c.json', body: json({ rootfs: { type: 'layers', diff_ids: [diff] } }) },
      { name: 'l/layer.tar', type: 'symlink', linkname: '../../../etc/passwd' },
    ]);
    await rejects(openDockerArchive(linked), 'IMAGE', /names "l\/layer.tar", which the archive does not contain/);
  });

  it('refuses a legacy layer whose content does not match the config diff_ids', async () => {
    const layer = await tarOf([{ name: 'a', body: 'a' }]);
    const config = json({ rootfs: { type: 'layers', diff_ids: [sha(Buffer.from('something else'))] } });
    for (const body of [layer, gzipSync(layer)]) {
      const path = await layout([
        { name: 'manifest.json', body: json([{ Config: 'c.json', RepoTags: ['x:1'], Layers: ['l/layer.tar'] }]) },
        { name: 'c.json', body: config },
        { name: 'l/layer.tar', body },
      ]);
      await rejects(openDockerArchive(path), 'IMAGE', /has content sha256:.* but the image config says/);
    }
  });
});
