import { createHash, randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as delay } from 'node:timers/promises';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { RoostError } from '../errors.js';
import { BlobStore } from './blobs.js';
import { MediaType, type Descriptor, type ImageSource, type PullProgress } from './manifest.js';
import { pullImage } from './pull.js';

const sha = (b: Buffer) => `sha256:${createHash('sha256').update(b).digest('hex')}`;

interface Doc {
  bytes: Buffer;
  digest: string;
}

const doc = (value: unknown): Doc => {
  const bytes = Buffer.from(JSON.stringify(value));
  return { bytes, digest: sha(bytes) };
};

/** Opens a blob: return a stream, or throw. `attempt` counts from 1 per digest. */
type Opener = (attempt: number, data: Buffer) => AsyncIterable<Uint8Array>;

/** An in-memory image source that streams blobs in small, slightly delayed chunks and counts what it is asked. */
class MemorySource implements ImageSource {
  readonly description = 'mem/team/app';
  readonly manifests = new Map<string, Doc & { mediaType?: string }>();
  readonly blobs = new Map<string, Buffer>();
  readonly openers = new Map<string, Opener>();
  readonly opened: string[] = [];
  inFlight = 0;
  maxInFlight = 0;

  async getManifest(ref: string): Promise<{ bytes: Buffer; mediaType?: string }> {
    const m = this.manifests.get(ref);
    if (!m) throw new RoostError('NOT_FOUND', `image ${this.description}:${ref} not found`);
    return { bytes: m.bytes, ...(m.mediaType ? { mediaType: m.mediaType } : {}) };
  }

  async openBlob(descriptor: Descriptor): Promise<AsyncIterable<Uint8Array>> {
    this.opened.push(descriptor.digest);
    const data = this.blobs.get(descriptor.digest);
    if (!data) throw new RoostError('IMAGE', `blob ${descriptor.digest} not found`);
    const attempt = this.opened.filter((d) => d === descriptor.digest).length;
    return this.openers.get(descriptor.digest)?.(attempt, data) ?? this.stream(data);
  }

  async *stream(data: Buffer, chunk = 16 * 1024, pauseMs = 1): AsyncGenerator<Uint8Array> {
    this.inFlight++;
    this.maxInFlight = Math.max(this.maxInFlight, this.inFlight);
    try {
      for (let i = 0; i < data.length; i += chunk) {
        await delay(pauseMs);
        yield data.subarray(i, i + chunk);
      }
    } finally {
      this.inFlight--;
    }
  }
}

interface Image {
  manifest: Doc;
  config: Doc;
  layers: { digest: string; size: number; data: Buffer }[];
}

function addImage(
  source: MemorySource,
  tag: string,
  opts: { layers?: Buffer[]; architecture?: string; diffIds?: number; layerMediaType?: string; configMediaType?: string; duplicate?: boolean } = {},
): Image {
  const layers = (opts.layers ?? [randomBytes(40_000), randomBytes(20_000)]).map((data) => ({ digest: sha(data), size: data.length, data }));
  const config = doc({
    architecture: opts.architecture ?? 'amd64',
    os: 'linux',
    config: { Entrypoint: ['/entry'] },
    rootfs: {
      type: 'layers',
      diff_ids: Array.from({ length: opts.diffIds ?? layers.length + (opts.duplicate ? 1 : 0) }, (_, i) => sha(Buffer.from(String(i)))),
    },
  });
  const listed = opts.duplicate ? [...layers, layers[0]!] : layers;
  const manifest = doc({
    schemaVersion: 2,
    mediaType: MediaType.dockerManifest,
    config: { mediaType: opts.configMediaType ?? MediaType.dockerConfig, digest: config.digest, size: config.bytes.length },
    layers: listed.map((l) => ({ mediaType: opts.layerMediaType ?? MediaType.dockerLayerGzip, digest: l.digest, size: l.size })),
  });
  source.manifests.set(tag, { ...manifest, mediaType: MediaType.dockerManifest });
  source.manifests.set(manifest.digest, { ...manifest, mediaType: MediaType.dockerManifest });
  source.blobs.set(config.digest, config.bytes);
  for (const l of layers) source.blobs.set(l.digest, l.data);
  return { manifest, config, layers };
}

