import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { Backend, FileHandle } from './backend.js';
import { P9Client } from './client.js';
import { Errno, OpenFlag } from './constants.js';
import { formatRemoteUrl, parseCredentials, type RemoteCredentials } from './credentials.js';
import { connectInProcess, errnoOf, type Connected } from './harness.js';
import { LocalBackend } from './local.js';
import { RemoteBackend } from './remote-backend.js';
import { RemoteServer } from './remote-server.js';
import { loadOrCreateCertificate, type ServerCertificate } from './remote-tls.js';
import { P9Server } from './server.js';
import { decodeDirents } from './wire.js';

const b = (s: string): Buffer => Buffer.from(s);

let scratch: string;
let cert: ServerCertificate;
beforeAll(async () => {
  scratch = mkdtempSync(join(tmpdir(), 'p9-remote-'));
  cert = await loadOrCreateCertificate(join(scratch, 'state'));
});
afterAll(() => rmSync(scratch, { recursive: true, force: true }));

/** A test's remote server, local servers and backends, closed after it. */
const cleanups: Array<() => Promise<void> | void> = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

let n = 0;
/** A remote server exporting fresh directories (name -> dir), listening on 127.0.0.1. */
async function remote(names: string[], wrap?: (backend: Backend) => Backend): Promise<{ server: RemoteServer; port: number; dirs: Record<string, string> }> {
  const dirs: Record<string, string> = {};
  const exports: Record<string, { backend: Backend }> = {};
  for (const name of names) {
    dirs[name] = mkdtempSync(join(scratch, `export-${n++}-`));
    const local = new LocalBackend(dirs[name]!);
    exports[name] = { backend: wrap ? wrap(local) : local };
  }
  const server = new RemoteServer({ exports, certificate: cert });
  const { port } = await server.listen(0, '127.0.0.1');
  cleanups.push(() => server.close());
  return { server, port, dirs };
}

function creds(port: number, exportName: string, token: string, readOnly = false): RemoteCredentials {
  return { url: formatRemoteUrl({ host: '127.0.0.1', port, exportName }), token, fingerprint: cert.fingerprint, readOnly };
}

/** A local P9Server exporting `backend` (as a Roost host would to its guest), and a client attached to it as uid 1000. */
async function local(backend: RemoteBackend): Promise<Connected> {
  const server = new P9Server({ exports: { '': { backend, readOnly: backend.readOnly } } });
  const c = await connectInProcess(server);
  await c.client.attach(1, '', 1000);
  cleanups.push(async () => {
    c.client.close();
    await server.close();
  });
  return c;
}

async function connect(c: RemoteCredentials, outageTimeoutMs = 5000): Promise<RemoteBackend> {
  const backend = await RemoteBackend.connect(c, { outageTimeoutMs });
  cleanups.push(() => backend.close());
  return backend;
}

