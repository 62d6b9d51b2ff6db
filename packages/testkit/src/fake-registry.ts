import { createHash, randomBytes } from 'node:crypto';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { MEDIA_TYPES } from './oci-layout.js';

/*
 * An in-memory registry v2 for the registry client's unit tests: images of
 * random bytes it never unpacks, switchable authentication and hooks for
 * misbehaviour. The real registry of end-to-end tests is registry.ts.
 */

/** The sha256 digest of `b`, as "sha256:<hex>". */
export const sha256Of = (b: Buffer): string => `sha256:${createHash('sha256').update(b).digest('hex')}`;

/** A blob of a FakeImage. */
export interface FakeBlob {
  digest: string;
  size: number;
  data: Buffer;
}

/** An image as FakeRegistry serves it: the manifest bytes and the blobs it names. */
export interface FakeImage {
  manifest: Buffer;
  digest: string;
  mediaType: string;
  config: FakeBlob;
  layers: FakeBlob[];
}

const blob = (data: Buffer): FakeBlob => ({ digest: sha256Of(data), size: data.length, data });

/** An OCI image of random "layers" (never decompressed here). `sizes` may lie about a layer's size. */
export function buildFakeImage(opts: { layers?: Buffer[]; architecture?: string; sizes?: Record<number, number> } = {}): FakeImage {
  const layers = (opts.layers ?? [randomBytes(300_000), randomBytes(50_000)]).map(blob);
  const config = blob(
    Buffer.from(
      JSON.stringify({
        architecture: opts.architecture ?? 'amd64',
        os: 'linux',
        config: { Cmd: ['/bin/sh'], Env: ['PATH=/bin'] },
        rootfs: { type: 'layers', diff_ids: layers.map((l) => sha256Of(Buffer.concat([l.data, Buffer.from('x')]))) },
      }),
    ),
  );
  const manifest = Buffer.from(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: MEDIA_TYPES.manifest,
      config: { mediaType: MEDIA_TYPES.config, digest: config.digest, size: config.size },
      layers: layers.map((l, i) => ({ mediaType: MEDIA_TYPES.layerGzip, digest: l.digest, size: opts.sizes?.[i] ?? l.size })),
    }),
  );
  return { manifest, digest: sha256Of(manifest), mediaType: MEDIA_TYPES.manifest, config, layers };
}

/** An OCI index over FakeImages, one entry per platform. */
export function buildFakeIndex(entries: { image: FakeImage; platform: { os: string; architecture: string; variant?: string } }[]): {
  body: Buffer;
  digest: string;
} {
  const body = Buffer.from(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: MEDIA_TYPES.index,
      manifests: entries.map((e) => ({ mediaType: e.image.mediaType, digest: e.image.digest, size: e.image.manifest.length, platform: e.platform })),
    }),
  );
  return { body, digest: sha256Of(body) };
}

/** Handles a request before the registry does; returning false lets the registry handle it. `hit` counts requests to the path. */
export type FakeRegistryHook = (req: IncomingMessage, res: ServerResponse, hit: number) => boolean | void;

async function listen(server: Server, host: string): Promise<number> {
  await new Promise<void>((resolve) => server.listen(0, host, resolve));
  return (server.address() as AddressInfo).port;
}

/** Answers with a JSON body (and extra headers). */
export function sendJson(res: ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}): void {
  const text = JSON.stringify(body);
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text), ...headers });
  res.end(text);
}

/**
 * A registry v2 server on 127.0.0.1 serving an in-memory store, with
 * switchable authentication (none, Basic, Bearer with its token service on
 * the same server), blob redirects to a second server on 127.0.0.2, and
 * per-path hooks for misbehaviour.
 */
export class FakeRegistry {
  readonly manifests = new Map<string, { body: Buffer; type: string }>();
  readonly blobs = new Map<string, Buffer>();
  readonly log: { path: string; authorization?: string; accept?: string }[] = [];
  readonly tokenLog: { method: string; scope?: string; service?: string; authorization?: string; form?: URLSearchParams }[] = [];
  readonly storageLog: { path: string; authorization?: string }[] = [];
  /** Issued bearer tokens and the scope each grants. */
  readonly tokens = new Map<string, string>();
  auth: 'none' | 'basic' | 'bearer' = 'none';
  anonymousTokens = true;
  tokenField: 'token' | 'access_token' = 'token';
  tokenTtl: number | undefined;
  redirectBlobs = false;
  /** Handles requests to the blob storage before it does. */
  storageHook: FakeRegistryHook | undefined;
  port = 0;
  storagePort = 0;
  private readonly hooks = new Map<string, FakeRegistryHook>();
  private readonly hits = new Map<string, number>();
  private readonly server = createServer((req, res) => this.handle(req, res));
  private readonly storage = createServer((req, res) => this.serveStorage(req, res));

  static async start(): Promise<FakeRegistry> {
    const r = new FakeRegistry();
    r.port = await listen(r.server, '127.0.0.1');
    r.storagePort = await listen(r.storage, '127.0.0.2');
    return r;
  }

  get registry(): string {
    return `127.0.0.1:${this.port}`;
  }

  push(repo: string, tag: string, image: FakeImage): void {
    this.manifests.set(`${repo}@${tag}`, { body: image.manifest, type: image.mediaType });
    this.manifests.set(`${repo}@${image.digest}`, { body: image.manifest, type: image.mediaType });
    for (const b of [image.config, ...image.layers]) this.blobs.set(b.digest, b.data);
  }

