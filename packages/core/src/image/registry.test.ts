import { randomBytes } from 'node:crypto';
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer as createNetServer, type AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { setTimeout as delay } from 'node:timers/promises';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { buildFakeImage as buildImage, buildFakeIndex as buildIndex, FakeRegistry, sendJson, sha256Of as sha } from '@roost/testkit';
import { CredentialStore } from './auth.js';
import { BlobStore } from './blobs.js';
import { MediaType, type PullProgress } from './manifest.js';
import { pullImage } from './pull.js';
import { RegistryClient, RegistrySource, type RegistryClientOptions, type RetryEvent } from './registry.js';

// The fake registry and its random images are in @roost/testkit (fake-registry.ts).
// parseWwwAuthenticate is tested beside its module, in www-authenticate.test.ts.

// ---- helpers --------------------------------------------------------------------

let fake: FakeRegistry;
let dir: string;
beforeEach(async () => {
  fake = await FakeRegistry.start();
  dir = mkdtempSync(join(tmpdir(), 'roost-registry-'));
});
afterEach(() => {
  fake.close();
  rmSync(dir, { recursive: true, force: true });
  vi.restoreAllMocks();
});

const client = (options: RegistryClientOptions = {}) => new RegistryClient({ retryBaseMs: 5, ...options });
const alice = async () => ({ username: 'alice', password: 's3cret' });

async function collect(stream: AsyncIterable<Uint8Array>): Promise<Buffer> {
  const chunks: Uint8Array[] = [];
  for await (const c of stream) chunks.push(c);
  return Buffer.concat(chunks);
}

/** Every file in the blob store is a verified blob: no temp files, nothing whose content differs from its name. */
function expectStoreClean(store: BlobStore): string[] {
  const names = readdirSync(join(store.dir, 'sha256'));
  for (const name of names) {
    expect(name).toMatch(/^[0-9a-f]{64}$/);
    expect(sha(readFileSync(join(store.dir, 'sha256', name)))).toBe(`sha256:${name}`);
  }
  return names.map((n) => `sha256:${n}`);
}

async function freePort(): Promise<number> {
  const s = createNetServer();
  await new Promise<void>((resolve) => s.listen(0, '127.0.0.1', resolve));
  const port = (s.address() as AddressInfo).port;
  await new Promise((r) => s.close(r));
  return port;
}

// ---- tests ----------------------------------------------------------------------

describe('RegistryClient: addresses', () => {
  it('uses https, and plain http for loopback and insecure registries', () => {
    const c = new RegistryClient({ insecureRegistries: ['registry.lan:5000', 'http://build.lan'] });
    expect(c.baseUrl('registry.example:5000')).toBe('https://registry.example:5000');
    expect(c.baseUrl('docker.io')).toBe('https://registry-1.docker.io');
    expect(c.baseUrl('localhost:5000')).toBe('http://localhost:5000');
    expect(c.baseUrl('127.0.0.3:5000')).toBe('http://127.0.0.3:5000');
    expect(c.baseUrl('[::1]:5000')).toBe('http://[::1]:5000');
    expect(c.baseUrl('registry.lan:5000')).toBe('http://registry.lan:5000');
    expect(c.baseUrl('registry.lan:5001')).toBe('https://registry.lan:5001');
    expect(c.baseUrl('build.lan:443')).toBe('http://build.lan:443');
    expect(c.baseUrl('128.0.0.1')).toBe('https://128.0.0.1');
    expect(() => c.baseUrl('evil.example/x?')).toThrow(expect.objectContaining({ code: 'INVALID_ARGUMENT' }));
    expect(() => c.baseUrl('localhost:99999')).toThrow(expect.objectContaining({ code: 'INVALID_ARGUMENT', message: expect.stringMatching(/out of range/) }));
  });

  it('reads insecure registries from ROOST_INSECURE_REGISTRIES', () => {
    vi.stubEnv('ROOST_INSECURE_REGISTRIES', ' a.lan:5000 ,b.lan');
    try {
      const c = new RegistryClient();
      expect(c.baseUrl('a.lan:5000')).toBe('http://a.lan:5000');
      expect(c.baseUrl('b.lan:1')).toBe('http://b.lan:1');
      expect(c.baseUrl('c.lan')).toBe('https://c.lan');
    } finally {
      vi.unstubAllEnvs();
    }
  });

  it('refuses names that could leave the API path', async () => {
    const c = client();
    await expect(c.getManifest(fake.registry, '../x', 'latest')).rejects.toMatchObject({ code: 'INVALID_ARGUMENT' });
    await expect(c.getManifest(fake.registry, 'team/app', '../../token')).rejects.toMatchObject({ code: 'INVALID_ARGUMENT' });
    await expect(c.openBlob(fake.registry, 'team/app', 'sha256:../../x')).rejects.toMatchObject({ code: 'INVALID_ARGUMENT' });
    expect(fake.log).toEqual([]);
  });
});

