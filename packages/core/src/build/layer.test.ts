import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { gunzipSync, gzipSync } from 'node:zlib';
import { describe, expect, it } from 'vitest';
import { BlobStore } from '../image/blobs.js';
import { copyLayer, archiveCopyLayer, type CopyFile } from './copy-layer.js';
import { applyConfig, configDocument, scratchState } from './image-config.js';
import { ociLayerFromOverlay, writeLayer } from './layer.js';
import type { StepCopy } from './plan-types.js';
import { encodeHeader, padding, readTar, TAR_END, type TarHeader } from './tar-codec.js';

// The builder's layers without VMs: the tar codec, the overlay -> OCI
// conversion (whiteouts, opaque directories, overlayfs' attributes,
// SOURCE_DATE_EPOCH), COPY and ADD layers, deterministic blobs and configs.

function h(name: string, type: TarHeader['type'], extra: Partial<TarHeader> = {}): TarHeader {
  return { name, type, mode: 0o644, uid: 0, gid: 0, size: 0, mtime: 1_000, linkname: '', devmajor: 0, devminor: 0, xattrs: new Map(), ...extra };
}

/** A tar stream of entries (files get `body`). */
async function* tarOf(entries: { header: TarHeader; body?: Buffer }[]): AsyncGenerator<Buffer> {
  for (const e of entries) {
    const body = e.body ?? Buffer.alloc(0);
    yield encodeHeader({ ...e.header, size: e.header.type === '0' ? body.length : 0 });
    if (e.header.type === '0') {
      yield body;
      yield padding(body.length);
    }
  }
  yield TAR_END;
}

async function entries(source: AsyncIterable<Uint8Array>): Promise<{ header: TarHeader; body: string }[]> {
  const out: { header: TarHeader; body: string }[] = [];
  for await (const { header, body } of readTar(source)) {
    const chunks: Buffer[] = [];
    for await (const c of body) chunks.push(c);
    out.push({ header, body: Buffer.concat(chunks).toString('utf8') });
  }
  return out;
}

async function bytes(source: AsyncIterable<Uint8Array>): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const c of source) chunks.push(Buffer.from(c));
  return Buffer.concat(chunks);
}

const copyStep = (over: Partial<StepCopy> = {}): StepCopy => ({
  kind: 'copy',
  line: 3,
  text: 'COPY . /app/',
  add: false,
  sources: ['.'],
  from: null,
  dest: '/app/',
  chown: null,
  chmod: null,
  user: null,
  workdir: null,
  ...over,
});

