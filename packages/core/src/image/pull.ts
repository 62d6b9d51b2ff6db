import { createHash } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { abortError, RoostError } from '../errors.js';
import { parseDigest, type BlobStore } from './blobs.js';
import {
  layerCompression,
  MAX_DOCUMENT_BYTES,
  MediaType,
  parseImageConfig,
  parseManifest,
  selectPlatform,
  type Descriptor,
  type ImageConfig,
  type ImageManifest,
  type ImageSource,
  type PullProgress,
} from './manifest.js';
import { backoffDelay, isRetryable, sleep } from './retry.js';

export interface PullImageOptions {
  signal?: AbortSignal;
  /** Blobs downloaded at once. Default 3. */
  concurrency?: number;
  /** Progress per blob: a few updates a second while downloading, and every change of status. */
  onProgress?: (p: PullProgress) => void;
  /** The image's name in progress reports. Default: the source's description with the tag or digest. */
  image?: string;
  /** Downloads of one blob after the first, when it fails transiently (a dropped connection, a short body). Default 4. */
  retries?: number;
}

/** What a pull stored: every blob of the image is in the BlobStore, verified. */
export interface PulledImage {
  /** The digest of the image manifest (for a multi-platform image, of the linux/amd64 one). */
  manifestDigest: string;
  manifestBytes: Buffer;
  manifestMediaType: string;
  manifest: ImageManifest;
  config: ImageConfig;
  configDescriptor: Descriptor;
  /** The digest of the index the manifest was chosen from, when the reference named one. */
  indexDigest?: string;
}

const CONFIG_MEDIA_TYPES = new Set<string>([MediaType.ociConfig, MediaType.dockerConfig]);
const PROGRESS_INTERVAL_MS = 100;
const DEFAULT_CONCURRENCY = 3;
const DEFAULT_RETRIES = 4;

/**
 * Pulls one image from `source` into `blobs`: the manifest for
 * `tagOrDigest` (the linux/amd64 one when it is an index), its config, then
 * its layers, `concurrency` at a time. Blobs already stored are not fetched
 * again. Each blob is verified by BlobStore (digest and size) before it
 * lands; one that fails transiently is fetched again from the start, with
 * backoff. The manifest (and index) bytes are stored last, so a stored
 * manifest means a complete image.
 *
 * Everything checkable is checked before any layer is downloaded: layer
 * media types Roost can decompress, a config for linux/amd64 listing as many
 * layers as the manifest. On the first failure the other downloads are
 * aborted; nothing partial is left in the store. Errors are IMAGE (content
 * and registry problems), NOT_FOUND, NETWORK, ABORTED or TIMEOUT.
 */
