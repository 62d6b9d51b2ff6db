import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { PushProgress } from '@roost/api';
import { buildFakeImage, FakeRegistry, sendJson, sha256Of, type FakeImage } from '@roost/testkit';
import { parseManifest } from './manifest.js';
import { mountSources, pushDestination, pushImage, type PushSource } from './push.js';
import { parseImageReference } from './reference.js';
import { RegistryClient, type RegistryClientOptions } from './registry.js';
import { rangeEnd, withDigest } from './registry-upload.js';

let fake: FakeRegistry;
let dir: string;
beforeEach(async () => {
  fake = await FakeRegistry.start();
  dir = mkdtempSync(join(tmpdir(), 'roost-push-'));
});
afterEach(() => {
  fake.close();
  rmSync(dir, { recursive: true, force: true });
});

const client = (options: RegistryClientOptions = {}) => new RegistryClient({ retryBaseMs: 5, ...options });
const alice = async () => ({ username: 'alice', password: 's3cret' });

/** A push source over an image's blobs written to files, as the store keeps them. */
function sourceOf(image: FakeImage, mountFrom: string[] = []): PushSource {
  const parsed = parseManifest(image.manifest, image.mediaType);
  if (parsed.kind !== 'manifest') throw new Error('not a manifest');
  for (const b of [image.config, ...image.layers]) writeFileSync(join(dir, b.digest.slice(7)), b.data);
  return {
    imageId: image.digest,
    manifestBytes: image.manifest,
    manifestMediaType: image.mediaType,
    config: parsed.manifest.config,
    layers: parsed.manifest.layers,
    blobPath: (d) => join(dir, d.slice(7)),
    mountFrom: () => mountFrom,
  };
}

const dest = (repo = 'team/app', tag = 'v1') => parseImageReference(`${fake.registry}/${repo}:${tag}`);