describe('the tar codec', () => {
  it('round-trips long names, big ids, binary attributes and hard links', async () => {
    const long = `${'d'.repeat(90)}/${'f'.repeat(90)}`;
    const cap = Buffer.from([1, 0, 0, 2, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    const got = await entries(
      tarOf([
        { header: h(long, '0', { uid: 3_000_000, gid: 5, mode: 0o4755, xattrs: new Map([['security.capability', cap]]) }), body: Buffer.from('x') },
        { header: h('b', '1', { linkname: long }) },
        { header: h('c', '2', { linkname: 'x'.repeat(150) }) },
      ]),
    );
    expect(got[0]!.header).toMatchObject({ name: long, uid: 3_000_000, gid: 5, mode: 0o4755, size: 1 });
    expect(got[0]!.header.xattrs.get('security.capability')).toEqual(cap);
    expect(got[0]!.body).toBe('x');
    expect(got[1]!.header).toMatchObject({ type: '1', linkname: long });
    expect(got[2]!.header.linkname).toBe('x'.repeat(150));
  });

  it('refuses a corrupt header', async () => {
    const t = await bytes(tarOf([{ header: h('a', '0'), body: Buffer.from('hi') }]));
    t[0] = 0x41;
    await expect(
      entries(
        (async function* () {
          yield t;
        })(),
      ),
    ).rejects.toThrow(/checksum/);
  });
});

describe('a RUN layer from the overlay', () => {
  const overlay = () =>
    tarOf([
      { header: h('2/', '5', { xattrs: new Map([['trusted.overlay.impure', Buffer.from('y')]]) }) },
      { header: h('2/etc/', '5', { xattrs: new Map([['trusted.overlay.origin', Buffer.from([0, 1])]]) }) },
      { header: h('2/etc/hostname', '3') },
      {
        header: h('2/od/', '5', {
          xattrs: new Map([
            ['trusted.overlay.opaque', Buffer.from('y')],
            ['user.keep', Buffer.from('1')],
          ]),
        }),
      },
      { header: h('2/od/b', '0', { mtime: 9_999 }), body: Buffer.from('b') },
      { header: h('2/x2', '1', { linkname: '2/od/b' }) },
      { header: h('2/tty', '3', { devmajor: 5, devminor: 0 }) },
    ]);

  it('turns whiteouts and opaque directories into OCI markers, drops overlayfs attributes, keeps others, clamps mtimes', async () => {
    const got = await entries(ociLayerFromOverlay(overlay(), { epoch: 5_000 }));
    expect(got.map((e) => e.header.name)).toEqual(['etc/', 'etc/.wh.hostname', 'od/', 'od/.wh..wh..opq', 'od/b', 'x2', 'tty']);
    expect(got[0]!.header.xattrs.size).toBe(0);
    expect(got[1]!.header).toMatchObject({ type: '0', size: 0, mode: 0 });
    expect([...got[2]!.header.xattrs.keys()]).toEqual(['user.keep']);
    expect(got[4]!.header.mtime).toBe(5_000);
    expect(got[4]!.body).toBe('b');
    expect(got[5]!.header).toMatchObject({ type: '1', linkname: 'od/b' });
    expect(got[6]!.header).toMatchObject({ type: '3', devmajor: 5 });
  });

  it('refuses an entry a hostile guest put outside the layer', async () => {
    await expect(entries(ociLayerFromOverlay(tarOf([{ header: h('2/../../etc/passwd', '0'), body: Buffer.from('x') }])))).rejects.toThrow(/outside/);
    await expect(entries(ociLayerFromOverlay(tarOf([{ header: h('2/x', '1', { linkname: '2/../../etc/shadow' }) }])))).rejects.toThrow(/outside/);
  });

  it('writes the same blob for the same changes, and none for no change', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'roost-layer-'));
    try {
      const blobs = new BlobStore(dir);
      const a = await writeLayer(blobs, ociLayerFromOverlay(overlay(), { epoch: 5_000 }));
      const b = await writeLayer(blobs, ociLayerFromOverlay(overlay(), { epoch: 5_000 }));
      expect(a).not.toBeNull();
      expect(b).toEqual(a);
      const raw = gunzipSync(await readFile(blobs.path(a!.digest)));
      expect(`sha256:${(await import('node:crypto')).createHash('sha256').update(raw).digest('hex')}`).toBe(a!.diffId);
      expect(await writeLayer(blobs, ociLayerFromOverlay(tarOf([{ header: h('3/', '5') }])))).toBeNull();
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});

describe('COPY and ADD layers', () => {
  const file = (target: string, text: string, mode = 0o644): CopyFile => ({
    target,
    type: 'file',
    mode,
    size: Buffer.byteLength(text),
    mtime: 7_000,
    open: async function* () {
      yield Buffer.from(text);
    },
  });

  it('writes sorted entries owned by root (or --chown), with --chmod, and the destination directory', async () => {
    const got = await entries(
      copyLayer(
        [file('app/b', 'B'), file('app/a', 'A', 0o600), { target: 'app/l', type: 'symlink', mode: 0o777, size: 0, mtime: 1, link: 'a' }],
        copyStep({ chmod: 0o640 }),
        {
          owner: { uid: 1000, gid: 1000 },
          epoch: 5_000,
        },
      ),
    );
    expect(got.map((e) => e.header.name)).toEqual(['app/', 'app/a', 'app/b', 'app/l']);
    expect(got[1]!.header).toMatchObject({ mode: 0o640, uid: 1000, gid: 1000, mtime: 5_000 });
    expect(got[3]!.header).toMatchObject({ type: '2', linkname: 'a' });
  });

  it('ADD unpacks a local tar.gz archive at the destination, refusing names that leave it', async () => {
    const archive = gzipSync(await bytes(tarOf([{ header: h('pkg/', '5') }, { header: h('pkg/readme', '0', { uid: 7 }), body: Buffer.from('hi') }])));
    const entry: CopyFile = {
      target: 'opt/pkg.tgz',
      type: 'file',
      mode: 0o644,
      size: archive.length,
      mtime: 1,
      open: async function* () {
        yield archive;
      },
    };
    const got = await entries(copyLayer([entry], copyStep({ add: true, dest: '/opt/', text: 'ADD pkg.tgz /opt/' })));
    expect(got.map((e) => e.header.name)).toEqual(['opt/', 'opt/pkg/', 'opt/pkg/readme']);
    expect(got[2]!.header.uid).toBe(7);
    expect(got[2]!.body).toBe('hi');
    const evil = gzipSync(
      await bytes(
        tarOf([
          { header: h('../escape', '0'), body: Buffer.from('x') },
          { header: h('ok', '0'), body: Buffer.from('y') },
        ]),
      ),
    );
    const bad = entries(
      copyLayer(
        [
          {
            ...entry,
            size: evil.length,
            open: async function* () {
              yield evil;
            },
          },
        ],
        copyStep({ add: true, dest: '/opt/' }),
      ),
    );
    await expect(bad).rejects.toThrow(/leaves it/);
  });

  it('COPY --from places a directory source’s contents in dest, a file source at dest', async () => {
    const dirArchive = tarOf([{ header: h('out/', '5') }, { header: h('out/bin', '0', { uid: 5 }), body: Buffer.from('elf') }]);
    const fileArchive = tarOf([{ header: h('tool', '0'), body: Buffer.from('t') }]);
    const got = await entries(
      archiveCopyLayer(
        [
          { source: '/out', archive: dirArchive },
          { source: '/tool', archive: fileArchive },
        ],
        copyStep({ from: { stage: 0 }, dest: '/usr/local/bin/', sources: ['/out', '/tool'] }),
      ),
    );
    expect(got.map((e) => e.header.name)).toEqual(['usr/local/bin/', 'usr/local/bin/bin', 'usr/local/bin/tool']);
    expect(got[1]!.header.uid).toBe(0);
  });
});

describe('the image config', () => {
  it('applies config instructions and serializes the same state to the same bytes', () => {
    const s = scratchState();
    s.config.Cmd = ['base'];
    applyConfig(s.config, {
      env: [
        ['A', '1'],
        ['B', '2'],
        ['A', '3'],
      ],
    });
    applyConfig(s.config, { entrypoint: ['/bin/app'], resetsCmd: true });
    applyConfig(s.config, { labels: { z: '1', a: '2' } });
    applyConfig(s.config, { exposedPorts: ['80/tcp'] });
    applyConfig(s.config, { healthcheck: { test: ['CMD', 'true'], interval: 1e9 } });
    expect(s.config).toMatchObject({ Env: ['A=3', 'B=2'], Entrypoint: ['/bin/app'], Cmd: null, Labels: { z: '1', a: '2' } });
    const doc = JSON.parse(configDocument(s, '2020-01-01T00:00:00Z').toString()) as { config: Record<string, unknown>; created: string };
    expect(Object.keys(doc.config.Labels as object)).toEqual(['a', 'z']);
    expect(doc.config.Cmd).toBeUndefined();
    expect(doc.config.Healthcheck).toEqual({ Test: ['CMD', 'true'], Interval: 1e9 });
    expect(configDocument(s, '2020-01-01T00:00:00Z')).toEqual(configDocument(structuredClone(s), '2020-01-01T00:00:00Z'));
  });
});