export async function pullImage(source: ImageSource, tagOrDigest: string, blobs: BlobStore, options: PullImageOptions = {}): Promise<PulledImage> {
  const concurrency = options.concurrency ?? DEFAULT_CONCURRENCY;
  if (!Number.isSafeInteger(concurrency) || concurrency < 1)
    throw new RoostError('INVALID_ARGUMENT', `concurrency must be a whole number >= 1, not ${options.concurrency}`);
  const retries = options.retries ?? DEFAULT_RETRIES;
  if (!Number.isSafeInteger(retries) || retries < 0) throw new RoostError('INVALID_ARGUMENT', `retries must be a whole number >= 0, not ${options.retries}`);
  const image = options.image ?? `${source.description}${tagOrDigest.includes(':') ? '@' : ':'}${tagOrDigest}`;
  const what = `pulling ${image}`;
  const { signal } = options;
  if (signal?.aborted) throw abortError(signal, what);

  const top = await fetchDocument(source, tagOrDigest, undefined, signal);
  let doc = top;
  let parsed = parseManifest(top.bytes, top.mediaType);
  let indexDigest: string | undefined;
  if (parsed.kind === 'index') {
    const chosen = selectPlatform(parsed.index);
    indexDigest = top.digest;
    doc = await fetchDocument(source, chosen.digest, chosen, signal);
    parsed = parseManifest(doc.bytes, doc.mediaType ?? chosen.mediaType);
    if (parsed.kind !== 'manifest')
      throw new RoostError('IMAGE', `the linux/amd64 entry of the index of ${image} is another index; nested indexes are not supported`);
  }
  const { manifest, mediaType: manifestMediaType } = parsed;
  const configDescriptor = manifest.config;
  if (!CONFIG_MEDIA_TYPES.has(configDescriptor.mediaType)) {
    throw new RoostError('IMAGE', `${image} is not a container image: its config is "${configDescriptor.mediaType}"`);
  }
  if (configDescriptor.size > MAX_DOCUMENT_BYTES) {
    throw new RoostError('IMAGE', `the config of ${image} is ${configDescriptor.size} bytes, over the ${MAX_DOCUMENT_BYTES}-byte limit`);
  }
  for (const layer of manifest.layers) {
    try {
      layerCompression(layer.mediaType);
    } catch (e) {
      throw new RoostError('IMAGE', `${image}: layer ${layer.digest}: ${(e as Error).message}`, { cause: e });
    }
  }

  const layers = [...new Map(manifest.layers.map((l) => [l.digest, l])).values()];
  const controller = new AbortController();
  const onAbort = () => controller.abort(signal!.reason);
  signal?.addEventListener('abort', onAbort, { once: true });
  const progress = new ProgressReporter(image, options.onProgress);
  const download: Download = { source, blobs, retries, progress, signal: controller.signal, what };
  progress.report(configDescriptor, 'config', 'waiting', 0);
  for (const layer of layers) progress.report(layer, 'layer', 'waiting', 0);
  try {
    await fetchBlob(download, configDescriptor, 'config');
    let config: ImageConfig;
    try {
      config = parseImageConfig(await readFile(blobs.path(configDescriptor.digest)), manifest.layers.length);
    } catch (e) {
      throw e instanceof RoostError ? new RoostError(e.code, `${image}: ${e.message}`, { cause: e }) : e;
    }
    await runPool(layers, concurrency, controller, (layer) => fetchBlob(download, layer, 'layer'));
    await storeDocument(blobs, doc.digest, doc.bytes, controller.signal);
    if (indexDigest !== undefined) await storeDocument(blobs, top.digest, top.bytes, controller.signal);
    return {
      manifestDigest: doc.digest,
      manifestBytes: doc.bytes,
      manifestMediaType,
      manifest,
      config,
      configDescriptor,
      ...(indexDigest !== undefined ? { indexDigest } : {}),
    };
  } catch (e) {
    for (const d of [configDescriptor, ...layers]) progress.fail(d, d === configDescriptor ? 'config' : 'layer');
    throw e;
  } finally {
    signal?.removeEventListener('abort', onAbort);
  }
}

/** What every blob download of one pull shares. */
interface Download {
  source: ImageSource;
  blobs: BlobStore;
  retries: number;
  progress: ProgressReporter;
  /** Aborted by the caller, or by the first failure of the pull. */
  signal: AbortSignal;
  what: string;
}

/** A manifest or index from the source, its digest verified when it was asked for by digest (the source need not be trusted). */
async function fetchDocument(
  source: ImageSource,
  ref: string,
  expected: Descriptor | undefined,
  signal: AbortSignal | undefined,
): Promise<{ bytes: Buffer; mediaType?: string; digest: string }> {
  const { bytes, mediaType } = await source.getManifest(ref, signal);
  const byDigest = ref.includes(':');
  const algorithm = byDigest ? parseDigest(ref).algorithm : 'sha256';
  const digest = `${algorithm}:${createHash(algorithm).update(bytes).digest('hex')}`;
  if (byDigest && digest !== ref)
    throw new RoostError('IMAGE', `manifest ${ref} from ${source.description} arrived with digest ${digest} (corrupt or tampered); refused`);
  if (expected && bytes.length !== expected.size) {
    throw new RoostError('IMAGE', `manifest ${ref} from ${source.description} is ${bytes.length} bytes but its index says ${expected.size}; refused`);
  }
  return { bytes, digest, ...(mediaType !== undefined ? { mediaType } : {}) };
}

/**
 * Stores one blob unless it is there, downloading it again from the start
 * after a transient failure: a dropped or stalled connection (the source
 * says so), or a body that ended short. A body longer than its descriptor
 * says is not retried (the manifest lies; it would come again); a complete
 * body with the wrong digest is tried once more, in case it was a fluke.
 */
