import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { tokenSource } from './http.js';

describe('tokenSource', () => {
  const home = mkdtempSync(join(tmpdir(), 'roost-token-'));
  const saved = process.env.ROOST_TOKEN;
  afterEach(() => {
    if (saved === undefined) delete process.env.ROOST_TOKEN;
    else process.env.ROOST_TOKEN = saved;
  });

  it('says the token file is missing (and where) when there is none', async () => {
    delete process.env.ROOST_TOKEN;
    const source = tokenSource({ home, local: true });
    expect(await source()).toBeUndefined();
    expect(source.missing?.()).toMatch(new RegExp(`token file ${join(home, 'api-token')} is missing.*restart the daemon`));
  });

  it('reads the file once it is back, and then reports nothing missing', async () => {
    delete process.env.ROOST_TOKEN;
    const source = tokenSource({ home, local: true });
    await source();
    writeFileSync(join(home, 'api-token'), 'a'.repeat(64) + '\n');
    expect(await source()).toBe('a'.repeat(64));
    expect(source.missing?.()).toBeUndefined();
    rmSync(join(home, 'api-token'));
  });
});