  pushIndex(repo: string, tag: string, index: { body: Buffer; digest: string }, images: FakeImage[]): void {
    this.manifests.set(`${repo}@${tag}`, { body: index.body, type: MEDIA_TYPES.index });
    this.manifests.set(`${repo}@${index.digest}`, { body: index.body, type: MEDIA_TYPES.index });
    for (const image of images) this.push(repo, image.digest, image);
  }

  on(path: string, hook: FakeRegistryHook): void {
    this.hooks.set(path, hook);
  }

  count(path: string): number {
    return this.hits.get(path) ?? 0;
  }

  close(): void {
    for (const s of [this.server, this.storage]) {
      s.closeAllConnections();
      s.close();
    }
  }

  private handle(req: IncomingMessage, res: ServerResponse): void {
    const url = new URL(req.url ?? '/', 'http://x');
    const path = url.pathname;
    this.log.push({
      path,
      ...(req.headers.authorization ? { authorization: req.headers.authorization } : {}),
      ...(req.headers.accept ? { accept: req.headers.accept } : {}),
    });
    const hit = this.count(path) + 1;
    this.hits.set(path, hit);
    const hook = this.hooks.get(path);
    if (hook && hook(req, res, hit) !== false) return;
    if (path === '/token') return this.token(req, res, url);
    if (!path.startsWith('/v2/')) return sendJson(res, 404, {});
    const m = /^\/v2\/(.+)\/(manifests|blobs)\/([^/]+)$/.exec(path);
    if (!this.authorized(req, m?.[1])) {
      const challenge =
        this.auth === 'basic'
          ? 'Basic realm="fake registry"'
          : `Bearer realm="http://127.0.0.1:${this.port}/token",service="fake.registry",scope="repository:${m?.[1] ?? ''}:pull"`;
      return sendJson(res, 401, { errors: [{ code: 'UNAUTHORIZED', message: 'authentication required' }] }, { 'www-authenticate': challenge });
    }
    if (path === '/v2/') return sendJson(res, 200, {});
    if (!m) return sendJson(res, 404, { errors: [{ code: 'NOT_FOUND', message: 'no route' }] });
    const [, repo, kind, ref] = m as unknown as [string, string, string, string];
    if (kind === 'manifests') {
      const found = this.manifests.get(`${repo}@${ref}`);
      if (!found) return sendJson(res, 404, { errors: [{ code: 'MANIFEST_UNKNOWN', message: 'manifest unknown' }] });
      res.writeHead(200, { 'content-type': found.type, 'content-length': found.body.length, 'docker-content-digest': sha256Of(found.body) });
      return void res.end(found.body);
    }
    const data = this.blobs.get(ref);
    if (!data) return sendJson(res, 404, { errors: [{ code: 'BLOB_UNKNOWN', message: 'blob unknown to registry' }] });
    if (this.redirectBlobs) {
      res.writeHead(307, { location: `http://127.0.0.2:${this.storagePort}/storage/${ref}?signature=abc` });
      return void res.end();
    }
    res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': data.length });
    res.end(data);
  }

  private authorized(req: IncomingMessage, repo: string | undefined): boolean {
    const header = req.headers.authorization ?? '';
    if (this.auth === 'none') return true;
    if (this.auth === 'basic') return header === `Basic ${Buffer.from('alice:s3cret').toString('base64')}`;
    const scope = this.tokens.get(header.replace(/^Bearer /, ''));
    return scope !== undefined && (repo === undefined || scope === `repository:${repo}:pull`);
  }

  private token(req: IncomingMessage, res: ServerResponse, url: URL): void {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const form = req.method === 'POST' ? new URLSearchParams(Buffer.concat(chunks).toString()) : undefined;
      const params = form ?? url.searchParams;
      const scope = params.get('scope') ?? undefined;
      const service = params.get('service') ?? undefined;
      const authorization = req.headers.authorization;
      this.tokenLog.push({
        method: req.method ?? '',
        ...(scope ? { scope } : {}),
        ...(service ? { service } : {}),
        ...(authorization ? { authorization } : {}),
        ...(form ? { form } : {}),
      });
      let ok: boolean;
      if (form) ok = form.get('grant_type') === 'refresh_token' && form.get('refresh_token') === 'idtok';
      else if (authorization) ok = authorization === `Basic ${Buffer.from('alice:s3cret').toString('base64')}`;
      else ok = this.anonymousTokens;
      if (!ok) return sendJson(res, 401, { errors: [{ code: 'UNAUTHORIZED', message: 'bad credentials' }] });
      const token = `tok-${this.tokens.size + 1}-${randomBytes(4).toString('hex')}`;
      this.tokens.set(token, scope ?? '');
      sendJson(res, 200, { [this.tokenField]: token, ...(this.tokenTtl !== undefined ? { expires_in: this.tokenTtl } : {}) });
    });
  }

  private serveStorage(req: IncomingMessage, res: ServerResponse): void {
    const path = new URL(req.url ?? '/', 'http://x').pathname;
    this.storageLog.push({ path, ...(req.headers.authorization ? { authorization: req.headers.authorization } : {}) });
    if (this.storageHook && this.storageHook(req, res, this.storageLog.length) !== false) return;
    const data = this.blobs.get(path.replace('/storage/', ''));
    if (!data) return sendJson(res, 404, {});
    res.writeHead(200, { 'content-length': data.length });
    res.end(data);
  }
}
