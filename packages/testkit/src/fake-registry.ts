import { createHash, randomBytes } from 'node:crypto';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { MEDIA_TYPES } from './oci-layout.js';

/*
 * An in-memory registry v2 for the registry client's unit tests: images of
 * random bytes it never unpacks, switchable authentication, the push half
 * of the protocol (uploads, mounts, manifest PUTs), and hooks for
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
  /** Push requests (HEAD, POST, PATCH, PUT, DELETE and GETs of uploads), with their query and the headers that matter. */
  readonly pushLog: { method: string; path: string; query: string; contentRange?: string; contentLength?: string; contentType?: string }[] = [];
  /** Which blobs each repository holds (what HEAD and mounts answer by; GETs of blobs look in `blobs`, whatever the repository). */
  readonly repoBlobs = new Map<string, Set<string>>();
  /** Upload sessions by id (`u1`, `u2`, ...): what arrived so far, and the state token the latest Location carries. */
  readonly uploads = new Map<string, { repo: string; data: Buffer[]; size: number; state: number }>();
  /** Sent as OCI-Chunk-Min-Length when an upload starts. */
  chunkMinLength: number | undefined;
  /** False: mount requests get an upload session (202) instead. */
  mounts = true;
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
    for (const b of [image.config, ...image.layers]) this.addBlob(repo, b.digest, b.data);
  }

  /** Stores a blob and links it into a repository. */
  addBlob(repo: string, digest: string, data: Buffer): void {
    this.blobs.set(digest, data);
    let set = this.repoBlobs.get(repo);
    if (!set) this.repoBlobs.set(repo, (set = new Set()));
    set.add(digest);
  }

  /** True when `repo` holds the blob. */
  hasBlob(repo: string, digest: string): boolean {
    return this.repoBlobs.get(repo)?.has(digest) === true;
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
    const upload = /^\/v2\/(.+)\/blobs\/uploads\/([^/]*)$/.exec(path);
    const m = upload ? null : /^\/v2\/(.+)\/(manifests|blobs)\/([^/]+)$/.exec(path);
    const method = req.method ?? 'GET';
    const pushing = upload !== null || (method !== 'GET' && method !== 'HEAD');
    if (upload || method !== 'GET') {
      const h = req.headers;
      this.pushLog.push({
        method,
        path,
        query: url.search,
        ...(h['content-range'] ? { contentRange: h['content-range'] } : {}),
        ...(h['content-length'] ? { contentLength: h['content-length'] } : {}),
        ...(h['content-type'] ? { contentType: h['content-type'] } : {}),
      });
    }
    const hit = this.count(path) + 1;
    this.hits.set(path, hit);
    const hook = this.hooks.get(path);
    if (hook && hook(req, res, hit) !== false) return;
    if (path === '/token') return this.token(req, res, url);
    if (!path.startsWith('/v2/')) return sendJson(res, 404, {});
    const repoOf = upload?.[1] ?? m?.[1];
    const mountFrom = upload && url.searchParams.get('mount') ? (url.searchParams.get('from') ?? undefined) : undefined;
    if (!this.authorized(req, repoOf, pushing ? 'push' : 'pull') || (mountFrom !== undefined && !this.authorized(req, mountFrom, 'pull'))) {
      const challenge =
        this.auth === 'basic'
          ? 'Basic realm="fake registry"'
          : `Bearer realm="http://127.0.0.1:${this.port}/token",service="fake.registry",scope="repository:${repoOf ?? ''}:${pushing ? 'pull,push' : 'pull'}"`;
      req.resume();
      return sendJson(res, 401, { errors: [{ code: 'UNAUTHORIZED', message: 'authentication required' }] }, { 'www-authenticate': challenge });
    }
    if (path === '/v2/') return sendJson(res, 200, {});
    if (upload) return void this.handleUpload(req, res, url, upload[1]!, upload[2]!);
    if (!m) return sendJson(res, 404, { errors: [{ code: 'NOT_FOUND', message: 'no route' }] });
    const [, repo, kind, ref] = m as unknown as [string, string, string, string];
    if (kind === 'manifests' && method === 'PUT') return void this.putManifest(req, res, repo, ref);
    if (kind === 'blobs' && method === 'HEAD') {
      const data = this.hasBlob(repo, ref) ? this.blobs.get(ref) : undefined;
      if (!data) return sendJson(res, 404, { errors: [{ code: 'BLOB_UNKNOWN', message: 'blob unknown to registry' }] });
      res.writeHead(200, { 'content-length': data.length, 'docker-content-digest': ref });
      return void res.end();
    }
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

  private authorized(req: IncomingMessage, repo: string | undefined, action: 'pull' | 'push' = 'pull'): boolean {
    const header = req.headers.authorization ?? '';
    if (this.auth === 'none') return true;
    if (this.auth === 'basic') return header === `Basic ${Buffer.from('alice:s3cret').toString('base64')}`;
    const token = header.replace(/^Bearer /, '');
    const scope = this.tokens.get(token);
    if (scope === undefined) return false;
    if (repo === undefined) return true;
    // A token grants what its scopes name (anonymous tokens never grant push).
    return scope.split(' ').some((s) => {
      const last = s.lastIndexOf(':');
      return (
        s.slice(0, last) === `repository:${repo}` &&
        s
          .slice(last + 1)
          .split(',')
          .includes(action) &&
        (action === 'pull' || this.tokenAccounts.get(token) === true)
      );
    });
  }

  /** Tokens issued with credentials (they may push). */
  private readonly tokenAccounts = new Map<string, boolean>();
  private nextUpload = 1;

  /** The Location of an upload session: its id and a state token that changes with every request, as distribution's `_state` does. */
  private uploadLocation(id: string): string {
    const u = this.uploads.get(id)!;
    return `/v2/${u.repo}/blobs/uploads/${id}?_state=${u.state}`;
  }

  private newUpload(res: ServerResponse, repo: string): void {
    const id = `u${this.nextUpload++}`;
    this.uploads.set(id, { repo, data: [], size: 0, state: 1 });
    res.writeHead(202, {
      location: this.uploadLocation(id),
      range: '0-0',
      'docker-upload-uuid': id,
      'content-length': 0,
      ...(this.chunkMinLength !== undefined ? { 'oci-chunk-min-length': String(this.chunkMinLength) } : {}),
    });
    res.end();
  }

  /** The upload endpoints: POST (start or mount), PATCH (a chunk), PUT (close), GET (status), DELETE (cancel). */
  private handleUpload(req: IncomingMessage, res: ServerResponse, url: URL, repo: string, id: string): void {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const body = Buffer.concat(chunks);
      const method = req.method ?? 'GET';
      if (id === '') {
        if (method !== 'POST') return sendJson(res, 405, {});
        const mount = url.searchParams.get('mount');
        const from = url.searchParams.get('from');
        if (mount && from && this.mounts && this.hasBlob(from, mount)) {
          this.addBlob(repo, mount, this.blobs.get(mount)!);
          res.writeHead(201, { location: `/v2/${repo}/blobs/${mount}`, 'docker-content-digest': mount, 'content-length': 0 });
          return void res.end();
        }
        return this.newUpload(res, repo);
      }
      const u = this.uploads.get(id);
      if (!u || u.repo !== repo) return sendJson(res, 404, { errors: [{ code: 'BLOB_UPLOAD_UNKNOWN', message: 'blob upload unknown to registry' }] });
      if (method === 'DELETE') {
        this.uploads.delete(id);
        res.writeHead(204);
        return void res.end();
      }
      if (method === 'GET') {
        res.writeHead(204, { location: this.uploadLocation(id), range: `0-${Math.max(0, u.size - 1)}`, 'docker-upload-uuid': id });
        return void res.end();
      }
      // Every request must come to the Location the one before answered.
      if (url.searchParams.get('_state') !== String(u.state)) {
        return sendJson(res, 400, { errors: [{ code: 'BLOB_UPLOAD_INVALID', message: `stale upload state ${url.searchParams.get('_state')}` }] });
      }
      const range = req.headers['content-range'];
      if (range !== undefined || method === 'PATCH') {
        const r = /^(\d+)-(\d+)$/.exec(range ?? '');
        if (range !== undefined && (!r || Number(r[1]) !== u.size || Number(r[2]) - Number(r[1]) + 1 !== body.length)) {
          res.writeHead(416, { location: this.uploadLocation(id), range: `0-${Math.max(0, u.size - 1)}` });
          return void res.end();
        }
      }
      u.data.push(body);
      u.size += body.length;
      u.state++;
      if (method === 'PATCH') {
        res.writeHead(202, { location: this.uploadLocation(id), range: `0-${u.size - 1}`, 'docker-upload-uuid': id, 'content-length': 0 });
        return void res.end();
      }
      if (method !== 'PUT') return sendJson(res, 405, {});
      const digest = url.searchParams.get('digest') ?? '';
      const data = Buffer.concat(u.data);
      this.uploads.delete(id);
      if (sha256Of(data) !== digest)
        return sendJson(res, 400, { errors: [{ code: 'DIGEST_INVALID', message: 'provided digest did not match uploaded content' }] });
      this.addBlob(repo, digest, data);
      res.writeHead(201, { location: `/v2/${repo}/blobs/${digest}`, 'docker-content-digest': digest, 'content-length': 0 });
      res.end();
    });
  }

  /** PUT /v2/<repo>/manifests/<ref>: every blob it names must be in the repository, as distribution checks. */
  private putManifest(req: IncomingMessage, res: ServerResponse, repo: string, ref: string): void {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const body = Buffer.concat(chunks);
      const type = req.headers['content-type'] ?? '';
      let doc: { config?: { digest?: string }; layers?: { digest?: string }[] };
      try {
        doc = JSON.parse(body.toString()) as typeof doc;
      } catch {
        return sendJson(res, 400, { errors: [{ code: 'MANIFEST_INVALID', message: 'manifest invalid' }] });
      }
      const missing = [doc.config?.digest, ...(doc.layers ?? []).map((l) => l.digest)].find((d) => !d || !this.hasBlob(repo, d));
      if (missing !== undefined) return sendJson(res, 400, { errors: [{ code: 'MANIFEST_BLOB_UNKNOWN', message: `blob unknown to registry: ${missing}` }] });
      const digest = sha256Of(body);
      this.manifests.set(`${repo}@${ref}`, { body, type });
      this.manifests.set(`${repo}@${digest}`, { body, type });
      res.writeHead(201, { location: `/v2/${repo}/manifests/${digest}`, 'docker-content-digest': digest, 'content-length': 0 });
      res.end();
    });
  }

  private token(req: IncomingMessage, res: ServerResponse, url: URL): void {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const form = req.method === 'POST' ? new URLSearchParams(Buffer.concat(chunks).toString()) : undefined;
      const params = form ?? url.searchParams;
      const scope = params.getAll('scope').join(' ') || undefined;
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
      this.tokenAccounts.set(token, authorization !== undefined || form !== undefined);
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