describe('remote volumes over TLS', () => {
  it('round-trips create, write, read, readdir, rename, unlink, xattrs and symlinks, with the guest owner kept', async () => {
    const { server, port, dirs } = await remote(['data']);
    const token = server.tokens.issue('data', { readOnly: false });
    const { client } = await local(await connect(creds(port, 'data', token)));

    await client.walk(1, 2, []);
    await client.rpc({ type: 'Tlcreate', fid: 2, name: b('a.txt'), flags: OpenFlag.RDWR, mode: 0o640, gid: 1001 }, 'Rlcreate');
    const big = Buffer.alloc(600_000, 7);
    expect((await client.rpc({ type: 'Twrite', fid: 2, offset: 0n, data: b('hello, world') }, 'Rwrite')).count).toBe(12);
    expect((await client.rpc({ type: 'Tread', fid: 2, offset: 7n, count: 100 }, 'Rread')).data.toString()).toBe('world');
    await client.clunk(2);
    expect(readFileSync(join(dirs.data!, 'a.txt'), 'utf8')).toBe('hello, world');

    // A write and a read larger than the remote msize go in pieces.
    await client.walk(1, 3, []);
    await client.rpc({ type: 'Tlcreate', fid: 3, name: b('big'), flags: OpenFlag.RDWR, mode: 0o600, gid: 0 }, 'Rlcreate');
    await client.rpc({ type: 'Twrite', fid: 3, offset: 0n, data: big.subarray(0, 200_000) }, 'Rwrite');
    await client.clunk(3);
    expect(readFileSync(join(dirs.data!, 'big')).length).toBe(200_000);

    const attr = await client.walk(1, 4, 'a.txt').then(() => client.rpc({ type: 'Tgetattr', fid: 4, requestMask: 0x7ffn }, 'Rgetattr'));
    expect(attr).toMatchObject({ uid: 1000, gid: 1001, mode: 0o100640, size: 12n });
    await client.clunk(4);

    await client.rpc({ type: 'Tmkdir', dfid: 1, name: b('sub'), mode: 0o755, gid: 1001 }, 'Rmkdir');
    await client.rpc({ type: 'Tsymlink', fid: 1, name: b('ln'), target: b('a.txt'), gid: 0 }, 'Rsymlink');
    await client.rpc({ type: 'Trenameat', olddirfid: 1, oldname: b('a.txt'), newdirfid: 1, newname: b('b.txt') }, 'Rrenameat');
    await client.walk(1, 5, 'ln');
    expect((await client.rpc({ type: 'Treadlink', fid: 5 }, 'Rreadlink')).target.toString()).toBe('a.txt');
    await client.clunk(5);

    await client.walk(1, 6, []);
    await client.rpc({ type: 'Tlopen', fid: 6, flags: OpenFlag.RDONLY | OpenFlag.DIRECTORY }, 'Rlopen');
    const names = decodeDirents((await client.rpc({ type: 'Treaddir', fid: 6, offset: 0n, count: 8192 }, 'Rreaddir')).data).map((e) => e.name.toString());
    expect(names.filter((x) => x !== '.' && x !== '..').sort()).toEqual(['b.txt', 'big', 'ln', 'sub']);
    await client.clunk(6);

    // Extended attributes: set, read back, list, remove.
    await client.walk(1, 7, 'b.txt');
    await client.rpc({ type: 'Txattrcreate', fid: 7, name: b('user.color'), size: 4n, flags: 0 }, 'Rxattrcreate');
    await client.rpc({ type: 'Twrite', fid: 7, offset: 0n, data: b('blue') }, 'Rwrite');
    await client.clunk(7);
    await client.walk(1, 8, 'b.txt');
    expect((await client.rpc({ type: 'Txattrwalk', fid: 8, newfid: 9, name: b('user.color') }, 'Rxattrwalk')).size).toBe(4n);
    expect((await client.rpc({ type: 'Tread', fid: 9, offset: 0n, count: 100 }, 'Rread')).data.toString()).toBe('blue');
    await client.clunk(9);
    await client.rpc({ type: 'Txattrwalk', fid: 8, newfid: 9, name: b('') }, 'Rxattrwalk');
    expect((await client.rpc({ type: 'Tread', fid: 9, offset: 0n, count: 100 }, 'Rread')).data.toString()).toBe('user.color\0');
    await client.clunk(9);
    await client.rpc({ type: 'Txattrcreate', fid: 8, name: b('user.color'), size: 0n, flags: 0 }, 'Rxattrcreate');
    await client.clunk(8);
    await client.walk(1, 8, 'b.txt');
    expect(await errnoOf(client.rpc({ type: 'Txattrwalk', fid: 8, newfid: 9, name: b('user.color') }, 'Rxattrwalk'))).toBe(Errno.ENODATA);
    await client.clunk(8);

    await client.rpc({ type: 'Tunlinkat', dirfid: 1, name: b('b.txt'), flags: 0 }, 'Runlinkat');
    expect(await errnoOf(client.walk(1, 10, 'b.txt'))).toBe(Errno.ENOENT);
  });

  it('refuses a wrong token, an unknown export, and an attach without Tauth', async () => {
    const { server, port } = await remote(['data']);
    server.tokens.issue('data', { readOnly: false });
    expect(await errnoOf(RemoteBackend.connect(creds(port, 'data', 'roost_vt_' + 'x'.repeat(43))))).toBe(Errno.EACCES);
    const token = server.tokens.issue('data', { readOnly: false });
    expect(await errnoOf(RemoteBackend.connect(creds(port, 'nope', token)))).toBe(Errno.EACCES);

    // A raw client: Tattach with afid NOFID is refused on this server.
    const { connect: tlsConnect } = await import('node:tls');
    const socket = tlsConnect({ host: '127.0.0.1', port, rejectUnauthorized: false, minVersion: 'TLSv1.3' });
    await new Promise((r) => socket.once('secureConnect', r));
    const raw = new P9Client(socket);
    await raw.version();
    expect(await errnoOf(raw.attach(1, 'data'))).toBe(Errno.EACCES);
    // A token for another export does not open this one.
    const other = await raw.authenticate(5, 'data', 'roost_vt_wrong');
    expect(await errnoOf(raw.attach(1, 'data', 0, other))).toBe(Errno.EACCES);
    const good = await raw.authenticate(6, 'data', token);
    expect((await raw.attach(1, 'data', 0, good)).qid.type).toBe(0x80);
    raw.close();
  });

  it('a read-only token cannot change anything (EROFS), even on a read-write export', async () => {
    const { server, port, dirs } = await remote(['data']);
    writeFileSync(join(dirs.data!, 'f'), 'keep');
    const ro = server.tokens.issue('data', { readOnly: true });
    // The client is told it may write (readOnly false in its credentials): the server enforces the token's grant.
    const backend = await connect({ ...creds(port, 'data', ro), readOnly: false });
    const { client } = await local(backend);
    await client.walk(1, 2, 'f');
    expect((await client.rpc({ type: 'Tlopen', fid: 2, flags: OpenFlag.RDONLY }, 'Rlopen')).qid.type).toBe(0);
    expect((await client.rpc({ type: 'Tread', fid: 2, offset: 0n, count: 10 }, 'Rread')).data.toString()).toBe('keep');
    await client.walk(1, 3, 'f');
    expect(await errnoOf(client.rpc({ type: 'Tlopen', fid: 3, flags: OpenFlag.WRONLY }, 'Rlopen'))).toBe(Errno.EROFS);
    await client.walk(1, 4, []);
    expect(await errnoOf(client.rpc({ type: 'Tlcreate', fid: 4, name: b('new'), flags: OpenFlag.RDWR, mode: 0o644, gid: 0 }, 'Rlcreate'))).toBe(Errno.EROFS);
    expect(await errnoOf(client.rpc({ type: 'Tunlinkat', dirfid: 1, name: b('f'), flags: 0 }, 'Runlinkat'))).toBe(Errno.EROFS);
    expect(await errnoOf(client.rpc({ type: 'Tmkdir', dfid: 1, name: b('d'), mode: 0o755, gid: 0 }, 'Rmkdir'))).toBe(Errno.EROFS);
    expect(readFileSync(join(dirs.data!, 'f'), 'utf8')).toBe('keep');
  });

  it('refuses a server whose certificate is not the pinned one before sending any 9P byte', async () => {
    const { server, port } = await remote(['data']);
    const token = server.tokens.issue('data', { readOnly: false });
    const wrong = `sha256:${'0'.repeat(64)}`;
    const err = await RemoteBackend.connect({ ...creds(port, 'data', token), fingerprint: wrong }).catch((e: unknown) => e);
    expect(err).toMatchObject({ errno: Errno.EACCES, message: expect.stringContaining('not the pinned') });
    await new Promise((r) => setTimeout(r, 50));
    expect(server.stats.connections).toBe(1);
    expect(server.stats.sessions).toBe(0);
  });

  it('multiplexes two exports on one TLS connection, each attached with its own token', async () => {
    const { server, port, dirs } = await remote(['one', 'two']);
    const a = await connect(creds(port, 'one', server.tokens.issue('one', { readOnly: false })));
    const c = await connect(creds(port, 'two', server.tokens.issue('two', { readOnly: false })));
    writeFileSync(join(dirs.one!, 'x'), '1');
    writeFileSync(join(dirs.two!, 'y'), '22');
    expect((await a.getattr([b('x')])).size).toBe(1n);
    expect((await c.getattr([b('y')])).size).toBe(2n);
    expect(await errnoOf(a.getattr([b('y')]))).toBe(Errno.ENOENT);
    expect(a.connection).toBe(c.connection);
    expect(server.stats.connections).toBe(1);
    expect(server.stats.open).toBe(1);
  });
});