describe('RegistryClient: manifests and blobs', () => {
  it('fetches a manifest by tag and by digest, asking for every manifest type', async () => {
    const image = buildImage();
    fake.push('team/app', 'v1', image);
    const c = client();
    const byTag = await c.getManifest(fake.registry, 'team/app', 'v1');
    expect(byTag.bytes.equals(image.manifest)).toBe(true);
    expect(byTag).toMatchObject({ mediaType: MediaType.ociManifest, digest: image.digest });
    const byDigest = await c.getManifest(fake.registry, 'team/app', image.digest);
    expect(byDigest.bytes.equals(image.manifest)).toBe(true);
    for (const t of [MediaType.ociIndex, MediaType.ociManifest, MediaType.dockerManifestList, MediaType.dockerManifest])
      expect(fake.log[0]?.accept).toContain(t);
  });

  it('refuses a manifest whose bytes do not match the digest asked for', async () => {
    const image = buildImage();
    fake.push('team/app', 'v1', image);
    fake.manifests.set(`team/app@${image.digest}`, {
      body: Buffer.from(image.manifest.toString().replace('"schemaVersion":2', '"schemaVersion": 2')),
      type: image.mediaType,
    });
    await expect(client().getManifest(fake.registry, 'team/app', image.digest)).rejects.toMatchObject({
      code: 'IMAGE',
      message: expect.stringMatching(/corrupt or tampered/),
    });
  });

  it('gives NOT_FOUND naming the image for a missing manifest', async () => {
    await expect(client().getManifest(fake.registry, 'team/app', 'nope')).rejects.toMatchObject({
      code: 'NOT_FOUND',
      message: `image ${fake.registry}/team/app:nope not found`,
    });
  });

  it('cuts off a manifest over the size limit whatever its Content-Length says', async () => {
    let sent = 0;
    fake.on('/v2/team/app/manifests/big', (_req, res) => {
      res.writeHead(200, { 'content-type': MediaType.ociManifest, 'content-length': 100 * 2 ** 20 });
      const chunk = Buffer.alloc(64 * 1024, 0x20);
      const pump = () => {
        while (sent < 100 * 2 ** 20 && res.write(chunk)) sent += chunk.length;
        if (sent < 100 * 2 ** 20) res.once('drain', pump);
      };
      pump();
    });
    await expect(client().getManifest(fake.registry, 'team/app', 'big')).rejects.toMatchObject({
      code: 'IMAGE',
      message: expect.stringMatching(/larger than 4194304 bytes; refused/),
    });
    expect(sent).toBeLessThan(20 * 2 ** 20);
  });

  it('streams a blob, and names the digest and repository when it is missing', async () => {
    const image = buildImage();
    fake.push('team/app', 'v1', image);
    const c = client();
    const layer = image.layers[0]!;
    expect((await collect(await c.openBlob(fake.registry, 'team/app', layer.digest))).equals(layer.data)).toBe(true);
    const missing = sha(Buffer.from('missing'));
    await expect(c.openBlob(fake.registry, 'team/app', missing)).rejects.toMatchObject({
      code: 'IMAGE',
      message: `blob ${missing} not found in repo ${fake.registry}/team/app`,
    });
  });

  it("reports the registry's own explanation of a refusal", async () => {
    fake.on('/v2/team/app/manifests/v1', (_req, res) =>
      sendJson(res, 403, { errors: [{ code: 'DENIED', message: 'requested access to the resource is denied' }] }),
    );
    await expect(client().getManifest(fake.registry, 'team/app', 'v1')).rejects.toMatchObject({
      code: 'IMAGE',
      message: expect.stringMatching(
        /^access denied: .* answered 403 Forbidden to the manifest of .*team\/app:v1: DENIED: requested access to the resource is denied$/,
      ),
    });
  });
});

