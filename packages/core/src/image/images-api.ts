import {
  BuildOptionsSchema,
  parseInput,
  PullImageOptionsSchema,
  PullRequestSchema,
  PushImageOptionsSchema,
  PushImageRequestSchema,
  RemoveImageOptionsSchema,
} from '@roost/api';
import { chmod, mkdir, mkdtemp, readdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import type {
  BuildCacheEntry,
  BuildContextArchive,
  BuildImageOptions,
  BuildResult,
  ImageInfoBody,
  ImageRemoval,
  ImagesApi,
  PullImageOptions,
  PushImageOptions,
  PushResult,
} from '@roost/api';
import { RoostError } from '../errors.js';
import { applyLayer } from './layer.js';
import type { ImageInfo, ImageStore } from './store.js';

/**
 * `runtime.images`: the contract's ImagesApi over the home's ImageStore.
 * Answers in the contract's shapes (the store's own records, with their
 * layer lists, stay inside core; import, export, tag and prune are
 * ImageStore's, for the CLI).
 *
 * Concurrency: calls may overlap; pulls of the same image share their downloads (the store's).
 */
export class StoreImages implements ImagesApi {
  constructor(
    private readonly store: ImageStore,
    /** The image builder (build/build.ts), which needs the runtime's sandboxes. */
    private readonly builder: (context: string, options: BuildImageOptions) => Promise<BuildResult>,
  ) {}

  /**
   * Builds an image from a Dockerfile in `context`, each RUN step in a
   * microVM (see docs/images.md#build). A context given as a tar stream is
   * unpacked strictly into a fresh directory under the home's tmp/ first
   * (applyLayer's plain mode), and that directory is removed after, whatever
   * happened.
   */
  async build(context: string | BuildContextArchive, options: BuildImageOptions = {}): Promise<BuildResult> {
    const { onProgress, signal, ...rest } = options;
    const checked = parseInput(BuildOptionsSchema, rest, 'build options');
    const opts = { ...checked, ...(onProgress ? { onProgress } : {}), ...(signal ? { signal } : {}) };
    if (typeof context === 'string') return this.builder(context, opts);
    if (typeof context?.tar?.[Symbol.asyncIterator] !== 'function') {
      throw new RoostError('INVALID_ARGUMENT', 'build context: give a directory, or { tar } with an async iterable of its tar stream');
    }
    const dir = await unpackContext(this.store.tmpDir, context.tar, signal);
    try {
      return await this.builder(dir, opts);
    } finally {
      await removeTree(dir);
    }
  }

  async buildCache(): Promise<BuildCacheEntry[]> {
    return this.store.buildCache();
  }

  async pull(reference: string, options: PullImageOptions = {}): Promise<ImageInfoBody> {
    // Checked only: the callback is passed on as the caller gave it.
    parseInput(PullRequestSchema, { reference }, 'image pull');
    parseInput(PullImageOptionsSchema, options, 'pull options');
    return imageInfoBody(await this.store.pull(reference, options));
  }

  async list(): Promise<ImageInfoBody[]> {
    return this.store.list().map(imageInfoBody);
  }

  async inspect(reference: string): Promise<ImageInfoBody> {
    return imageInfoBody(this.store.inspect(reference));
  }

  async remove(reference: string, options: { force?: boolean } = {}): Promise<ImageRemoval> {
    const checked = parseInput(RemoveImageOptionsSchema, options, 'image removal options');
    return this.store.remove(reference, checked);
  }

  async push(reference: string, options: PushImageOptions = {}): Promise<PushResult> {
    // Checked only: the callback is passed on as the caller gave it.
    parseInput(PushImageRequestSchema, { source: reference, ...(options.destination !== undefined ? { destination: options.destination } : {}) }, 'image push');
    parseInput(PushImageOptionsSchema, options, 'push options');
    return this.store.push(reference, options);
  }
}

/** A stored image as the contract describes it: fields picked, layers as a count, missing dates and sizes as null. */
export function imageInfoBody(image: ImageInfo): ImageInfoBody {
  return {
    id: image.id,
    tags: image.tags,
    size: image.size,
    configDigest: image.configDigest,
    created: image.created ?? null,
    addedAt: image.addedAt,
    source: image.source,
    rootfsSize: image.rootfsSize ?? null,
    layers: image.layers.length,
    config: {
      entrypoint: image.config.entrypoint ?? [],
      cmd: image.config.cmd ?? [],
      env: image.config.env ?? [],
      workingDir: image.config.workingDir ?? '',
      user: image.config.user ?? '',
    },
  };
}

/**
 * A build context's tar stream unpacked into a fresh directory of `tmpDir`
 * (named with this process's pid, so a crash leaves it to the next sweep):
 * strictly, as a hostile archive (see ApplyLayerOptions.plain). Nothing is
 * left when it fails.
 */
async function unpackContext(tmpDir: string, tar: AsyncIterable<Uint8Array>, signal: AbortSignal | undefined): Promise<string> {
  await mkdir(tmpDir, { recursive: true, mode: 0o700 });
  const dir = await mkdtemp(join(tmpDir, `context.tmp-${process.pid}-`));
  try {
    await applyLayer(dir, tar, { layer: 'build context', plain: true, chown: false, ...(signal ? { signal } : {}) });
    return dir;
  } catch (e) {
    await removeTree(dir);
    throw e;
  }
}

/** Removes a tree, even one whose directories deny their owner (a context may carry such modes): they are opened up first. */
async function removeTree(dir: string): Promise<void> {
  try {
    await rm(dir, { recursive: true, force: true });
  } catch {
    const open = async (d: string): Promise<void> => {
      await chmod(d, 0o700).catch(() => {});
      for (const e of await readdir(d, { withFileTypes: true }).catch(() => [])) if (e.isDirectory()) await open(join(d, e.name));
    };
    await open(dir);
    await rm(dir, { recursive: true, force: true });
  }
}
