/**
 * Pushing a stored image to a registry (distribution-spec, "Push"): each
 * blob (layers, then the config) checked, mounted or uploaded, then the
 * manifest PUT with its exact bytes. The protocol of each step is
 * registry-upload.ts; which image and where to is the store's (store.ts).
 */
import { createReadStream } from 'node:fs';
import { stat } from 'node:fs/promises';
import type { PushProgress, PushResult, PushStatus } from '@roost/api';
import { abortError, RoostError } from '../errors.js';
import type { Descriptor } from './manifest.js';
import { runPool } from './pull.js';
import { formatImageReference, parseImageReference, type ImageReference } from './reference.js';
import type { BlobPushOutcome, RegistryClient } from './registry.js';

/** Blobs up to this size go in one PUT; larger ones in chunks. */
export const DEFAULT_CHUNK_THRESHOLD = 16 * 2 ** 20;
/** Bytes per PATCH of a chunked upload. */
export const DEFAULT_CHUNK_SIZE = 8 * 2 ** 20;
const DEFAULT_CONCURRENCY = 3;
const PROGRESS_INTERVAL_MS = 100;
/** Bytes read from the store's files at a time. */
const READ_CHUNK = 1 << 20;

export interface PushImageOptions {
  signal?: AbortSignal | undefined;
  /** Progress per blob: every change of status, and a few updates a second while uploading. */
  onProgress?: ((p: PushProgress) => void) | undefined;
  /** Blobs pushed at once. Default 3. */
  concurrency?: number;
  /** Blobs larger than this are uploaded in chunks. Default 16 MiB. */
  chunkThreshold?: number;
  /** Bytes per chunk (PATCH). Default 8 MiB; raised to what the registry asks for (`OCI-Chunk-Min-Length`). */
  chunkSize?: number;
}

/** The image a push sends: its manifest as stored, the blobs it names, and where the store keeps them. */
export interface PushSource {
  imageId: string;
  manifestBytes: Buffer;
  manifestMediaType: string;
  config: Descriptor;
  layers: Descriptor[];
  /** The file holding a blob. */
  blobPath(digest: string): string;
  /** Repositories of the destination's registry known to hold a blob (tried for cross-repository mounts). */
  mountFrom(digest: string): string[];
}

/**
 * Pushes one image to `destination`: layers (`concurrency` at a time), then
 * the config, then the manifest, as the registry v2 protocol has it. Each
 * blob is skipped when the repository has it, mounted when another
 * repository of the registry has it and the registry agrees, else streamed
 * from the store's file. The manifest is sent as stored, so the registry's
 * digest is the image id (checked against its Docker-Content-Digest).
 * On the first failure the other uploads are aborted. Errors are IMAGE
 * (the registry refused; 401/403 name `roost login`), NETWORK, ABORTED or
 * TIMEOUT.
 */
export async function pushImage(client: RegistryClient, source: PushSource, destination: ImageReference, options: PushImageOptions = {}): Promise<PushResult> {
  const concurrency = positiveInteger(options.concurrency ?? DEFAULT_CONCURRENCY, 'concurrency');
  const chunkThreshold = positiveInteger(options.chunkThreshold ?? DEFAULT_CHUNK_THRESHOLD, 'chunkThreshold');
  const chunkSize = positiveInteger(options.chunkSize ?? DEFAULT_CHUNK_SIZE, 'chunkSize');
  const { signal } = options;
  const target = formatImageReference(destination);
  const what = `pushing ${target}`;
  if (signal?.aborted) throw abortError(signal, what);
  const { registry, repository } = destination;
  const reference = destination.tag ?? destination.digest ?? 'latest';
  if (destination.digest !== undefined && destination.digest !== source.imageId) {
    throw new RoostError(
      'INVALID_ARGUMENT',
      `${target} names digest ${destination.digest}, but the image is ${source.imageId}: a push cannot change an image's digest`,
    );
  }

  const layers = [...new Map(source.layers.map((l) => [l.digest, l])).values()];
  const blobs: { desc: Descriptor; kind: PushProgress['kind'] }[] = [
    ...layers.map((desc) => ({ desc, kind: 'layer' as const })),
    ...(layers.some((l) => l.digest === source.config.digest) ? [] : [{ desc: source.config, kind: 'config' as const }]),
  ];
  // Everything is checked before the registry hears of it: a blob missing from the store fails now, not half-way.
  for (const { desc, kind } of blobs) {
    const st = await stat(source.blobPath(desc.digest)).catch(() => null);
    if (!st?.isFile() || st.size !== desc.size) {
      throw new RoostError(
        'IMAGE',
        `the ${kind} ${desc.digest} of image ${source.imageId} is missing from the store or damaged: pull or build the image again`,
        {
          details: { digest: desc.digest },
        },
      );
    }
  }

  const controller = new AbortController();
  const onAbort = () => controller.abort(signal!.reason);
  signal?.addEventListener('abort', onAbort, { once: true });
  const progress = new PushProgressReporter(target, options.onProgress);
  for (const { desc, kind } of blobs) progress.report(desc, kind, 'waiting', 0);
  const outcomes = new Map<string, BlobPushOutcome>();
  const pushOne = async ({ desc, kind }: (typeof blobs)[number]) => {
    const outcome = await client.pushBlob(
      registry,
      repository,
      { digest: desc.digest, size: desc.size, read: (start, end) => readRange(source.blobPath(desc.digest), start, end) },
      {
        mountFrom: source.mountFrom(desc.digest),
        chunkThreshold,
        chunkSize,
        signal: controller.signal,
        onProgress: (phase, sent) => progress.report(desc, kind, phase, sent),
      },
    );
    outcomes.set(desc.digest, outcome);
    progress.report(desc, kind, outcome, desc.size);
  };
  try {
    // Layers first, then the config: a registry that checks a manifest's blobs as they arrive sees the layers a config names.
    await runPool(
      blobs.filter((b) => b.kind === 'layer'),
      concurrency,
      controller,
      pushOne,
    );
    for (const b of blobs.filter((b) => b.kind === 'config')) await pushOne(b);
    const manifestDigest = await client.putManifest(
      registry,
      repository,
      reference,
      { bytes: source.manifestBytes, mediaType: source.manifestMediaType, digest: source.imageId },
      controller.signal,
    );
    const count = (o: BlobPushOutcome) => [...outcomes.values()].filter((v) => v === o).length;
    return {
      imageId: source.imageId,
      destination: target,
      manifestDigest,
      mediaType: source.manifestMediaType,
      blobs: { exists: count('exists'), mounted: count('mounted'), pushed: count('pushed') },
      bytes: {
        pushed: blobs.filter((b) => outcomes.get(b.desc.digest) === 'pushed').reduce((n, b) => n + b.desc.size, 0),
        total: blobs.reduce((n, b) => n + b.desc.size, 0),
      },
    };
  } catch (e) {
    for (const { desc, kind } of blobs) progress.fail(desc, kind);
    if (signal?.aborted) throw abortError(signal, what);
    throw e;
  } finally {
    signal?.removeEventListener('abort', onAbort);
  }
}

