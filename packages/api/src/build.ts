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

/** The BuildResult as JSON (`Accept: application/json` of POST /v1/images/build). */
export const BuildResultSchema = z.object({ image: ImageInfoSchema, ran: z.number().int(), cached: z.number().int() }).meta({ id: 'BuildResult' });

/** The largest build context the daemon takes (the tar stream's bytes). */
export const MAX_BUILD_CONTEXT_BYTES = 2 * 1024 ** 3;

/**
 * A build context given as a tar stream instead of a directory (what the
 * daemon receives, and what `images.build` takes from a caller that has no
 * directory): unpacked strictly into a fresh directory of the home (names
 * that climb out, absolute names, entries below a symlink, names that come
 * twice and device nodes are refused, INVALID_ARGUMENT), built from, and
 * removed after.
 */
export interface BuildContextArchive {
  tar: AsyncIterable<Uint8Array>;
}

/** One step the build cache knows (`roost images ls --all`, GET /v1/build-cache). */
export const BuildCacheEntrySchema = z
  .object({
    /** The step's cache key (its parent chain, the instruction, the digests of what it reads). */
    key: z.string(),
    /** The instruction, as the Dockerfile had it expanded (`RUN make`). */
    step: z.string(),
    /** The digest of the layer it made, or null: it changed no file. */
    layer: z.string().nullable(),
    /** The layer's compressed bytes (null without a layer). */
    size: z.number().int().nullable(),
    createdAt: z.string(),
    usedAt: z.string(),
  })
  .meta({ id: 'BuildCacheEntry' });
export type BuildCacheEntry = z.infer<typeof BuildCacheEntrySchema>;

export const BuildCacheListSchema = z.object({ entries: z.array(BuildCacheEntrySchema) }).meta({ id: 'BuildCacheList' });

/**
 * The tag of the image `roost template create NAME --build CONTEXT` builds:
 * `roost-template/<name>:latest`, the name lowercased with its separators
 * made one `-` as a repository name needs, and a short hash of the name
 * when that changed it (so `App` and `app` never share an image).
 */
export function templateImageTag(name: string): string {
  const repo = name
    .toLowerCase()
    .replace(/[._-]+/g, '-')
    .replace(/^-+|-+$/g, '');
  if (repo === name) return `roost-template/${repo}:latest`;
  // FNV-1a, 32 bits: enough to tell apart the few names that map to one repository.
  let h = 0x811c9dc5;
  for (const ch of new TextEncoder().encode(name)) h = Math.imul(h ^ ch, 0x01000193) >>> 0;
  return `roost-template/${repo || 'x'}-${h.toString(16).padStart(8, '0').slice(0, 6)}:latest`;
}
