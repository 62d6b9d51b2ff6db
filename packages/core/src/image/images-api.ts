import {
  BuildOptionsSchema,
  parseInput,
  PullImageOptionsSchema,
  PullRequestSchema,
  PushImageOptionsSchema,
  PushImageRequestSchema,
  RemoveImageOptionsSchema,
} from '@roost/api';
import type { BuildImageOptions, BuildResult, ImageInfoBody, ImageRemoval, ImagesApi, PullImageOptions, PushImageOptions, PushResult } from '@roost/api';
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

  /** Builds an image from a Dockerfile in `context`, each RUN step in a microVM (see docs/images.md#build). */
  async build(context: string, options: BuildImageOptions = {}): Promise<BuildResult> {
    const { onProgress, signal, ...rest } = options;
    const checked = parseInput(BuildOptionsSchema, rest, 'build options');
    return this.builder(context, { ...checked, ...(onProgress ? { onProgress } : {}), ...(signal ? { signal } : {}) });
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
