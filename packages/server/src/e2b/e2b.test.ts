import { mkdtempSync, rmSync, statSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { isRoostError } from '@roost/api';
import { parseMetadataQuery } from './control.js';
import { e2bFaceOf } from './index.js';
import { E2bKeys } from './keys.js';

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
    expect(e2bFaceOf('/health')).toBe('envd');
    expect(e2bFaceOf('/process.Process/Start')).toBe('envd');
    expect(e2bFaceOf('/filesystem.Filesystem/ListDir')).toBe('envd');
    for (const p of ['/v1/sandboxes', '/v1/health', '/metrics', '/mcp', '/sandboxesx']) expect(e2bFaceOf(p), p).toBeNull();
  });

  it("reads the list's metadata query as the SDK encodes it (each part encoded, then the whole)", () => {
    // The SDK sends metadata=user%3Da%252520b for { user: 'a b' }; the query parser has decoded it once.
    expect(parseMetadataQuery('user=a%2520b&team=x')).toEqual({ user: 'a b', team: 'x' });
    expect(parseMetadataQuery(undefined)).toEqual({});
  });
});
