import { z } from 'zod';
import { EgressSpecSchema } from './network.js';
import { CreateSandboxRequestSchema, ImageInfoSchema } from './schemas.js';

/*
 * The image builder (`roost build`, `runtime.images.build`, POST
 * /v1/images/build): a Dockerfile and its context made into an image, each
 * RUN step in a microVM. The options every face takes, and the progress
 * events (the daemon's NDJSON lines, the CLI's printer).
 */

/** Most tags one build may give its image. */
export const MAX_BUILD_TAGS = 16;
/** Most build arguments. */
export const MAX_BUILD_ARGS = 256;

/** Options of a build (the context is given beside them: a directory, or a tar stream to the daemon). */
export const BuildOptionsSchema = z
  .object({
    /** Names for the image (`app:1`, `registry:5000/team/app:tag`); none: the image is stored untagged. */
    tags: z.array(z.string().min(1)).max(MAX_BUILD_TAGS).optional(),
    /** The Dockerfile: a path relative to the context (default `Dockerfile`). */
    dockerfile: z.string().min(1).optional(),
    /** `--build-arg` values. */
    buildArgs: z
      .record(z.string().regex(/^[A-Za-z_][A-Za-z0-9_]*$/, 'must be a variable name'), z.string())
      .refine((r) => Object.keys(r).length <= MAX_BUILD_ARGS, `at most ${MAX_BUILD_ARGS} build arguments`)
      .optional(),
    /** The stage to build (by name); default the last. */
    target: z.string().min(1).optional(),
    /** Run every step, the cache not asked (its results are still stored). */
    noCache: z.boolean().optional(),
    /** Pull base images even when they are stored. */
    pull: z.boolean().optional(),
    /** The network of RUN steps: `user` (NAT, the default) or `none`. */
    network: z.enum(['user', 'none']).optional(),
    /** Egress policy of RUN steps (with network `user`). */
    egress: EgressSpecSchema.optional(),
    /** SOURCE_DATE_EPOCH (seconds): layer mtimes after it are clamped to it, and the image's times are it; equal builds then give equal digests. */
    sourceDateEpoch: z.number().int().min(0).max(253402300799).optional(),
    /** The resources of the RUN steps' sandbox. */
    cpus: CreateSandboxRequestSchema.shape.cpus,
    memoryMiB: CreateSandboxRequestSchema.shape.memoryMiB,
    diskSizeMiB: CreateSandboxRequestSchema.shape.diskSizeMiB,
  })
  .strict()
  .meta({ id: 'BuildOptions' });
export type BuildOptions = z.infer<typeof BuildOptionsSchema>;

/** One line of a build's progress (the daemon's NDJSON stream); `done` or `error` last. */
export const BuildEventSchema = z
  .discriminatedUnion('type', [
    z.object({
      type: z.literal('step'),
      /** The stage's name, or its index. */
      stage: z.string(),
      step: z.number().int(),
      of: z.number().int(),
      text: z.string(),
      /** `cached`: the cache knew it and nothing ran; `running`, then `done`. */
      status: z.enum(['cached', 'running', 'done']),
      layer: z.string().optional(),
      durationMs: z.number().optional(),
    }),
    z.object({ type: z.literal('output'), step: z.number().int(), stream: z.enum(['stdout', 'stderr']), data: z.string() }),
    z.object({ type: z.literal('note'), message: z.string() }),
    z.object({ type: z.literal('done'), image: ImageInfoSchema, ran: z.number().int(), cached: z.number().int() }),
    z.object({ type: z.literal('error'), error: z.object({ code: z.string(), message: z.string(), details: z.record(z.string(), z.unknown()).optional() }) }),
  ])
  .meta({ id: 'BuildEvent' });
export type BuildEvent = z.infer<typeof BuildEventSchema>;
/** The progress events a build reports as it goes (not `done` or `error`). */
export type BuildProgressEvent = Exclude<BuildEvent, { type: 'done' | 'error' }>;

/** What a build made. */
export interface BuildResult {
  image: z.infer<typeof ImageInfoSchema>;
  /** Steps that ran, and steps the cache answered. */
  ran: number;
  cached: number;
}

/** Options of `images.build`: the build's, and how to follow it. */
export interface BuildImageOptions extends BuildOptions {
  onProgress?: (event: BuildProgressEvent) => void;
  signal?: AbortSignal;
}
