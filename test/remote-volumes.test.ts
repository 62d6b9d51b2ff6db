import { createHash } from 'node:crypto';
import { mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { serveVolume, type Runtime, type Sandbox, type VolumeServer } from '@roost/core';
import { expectCode, fileServersOf, runRoost, TestHome } from './helpers.js';

// Two Roost homes on this machine: `serverHome` serves its named volume
// `shared` over loopback TLS (`roost volume serve`'s mechanism); `clientHome`
// makes a remote volume of it and mounts it in a sandbox. The guest's 9P goes
// through the sandbox's file server, which forwards it over one TLS
// connection that reconnects when cut.
const serverHome = new TestHome();
const clientHome = new TestHome();
const scratch = mkdtempSync(join(tmpdir(), 'roost-remote-vol-'));
const credentialsFile = join(scratch, 'shared.credentials');
let server: VolumeServer;
let client: Runtime;
let sb: Sandbox;
let token: string;

const sha256 = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');

async function sh(s: Sandbox, cmd: string): Promise<string> {
  const r = await s.commands.run(cmd);
  if (r.exitCode !== 0) throw new Error(`${cmd}: exit ${r.exitCode}: ${r.stderr}`);
  return r.stdout;
}

beforeAll(async () => {
  const serverRuntime = await serverHome.runtime();
  await serverRuntime.volumes.create({ name: 'shared' });
  server = await serveVolume({ home: serverHome.root, source: 'shared', listen: '127.0.0.1:0', credentialsOut: credentialsFile });
  token = (JSON.parse(readFileSync(credentialsFile, 'utf8')) as { token: string }).token;
  client = await clientHome.runtime();
  const info = await client.volumes.create({ name: 'remote', remote: readFileSync(credentialsFile, 'utf8') });
  expect(info).toMatchObject({ name: 'remote', path: server.url, remote: { url: server.url, fingerprint: server.fingerprint, readOnly: false } });
  sb = await clientHome.create({ volumes: [{ source: 'remote', target: '/r' }], network: 'none' });
});

afterAll(async () => {
  await clientHome.cleanup();
  await server?.close();
  await serverHome.cleanup();
  rmSync(scratch, { recursive: true, force: true });
});

describe('a remote volume', () => {
  it("is mounted like any volume: the guest's files land in the serving home's volume, and back", async () => {
    const servedDir = (await (await serverHome.runtime()).volumes.get('shared')).path;
    await sh(sb, 'mkdir -p /r/dir && echo from-guest > /r/dir/a.txt && chmod 600 /r/dir/a.txt && ln -s a.txt /r/dir/ln');
    expect(readFileSync(join(servedDir, 'dir', 'a.txt'), 'utf8')).toBe('from-guest\n');
    writeFileSync(join(servedDir, 'from-server.txt'), 'hello from the server\n');
    expect(await sh(sb, 'cat /r/from-server.txt; stat -c "%a %F" /r/dir/a.txt /r/dir/ln; cat /r/dir/ln')).toBe(
      'hello from the server\n600 regular file\n777 symbolic link\nfrom-guest\n',
    );
    expect(await sh(sb, 'ls /r | sort')).toBe('dir\nfrom-server.txt\n');
  });

  it('a write goes on across connections cut under it, and the bytes arrive whole', async () => {
    const servedDir = (await (await serverHome.runtime()).volumes.get('shared')).path;
    const expected = (await sh(sb, 'head -c 12582912 /dev/urandom > /tmp/src && sha256sum /tmp/src')).split(' ')[0];
    const copy = sb.commands.run('cp /tmp/src /r/big && sync /r/big && echo done');
    let cut = 0;
    for (let i = 0; i < 3; i++) {
      await new Promise((r) => setTimeout(r, 300));
      cut += server.dropConnections();
    }
    const r = await copy;
    expect(r.stderr).toBe('');
    expect(r.stdout).toBe('done\n');
    expect(cut).toBeGreaterThan(0);
    expect(sha256(readFileSync(join(servedDir, 'big')))).toBe(expected);
    // And the mount serves on after the cuts.
    expect((await sh(sb, 'sha256sum /r/big')).split(' ')[0]).toBe(expected);
  }, 120_000);

  it("keeps the token out of answers, events, the file server's command line and configuration", async () => {
    const info = await client.volumes.get('remote');
    const events = new Database(join(clientHome.root, 'roost.db'), { readonly: true }).prepare('SELECT * FROM events').all();
    expect(JSON.stringify(events)).toContain('volume.created');
    const serverPids = fileServersOf(clientHome.root, sb.id);
    expect(serverPids).toHaveLength(1);
    const config = readFileSync(join(clientHome.root, 'sandboxes', sb.id, 'files.json'), 'utf8');
    for (const text of [JSON.stringify(info), JSON.stringify(events), readFileSync(`/proc/${serverPids[0]}/cmdline`, 'utf8'), config])
      expect(text).not.toContain(token);
    const cli = await runRoost(['volume', 'inspect', 'remote'], { env: { ...process.env, ROOST_HOME: clientHome.root } });
    expect(cli.stdout).toMatch(/Remote:\s+roost:\/\/127\.0\.0\.1:\d+\/shared, certificate sha256:/);
    expect(cli.stdout + cli.stderr).not.toContain(token);
    // The credentials are kept 0600, beside nothing else of the volume.
    const dir = join(clientHome.root, 'volumes', 'remote');
    expect(readdirSync(dir)).toEqual(['remote.credentials']);
  });

  it('refuses bad credentials when the volume is made, with a clear error', async () => {
    const good = JSON.parse(readFileSync(credentialsFile, 'utf8')) as Record<string, unknown>;
    await expectCode(
      client.volumes.create({ name: 'bad-token', remote: JSON.stringify({ ...good, token: 'roost_vt_' + 'A'.repeat(43) }) }),
      'PERMISSION_DENIED',
    );
    await expectCode(
      client.volumes.create({ name: 'bad-cert', remote: JSON.stringify({ ...good, fingerprint: 'sha256:' + '00'.repeat(32) }) }),
      'PERMISSION_DENIED',
    );
    await expectCode(client.volumes.create({ name: 'nobody', remote: JSON.stringify({ ...good, url: 'roost://127.0.0.1:1/shared' }) }), 'UNAVAILABLE');
    await expectCode(client.volumes.create({ name: 'garbage', remote: 'not json' }), 'INVALID_ARGUMENT', /remote/);
    await expectCode(
      client.volumes.create({ name: 'both', remote: readFileSync(credentialsFile, 'utf8'), quotaBytes: 1024 }),
      'INVALID_ARGUMENT',
      /quotaBytes/,
    );
    expect((await client.volumes.list()).map((v) => v.name).filter((n) => n !== 'gone')).toEqual(['remote']);
  });

  it('a sandbox whose remote volume cannot be reached fails to boot, saying why', async () => {
    const other = await serveVolume({ home: serverHome.root, source: scratch, listen: '127.0.0.1:0', credentialsOut: join(scratch, 'other.credentials') });
    await client.volumes.create({ name: 'gone', remote: readFileSync(join(scratch, 'other.credentials'), 'utf8') });
    await other.close();
    await expectCode(clientHome.create({ volumes: [{ source: 'gone', target: '/g' }], network: 'none' }), 'BOOT_FAILED', /volume server|connect|ECONNREFUSED/i);
    expect(fileServersOf(clientHome.root).length).toBe(1); // only sb's
    for (const info of await client.list({ status: 'failed' })) await (await client.get(info.id)).remove({ force: true });
    await client.volumes.remove('gone');
  });

  it('roost volume create --remote FILE makes one from the shell', async () => {
    const env = { ...process.env, ROOST_HOME: clientHome.root };
    const r = await runRoost(['volume', 'create', 'remote2', '--remote', credentialsFile], { env });
    expect(r.stderr).toBe('');
    expect(r.stdout).toBe('remote2\n');
    expect((await client.volumes.get('remote2')).remote?.url).toBe(server.url);
    await client.volumes.remove('remote2');
  });
});