describe('RegistryClient: authentication', () => {
  it('answers a Basic challenge with the credentials, looked up once', async () => {
    fake.auth = 'basic';
    const image = buildImage();
    fake.push('team/app', 'v1', image);
    const lookups: string[] = [];
    const c = client({ credentials: async (r) => (lookups.push(r), { username: 'alice', password: 's3cret' }) });
    await c.getManifest(fake.registry, 'team/app', 'v1');
    await collect(await c.openBlob(fake.registry, 'team/app', image.layers[0]!.digest));
    expect(lookups).toEqual([fake.registry]);
    // Only the first request went without credentials: the challenge is remembered.
    expect(fake.log.map((l) => l.authorization === undefined)).toEqual([true, false, false]);
  });

  it('asks for a login when Basic is demanded and there are no credentials, and says when they are wrong', async () => {
    fake.auth = 'basic';
    fake.push('team/app', 'v1', buildImage());
    await expect(client().getManifest(fake.registry, 'team/app', 'v1')).rejects.toMatchObject({
      code: 'IMAGE',
      message: `authentication required: run roost login ${fake.registry}`,
    });
    await expect(
      client({ credentials: async () => ({ username: 'alice', password: 'nope' }) }).getManifest(fake.registry, 'team/app', 'v1'),
    ).rejects.toMatchObject({
      code: 'IMAGE',
      message: expect.stringMatching(/refused access to .*team\/app with the saved login/),
    });
  });

  it('gets an anonymous bearer token for the pull scope and reuses it', async () => {
    fake.auth = 'bearer';
    const image = buildImage();
    fake.push('team/app', 'v1', image);
    const c = client();
    await c.getManifest(fake.registry, 'team/app', 'v1');
    for (const l of image.layers) await collect(await c.openBlob(fake.registry, 'team/app', l.digest));
    expect(fake.tokenLog).toEqual([{ method: 'GET', scope: 'repository:team/app:pull', service: 'fake.registry' }]);
    expect(fake.log.filter((l) => l.path !== '/token').map((l) => l.authorization?.startsWith('Bearer ') === true)).toEqual([false, true, true, true]);
  });

  it('sends credentials to the token service, and takes access_token too', async () => {
    fake.auth = 'bearer';
    fake.anonymousTokens = false;
    fake.tokenField = 'access_token';
    fake.push('team/app', 'v1', buildImage());
    await client({ credentials: alice }).getManifest(fake.registry, 'team/app', 'v1');
    expect(fake.tokenLog[0]?.authorization).toBe(`Basic ${Buffer.from('alice:s3cret').toString('base64')}`);
  });

  it('exchanges an identity token by OAuth2 refresh', async () => {
    fake.auth = 'bearer';
    fake.anonymousTokens = false;
    fake.push('team/app', 'v1', buildImage());
    await client({ credentials: async () => ({ identityToken: 'idtok' }) }).getManifest(fake.registry, 'team/app', 'v1');
    expect(fake.tokenLog[0]?.method).toBe('POST');
    expect(Object.fromEntries(fake.tokenLog[0]!.form!)).toMatchObject({
      grant_type: 'refresh_token',
      refresh_token: 'idtok',
      service: 'fake.registry',
      scope: 'repository:team/app:pull',
    });
  });

  it('fails clearly when the token service refuses', async () => {
    fake.auth = 'bearer';
    fake.anonymousTokens = false;
    fake.push('team/app', 'v1', buildImage());
    await expect(
      client({ credentials: async () => ({ username: 'alice', password: 'wrong' }) }).getManifest(fake.registry, 'team/app', 'v1'),
    ).rejects.toMatchObject({
      code: 'IMAGE',
      message: expect.stringMatching(
        new RegExp(`^authentication failed for ${fake.registry}: http://127.0.0.1:\\d+ answered 401: UNAUTHORIZED: bad credentials`),
      ),
    });
    await expect(client().getManifest(fake.registry, 'team/app', 'v1')).rejects.toMatchObject({
      code: 'IMAGE',
      message: `authentication required: run roost login ${fake.registry}`,
    });
  });

  it('gets a new token when the cached one expires or is refused', async () => {
    fake.auth = 'bearer';
    fake.tokenTtl = 300;
    const image = buildImage();
    fake.push('team/app', 'v1', image);
    const c = client();
    await c.getManifest(fake.registry, 'team/app', 'v1');
    await c.getManifest(fake.registry, 'team/app', 'v1');
    expect(fake.tokenLog).toHaveLength(1);
    fake.tokens.clear(); // the registry forgets its tokens: the cached one is refused
    await c.getManifest(fake.registry, 'team/app', 'v1');
    expect(fake.tokenLog).toHaveLength(2);
    const now = Date.now();
    vi.spyOn(Date, 'now').mockReturnValue(now + 301_000);
    await c.getManifest(fake.registry, 'team/app', 'v1');
    expect(fake.tokenLog).toHaveLength(3);
  });

  it('asks concurrent requests for one token', async () => {
    fake.auth = 'bearer';
    const image = buildImage({ layers: [randomBytes(10), randomBytes(20), randomBytes(30)] });
    fake.push('team/app', 'v1', image);
    const c = client();
    await c.getManifest(fake.registry, 'team/app', 'v1');
    fake.tokens.clear();
    fake.tokenLog.length = 0;
    await Promise.all(image.layers.map(async (l) => collect(await c.openBlob(fake.registry, 'team/app', l.digest))));
    expect(fake.tokenLog).toHaveLength(1);
  });

  it('sends no credentials to the storage a blob is redirected to', async () => {
    fake.auth = 'basic';
    fake.redirectBlobs = true;
    const image = buildImage();
    fake.push('team/app', 'v1', image);
    const layer = image.layers[0]!;
    const data = await collect(await client({ credentials: alice }).openBlob(fake.registry, 'team/app', layer.digest));
    expect(data.equals(layer.data)).toBe(true);
    expect(fake.log.at(-1)?.authorization).toMatch(/^Basic /);
    expect(fake.storageLog).toEqual([{ path: `/storage/${layer.digest}` }]);
  });

  it("takes a 401 from blob storage as the storage's refusal, not a challenge to answer", async () => {
    fake.auth = 'basic';
    fake.redirectBlobs = true;
    const image = buildImage();
    fake.push('team/app', 'v1', image);
    fake.storageHook = (_req, res) => sendJson(res, 401, {}, { 'www-authenticate': 'Basic realm="storage"' });
    const layer = image.layers[0]!;
    await expect(client({ credentials: alice }).openBlob(fake.registry, 'team/app', layer.digest)).rejects.toMatchObject({
      code: 'IMAGE',
      message: `127.0.0.2:${fake.storagePort} answered 401 Unauthorized to blob ${layer.digest} of ${fake.registry}/team/app`,
    });
    expect(fake.storageLog).toHaveLength(1);
    expect(fake.storageLog[0]?.authorization).toBeUndefined();
  });

  it('looks credentials up again after the registry asked for some that were missing', async () => {
    fake.auth = 'basic';
    fake.push('team/app', 'v1', buildImage());
    let saved: { username: string; password: string } | undefined = undefined;
    const lookup = vi.fn(async () => saved);
    const c = client({ credentials: lookup });
    await expect(c.getManifest(fake.registry, 'team/app', 'v1')).rejects.toMatchObject({ message: expect.stringMatching(/authentication required/) });
    saved = { username: 'alice', password: 's3cret' }; // roost login, in a long-running process
    await c.getManifest(fake.registry, 'team/app', 'v1');
    await c.getManifest(fake.registry, 'team/app', 'v1');
    expect(lookup).toHaveBeenCalledTimes(2);
  });

  it('keeps the credentials on a redirect within the registry', async () => {
    fake.auth = 'bearer';
    const image = buildImage();
    fake.push('team/app', 'v1', image);
    fake.on('/v2/team/app/manifests/moved', (_req, res) => {
      res.writeHead(301, { location: '/v2/team/app/manifests/v1' });
      res.end();
    });
    // The challenge is learned first, so the redirect carries a token.
    const c = client();
    await c.getManifest(fake.registry, 'team/app', 'v1');
    const got = await c.getManifest(fake.registry, 'team/app', 'moved');
    expect(got.digest).toBe(image.digest);
    expect(fake.log.at(-1)).toMatchObject({ path: '/v2/team/app/manifests/v1', authorization: expect.stringMatching(/^Bearer /) });
  });

  it('checks a login against the registry without using stored credentials', async () => {
    fake.auth = 'bearer';
    fake.anonymousTokens = false;
    const lookup = vi.fn(async () => undefined);
    const c = client({ credentials: lookup });
    await c.checkLogin(fake.registry, { username: 'alice', password: 's3cret' });
    expect(fake.tokenLog.at(-1)).toMatchObject({ service: 'fake.registry' });
    expect(fake.tokenLog.at(-1)?.scope).toBeUndefined();
    await expect(c.checkLogin(fake.registry, { username: 'alice', password: 'wrong' })).rejects.toMatchObject({
      code: 'IMAGE',
      message: expect.stringMatching(new RegExp(`^login to ${fake.registry} failed: authentication failed`)),
    });
    fake.auth = 'basic';
    await c.checkLogin(fake.registry, { username: 'alice', password: 's3cret' });
    await expect(c.checkLogin(fake.registry, { username: 'bob', password: 'x' })).rejects.toMatchObject({
      code: 'IMAGE',
      message: `login to ${fake.registry} failed: ${fake.registry} refused the credentials`,
    });
    expect(lookup).not.toHaveBeenCalled();
  });

  it('reads credentials from a Docker config through a CredentialStore', async () => {
    fake.auth = 'basic';
    fake.push('team/app', 'v1', buildImage());
    writeFileSync(
      join(dir, 'config.json'),
      JSON.stringify({ auths: { [`http://${fake.registry}/v2/`]: { auth: Buffer.from('alice:s3cret').toString('base64') } } }),
    );
    const store = new CredentialStore({ roostAuthFile: join(dir, 'auth.json'), dockerConfigDir: dir });
    const got = await client({ credentials: store }).getManifest(fake.registry, 'team/app', 'v1');
    expect(got.mediaType).toBe(MediaType.ociManifest);
  });
});

