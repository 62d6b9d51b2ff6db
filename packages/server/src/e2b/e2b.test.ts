import { mkdtempSync, rmSync, statSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { isRoostError } from '@roost/api';
import { egressOf, parseMetadataQuery } from './control.js';
import { e2bFaceOf } from './index.js';
import { E2bKeys } from './keys.js';
import { effectiveUser, guestPath, namesById, parsePasswd } from './profile.js';
import { readForm } from './files.js';
import { parseDf, parseMeminfo } from './metrics.js';
import { fileSignature, signedRequest, verifySignature } from './signature.js';

describe('E2B keys', () => {
  const homes: string[] = [];
  afterEach(() => {
    for (const h of homes.splice(0)) rmSync(h, { recursive: true, force: true });
  });

  it('issues keys shaped as E2B expects, keeps only their hashes (0600), verifies and revokes them', () => {
    const home = mkdtempSync(join(tmpdir(), 'roost-e2b-keys-'));
    homes.push(home);
    const keys = new E2bKeys(home);
    const a = keys.create('laptop');
    const b = keys.create('ci');
    expect(a.key).toMatch(/^e2b_[0-9a-f]{40}$/);
    expect(keys.list().map((k) => k.name)).toEqual(['laptop', 'ci']);
    expect(readFileSync(keys.path, 'utf8')).not.toContain(a.key.slice(4));
    expect(statSync(keys.path).mode & 0o777).toBe(0o600);
    expect(keys.verify(a.key)).toBe(true);
    expect(keys.verify(b.key)).toBe(true);
    for (const bad of [undefined, '', 'e2b_', `${a.key}0`, a.key.toUpperCase(), `e2b_${'0'.repeat(40)}`]) expect(keys.verify(bad)).toBe(false);
    expect(keys.remove('laptop')).toMatchObject({ id: a.info.id, name: 'laptop' });
    expect(keys.verify(a.key)).toBe(false);
    expect(keys.verify(b.key)).toBe(true);
    let err: unknown;
    try {
      keys.remove('laptop');
    } catch (e) {
      err = e;
    }
    expect(isRoostError(err, 'NOT_FOUND')).toBe(true);
  });

  it('a home without keys accepts none', () => {
    const home = mkdtempSync(join(tmpdir(), 'roost-e2b-keys-'));
    homes.push(home);
    expect(new E2bKeys(home).verify(`e2b_${'a'.repeat(40)}`)).toBe(false);
    expect(new E2bKeys(home).list()).toEqual([]);
  });
});

describe('E2B routing', () => {
  it("tells E2B's control plane and envd from Roost's own paths", () => {
    expect(e2bFaceOf('/v2/sandboxes')).toBe('control');
    expect(e2bFaceOf('/sandboxes/0123456789ab/timeout')).toBe('control');
    expect(e2bFaceOf('/snapshots')).toBe('control');
    expect(e2bFaceOf('/templates/0123456789ab')).toBe('control');
    expect(e2bFaceOf('/health')).toBe('envd');
    expect(e2bFaceOf('/process.Process/Start')).toBe('envd');
    expect(e2bFaceOf('/filesystem.Filesystem/ListDir')).toBe('envd');
    for (const p of ['/v1/sandboxes', '/v1/health', '/metrics', '/mcp', '/sandboxesx', '/snapshotsx']) expect(e2bFaceOf(p), p).toBeNull();
  });

  it("reads the list's metadata query as the SDK encodes it (each part encoded, then the whole)", () => {
    // The SDK sends metadata=user%3Da%252520b for { user: 'a b' }; the query parser has decoded it once.
    expect(parseMetadataQuery('user=a%2520b&team=x')).toEqual({ user: 'a b', team: 'x' });
    expect(parseMetadataQuery(undefined)).toEqual({});
  });
});

describe('E2B signed /files URLs', () => {
  it("computes the SDK's v1 signatures (its own test vectors) and verifies them, with expiry", () => {
    expect(fileSignature('/home/user/a.txt', 'read', '', 'tok')).toBe('v1_Zkbb3914oLJLvMBzCAHQhm2ydBLxbSx2eQUR/kLdvIY');
    expect(fileSignature('/home/user/a.txt', 'write', 'root', 'tok', 1_700_000_000)).toBe('v1_3hlIyTfkHTdfJKgNFUJamAQ7q+SOj3624i+geS/jqCM');
    const url = (q: Record<string, string>) => new URL(`http://x/files?${new URLSearchParams(q).toString()}`);
    const exp = Math.floor(Date.now() / 1000) + 60;
    const signed = signedRequest(
      url({ path: 'a.txt', username: 'user', signature: fileSignature('a.txt', 'read', 'user', 'tok', exp), signature_expiration: String(exp) }),
    )!;
    expect(signed).toMatchObject({ path: 'a.txt', user: 'user', expiration: exp });
    expect(verifySignature(signed, 'read', 'tok')).toBe(true);
    expect(verifySignature(signed, 'write', 'tok')).toBe(false); // a download URL does not upload
    expect(verifySignature(signed, 'read', 'other')).toBe(false);
    expect(verifySignature(signed, 'read', 'tok', (exp + 1) * 1000)).toBe(false); // expired
    expect(verifySignature({ ...signed, path: 'b.txt' }, 'read', 'tok')).toBe(false);
    expect(verifySignature({ ...signed, signature: signed.signature.slice(0, -1) }, 'read', 'tok')).toBe(false);
    expect(signedRequest(url({ path: 'a' }))).toBeNull();
    expect(signedRequest(url({ signature: 'v1_x', signature_expiration: 'soon' }))).toBeNull();
  });
});

describe('E2B guest profile', () => {
  it('reads homes from /etc/passwd; `user` is the default when present; relative paths start at the home', () => {
    const homes = parsePasswd(
      'root:x:0:0:root:/root:/bin/bash\nuser:x:1000:1000::/home/user:/bin/bash\nbad line\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n',
    );
    expect([...homes]).toEqual([
      ['root', '/root'],
      ['user', '/home/user'],
      ['nobody', '/nonexistent'],
    ]);
    const profile = { hasBash: true, defaultUser: 'user', homes, userNames: new Map(), groupNames: new Map(), homeExists: new Map() };
    expect([...namesById('root:x:0:\nuser:x:1000:\nalias:x:1000:\nbad\n')]).toEqual([
      [0, 'root'],
      [1000, 'user'],
    ]);
    expect(effectiveUser(profile, undefined)).toBe('user');
    expect(effectiveUser(profile, 'root')).toBe('root');
    expect(guestPath(profile, 'a/b.txt', 'user')).toBe('/home/user/a/b.txt');
    expect(guestPath(profile, 'x', undefined)).toBe('/root/x');
    expect(guestPath(profile, '../../etc/passwd', 'user')).toBe('/etc/passwd');
    expect(guestPath(profile, 'x', 'alice')).toBe('/home/alice/x');
    expect(guestPath(profile, '/abs', 'user')).toBe('/abs');
  });
});

describe('E2B metrics parsing', () => {
  it('reads /proc/meminfo and `df -kP /`', () => {
    const m = parseMeminfo(
      'MemTotal:         243612 kB\nMemFree:          180000 kB\nMemAvailable:     200000 kB\nBuffers:            1000 kB\nCached:            20000 kB\n',
    );
    expect(m).toEqual({ total: 243612 * 1024, used: 43612 * 1024, cache: 21000 * 1024 });
    expect(parseDf('Filesystem     1024-blocks  Used Available Capacity Mounted on\n/dev/vda           999320  2860    927648       0% /\n')).toEqual({
      total: 999320 * 1024,
      used: 2860 * 1024,
    });
    expect(parseDf('df: not found')).toBeNull();
  });
});

describe('E2B network options', () => {
  it('become a Roost egress policy', () => {
    expect(egressOf({})).toBeUndefined();
    expect(egressOf({ allow_internet_access: true })).toBeUndefined();
    expect(egressOf({ allow_internet_access: false })).toBe('deny');
    expect(egressOf({ network: { denyOut: ['0.0.0.0/0'], allowOut: ['10.0.0.1', 'example.com'] } })).toEqual({
      default: 'deny',
      allow: ['10.0.0.1', 'example.com'],
    });
    expect(egressOf({ network: { denyOut: ['10.0.0.0/8'] } })).toEqual({ default: 'allow', deny: ['10.0.0.0/8'] });
    expect(egressOf({ allow_internet_access: false, network: { allowOut: ['host:5432'] } })).toEqual({ default: 'deny', allow: ['host:5432'] });
  });
});

describe('E2B multipart uploads', () => {
  it('are bounded as they arrive, also without a Content-Length (chunked)', async () => {
    const form = new FormData();
    form.append('file', new Blob(['x'.repeat(1000)]), '/tmp/a');
    const encoded = new Response(form);
    const type = encoded.headers.get('content-type')!;
    const bytes = new Uint8Array(await encoded.arrayBuffer());
    const chunked = () =>
      new Request('http://x/files', {
        method: 'POST',
        headers: { 'content-type': type },
        body: new ReadableStream({
          start(c) {
            c.enqueue(bytes);
            c.close();
          },
        }),
        duplex: 'half',
      } as RequestInit);
    expect((await readForm(chunked(), 10_000)).getAll('file')).toHaveLength(1);
    await expect(readForm(chunked(), 500)).rejects.toMatchObject({ code: 'RESOURCE_EXHAUSTED', details: { maxBytes: 500 } });
    const sized = new Request('http://x/files', { method: 'POST', headers: { 'content-type': type, 'content-length': String(bytes.length) }, body: bytes });
    await expect(readForm(sized, 500)).rejects.toMatchObject({ code: 'RESOURCE_EXHAUSTED' });
    const garbage = new Request('http://x/files', { method: 'POST', headers: { 'content-type': type }, body: 'not a form' });
    await expect(readForm(garbage, 10_000)).rejects.toMatchObject({ code: 'INVALID_ARGUMENT' });
  });
});