/**
 * Where a push goes. `destination` when given (tag `latest` when it has
 * neither tag nor digest); else the name the image was asked for by, when
 * it is one of its tags; else the image's first tag; else the repository of
 * a pinned name (`host/repo@sha256:...`), pushed untagged. An image with no
 * name at all needs a destination (INVALID_ARGUMENT).
 */
export function pushDestination(asked: string, image: { id: string; tags: string[] }, destination?: string): ImageReference {
  if (destination !== undefined) {
    const ref = parseImageReference(destination);
    if (ref.digest !== undefined && ref.digest !== image.id) {
      throw new RoostError('INVALID_ARGUMENT', `${destination} names digest ${ref.digest}, but ${asked} is ${image.id}: a push keeps the image's digest`);
    }
    // A digest names the content; a tag beside it would be pushed as well, so keep only what the push can honour.
    if (ref.digest !== undefined && ref.tag !== undefined) return { registry: ref.registry, repository: ref.repository, tag: ref.tag };
    return ref.tag !== undefined || ref.digest !== undefined ? ref : { ...ref, tag: 'latest' };
  }
  const named = tryParse(asked);
  if (named?.tag !== undefined && named.digest === undefined && image.tags.includes(formatImageReference(named))) return named;
  const tagged = image.tags.map(tryParse).find((r) => r?.tag !== undefined && r.digest === undefined);
  if (tagged) return tagged;
  const pinned = image.tags.map(tryParse).find((r) => r?.digest === image.id);
  if (pinned) return { registry: pinned.registry, repository: pinned.repository, digest: image.id };
  throw new RoostError('INVALID_ARGUMENT', `image ${asked} has no name to push to: give a destination (roost push ${asked} REGISTRY/REPOSITORY:TAG)`);
}

/**
 * The repositories of `destination`'s registry, other than its own, among
 * `known` (references an image holding the blob was pulled from or pushed
 * to), most recent first as given, without repeats.
 */
export function mountSources(destination: Pick<ImageReference, 'registry' | 'repository'>, known: readonly string[]): string[] {
  const out: string[] = [];
  for (const name of known) {
    const ref = tryParse(name);
    if (!ref || ref.registry !== destination.registry || ref.repository === destination.repository) continue;
    if (!out.includes(ref.repository)) out.push(ref.repository);
  }
  return out;
}

function tryParse(name: string): ImageReference | undefined {
  try {
    return parseImageReference(name);
  } catch {
    return undefined;
  }
}

/** The bytes of a file from `start` to `end` (both included), read a MiB at a time. */
async function* readRange(path: string, start: number, end: number): AsyncGenerator<Uint8Array> {
  const stream = createReadStream(path, { start, end, highWaterMark: READ_CHUNK });
  for await (const chunk of stream) yield chunk as Buffer;
}

function positiveInteger(value: number, name: string): number {
  if (!Number.isSafeInteger(value) || value < 1) throw new RoostError('INVALID_ARGUMENT', `${name} must be a whole number >= 1, not ${value}`);
  return value;
}

/** Reports progress per blob: status changes always, byte counts at most every 100 ms. A callback that throws is ignored. */
class PushProgressReporter {
  private readonly last = new Map<string, { status: PushStatus; at: number }>();

  constructor(
    private readonly image: string,
    private readonly onProgress: ((p: PushProgress) => void) | undefined,
  ) {}

  report(desc: Descriptor, kind: PushProgress['kind'], status: PushStatus, current: number): void {
    if (!this.onProgress) return;
    const now = Date.now();
    const prev = this.last.get(desc.digest);
    if (status === 'uploading' && prev?.status === 'uploading' && now - prev.at < PROGRESS_INTERVAL_MS && current < desc.size) return;
    this.last.set(desc.digest, { status, at: now });
    try {
      this.onProgress({ image: this.image, digest: desc.digest, kind, current, total: desc.size, status });
    } catch {
      // A throwing progress callback does not end the push.
    }
  }

  /** Reports `failed` for a blob that has not finished (one report per blob). */
  fail(desc: Descriptor, kind: PushProgress['kind']): void {
    const status = this.last.get(desc.digest)?.status;
    if (status !== 'exists' && status !== 'mounted' && status !== 'pushed' && status !== 'failed') this.report(desc, kind, 'failed', 0);
  }
}
