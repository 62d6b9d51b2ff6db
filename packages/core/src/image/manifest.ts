import { z } from 'zod';
import { RoostError } from '../errors.js';
import { parseDigest } from './blobs.js';

/** Media types Roost reads. Docker schema 2 and OCI are equivalent in structure. */
export const MediaType = {
  ociIndex: 'application/vnd.oci.image.index.v1+json',
  ociManifest: 'application/vnd.oci.image.manifest.v1+json',
  ociConfig: 'application/vnd.oci.image.config.v1+json',
  ociLayer: 'application/vnd.oci.image.layer.v1.tar',
  ociLayerGzip: 'application/vnd.oci.image.layer.v1.tar+gzip',
  ociLayerZstd: 'application/vnd.oci.image.layer.v1.tar+zstd',
  ociLayerNondistributableGzip: 'application/vnd.oci.image.layer.nondistributable.v1.tar+gzip',
  dockerManifestList: 'application/vnd.docker.distribution.manifest.list.v2+json',
  dockerManifest: 'application/vnd.docker.distribution.manifest.v2+json',
  dockerConfig: 'application/vnd.docker.container.image.v1+json',
  dockerLayerGzip: 'application/vnd.docker.image.rootfs.diff.tar.gzip',
  dockerLayerForeignGzip: 'application/vnd.docker.image.rootfs.foreign.diff.tar.gzip',
} as const;

/** The Accept header for manifest requests: every manifest and index type we read. */
export const MANIFEST_ACCEPT = [MediaType.ociIndex, MediaType.ociManifest, MediaType.dockerManifestList, MediaType.dockerManifest].join(', ');

/** How a layer blob is compressed, from its media type. */
export type LayerCompression = 'none' | 'gzip' | 'zstd';

export function layerCompression(mediaType: string): LayerCompression {
  switch (mediaType) {
    case MediaType.ociLayer:
    case 'application/vnd.docker.image.rootfs.diff.tar':
      return 'none';
    case MediaType.ociLayerGzip:
    case MediaType.ociLayerNondistributableGzip:
    case MediaType.dockerLayerGzip:
    case MediaType.dockerLayerForeignGzip:
      return 'gzip';
    case MediaType.ociLayerZstd:
      return 'zstd';
    default:
      throw new RoostError('IMAGE', `unsupported layer media type "${mediaType}"`);
  }
}

/** Upper bound on a manifest or config document (registries cap manifests at 4 MiB). */
export const MAX_DOCUMENT_BYTES = 4 * 2 ** 20;

const digestSchema = z.string().refine(
  (d) => {
    try {
      parseDigest(d);
      return true;
    } catch {
      return false;
    }
  },
  { message: 'not a sha256/sha512 digest' },
);

const platformSchema = z.object({
  architecture: z.string(),
  os: z.string(),
  variant: z.string().optional(),
  'os.version': z.string().optional(),
});

const descriptorSchema = z.object({
  mediaType: z.string(),
  digest: digestSchema,
  size: z.number().int().nonnegative().max(Number.MAX_SAFE_INTEGER),
  urls: z.array(z.string()).optional(),
  annotations: z.record(z.string(), z.string()).optional(),
  platform: platformSchema.optional(),
});

/** A content descriptor: what a manifest says a blob is. */
export type Descriptor = z.infer<typeof descriptorSchema>;
export type Platform = z.infer<typeof platformSchema>;

const manifestSchema = z.object({
  schemaVersion: z.literal(2),
  mediaType: z.string().optional(),
  config: descriptorSchema,
  layers: z.array(descriptorSchema).max(1000),
  annotations: z.record(z.string(), z.string()).optional(),
});

const indexSchema = z.object({
  schemaVersion: z.literal(2),
  mediaType: z.string().optional(),
  manifests: z.array(descriptorSchema).max(10_000),
  annotations: z.record(z.string(), z.string()).optional(),
});

