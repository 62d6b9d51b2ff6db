import type { PushImageOptions, PushResult } from './push.js';
import type { BuildCacheEntry, BuildContextArchive, BuildImageOptions, BuildResult } from './build.js';
import type { ImageInfoBody, PullStatus } from './schemas.js';

/*
 * `runtime.images`: the image store of a runtime, embedded or remote. One
 * progress shape for pulls, whoever reports it: core's store, the daemon's
 * NDJSON lines (decoded by `decodePullEvent`), the CLI's printer.
 */

/** Progress of one blob of an image pull. */
export interface PullProgress {
  /** The image being pulled (as the user typed it, normalized). */
  image: string;
  digest: string;
  /** `config` or `layer`; manifests are small and not reported. */
  kind: 'config' | 'layer';
  /** Bytes so far and in all. */
  current: number;
  total: number;
  status: PullStatus;
}

/** True when a blob's progress is final (fetched now, or stored already). */
export function pullProgressDone(p: Pick<PullProgress, 'status'>): boolean {
  return p.status === 'done' || p.status === 'exists';
}

/** Options of `images.pull`. */
export interface PullImageOptions {
  /** Hears about each blob (a callback that throws does not end the pull). */
  onProgress?: (p: PullProgress) => void;
  signal?: AbortSignal;
}

/** What `images.remove` did: the names it removed, and the images it deleted (no name was left). */
export interface ImageRemoval {
  untagged: string[];
  deleted: string[];
}

/**
 * `runtime.images`: pull, list, inspect and remove stored images.
 *
 * Concurrency: calls may overlap; pulls of the same image share their downloads.
 */
export interface ImagesApi {
  /** Pulls an image from its registry (blobs already stored are not fetched again); resolves with the stored image. */
  pull(reference: string, options?: PullImageOptions): Promise<ImageInfoBody>;
  /** The stored images, newest first. */
  list(): Promise<ImageInfoBody[]>;
  /** One image, by reference or id (prefix); NOT_FOUND when it is not stored. */
  inspect(reference: string): Promise<ImageInfoBody>;
  /** Untags an image, and deletes it when no name is left. One that sandboxes use needs `force`. */
  remove(reference: string, options?: { force?: boolean }): Promise<ImageRemoval>;
  /**
   * Pushes a stored image to a registry (blobs the repository has are
   * skipped, blobs another repository of the registry has are mounted, the
   * manifest goes as stored, so the pushed digest is the image id). The
   * destination defaults to the image's own name. NOT_FOUND for an image not
   * stored; IMAGE naming `roost login` when the registry wants a login.
   */
  push(reference: string, options?: PushImageOptions): Promise<PushResult>;
  /**
   * Builds an image from a Dockerfile in `context` (a directory, or a tar
   * stream of one), each RUN step in a microVM; tags it once it is whole.
   * A RUN that fails is BUILD_FAILED naming the step, with the end of its output.
   */
  build(context: string | BuildContextArchive, options?: BuildImageOptions): Promise<BuildResult>;
  /** The steps the build cache knows, most recently used first (`roost images prune` clears them). */
  buildCache(): Promise<BuildCacheEntry[]>;
}