describe('RegistryClient: failures', () => {
  it('retries 503 with backoff and then succeeds', async () => {
    const image = buildImage();
    fake.push('team/app', 'v1', image);
    fake.on('/v2/team/app/manifests/v1', (_req, res, hit) => {
      if (hit > 2) return false;
      sendJson(res, 503, { errors: [{ code: 'UNAVAILABLE', message: 'try again' }] });
    });
    const retries: RetryEvent[] = [];
    const got = await client({ onRetry: (e) => retries.push(e) }).getManifest(fake.registry, 'team/app', 'v1');
    expect(got.digest).toBe(image.digest);
    expect(fake.count('/v2/team/app/manifests/v1')).toBe(3);
    expect(retries.map((r) => r.attempt)).toEqual([1, 2]);
    expect(retries[0]).toMatchObject({ host: fake.registry, reason: expect.stringMatching(/answered 503 Service Unavailable .*: UNAVAILABLE: try again/) });
  });

  it('honors Retry-After on 429, and gives up at once when it asks for too long', async () => {
    fake.push('team/app', 'v1', buildImage());
    fake.on('/v2/team/app/manifests/v1', (_req, res, hit) => {
      if (hit > 1) return false;
      sendJson(res, 429, {}, { 'retry-after': '0' });
    });
    const retries: RetryEvent[] = [];
    await client({ onRetry: (e) => retries.push(e) }).getManifest(fake.registry, 'team/app', 'v1');
    expect(retries).toMatchObject([{ delayMs: 0 }]);
    fake.on('/v2/team/app/manifests/v2', (_req, res) => sendJson(res, 429, {}, { 'retry-after': '3600' }));
    await expect(client().getManifest(fake.registry, 'team/app', 'v2')).rejects.toMatchObject({
      code: 'IMAGE',
      message: expect.stringMatching(/429 Too Many Requests.*asks to wait 3600 s/),
    });
    expect(fake.count('/v2/team/app/manifests/v2')).toBe(1);
  });

  it('gives up on 500 after the configured retries, and never retries a 4xx', async () => {
    fake.on('/v2/team/app/manifests/v1', (_req, res) => sendJson(res, 500, {}));
    await expect(client({ retries: 2 }).getManifest(fake.registry, 'team/app', 'v1')).rejects.toMatchObject({
      code: 'IMAGE',
      message: expect.stringMatching(/answered 500 Internal Server Error to the manifest of .*team\/app:v1 \(gave up after 2 retries\)$/),
      details: expect.objectContaining({ retryable: false }),
    });
    expect(fake.count('/v2/team/app/manifests/v1')).toBe(3);
    fake.on('/v2/team/app/manifests/v2', (_req, res) => sendJson(res, 400, {}));
    await expect(client().getManifest(fake.registry, 'team/app', 'v2')).rejects.toMatchObject({ code: 'IMAGE' });
    expect(fake.count('/v2/team/app/manifests/v2')).toBe(1);
  });

  it('gives NETWORK naming the host when nothing listens, after retrying', async () => {
    const port = await freePort();
    const retries: RetryEvent[] = [];
    await expect(client({ retries: 1, onRetry: (e) => retries.push(e) }).getManifest(`127.0.0.1:${port}`, 'team/app', 'v1')).rejects.toMatchObject({
      code: 'NETWORK',
      message: `cannot reach 127.0.0.1:${port}: ECONNREFUSED (gave up after 1 retries)`,
    });
    expect(retries).toHaveLength(1);
  });

  it("names fetch's own refusals (ports it will not use)", async () => {
    await expect(client().getManifest('127.0.0.1:6000', 'team/app', 'v1')).rejects.toMatchObject({
      code: 'NETWORK',
      message: 'cannot reach 127.0.0.1:6000: bad port',
    });
  });

  it('retries a connection closed before the answer', async () => {
    const image = buildImage();
    fake.push('team/app', 'v1', image);
    fake.on('/v2/team/app/manifests/v1', (req, _res, hit) => {
      if (hit > 1) return false;
      req.socket.destroy();
    });
    expect((await client().getManifest(fake.registry, 'team/app', 'v1')).digest).toBe(image.digest);
    expect(fake.count('/v2/team/app/manifests/v1')).toBe(2);
  });

  it('fetches a manifest again when its connection drops mid-body', async () => {
    const image = buildImage();
    fake.push('team/app', 'v1', image);
    fake.on('/v2/team/app/manifests/v1', (req, res, hit) => {
      if (hit > 1) return false;
      res.writeHead(200, { 'content-type': image.mediaType, 'content-length': image.manifest.length });
      res.write(image.manifest.subarray(0, 10), () => req.socket.destroy());
    });
    const retries: RetryEvent[] = [];
    expect((await client({ onRetry: (e) => retries.push(e) }).getManifest(fake.registry, 'team/app', 'v1')).digest).toBe(image.digest);
    expect(retries).toMatchObject([{ reason: expect.stringMatching(/dropped while receiving the manifest/) }]);
  });

  it('times out a registry that never answers', async () => {
    fake.on('/v2/team/app/manifests/v1', () => {});
    const started = Date.now();
    await expect(client({ requestTimeoutMs: 150 }).getManifest(fake.registry, 'team/app', 'v1')).rejects.toMatchObject({
      code: 'IMAGE',
      message: `${fake.registry} did not answer the manifest of ${fake.registry}/team/app:v1 within 0.15 s`,
    });
    expect(Date.now() - started).toBeLessThan(1000);
  });

  it('ends a blob that stops arriving with a retryable error', async () => {
    const image = buildImage();
    fake.push('team/app', 'v1', image);
    const layer = image.layers[0]!;
    fake.on(`/v2/team/app/blobs/${layer.digest}`, (_req, res) => {
      res.writeHead(200, { 'content-length': layer.size });
      res.write(layer.data.subarray(0, 1000));
    });
    const stream = await client({ idleTimeoutMs: 150 }).openBlob(fake.registry, 'team/app', layer.digest);
    await expect(collect(stream)).rejects.toMatchObject({
      code: 'IMAGE',
      message: expect.stringMatching(/stopped sending blob .* \(nothing for 0.15 s\)/),
      details: { retryable: true },
    });
  });

  it('ends a blob whose connection drops with a retryable error', async () => {
    const image = buildImage();
    fake.push('team/app', 'v1', image);
    const layer = image.layers[0]!;
    fake.on(`/v2/team/app/blobs/${layer.digest}`, (req, res) => {
      res.writeHead(200, { 'content-length': layer.size });
      res.write(layer.data.subarray(0, 1000), () => req.socket.destroy());
    });
    const stream = await client().openBlob(fake.registry, 'team/app', layer.digest);
    await expect(collect(stream)).rejects.toMatchObject({
      code: 'IMAGE',
      message: expect.stringMatching(/connection to .* dropped while receiving blob/),
      details: { retryable: true },
    });
  });

  it('ends a stream aborted after its last chunk was read (undici leaves that next read pending)', async () => {
    const image = buildImage({ layers: [randomBytes(30_000)] });
    fake.push('team/app', 'v1', image);
    const layer = image.layers[0]!;
    const ac = new AbortController();
    const it = (await client().openBlob(fake.registry, 'team/app', layer.digest, ac.signal))[Symbol.asyncIterator]();
    expect((await it.next()).value).toHaveLength(layer.size);
    ac.abort();
    const settled = await Promise.race([
      it.next().then(
        () => 'read',
        (e: { code?: string }) => e.code,
      ),
      delay(1000).then(() => 'hung'),
    ]);
    expect(settled).toBe('ABORTED');
  });

  it('stops at once when the caller aborts, with ABORTED or TIMEOUT', async () => {
    const image = buildImage();
    fake.push('team/app', 'v1', image);
    const layer = image.layers[0]!;
    fake.on(`/v2/team/app/blobs/${layer.digest}`, (_req, res) => {
      res.writeHead(200, { 'content-length': layer.size });
      res.write(layer.data.subarray(0, 1000));
    });
    const ac = new AbortController();
    const stream = await client().openBlob(fake.registry, 'team/app', layer.digest, ac.signal);
    setTimeout(() => ac.abort(), 50);
    await expect(collect(stream)).rejects.toMatchObject({ code: 'ABORTED' });
    fake.on('/v2/team/app/manifests/v1', () => {});
    await expect(client().getManifest(fake.registry, 'team/app', 'v1', AbortSignal.timeout(50))).rejects.toMatchObject({ code: 'TIMEOUT' });
  });
});

