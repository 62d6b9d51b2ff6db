import { chmodSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { CredentialStore, normalizeRegistry } from './auth.js';

let dir: string;
let roostFile: string;
let dockerDir: string;
beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'roost-auth-'));
  roostFile = join(dir, 'home', 'auth.json');
  dockerDir = join(dir, 'docker');
  mkdirSync(dockerDir);
});
afterEach(() => {
  vi.unstubAllEnvs();
  rmSync(dir, { recursive: true, force: true });
});

const b64 = (s: string) => Buffer.from(s).toString('base64');
const store = () => new CredentialStore({ roostAuthFile: roostFile, dockerConfigDir: dockerDir });
const dockerConfig = (config: unknown) => writeFileSync(join(dockerDir, 'config.json'), JSON.stringify(config));

/** Puts credential helper scripts in a directory at the front of PATH. */
function installHelpers(): void {
  const bin = join(dir, 'bin');
  mkdirSync(bin);
  const scripts: Record<string, string> = {
    // Answers for two servers; for Docker Hub with an identity token.
    fake: `[ "$1" = get ] || exit 3
server=$(cat)
case "$server" in
  reg.example:5000) printf '{"ServerURL":"%s","Username":"helper-user","Secret":"helper-pass"}' "$server" ;;
  https://index.docker.io/v1/) printf '{"ServerURL":"%s","Username":"<token>","Secret":"idtok"}' "$server" ;;
  *) echo "credentials not found in native keychain"; exit 1 ;;
esac`,
    broken: 'cat >/dev/null; echo "boom: the keyring is locked" >&2; exit 2',
    garbled: 'cat >/dev/null; echo "{not json"',
  };
  for (const [name, body] of Object.entries(scripts)) {
    const path = join(bin, `docker-credential-${name}`);
    writeFileSync(path, `#!/bin/sh\n${body}\n`);
    chmodSync(path, 0o755);
  }
  vi.stubEnv('PATH', `${bin}:${process.env.PATH ?? ''}`);
}

describe('normalizeRegistry', () => {
  it.each([
    ['docker.io', 'docker.io'],
    ['index.docker.io', 'docker.io'],
    ['registry-1.docker.io', 'docker.io'],
    ['https://index.docker.io/v1/', 'docker.io'],
    ['https://Reg.Example:5000/v2/', 'reg.example:5000'],
    ['http://127.0.0.1:5000', '127.0.0.1:5000'],
    ['reg.example/some/path', 'reg.example'],
    [' reg.example ', 'reg.example'],
  ])('%s is %s', (input, expected) => {
    expect(normalizeRegistry(input)).toBe(expected);
  });
});

describe('CredentialStore: roost login', () => {
  it('has nothing when there are no files', async () => {
    expect(await store().get('reg.example')).toBeUndefined();
  });

  it('stores a login 0600 as Docker does, finds it, and forgets it', async () => {
    const s = store();
    await s.login('https://Reg.Example:5000/v2/', 'alice', 'pa:ss');
    expect(statSync(roostFile).mode & 0o777).toBe(0o600);
    expect(JSON.parse(readFileSync(roostFile, 'utf8'))).toEqual({ auths: { 'reg.example:5000': { auth: b64('alice:pa:ss') } } });
    expect(await s.get('reg.example:5000')).toEqual({ username: 'alice', password: 'pa:ss' });
    expect(readdirSync(join(dir, 'home'))).toEqual(['auth.json']); // no temp file left behind
    expect(await s.logout('reg.example:5000')).toBe(true);
    expect(await s.get('reg.example:5000')).toBeUndefined();
    expect(await s.logout('reg.example:5000')).toBe(false);
  });

  it('keeps other logins and keys it does not know when rewriting', async () => {
    mkdirSync(join(dir, 'home'));
    writeFileSync(roostFile, JSON.stringify({ auths: { 'other.example': { auth: b64('bob:pw'), email: 'b@example' } }, extra: 1 }));
    const s = store();
    await Promise.all([s.login('index.docker.io', 'alice', 'one'), s.login('reg.example', 'carol', 'two')]);
    const file = JSON.parse(readFileSync(roostFile, 'utf8')) as { auths: Record<string, unknown>; extra: number };
    expect(Object.keys(file.auths).sort()).toEqual(['docker.io', 'other.example', 'reg.example']);
    expect(file.auths['other.example']).toEqual({ auth: b64('bob:pw'), email: 'b@example' });
    expect(file.extra).toBe(1);
    expect(await s.get('registry-1.docker.io')).toEqual({ username: 'alice', password: 'one' });
  });

  it('refuses logins it could not store faithfully', async () => {
    const s = store();
    await expect(s.login('reg.example', 'al:ice', 'pw')).rejects.toMatchObject({ code: 'INVALID_ARGUMENT' });
    await expect(s.login('reg.example', '', 'pw')).rejects.toMatchObject({ code: 'INVALID_ARGUMENT' });
    await expect(s.login('reg.example', 'alice', '')).rejects.toMatchObject({ code: 'INVALID_ARGUMENT' });
    await expect(s.login('not a host', 'alice', 'pw')).rejects.toMatchObject({ code: 'INVALID_ARGUMENT' });
  });

  it("prefers Roost's own login to Docker's", async () => {
    dockerConfig({ auths: { 'reg.example': { auth: b64('docker-user:x') } } });
    const s = store();
    await s.login('reg.example', 'roost-user', 'y');
    expect(await s.get('reg.example')).toEqual({ username: 'roost-user', password: 'y' });
  });

  it('says which file is broken', async () => {
    mkdirSync(join(dir, 'home'));
    writeFileSync(roostFile, '{"auths": ');
    await expect(store().get('reg.example')).rejects.toMatchObject({
      code: 'IMAGE',
      message: expect.stringContaining(`the credentials file ${roostFile} is not valid JSON`),
    });
    writeFileSync(roostFile, JSON.stringify({ auths: { 'reg.example': { auth: 5 } } }));
    await expect(store().get('reg.example')).rejects.toMatchObject({ code: 'IMAGE', message: expect.stringContaining('auths.reg.example.auth') });
  });
});