export type ImageManifest = z.infer<typeof manifestSchema>;
export type ImageIndex = z.infer<typeof indexSchema>;

const stringList = z.array(z.string()).nullish();

const configSchema = z.object({
  architecture: z.string().optional(),
  os: z.string().optional(),
  config: z
    .object({
      User: z.string().nullish(),
      Env: stringList,
      Entrypoint: stringList,
      Cmd: stringList,
      WorkingDir: z.string().nullish(),
      ExposedPorts: z.record(z.string(), z.unknown()).nullish(),
      Labels: z.record(z.string(), z.string()).nullish(),
      StopSignal: z.string().nullish(),
    })
    .nullish(),
  rootfs: z.object({
    type: z.literal('layers'),
    diff_ids: z.array(digestSchema),
  }),
  created: z.string().optional(),
});

/** The parts of an image config (OCI image-spec `config.json`) that Roost honors. */
export interface ImageConfig {
  architecture: string;
  os: string;
  user: string;
  env: string[];
  entrypoint: string[];
  cmd: string[];
  workingDir: string;
  exposedPorts: string[];
  labels: Record<string, string>;
  stopSignal?: string;
  /** Digests of the uncompressed layers, in order. */
  diffIds: string[];
  created?: string;
}

/** A parsed manifest document: either one image or an index of per-platform images. */
export type ParsedManifest = { kind: 'manifest'; mediaType: string; manifest: ImageManifest } | { kind: 'index'; mediaType: string; index: ImageIndex };

function parseJson(bytes: Uint8Array, what: string): unknown {
  if (bytes.byteLength > MAX_DOCUMENT_BYTES) throw new RoostError('IMAGE', `${what} is ${bytes.byteLength} bytes, over the ${MAX_DOCUMENT_BYTES}-byte limit`);
  try {
    return JSON.parse(Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString('utf8'));
  } catch (e) {
    throw new RoostError('IMAGE', `${what} is not valid JSON: ${(e as Error).message}`, { cause: e });
  }
}

function issues(error: z.ZodError): string {
  return error.issues.map((i) => `${i.path.join('.') || '(root)'}: ${i.message}`).join('; ');
}

/**
 * Parses a manifest or index. `contentType` is the registry's Content-Type
 * (or the descriptor's media type); when absent or generic, the document's
 * own `mediaType` field and shape decide. Schema-1 manifests are refused.
 */
export function parseManifest(bytes: Uint8Array, contentType?: string): ParsedManifest {
  const doc = parseJson(bytes, 'manifest');
  if (typeof doc !== 'object' || doc === null) throw new RoostError('IMAGE', 'manifest is not a JSON object');
  const declared = (doc as { mediaType?: unknown }).mediaType;
  const header = contentType?.split(';')[0]?.trim();
  const mediaType = typeof declared === 'string' && declared ? declared : header && header !== 'application/json' ? header : undefined;
  if ((doc as { schemaVersion?: unknown }).schemaVersion === 1 || mediaType?.startsWith('application/vnd.docker.distribution.manifest.v1')) {
    throw new RoostError('IMAGE', 'Docker schema-1 manifests are not supported (deprecated since 2017): push the image again with a current tool');
  }
  const isIndex = mediaType === MediaType.ociIndex || mediaType === MediaType.dockerManifestList || (!mediaType && 'manifests' in doc);
  if (isIndex) {
    const r = indexSchema.safeParse(doc);
    if (!r.success) throw new RoostError('IMAGE', `invalid image index: ${issues(r.error)}`);
    return { kind: 'index', mediaType: mediaType ?? MediaType.ociIndex, index: r.data };
  }
  if (mediaType && mediaType !== MediaType.ociManifest && mediaType !== MediaType.dockerManifest) {
    throw new RoostError('IMAGE', `unsupported manifest media type "${mediaType}"`);
  }
  const r = manifestSchema.safeParse(doc);
  if (!r.success) throw new RoostError('IMAGE', `invalid image manifest: ${issues(r.error)}`);
  return { kind: 'manifest', mediaType: mediaType ?? MediaType.ociManifest, manifest: r.data };
}