describe('the pieces of a push', () => {
  it('reads the Range of an upload answer', () => {
    expect(rangeEnd('0-1023')).toBe(1023);
    expect(rangeEnd('bytes=0-9')).toBe(9);
    expect(rangeEnd('0-0')).toBe(0);
    expect(rangeEnd(null)).toBeUndefined();
    expect(rangeEnd('5-9')).toBeUndefined();
    expect(rangeEnd('0-x')).toBeUndefined();
  });

  it('adds the digest to an upload location, keeping the state the registry put there', () => {
    const url = withDigest(new URL('http://r/v2/a/blobs/uploads/u1?_state=abc'), 'sha256:00');
    expect(url.search).toBe('?_state=abc&digest=sha256%3A00');
  });

  it('chooses the destination: given, the name asked for, the first tag, the pinned repository', () => {
    const image = { id: `sha256:${'a'.repeat(64)}`, tags: ['docker.io/library/alpine:3', 'docker.io/library/alpine:latest'] };
    expect(pushDestination('alpine', image)).toEqual({ registry: 'docker.io', repository: 'library/alpine', tag: 'latest' });
    expect(pushDestination(image.id, image)).toEqual({ registry: 'docker.io', repository: 'library/alpine', tag: '3' });
    expect(pushDestination('alpine', image, 'host:5000/team/app')).toEqual({ registry: 'host:5000', repository: 'team/app', tag: 'latest' });
    expect(pushDestination('alpine', image, 'host:5000/team/app:2')).toMatchObject({ tag: '2' });
    expect(pushDestination('alpine', image, `host:5000/team/app@${image.id}`)).toEqual({ registry: 'host:5000', repository: 'team/app', digest: image.id });
    expect(() => pushDestination('alpine', image, `host:5000/team/app@sha256:${'b'.repeat(64)}`)).toThrow(/keeps the image's digest/);
    const pinned = { id: image.id, tags: [`host:5000/team/app@${image.id}`] };
    expect(pushDestination(image.id, pinned)).toEqual({ registry: 'host:5000', repository: 'team/app', digest: image.id });
    expect(() => pushDestination('abc123abc123', { id: image.id, tags: [] })).toThrow(/give a destination/);
  });

  it('mounts only from other repositories of the same registry, each once', () => {
    const d = { registry: 'r:5000', repository: 'team/app' };
    expect(
      mountSources(d, ['r:5000/a/b:1', 'r:5000/team/app:2', 'other:5000/c:1', 'archive:/x.tar', 'r:5000/a/b@sha256:' + '0'.repeat(64), 'r:5000/c:1']),
    ).toEqual(['a/b', 'c']);
  });
});

describe('request bodies', () => {
  it('sends a manifest again, whole, after the registry challenges the first try', async () => {
    const image = buildFakeImage();
    fake.push('team/app', 'v0', image);
    fake.auth = 'basic';
    const digest = await client({ credentials: alice }).putManifest(fake.registry, 'team/app', 'v9', {
      bytes: image.manifest,
      mediaType: image.mediaType,
      digest: image.digest,
    });
    expect(digest).toBe(image.digest);
    expect(fake.manifests.get('team/app@v9')?.body).toEqual(image.manifest);
    expect(fake.pushLog.filter((l) => l.method === 'PUT').map((l) => l.contentLength)).toEqual([String(image.manifest.length), String(image.manifest.length)]);
  });

  it('streams a blob again from its start when an upload is redirected (307)', async () => {
    const data = randomBytes(100_000);
    const digest = sha256Of(data);
    // A session for the redirect to land on (u1); the push's own (u2) sends its PUT there.
    await fetch(`http://${fake.registry}/v2/team/app/blobs/uploads/`, { method: 'POST' });
    let opened = 0;
    fake.on('/v2/team/app/blobs/uploads/u2', (req, res) => {
      req.resume();
      req.on('end', () => {
        res.writeHead(307, { location: `/v2/team/app/blobs/uploads/u1?_state=1&digest=${encodeURIComponent(digest)}` });
        res.end();
      });
      return true;
    });
    const outcome = await client().pushBlob(
      fake.registry,
      'team/app',
      {
        digest,
        size: data.length,
        read: async function* (start, end) {
          opened++;
          yield data.subarray(start, end + 1);
        },
      },
      { chunkThreshold: 1 << 20, chunkSize: 1 << 20 },
    );
    expect(outcome).toBe('pushed');
    expect(opened).toBe(2);
    expect(fake.blobs.get(digest)).toEqual(data);
  });
});

describe('pushImage against a registry', () => {
  it('uploads every blob in one PUT, then the manifest as stored; a second push finds them all', async () => {
    const image = buildFakeImage();
    const progress: PushProgress[] = [];
    const r = await pushImage(client(), sourceOf(image), dest(), { onProgress: (p) => progress.push(p) });
    expect(r).toEqual({
      imageId: image.digest,
      destination: `${fake.registry}/team/app:v1`,
      manifestDigest: image.digest,
      mediaType: image.mediaType,
      blobs: { exists: 0, mounted: 0, pushed: 3 },
      bytes: {
        pushed: image.config.size + image.layers[0]!.size + image.layers[1]!.size,
        total: image.config.size + image.layers[0]!.size + image.layers[1]!.size,
      },
    });
    expect(fake.manifests.get(`team/app@v1`)).toEqual({ body: image.manifest, type: image.mediaType });
    for (const b of [image.config, ...image.layers]) expect(fake.blobs.get(b.digest)).toEqual(b.data);
    // One POST and one PUT per blob, no PATCH; the config after the layers.
    const methods = fake.pushLog.filter((l) => l.method !== 'HEAD').map((l) => l.method);
    expect(methods.filter((m) => m === 'PATCH')).toEqual([]);
    expect(methods.filter((m) => m === 'POST')).toHaveLength(3);
    const puts = fake.pushLog.filter((l) => l.method === 'PUT');
    expect(puts.at(-2)?.query).toContain(encodeURIComponent(image.config.digest));
    expect(puts.at(-1)).toMatchObject({ path: '/v2/team/app/manifests/v1', contentType: image.mediaType });
    // Every blob's progress ends in 'pushed', with its whole size.
    for (const b of [image.config, ...image.layers]) {
      const mine = progress.filter((p) => p.digest === b.digest);
      expect(mine[0]?.status).toBe('waiting');
      expect(mine.at(-1)).toMatchObject({ status: 'pushed', current: b.size, total: b.size });
    }

    const again = await pushImage(client(), sourceOf(image), dest('team/app', 'v2'));
    expect(again.blobs).toEqual({ exists: 3, mounted: 0, pushed: 0 });
    expect(again.bytes.pushed).toBe(0);
  });

  it('uploads big blobs in chunks, each to the Location the last answered, and honours OCI-Chunk-Min-Length', async () => {
    const big = randomBytes(1_000_000);
    const image = buildFakeImage({ layers: [big] });
    await pushImage(client(), sourceOf(image), dest(), { chunkThreshold: 100_000, chunkSize: 300_000 });
    const ranges = fake.pushLog.filter((l) => l.method === 'PATCH').map((l) => l.contentRange);
    expect(ranges).toEqual(['0-299999', '300000-599999', '600000-899999', '900000-999999']);
    expect(fake.blobs.get(image.layers[0]!.digest)).toEqual(big);

    // The registry wants bigger chunks: it gets them.
    const other = buildFakeImage({ layers: [randomBytes(1_000_000)] });
    fake.pushLog.length = 0;
    fake.chunkMinLength = 600_000;
    await pushImage(client(), sourceOf(other), dest('team/other'), { chunkThreshold: 100_000, chunkSize: 300_000 });
    expect(fake.pushLog.filter((l) => l.method === 'PATCH').map((l) => l.contentRange)).toEqual(['0-599999', '600000-999999']);
  });

  it('resumes a chunked upload from the offset the registry reports after a 416 or a failed chunk', async () => {
    const big = randomBytes(500_000);
    const image = buildFakeImage({ layers: [big] });
    // The second request to the session is refused with 416 (its body unread by the registry), the fourth fails with 500.
    fake.on('/v2/team/app/blobs/uploads/u1', (req, res, hit) => {
      if (hit !== 2 && hit !== 4) return false;
      req.resume();
      req.on('end', () => {
        if (hit === 2) {
          res.writeHead(416, { range: '0-99999' });
          res.end();
        } else sendJson(res, 500, { errors: [{ code: 'UNKNOWN', message: 'storage hiccup' }] });
      });
      return true;
    });
    await pushImage(client(), sourceOf(image), dest(), { chunkThreshold: 100_000, chunkSize: 100_000 });
    expect(fake.blobs.get(image.layers[0]!.digest)).toEqual(big);
    const session = fake.pushLog.filter((l) => l.path === '/v2/team/app/blobs/uploads/u1');
    expect(session.map((l) => `${l.method} ${l.contentRange ?? ''}`.trim())).toEqual([
      'PATCH 0-99999',
      'PATCH 100000-199999', // 416
      'GET', // where is it? 0-99999
      'PATCH 100000-199999', // 500
      'GET',
      'PATCH 100000-199999',
      'PATCH 200000-299999',
      'PATCH 300000-399999',
      'PATCH 400000-499999',
      'PUT',
    ]);
  });

  it('starts a blob again when its one-PUT upload fails transiently', async () => {
    const image = buildFakeImage({ layers: [randomBytes(1000)] });
    fake.on('/v2/team/app/blobs/uploads/u1', (req, res) => {
      req.resume();
      req.on('end', () => sendJson(res, 503, { errors: [{ code: 'UNAVAILABLE', message: 'busy' }] }));
      return true;
    });
    const r = await pushImage(client(), sourceOf(image), dest(), { concurrency: 1 });
    expect(r.blobs.pushed).toBe(2);
    expect(fake.blobs.get(image.layers[0]!.digest)).toBeDefined();
    // The failed session was cancelled; the blob went through a new one.
    expect(fake.pushLog.some((l) => l.method === 'DELETE' && l.path.endsWith('/u1'))).toBe(true);
  });

  it('mounts blobs another repository of the registry holds, and uploads into the session a registry offers instead', async () => {
    const image = buildFakeImage();
    fake.push('src/app', 'v1', image);
    const r = await pushImage(client(), sourceOf(image, ['src/app']), dest());
    expect(r.blobs).toEqual({ exists: 0, mounted: 3, pushed: 0 });
    expect(fake.pushLog.filter((l) => l.method === 'POST').every((l) => l.query.includes('mount=') && l.query.includes('from=src%2Fapp'))).toBe(true);
    expect(fake.pushLog.some((l) => l.method === 'PATCH' || (l.method === 'PUT' && l.path.includes('/uploads/')))).toBe(false);

    fake.mounts = false;
    fake.pushLog.length = 0;
    const r2 = await pushImage(client(), sourceOf(image, ['src/app']), dest('team/copy'));
    expect(r2.blobs).toEqual({ exists: 0, mounted: 0, pushed: 3 });
    // The 202 of the mount request is the upload session: no second POST.
    expect(fake.pushLog.filter((l) => l.method === 'POST')).toHaveLength(3);
  });

  it('asks the token service for push scope (and pull on the repository it mounts from)', async () => {
    const image = buildFakeImage();
    fake.push('src/app', 'v1', image);
    fake.auth = 'bearer';
    const r = await pushImage(client({ credentials: alice }), sourceOf(image, ['src/app']), dest());
    expect(r.blobs.mounted).toBe(3);
    const scopes = new Set(fake.tokenLog.map((t) => t.scope));
    expect(scopes).toEqual(new Set(['repository:team/app:pull,push', 'repository:team/app:pull,push repository:src/app:pull']));
  });

  it('names roost login when the registry wants one the push does not have', async () => {
    const image = buildFakeImage();
    fake.auth = 'basic';
    await expect(pushImage(client(), sourceOf(image), dest())).rejects.toMatchObject({
      code: 'IMAGE',
      message: expect.stringMatching(new RegExp(`push to ${fake.registry}/team/app: run roost login ${fake.registry}`)),
    });
    // Anonymous tokens may pull, not push.
    fake.auth = 'bearer';
    await expect(pushImage(client(), sourceOf(image), dest())).rejects.toMatchObject({
      code: 'IMAGE',
      message: expect.stringContaining(`roost login ${fake.registry}`),
    });
    // A 403 (the login may not push there) says so.
    fake.auth = 'none';
    fake.on('/v2/team/app/blobs/uploads/', (_req, res) => {
      sendJson(res, 403, { errors: [{ code: 'DENIED', message: 'requested access to the resource is denied' }] });
      return true;
    });
    await expect(pushImage(client(), sourceOf(image), dest())).rejects.toMatchObject({
      code: 'IMAGE',
      message: expect.stringMatching(/denied .*\(403\): DENIED: requested access to the resource is denied: push needs a login .*roost login/),
    });
  });

  it("shows the registry's reason when it rejects the manifest, and refuses a digest it did not send", async () => {
    const image = buildFakeImage();
    fake.on('/v2/team/app/manifests/v1', (req, res) => {
      req.resume();
      req.on('end', () => sendJson(res, 400, { errors: [{ code: 'MANIFEST_INVALID', message: 'manifest invalid: unknown media type' }] }));
      return true;
    });
    await expect(pushImage(client(), sourceOf(image), dest())).rejects.toMatchObject({
      code: 'IMAGE',
      message: expect.stringContaining(
        `rejected the manifest of ${fake.registry}/team/app:v1 (400 Bad Request): MANIFEST_INVALID: manifest invalid: unknown media type`,
      ),
    });
    fake.on('/v2/team/app/manifests/v2', (req, res) => {
      req.resume();
      req.on('end', () => {
        res.writeHead(201, { 'docker-content-digest': sha256Of(Buffer.from('something else')) });
        res.end();
      });
      return true;
    });
    await expect(pushImage(client(), sourceOf(image), dest('team/app', 'v2'))).rejects.toMatchObject({
      code: 'IMAGE',
      message: expect.stringMatching(/not sha256:/),
    });
  });

  it('refuses an image whose blobs the store does not hold before the registry hears of it', async () => {
    const image = buildFakeImage();
    const source = sourceOf(image);
    rmSync(source.blobPath(image.layers[1]!.digest));
    await expect(pushImage(client(), source, dest())).rejects.toMatchObject({ code: 'IMAGE', message: expect.stringMatching(/missing from the store/) });
    expect(fake.pushLog).toEqual([]);
  });

  it('stops when its signal aborts, in the middle of an upload', async () => {
    const image = buildFakeImage({ layers: [randomBytes(200_000)] });
    // The registry takes the upload's bytes and never answers.
    fake.on('/v2/team/app/blobs/uploads/u1', (req) => {
      req.resume();
      return true;
    });
    const controller = new AbortController();
    const progress: PushProgress[] = [];
    const pushing = pushImage(client(), sourceOf(image), dest(), {
      signal: controller.signal,
      onProgress: (p) => {
        progress.push(p);
        if (p.status === 'uploading' && p.current > 0) controller.abort();
      },
    });
    const t0 = Date.now();
    await expect(pushing).rejects.toMatchObject({ code: 'ABORTED' });
    expect(Date.now() - t0).toBeLessThan(5000);
    expect(progress.filter((p) => p.status === 'failed').length).toBeGreaterThan(0);
    expect(fake.manifests.has('team/app@v1')).toBe(false);
  });
});
