import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { OpenFlag, parseCredentials, RemoteBackend } from '@roost/p9';
import { ROOST_BIN, runRoost } from './helpers.js';

// No VM: a home of its own, a volume server on 127.0.0.1, a client in this process.
const home = mkdtempSync(join(tmpdir(), 'roost-volume-serve-'));
const env = { ...process.env, ROOST_HOME: home };
afterAll(() => rmSync(home, { recursive: true, force: true }));

/** Starts `roost volume serve ARGS` and resolves once it printed its credentials line. */
function startServe(args: string[]): Promise<{ child: ChildProcess; out: () => string; err: () => string }> {
  const child = spawn(process.execPath, [ROOST_BIN, 'volume', 'serve', ...args], { env, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  child.stderr!.on('data', (c: Buffer) => (err += c.toString()));
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`roost volume serve did not start: ${out}${err}`)), 20_000);
    child.stdout!.on('data', (c: Buffer) => {
      out += c.toString();
      if (/^credentials: /m.test(out)) {
        clearTimeout(timer);
        resolve({ child, out: () => out, err: () => err });
      }
    });
    child.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`roost volume serve exited with ${code}: ${out}${err}`));
    });
  });
}

function stop(child: ChildProcess): Promise<number | null> {
  return new Promise((resolve) => {
    child.once('exit', (code) => resolve(code));
    child.kill('SIGTERM');
  });
}

describe('roost volume serve', () => {
  it('serves a named volume over TLS: credentials 0600, a RemoteBackend reads and writes it, the token never in argv or output', async () => {
    expect((await runRoost(['volume', 'create', 'shared'], { env })).code).toBe(0);
    const credsFile = join(home, 'client.credentials');
    const served = await startServe(['shared', '--listen', '127.0.0.1:0', '--credentials-out', credsFile]);
    expect(statSync(credsFile).mode & 0o777).toBe(0o600);
    const creds = parseCredentials(readFileSync(credsFile, 'utf8'), credsFile);
    expect(creds.url).toMatch(/^roost:\/\/127\.0\.0\.1:\d+\/shared$/);
    expect(served.out()).toContain(`url: ${creds.url}\n`);
    expect(served.out()).toContain(`fingerprint: ${creds.fingerprint}\n`);

    const backend = await RemoteBackend.connect(creds, { outageTimeoutMs: 2000 });
    try {
      const h = await backend.create([], Buffer.from('hello.txt'), OpenFlag.RDWR, 0o644, { uid: 1000, gid: 1000 });
      expect(await h.write(0n, Buffer.from('over the wire'))).toBe(13);
      await h.close();
      expect(readFileSync(join(home, 'volumes', 'shared', 'data', 'hello.txt'), 'utf8')).toBe('over the wire');
      expect((await backend.getattr([Buffer.from('hello.txt')])).uid).toBe(1000);
    } finally {
      await backend.close();
    }

    const cmdline = readFileSync(`/proc/${served.child.pid}/cmdline`, 'utf8');
    expect(cmdline).toContain('volume\0serve');
    expect(cmdline).not.toContain(creds.token);
    expect(await stop(served.child)).toBe(0);
    expect(served.out() + served.err()).not.toContain(creds.token);

    // A restart with the same credentials file keeps the token (clients keep working).
    const again = await startServe(['shared', '--listen', '127.0.0.1:0', '--credentials-out', credsFile]);
    const creds2 = parseCredentials(readFileSync(credsFile, 'utf8'), credsFile);
    expect(creds2.token).toBe(creds.token);
    expect(creds2.fingerprint).toBe(creds.fingerprint);
    expect(await stop(again.child)).toBe(0);
  });

  it('without --credentials-out writes them 0600 under the home; --read-only gives a token that cannot write; bad sources are refused', async () => {
    const dir = mkdtempSync(join(home, 'plain dir-'));
    const served = await startServe([dir, '--listen', '127.0.0.1:0', '--read-only']);
    const path = /^credentials: (\S+)/m.exec(served.out())![1]!;
    expect(path.startsWith(join(home, 'volume-serve'))).toBe(true);
    expect(statSync(path).mode & 0o777).toBe(0o600);
    const creds = parseCredentials(readFileSync(path, 'utf8'), path);
    expect(creds.readOnly).toBe(true);
    const backend = await RemoteBackend.connect(creds);
    try {
      const failed = await backend.mkdir([], Buffer.from('d'), 0o755, { uid: 0, gid: 0 }).catch((e: unknown) => e);
      expect(failed).toMatchObject({ errno: 30 }); // EROFS
    } finally {
      await backend.close();
    }
    expect(await stop(served.child)).toBe(0);

    const missing = await runRoost(['volume', 'serve', 'no-such-volume', '--listen', '127.0.0.1:0'], { env });
    expect(missing.code).not.toBe(0);
    expect(missing.stderr).toMatch(/no-such-volume/);
    const badListen = await runRoost(['volume', 'serve', dir, '--listen', 'nowhere'], { env });
    expect(badListen.stderr).toMatch(/--listen nowhere: expected ADDR:PORT/);
  });
});