/** The platform Roost runs: the guest is x86_64 Linux. */
export const TARGET_PLATFORM: Platform = { os: 'linux', architecture: 'amd64' };

/**
 * Picks the manifest for linux/amd64 from an index (the first match, as
 * Docker does; attestation manifests with `unknown/unknown` never match).
 * Throws IMAGE listing the platforms the index has when none fits.
 */
export function selectPlatform(index: ImageIndex, platform: Platform = TARGET_PLATFORM): Descriptor {
  const match = index.manifests.find(
    (m) =>
      m.platform?.os === platform.os && m.platform.architecture === platform.architecture && (!platform.variant || m.platform.variant === platform.variant),
  );
  if (match) return match;
  const have = index.manifests
    .map((m) => (m.platform ? `${m.platform.os}/${m.platform.architecture}${m.platform.variant ? '/' + m.platform.variant : ''}` : 'unknown'))
    .join(', ');
  throw new RoostError('IMAGE', `the image has no ${platform.os}/${platform.architecture} variant (it has: ${have || 'none'})`);
}

/** Parses an image config blob, checking it is for linux/amd64 and matches the manifest's layer count. */
export function parseImageConfig(bytes: Uint8Array, layerCount?: number): ImageConfig {
  const r = configSchema.safeParse(parseJson(bytes, 'image config'));
  if (!r.success) throw new RoostError('IMAGE', `invalid image config: ${issues(r.error)}`);
  const c = r.data;
  const os = c.os ?? 'linux';
  const architecture = c.architecture ?? 'amd64';
  if (os !== 'linux' || architecture !== 'amd64') {
    throw new RoostError('IMAGE', `the image is for ${os}/${architecture}; Roost sandboxes run linux/amd64`);
  }
  if (layerCount !== undefined && c.rootfs.diff_ids.length !== layerCount) {
    throw new RoostError('IMAGE', `the image config lists ${c.rootfs.diff_ids.length} layers but the manifest has ${layerCount}`);
  }
  const cfg = c.config ?? {};
  return {
    architecture,
    os,
    user: cfg.User ?? '',
    env: cfg.Env ?? [],
    entrypoint: cfg.Entrypoint ?? [],
    cmd: cfg.Cmd ?? [],
    workingDir: cfg.WorkingDir ?? '',
    exposedPorts: Object.keys(cfg.ExposedPorts ?? {}),
    labels: cfg.Labels ?? {},
    ...(cfg.StopSignal ? { stopSignal: cfg.StopSignal } : {}),
    diffIds: c.rootfs.diff_ids,
    ...(c.created ? { created: c.created } : {}),
  };
}

/**
 * Where image content comes from: a registry, an OCI layout, a `docker save`
 * archive. The store copies from a source into its blob store, verifying
 * every digest and size itself; a source need not be trusted.
 */
export interface ImageSource {
  /** A short name for messages (`127.0.0.1:5000/team/app`, `oci:/path/dir`). */
  readonly description: string;
  /**
   * The top-level manifest or index for `tagOrDigest` (a tag, or a digest
   * for a pinned reference or a manifest chosen from an index). Returns the
   * raw bytes, exactly as stored (their sha256 is the manifest digest), and
   * the media type reported for them.
   */
  getManifest(tagOrDigest: string, signal?: AbortSignal): Promise<{ bytes: Buffer; mediaType?: string }>;
  /** Streams one blob. The caller verifies digest and size. */
  openBlob(descriptor: Descriptor, signal?: AbortSignal): Promise<AsyncIterable<Uint8Array>>;
  /** Releases what the source holds (sockets, temp files). */
  close?(): Promise<void>;
}

/** Progress of a pull or import, per blob: the contract's one shape. */
export type { PullProgress } from '@roost/api';