let dir: string;
let store: BlobStore;
let source: MemorySource;
beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'roost-pull-'));
  store = new BlobStore(join(dir, 'blobs'));
  source = new MemorySource();
});
afterEach(() => rmSync(dir, { recursive: true, force: true }));

/** The digests in the store, each checked against its content; no temp files. */
function stored(): string[] {
  const sub = join(store.dir, 'sha256');
  if (!existsSync(sub)) return [];
  return readdirSync(sub).map((name) => {
    expect(name).toMatch(/^[0-9a-f]{64}$/);
    expect(sha(readFileSync(join(sub, name)))).toBe(`sha256:${name}`);
    return `sha256:${name}`;
  });
}

describe('pullImage', () => {
  it('stores config, layers and manifest, and returns what it pulled', async () => {
    const image = addImage(source, 'v1');
    const pulled = await pullImage(source, 'v1', store);
    expect(pulled.manifestDigest).toBe(image.manifest.digest);
    expect(pulled.manifestBytes.equals(image.manifest.bytes)).toBe(true);
    expect(pulled.manifestMediaType).toBe(MediaType.dockerManifest);
    expect(pulled.config.entrypoint).toEqual(['/entry']);
    expect(pulled.configDescriptor.digest).toBe(image.config.digest);
    expect(pulled.manifest.layers).toHaveLength(2);
    expect(stored().sort()).toEqual([image.manifest.digest, image.config.digest, ...image.layers.map((l) => l.digest)].sort());
  });

  it('downloads at most `concurrency` blobs at once', async () => {
    addImage(source, 'v1', { layers: Array.from({ length: 6 }, () => randomBytes(64 * 1024)) });
    await pullImage(source, 'v1', store, { concurrency: 2 });
    expect(source.maxInFlight).toBe(2);
    const again = new MemorySource();
    addImage(again, 'v1', { layers: Array.from({ length: 6 }, () => randomBytes(64 * 1024)) });
    await pullImage(again, 'v1', store);
    expect(again.maxInFlight).toBe(3);
  });

  it('reports progress per blob, at most every 100 ms while downloading', async () => {
    const image = addImage(source, 'v1', { layers: [randomBytes(150 * 1024)] });
    const layer = image.layers[0]!;
    source.openers.set(layer.digest, (_n, data) => source.stream(data, 1024, 2));
    const progress: PullProgress[] = [];
    const started = Date.now();
    await pullImage(source, 'v1', store, { image: 'team/app:v1', onProgress: (p) => progress.push(p) });
    const elapsed = Date.now() - started;
    const mine = progress.filter((p) => p.digest === layer.digest);
    expect(mine[0]).toEqual({ image: 'team/app:v1', digest: layer.digest, kind: 'layer', current: 0, total: layer.size, status: 'waiting' });
    expect(mine.at(-1)).toMatchObject({ status: 'done', current: layer.size });
    const downloading = mine.filter((p) => p.status === 'downloading');
    expect(downloading.length).toBeGreaterThan(2);
    expect(downloading.length).toBeLessThanOrEqual(elapsed / 100 + 2);
    expect(downloading.map((p) => p.current)).toEqual([...downloading.map((p) => p.current)].sort((a, b) => a - b));
    expect(progress.find((p) => p.kind === 'config')).toMatchObject({ status: 'waiting' });
  });

  it('does not fetch blobs already stored, nor a layer listed twice', async () => {
    const image = addImage(source, 'v1', { duplicate: true });
    const first = image.layers[0]!;
    await store.put(first.digest, first.size, source.stream(first.data));
    const progress: PullProgress[] = [];
    await pullImage(source, 'v1', store, { onProgress: (p) => progress.push(p) });
    expect(source.opened.sort()).toEqual([image.config.digest, image.layers[1]!.digest].sort());
    expect(progress.filter((p) => p.digest === first.digest).map((p) => p.status)).toEqual(['waiting', 'exists']);
  });

  it('checks layer media types before downloading anything', async () => {
    addImage(source, 'v1', { layerMediaType: 'application/vnd.oci.image.layer.v1.tar+bzip2' });
    await expect(pullImage(source, 'v1', store)).rejects.toMatchObject({
      code: 'IMAGE',
      message: expect.stringMatching(/mem\/team\/app:v1: layer sha256:.*unsupported layer media type/),
    });
    expect(source.opened).toEqual([]);
  });

  it('refuses what is not a container image before downloading anything', async () => {
    addImage(source, 'v1', { configMediaType: 'application/vnd.cncf.helm.config.v1+json' });
    await expect(pullImage(source, 'v1', store)).rejects.toMatchObject({ code: 'IMAGE', message: expect.stringMatching(/is not a container image/) });
    expect(source.opened).toEqual([]);
  });

  it('checks the config (layer count, platform) before downloading layers', async () => {
    const image = addImage(source, 'v1', { diffIds: 5 });
    await expect(pullImage(source, 'v1', store)).rejects.toMatchObject({
      code: 'IMAGE',
      message: 'mem/team/app:v1: the image config lists 5 layers but the manifest has 2',
    });
    expect(source.opened).toEqual([image.config.digest]);
    addImage(source, 'arm', { architecture: 'arm64' });
    await expect(pullImage(source, 'arm', store)).rejects.toMatchObject({ code: 'IMAGE', message: expect.stringMatching(/is for linux\/arm64/) });
  });

  it('verifies a manifest fetched by digest even when the source does not', async () => {
    const image = addImage(source, 'v1');
    source.manifests.set(image.manifest.digest, { bytes: Buffer.concat([image.manifest.bytes, Buffer.from(' ')]), digest: image.manifest.digest });
    await expect(pullImage(source, image.manifest.digest, store)).rejects.toMatchObject({
      code: 'IMAGE',
      message: expect.stringMatching(/arrived with digest .*corrupt or tampered/),
    });
  });

  it('checks the size an index gives its manifest, and refuses nested indexes', async () => {
    const image = addImage(source, 'v1');
    const index = (size: number, mediaType: string = MediaType.dockerManifest) =>
      doc({
        schemaVersion: 2,
        mediaType: MediaType.dockerManifestList,
        manifests: [{ mediaType, digest: image.manifest.digest, size, platform: { os: 'linux', architecture: 'amd64' } }],
      });
    const lying = index(image.manifest.bytes.length + 1);
    source.manifests.set('lying', lying);
    await expect(pullImage(source, 'lying', store)).rejects.toMatchObject({ code: 'IMAGE', message: expect.stringMatching(/bytes but its index says/) });

    const inner = index(image.manifest.bytes.length);
    const outer = doc({
      schemaVersion: 2,
      mediaType: MediaType.ociIndex,
      manifests: [{ mediaType: MediaType.ociIndex, digest: inner.digest, size: inner.bytes.length, platform: { os: 'linux', architecture: 'amd64' } }],
    });
    source.manifests.set(inner.digest, inner);
    source.manifests.set('nested', outer);
    await expect(pullImage(source, 'nested', store)).rejects.toMatchObject({
      code: 'IMAGE',
      message: expect.stringMatching(/nested indexes are not supported/),
    });
    expect(source.opened).toEqual([]);
  });

  it('downloads again after a retryable failure or a short body, but not after a hard one', async () => {
    const image = addImage(source, 'v1');
    const [a, b] = image.layers as [Image['layers'][0], Image['layers'][0]];
    source.openers.set(a.digest, (n, data) => {
      if (n === 1) throw new RoostError('IMAGE', 'connection dropped', { details: { retryable: true } });
      return source.stream(data);
    });
    source.openers.set(b.digest, (n, data) => source.stream(n === 1 ? data.subarray(0, 100) : data));
    await pullImage(source, 'v1', store);
    expect(source.opened.filter((d) => d === a.digest)).toHaveLength(2);
    expect(source.opened.filter((d) => d === b.digest)).toHaveLength(2);

    const other = new MemorySource();
    const image2 = addImage(other, 'v1');
    const c = image2.layers[0]!;
    other.openers.set(c.digest, () => {
      throw new RoostError('IMAGE', 'access denied');
    });
    await expect(pullImage(other, 'v1', new BlobStore(join(dir, 'b2')))).rejects.toMatchObject({ code: 'IMAGE', message: 'access denied' });
    expect(other.opened.filter((d) => d === c.digest)).toHaveLength(1);
  });

  it('gives up after `retries` downloads of a blob that keeps failing', async () => {
    const image = addImage(source, 'v1');
    const a = image.layers[0]!;
    source.openers.set(a.digest, () => {
      throw new RoostError('IMAGE', 'connection dropped', { details: { retryable: true } });
    });
    const progress: PullProgress[] = [];
    await expect(pullImage(source, 'v1', store, { retries: 2, onProgress: (p) => progress.push(p) })).rejects.toMatchObject({ message: 'connection dropped' });
    expect(source.opened.filter((d) => d === a.digest)).toHaveLength(3);
    expect(progress.filter((p) => p.digest === a.digest && p.status === 'retrying')).toHaveLength(2);
    expect(progress.filter((p) => p.digest === a.digest).at(-1)?.status).toBe('failed');
  });

  it('aborts the other downloads on the first failure and leaves only verified blobs', async () => {
    const image = addImage(source, 'v1', { layers: [randomBytes(10_000), randomBytes(10_000_000)] });
    const [bad, slow] = image.layers as [Image['layers'][0], Image['layers'][0]];
    let slowClosed = false;
    source.openers.set(slow.digest, (_n, data) =>
      (async function* () {
        try {
          for (let i = 0; ; i += 1000) {
            await delay(5);
            yield data.subarray(i, i + 1000);
          }
        } finally {
          slowClosed = true;
        }
      })(),
    );
    source.openers.set(bad.digest, (_n, data) =>
      (async function* () {
        await delay(30);
        yield data.subarray(0, 10);
        throw new RoostError('IMAGE', 'registry exploded');
      })(),
    );
    const progress: PullProgress[] = [];
    const started = Date.now();
    await expect(pullImage(source, 'v1', store, { onProgress: (p) => progress.push(p) })).rejects.toMatchObject({
      code: 'IMAGE',
      message: 'registry exploded',
    });
    expect(Date.now() - started).toBeLessThan(1000);
    expect(slowClosed).toBe(true);
    expect(stored()).toEqual([image.config.digest]);
    expect(progress.filter((p) => p.digest === slow.digest).at(-1)?.status).toBe('failed');
  });

  it('stops when the caller aborts, leaving no partial blob', async () => {
    const image = addImage(source, 'v1', { layers: [randomBytes(5_000_000)] });
    source.openers.set(image.layers[0]!.digest, (_n, data) => source.stream(data, 1000, 5));
    const ac = new AbortController();
    setTimeout(() => ac.abort(), 100);
    await expect(pullImage(source, 'v1', store, { signal: ac.signal })).rejects.toMatchObject({ code: 'ABORTED' });
    expect(stored()).toEqual([image.config.digest]);
    await expect(pullImage(source, 'v1', store, { signal: AbortSignal.abort() })).rejects.toMatchObject({ code: 'ABORTED' });
  });

  it('refuses options that make no sense', async () => {
    addImage(source, 'v1');
    await expect(pullImage(source, 'v1', store, { concurrency: 0 })).rejects.toMatchObject({ code: 'INVALID_ARGUMENT' });
    await expect(pullImage(source, 'v1', store, { retries: -1 })).rejects.toMatchObject({ code: 'INVALID_ARGUMENT' });
  });
});
