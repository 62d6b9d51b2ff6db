import { z } from 'zod';
import { ErrorBodySchema } from './schemas.js';

/*
 * `images.push`: copying a stored image to a registry (the registry v2 push
 * protocol). Its request and result, its progress per blob, and its NDJSON
 * event lines with their encoder and decoder, in one place: core's store,
 * the daemon, the SDK and the CLI all speak these (the decoder of the
 * event lines is wire.ts's, beside the other decoders).
 */

/** POST /v1/images/push: which stored image, and where to (default: the image's own name). */
export const PushImageRequestSchema = z
  .object({
    /** A stored image: a name (`host:5000/app:1`), a digest, or an id (prefix). */
    source: z.string().min(1).max(1024),
    /** `REGISTRY/REPOSITORY[:TAG]` (tag `latest` when none), or `@<the image's digest>` to push it untagged. */
    destination: z.string().min(1).max(1024).optional(),
  })
  .strict()
  .meta({ id: 'PushImageRequest' });
export type PushImageRequest = z.infer<typeof PushImageRequestSchema>;

/** Where one blob of a push is. `exists`, `mounted` and `pushed` are final for that blob. */
export const PushStatusSchema = z.enum(['waiting', 'checking', 'uploading', 'retrying', 'exists', 'mounted', 'pushed', 'failed']);
export type PushStatus = z.infer<typeof PushStatusSchema>;

/** What a push did. */
export const PushResultSchema = z
  .object({
    /** The stored image pushed (its manifest digest). */
    imageId: z.string(),
    /** The reference pushed to, fully qualified (`127.0.0.1:5000/team/app:1`). */
    destination: z.string(),
    /** The digest of the manifest the registry stored: the image id, since its bytes are sent as stored. */
    manifestDigest: z.string(),
    /** The manifest's media type, as stored (Docker schema 2 or OCI). */
    mediaType: z.string(),
    /** How many blobs (config and distinct layers) the registry had already, mounted from another repository, or received. */
    blobs: z.object({ exists: z.number().int(), mounted: z.number().int(), pushed: z.number().int() }),
    /** Bytes of the blobs that were uploaded, and of all of them. */
    bytes: z.object({ pushed: z.number().int(), total: z.number().int() }),
  })
  .meta({ id: 'PushResult' });
export type PushResult = z.infer<typeof PushResultSchema>;

/** One line of a push's NDJSON progress stream; `done` or `error` last. */
export const PushEventSchema = z
  .discriminatedUnion('type', [
    z.object({
      type: z.literal('progress'),
      digest: z.string(),
      kind: z.enum(['config', 'layer']),
      /** Bytes sent so far. */
      completed: z.number(),
      total: z.number(),
      /** True once the blob is in the repository (`exists`, `mounted` or `pushed`). */
      done: z.boolean(),
      status: PushStatusSchema,
    }),
    z.object({ type: z.literal('done'), result: PushResultSchema }),
    z.object({ type: z.literal('error'), error: z.lazy(() => ErrorBodySchema.shape.error) }),
  ])
  .meta({ id: 'PushEvent' });
export type PushEvent = z.infer<typeof PushEventSchema>;

/** Progress of one blob of a push. */
export interface PushProgress {
  /** The destination reference. */
  image: string;
  digest: string;
  kind: 'config' | 'layer';
  /** Bytes sent so far (the blob's size once it is there, however it got there), and in all. */
  current: number;
  total: number;
  status: PushStatus;
}

/** True when a blob's push is final: it is in the repository. */
export function pushProgressDone(p: Pick<PushProgress, 'status'>): boolean {
  return p.status === 'exists' || p.status === 'mounted' || p.status === 'pushed';
}

/** Options of `images.push`. */
export interface PushImageOptions {
  /** `REGISTRY/REPOSITORY[:TAG]`; default the image's own name (the one given, or its first tag). */
  destination?: string;
  /** Hears about each blob (a callback that throws does not end the push). */
  onProgress?: (p: PushProgress) => void;
  signal?: AbortSignal;
}

/** `images.push(reference, options)`: the destination, a signal and the progress callback (the reference is PushImageRequestSchema's `source`). */
export const PushImageOptionsSchema = z
  .object({
    destination: PushImageRequestSchema.shape.destination,
    onProgress: z.function().optional(),
    signal: z.instanceof(AbortSignal).optional(),
  })
  .strict();

/** The wire's progress line of one blob. */
export function encodePushProgress(p: PushProgress): Extract<PushEvent, { type: 'progress' }> {
  return { type: 'progress', digest: p.digest, kind: p.kind, completed: p.current, total: p.total, done: pushProgressDone(p), status: p.status };
}