describe('reconnection', () => {
  it('an open file keeps working after the connection is dropped, and a read in flight completes', async () => {
    // The server's reads wait on a gate, so a read is surely in flight when the connection drops.
    let gate: Promise<void> | null = null;
    let entered: (() => void) | null = null;
    const wrap = (backend: Backend): Backend =>
      new Proxy(backend, {
        get(target, prop, receiver) {
          const value = Reflect.get(target, prop, receiver) as unknown;
          if (prop !== 'open') return typeof value === 'function' ? (value as (...args: unknown[]) => unknown).bind(target) : value;
          return async (path: never, flags: number): Promise<FileHandle> => {
            const h = await target.open(path, flags);
            const read = h.read.bind(h);
            h.read = async (offset, count) => {
              if (gate !== null) {
                entered?.();
                await gate;
              }
              return read(offset, count);
            };
            return h;
          };
        },
      });
    const { server, port, dirs } = await remote(['data'], wrap);
    writeFileSync(join(dirs.data!, 'f'), 'before');
    const backend = await connect(creds(port, 'data', server.tokens.issue('data', { readOnly: false })));
    const { client } = await local(backend);
    await client.walk(1, 2, 'f');
    await client.rpc({ type: 'Tlopen', fid: 2, flags: OpenFlag.RDWR }, 'Rlopen');

    let release!: () => void;
    gate = new Promise((r) => (release = r));
    const inServer = new Promise<void>((r) => (entered = r));
    const reading = client.rpc({ type: 'Tread', fid: 2, offset: 0n, count: 100 }, 'Rread');
    await inServer;
    server.dropConnections();
    release();
    gate = null;
    expect((await reading).data.toString()).toBe('before');
    expect(backend.connection.dials).toBe(2);

    // The reopened file: write through it, read back.
    await client.rpc({ type: 'Twrite', fid: 2, offset: 0n, data: b('AFTER!') }, 'Rwrite');
    expect(readFileSync(join(dirs.data!, 'f'), 'utf8')).toBe('AFTER!');
    server.dropConnections();
    expect((await client.rpc({ type: 'Tread', fid: 2, offset: 0n, count: 100 }, 'Rread')).data.toString()).toBe('AFTER!');
    expect(backend.connection.dials).toBe(3);
  });

  it('after connections are cut under writes, new files open, and old ones close, as before', async () => {
    const { server, port, dirs } = await remote(['data']);
    const backend = await connect(creds(port, 'data', server.tokens.issue('data', { readOnly: false })));
    const { client } = await local(backend);
    await client.walk(1, 2, []);
    await client.rpc({ type: 'Tlcreate', fid: 2, name: b('big'), flags: OpenFlag.WRONLY, mode: 0o644, gid: 0 }, 'Rlcreate');
    const chunk = Buffer.alloc(65536, 1);
    const writes: Promise<unknown>[] = [];
    for (let i = 0; i < 64; i++) {
      writes.push(client.rpc({ type: 'Twrite', fid: 2, offset: BigInt(i * chunk.length), data: chunk }, 'Rwrite'));
      if (i % 16 === 8) server.dropConnections();
    }
    await Promise.all(writes);
    await client.clunk(2);
    expect(readFileSync(join(dirs.data!, 'big')).length).toBe(64 * 65536);
    // A new walk and open after the reconnects.
    // (An auth fid of a reconnect's attach was once freed unclunked: its number, reused for a walk, was EBADF.)
    await client.walk(1, 3, ['big']);
    await client.rpc({ type: 'Tlopen', fid: 3, flags: OpenFlag.RDONLY }, 'Rlopen');
    expect((await client.rpc({ type: 'Tread', fid: 3, offset: 0n, count: 10 }, 'Rread')).data).toEqual(chunk.subarray(0, 10));
  });

  it('a file removed during the outage is stale (ESTALE) after the reconnect', async () => {
    const { server, port, dirs } = await remote(['data']);
    writeFileSync(join(dirs.data!, 'f'), 'x');
    const backend = await connect(creds(port, 'data', server.tokens.issue('data', { readOnly: false })));
    const h = await backend.open([b('f')], OpenFlag.RDONLY);
    server.dropConnections();
    rmSync(join(dirs.data!, 'f'));
    expect(await errnoOf(h.read(0n, 10))).toBe(Errno.ESTALE);
    await h.close();
    expect((await backend.getattr([])).mode & 0o170000).toBe(0o040000);
  });

  it('an outage longer than outageTimeoutMs fails with EIO, within bounds', async () => {
    const { server, port } = await remote(['data']);
    const backend = await connect(creds(port, 'data', server.tokens.issue('data', { readOnly: false })), 300);
    expect((await backend.getattr([])).qid.type).toBe(0x80);
    await server.close();
    const started = Date.now();
    expect(await errnoOf(backend.getattr([]))).toBe(Errno.EIO);
    const took = Date.now() - started;
    expect(took).toBeGreaterThanOrEqual(250);
    expect(took).toBeLessThan(1500);
    // Past the bound, further calls fail at once rather than waiting again.
    const again = Date.now();
    expect(await errnoOf(backend.getattr([]))).toBe(Errno.EIO);
    expect(Date.now() - again).toBeLessThan(100);
  });
});