describe('pulling from a registry', () => {
  let store: BlobStore;
  beforeEach(() => {
    store = new BlobStore(join(dir, 'blobs'));
  });
  const source = (options: RegistryClientOptions = {}) => new RegistrySource(client(options), { registry: fake.registry, repository: 'team/app' });

  it('pulls every blob of an image, and fetches nothing again the second time', async () => {
    fake.auth = 'bearer';
    fake.redirectBlobs = true;
    const image = buildImage();
    fake.push('team/app', 'v1', image);
    const progress: PullProgress[] = [];
    const pulled = await pullImage(source(), 'v1', store, { onProgress: (p) => progress.push(p) });
    expect(pulled).toMatchObject({ manifestDigest: image.digest, manifestMediaType: MediaType.ociManifest, configDescriptor: { digest: image.config.digest } });
    expect(pulled.config.cmd).toEqual(['/bin/sh']);
    expect(pulled.indexDigest).toBeUndefined();
    expect(expectStoreClean(store).sort()).toEqual([image.digest, image.config.digest, ...image.layers.map((l) => l.digest)].sort());
    expect(
      progress
        .filter((p) => p.status === 'done')
        .map((p) => p.digest)
        .sort(),
    ).toEqual([image.config.digest, ...image.layers.map((l) => l.digest)].sort());
    expect(progress.every((p) => p.image === `${fake.registry}/team/app:v1`)).toBe(true);
    expect(fake.storageLog.every((l) => l.authorization === undefined)).toBe(true);

    const blobRequests = () => fake.log.filter((l) => l.path.includes('/blobs/')).length;
    const before = blobRequests();
    const again: PullProgress[] = [];
    await pullImage(source(), 'v1', store, { onProgress: (p) => again.push(p) });
    expect(blobRequests()).toBe(before);
    expect(again.filter((p) => p.status !== 'waiting').map((p) => p.status)).toEqual(['exists', 'exists', 'exists']);
  });

  it('picks linux/amd64 from an index', async () => {
    const arm = buildImage({ architecture: 'arm64' });
    const amd = buildImage();
    const index = buildIndex([
      { image: arm, platform: { os: 'linux', architecture: 'arm64' } },
      { image: amd, platform: { os: 'linux', architecture: 'amd64' } },
    ]);
    fake.pushIndex('team/app', 'multi', index, [arm, amd]);
    const pulled = await pullImage(source(), 'multi', store);
    expect(pulled).toMatchObject({ manifestDigest: amd.digest, indexDigest: index.digest });
    expect(expectStoreClean(store)).toEqual(expect.arrayContaining([index.digest, amd.digest, ...amd.layers.map((l) => l.digest)]));
    expect(fake.log.some((l) => l.path.endsWith(arm.layers[0]!.digest))).toBe(false);
  });

  it('says which platforms an index has when linux/amd64 is not among them', async () => {
    const arm = buildImage({ architecture: 'arm64' });
    const index = buildIndex([
      { image: arm, platform: { os: 'linux', architecture: 'arm64' } },
      { image: arm, platform: { os: 'linux', architecture: 'arm', variant: 'v7' } },
    ]);
    fake.pushIndex('team/app', 'multi', index, [arm]);
    await expect(pullImage(source(), 'multi', store)).rejects.toMatchObject({
      code: 'IMAGE',
      message: 'the image has no linux/amd64 variant (it has: linux/arm64, linux/arm/v7)',
    });
    expect(fake.log.filter((l) => l.path.includes('/blobs/'))).toEqual([]);
  });

  it('refuses a blob with the wrong digest after trying it twice, keeping only verified blobs', async () => {
    const image = buildImage();
    fake.push('team/app', 'v1', image);
    const bad = image.layers[0]!;
    const path = `/v2/team/app/blobs/${bad.digest}`;
    fake.on(path, (_req, res) => {
      res.writeHead(200, { 'content-length': bad.size });
      res.end(randomBytes(bad.size));
    });
    await expect(pullImage(source(), 'v1', store)).rejects.toMatchObject({
      code: 'IMAGE',
      message: expect.stringMatching(/team\/app: blob .* arrived with digest .*corrupt or tampered.*\(on two downloads\)$/),
    });
    expect(fake.count(path)).toBe(2);
    expect(expectStoreClean(store)).not.toContain(bad.digest);
    expect(expectStoreClean(store)).not.toContain(image.digest);
  });

  it('downloads a truncated blob again, and fails cleanly when it stays truncated', async () => {
    const image = buildImage();
    fake.push('team/app', 'v1', image);
    const layer = image.layers[0]!;
    const path = `/v2/team/app/blobs/${layer.digest}`;
    let truncate = 1;
    fake.on(path, (req, res, hit) => {
      if (hit > truncate) return false;
      res.writeHead(200, { 'content-length': layer.size });
      res.write(layer.data.subarray(0, layer.size / 2), () => req.socket.destroy());
    });
    const progress: PullProgress[] = [];
    await pullImage(source(), 'v1', store, { onProgress: (p) => progress.push(p) });
    expect(fake.count(path)).toBe(2);
    expect(progress.filter((p) => p.digest === layer.digest).map((p) => p.status)).toContain('retrying');
    expect(expectStoreClean(store)).toContain(layer.digest);

    const other = new BlobStore(join(dir, 'other'));
    truncate = Infinity;
    await expect(pullImage(source(), 'v1', other, { retries: 1 })).rejects.toMatchObject({
      code: 'IMAGE',
      message: expect.stringMatching(/dropped while receiving blob/),
    });
    expect(expectStoreClean(other)).not.toContain(layer.digest);
  });

  it('refuses a blob longer than the manifest says, without retrying', async () => {
    const image = buildImage({ sizes: { 0: 1000 } });
    fake.push('team/app', 'v1', image);
    const layer = image.layers[0]!;
    await expect(pullImage(source(), 'v1', store)).rejects.toMatchObject({
      code: 'IMAGE',
      message: expect.stringMatching(/larger than the 1000 bytes its descriptor declares/),
    });
    expect(fake.count(`/v2/team/app/blobs/${layer.digest}`)).toBe(1);
    expect(expectStoreClean(store)).not.toContain(layer.digest);
  });

  it('fails a pull from a registry that stops sending, and aborts the other downloads', async () => {
    const image = buildImage({ layers: [randomBytes(100_000), randomBytes(100_000), randomBytes(100_000)] });
    fake.push('team/app', 'v1', image);
    for (const layer of image.layers) {
      fake.on(`/v2/team/app/blobs/${layer.digest}`, (_req, res) => {
        res.writeHead(200, { 'content-length': layer.size });
        res.write(layer.data.subarray(0, 10));
      });
    }
    const progress: PullProgress[] = [];
    const started = Date.now();
    await expect(pullImage(source({ idleTimeoutMs: 150 }), 'v1', store, { retries: 1, onProgress: (p) => progress.push(p) })).rejects.toMatchObject({
      code: 'IMAGE',
      message: expect.stringMatching(/stopped sending blob/),
    });
    expect(Date.now() - started).toBeLessThan(1500);
    expect(expectStoreClean(store)).toEqual([image.config.digest]);
    for (const layer of image.layers) expect(progress.filter((p) => p.digest === layer.digest).at(-1)?.status).toBe('failed');
  });

  it('gives NOT_FOUND for a missing image and stores nothing', async () => {
    await expect(pullImage(source(), 'v9', store)).rejects.toMatchObject({ code: 'NOT_FOUND', message: `image ${fake.registry}/team/app:v9 not found` });
    expect(readdirSync(dir)).not.toContain('blobs');
  });
});