describe("CredentialStore: Docker's config", () => {
  it('reads auths entries in all their forms and key spellings', async () => {
    dockerConfig({
      auths: {
        'https://index.docker.io/v1/': { auth: b64('hubuser:hubpass') },
        'https://reg.example:5000/v2/': { username: 'u', password: 'p' },
        'token.example': { identitytoken: 'refresh-me', auth: b64('tu:') },
        'empty.example': {},
      },
    });
    const s = store();
    for (const hub of ['docker.io', 'index.docker.io', 'registry-1.docker.io']) expect(await s.get(hub)).toEqual({ username: 'hubuser', password: 'hubpass' });
    expect(await s.get('reg.example:5000')).toEqual({ username: 'u', password: 'p' });
    expect(await s.get('token.example')).toEqual({ identityToken: 'refresh-me', username: 'tu' });
    expect(await s.get('empty.example')).toBeUndefined();
    expect(await s.get('reg.example')).toBeUndefined();
  });

  it('finds the config through DOCKER_CONFIG, and takes an empty file as no config', async () => {
    dockerConfig({ auths: { 'reg.example': { auth: b64('a:b') } } });
    vi.stubEnv('DOCKER_CONFIG', dockerDir);
    const s = new CredentialStore({ roostAuthFile: roostFile });
    expect(s.dockerConfigDir).toBe(dockerDir);
    expect(await s.get('reg.example')).toEqual({ username: 'a', password: 'b' });
    writeFileSync(join(dockerDir, 'config.json'), '');
    expect(await s.get('reg.example')).toBeUndefined();
  });

  it('refuses an auth that is not base64 of user:password', async () => {
    dockerConfig({ auths: { 'reg.example': { auth: b64('no-colon') } } });
    await expect(store().get('reg.example')).rejects.toMatchObject({
      code: 'IMAGE',
      message: expect.stringMatching(/"auth" of reg.example in .*config.json is not base64 of user:password/),
    });
  });

  it('asks the credential helper named for the registry, giving it the server address', async () => {
    installHelpers();
    dockerConfig({
      credHelpers: { 'reg.example:5000': 'fake', 'https://index.docker.io/v1/': 'fake', 'other.example': 'fake' },
      auths: { 'reg.example:5000': { auth: b64('file:ignored') } },
    });
    const s = store();
    expect(await s.get('reg.example:5000')).toEqual({ username: 'helper-user', password: 'helper-pass' });
    expect(await s.get('docker.io')).toEqual({ identityToken: 'idtok' });
    expect(await s.get('other.example')).toBeUndefined(); // "credentials not found"
  });

  it('uses credsStore for registries without their own helper', async () => {
    installHelpers();
    dockerConfig({ credsStore: 'fake', credHelpers: { 'broken.example': 'broken' }, auths: { 'reg.example:5000': {} } });
    const s = store();
    expect(await s.get('reg.example:5000')).toEqual({ username: 'helper-user', password: 'helper-pass' });
    await expect(s.get('broken.example')).rejects.toMatchObject({
      code: 'IMAGE',
      message: 'the credential helper docker-credential-broken failed for broken.example: boom: the keyring is locked',
    });
  });

  it('names a helper that is missing, broken or not a name', async () => {
    installHelpers();
    dockerConfig({ credsStore: 'missing' });
    await expect(store().get('reg.example')).rejects.toMatchObject({
      code: 'IMAGE',
      message: expect.stringMatching(/^the credential helper docker-credential-missing \(configured in .*config.json\) is not installed or not on PATH$/),
    });
    dockerConfig({ credsStore: 'garbled' });
    await expect(store().get('reg.example')).rejects.toMatchObject({
      code: 'IMAGE',
      message: 'the credential helper docker-credential-garbled gave an answer that is not JSON',
    });
    dockerConfig({ credsStore: '../../bin/sh' });
    await expect(store().get('reg.example')).rejects.toMatchObject({
      code: 'IMAGE',
      message: expect.stringMatching(/names the credential helper "..\/..\/bin\/sh", which is not a valid helper name/),
    });
  });
});