describe('credentials', () => {
  it('parses a credentials document and says what is wrong with a bad one', () => {
    const good = {
      version: 1,
      url: 'roost://[::1]:7564/my%20vol',
      token: `roost_vt_${'a'.repeat(43)}`,
      fingerprint: `SHA256:${'AB:'.repeat(31)}AB`,
      readOnly: true,
    };
    const c = parseCredentials(JSON.stringify(good));
    expect(c).toMatchObject({ readOnly: true, fingerprint: `sha256:${'ab'.repeat(32)}` });
    const cases: [unknown, RegExp][] = [
      ['{', /not JSON/],
      [[], /expected a JSON object/],
      [{ ...good, url: 'http://x:1/a' }, /not a remote volume URL/],
      [{ ...good, token: 'secret' }, /"token" is missing or not a volume token/],
      [{ ...good, fingerprint: 'md5:00' }, /"fingerprint" is not sha256/],
      [{ ...good, fingerprint: undefined }, /neither "fingerprint" nor "ca"/],
      [{ ...good, version: 2 }, /version 2 is not supported/],
    ];
    for (const [doc, message] of cases) {
      const text = typeof doc === 'string' ? doc : JSON.stringify(doc);
      expect(() => parseCredentials(text, 'creds.json')).toThrow(message);
      try {
        parseCredentials(text, 'creds.json');
      } catch (err) {
        expect((err as Error).message).not.toContain('secret');
        expect((err as Error).message).toMatch(/^creds\.json: /);
      }
    }
  });
});