async function fetchBlob(d: Download, desc: Descriptor, kind: PullProgress['kind']): Promise<void> {
  if (await d.blobs.has(desc.digest, desc.size)) {
    d.progress.report(desc, kind, 'exists', desc.size);
    return;
  }
  let wrongContent = 0;
  for (let attempt = 0; ; attempt++) {
    let received = 0;
    let ended = false;
    let sourceError: unknown;
    d.progress.report(desc, kind, 'downloading', 0);
    try {
      const stream = await d.source.openBlob(desc, d.signal).catch((e: unknown) => {
        sourceError = e;
        throw e;
      });
      const counted = async function* () {
        try {
          for await (const chunk of stream) {
            received += chunk.length;
            yield chunk;
          }
          ended = true;
        } catch (e) {
          sourceError = e;
          throw e;
        }
      };
      await d.blobs.put(desc.digest, desc.size, counted(), { signal: d.signal, onProgress: (n) => d.progress.report(desc, kind, 'downloading', n) });
      d.progress.report(desc, kind, 'done', desc.size);
      return;
    } catch (e) {
      if (d.signal.aborted) throw abortError(d.signal, d.what);
      let retry: boolean;
      if (sourceError !== undefined) retry = isRetryable(sourceError);
      else if (!ended || received > desc.size) retry = false;
      else if (received < desc.size) retry = true;
      else retry = ++wrongContent < 2;
      if (!retry || attempt >= d.retries) {
        d.progress.fail(desc, kind, received);
        if (sourceError !== undefined || !(e instanceof RoostError)) throw e;
        // BlobStore names the digest; add where it came from.
        const again = wrongContent >= 2 ? ' (on two downloads)' : '';
        throw new RoostError(e.code, `${d.source.description}: ${e.message}${again}`, { cause: e, details: { ...e.details, digest: desc.digest } });
      }
      d.progress.report(desc, kind, 'retrying', received);
      await sleep(backoffDelay(attempt), d.signal, d.what);
    }
  }
}

async function storeDocument(blobs: BlobStore, digest: string, bytes: Buffer, signal: AbortSignal): Promise<void> {
  if (await blobs.has(digest, bytes.length)) return;
  await blobs.put(
    digest,
    bytes.length,
    (async function* () {
      yield bytes;
    })(),
    { signal },
  );
}

/** Runs `work` on every item, `concurrency` at a time. The first failure aborts `controller` (ending the others) and is thrown once all have settled. */
export async function runPool<T>(items: T[], concurrency: number, controller: AbortController, work: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  let failure: { error: unknown } | undefined;
  const worker = async () => {
    while (!failure && next < items.length) {
      const item = items[next++]!;
      try {
        await work(item);
      } catch (e) {
        if (!failure) {
          failure = { error: e };
          controller.abort(e);
        }
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(concurrency, items.length) }, worker));
  if (failure) throw failure.error;
}

/** Reports progress per blob: status changes always, byte counts at most every 100 ms. */
class ProgressReporter {
  private readonly last = new Map<string, { status: PullProgress['status']; at: number }>();

  constructor(
    private readonly image: string,
    private readonly onProgress: ((p: PullProgress) => void) | undefined,
  ) {}

  report(desc: Descriptor, kind: PullProgress['kind'], status: PullProgress['status'], current: number): void {
    if (!this.onProgress) return;
    const now = Date.now();
    const prev = this.last.get(desc.digest);
    if (status === 'downloading' && prev?.status === 'downloading' && now - prev.at < PROGRESS_INTERVAL_MS) return;
    this.last.set(desc.digest, { status, at: now });
    this.onProgress({ image: this.image, digest: desc.digest, kind, current, total: desc.size, status });
  }

  /** Reports `failed` for a blob that has not finished (one report per blob). */
  fail(desc: Descriptor, kind: PullProgress['kind'], current = 0): void {
    const status = this.last.get(desc.digest)?.status;
    if (status !== 'done' && status !== 'exists' && status !== 'failed') this.report(desc, kind, 'failed', current);
  }
}
