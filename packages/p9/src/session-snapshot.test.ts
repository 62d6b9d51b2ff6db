import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { P9Client } from './client.js';
import { Errno, LockStatus, LockType, OpenFlag } from './constants.js';
import { P9Error } from './errors.js';
import { connectInProcess } from './harness.js';
import { LocalBackend } from './local.js';
import { P9Server } from './server.js';
import { serializeSession, type SessionSnapshot } from './session-snapshot.js';
import { duplexPair } from './streams.js';
import { decodeDirents } from './wire.js';

let dir: string;
let server: P9Server;

beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'p9-snap-'));
  writeFileSync(join(dir, 'f'), '0123456789');
  for (let i = 0; i < 100; i++) writeFileSync(join(dir, `e${i}`), '');
  server = new P9Server({ exports: { vol: { backend: new LocalBackend(dir) } } });
});

afterEach(async () => {
  await server.close();
  rmSync(dir, { recursive: true, force: true });
});

/** A client on a new stream pair attached to `session` (no Tversion: the session already has one). */
function reattach(session: ReturnType<P9Server['createSession']>, msize: number): P9Client {
  const [serverEnd, clientEnd] = duplexPair();
  void session.attach(serverEnd);
  const client = new P9Client(clientEnd);
  client.msize = msize;
  return client;
}

/** Opens fid 2 on `f` (read-write), fid 3 on the root directory, reads 20 entries, and locks `f`. */
async function setUp(client: P9Client): Promise<string[]> {
  await client.attach(1, 'vol', 1000);
  await client.walk(1, 2, ['f']);
  await client.rpc({ type: 'Tlopen', fid: 2, flags: OpenFlag.RDWR }, 'Rlopen');
  await client.walk(1, 3, []);
  await client.rpc({ type: 'Tlopen', fid: 3, flags: OpenFlag.RDONLY }, 'Rlopen');
  const first = await client.rpc({ type: 'Treaddir', fid: 3, offset: 0n, count: 20 * 30 }, 'Rreaddir');
  const lock = await client.rpc({ type: 'Tlock', fid: 2, lockType: LockType.WRLCK, flags: 0, start: 0n, length: 0n, procId: 7, clientId: 'g' }, 'Rlock');
  expect(lock.status).toBe(LockStatus.SUCCESS);
  return decodeDirents(first.data).map((e) => e.name.toString());
}

/** Lists the rest of fid 3 from `offset`. */
async function rest(client: P9Client, offset: bigint): Promise<string[]> {
  const names: string[] = [];
  for (;;) {
    const r = await client.rpc({ type: 'Treaddir', fid: 3, offset, count: 4096 }, 'Rreaddir');
    const entries = decodeDirents(r.data);
    if (entries.length === 0) return names;
    names.push(...entries.map((e) => e.name.toString()));
    offset = entries[entries.length - 1]!.offset;
  }
}

describe('sessions outlive their stream', () => {
  it('detach and re-attach to a new stream keeps fids, open files, cursors and locks', async () => {
    const { client, session } = await connectInProcess(server);
    const first = await setUp(client);
    await session.detach();
    client.close();
    expect(session.closed).toBe(false);

    const again = reattach(session, 262144);
    expect((await again.rpc({ type: 'Tread', fid: 2, offset: 3n, count: 3 }, 'Rread')).data.toString()).toBe('345');
    const tail = await rest(again, BigInt(first.length));
    expect(new Set([...first, ...tail]).size).toBe(103);
    const other = await connectInProcess(server);
    await other.client.attach(1, 'vol');
    await other.client.walk(1, 2, ['f']);
    const blocked = await other.client.rpc(
      { type: 'Tlock', fid: 2, lockType: LockType.RDLCK, flags: 0, start: 0n, length: 1n, procId: 1, clientId: 'h' },
      'Rlock',
    );
    expect(blocked.status).toBe(LockStatus.BLOCKED);
    other.client.close();
    again.close();
  });

  it('replies finished while no stream is attached are delivered on the next attach', async () => {
    // An export whose reads wait for a gate.
    let open!: () => void;
    const gate = new Promise<void>((r) => (open = r));
    const local = new LocalBackend(dir);
    const slowOpen = local.open.bind(local);
    local.open = async (path, flags) => {
      const h = await slowOpen(path, flags);
      const read = h.read.bind(h);
      h.read = async (offset, count) => {
        await gate;
        return read(offset, count);
      };
      return h;
    };
    server.addExport('slow', { backend: local });
    const { client, session } = await connectInProcess(server);
    await client.attach(1, 'slow');
    await client.walk(1, 2, ['f']);
    await client.rpc({ type: 'Tlopen', fid: 2, flags: 0 }, 'Rlopen');
    // The connection drops with a read in flight (the relay went away during a snapshot).
    const pending = client.send({ type: 'Tread', fid: 2, offset: 0n, count: 4 });
    await new Promise((r) => setTimeout(r, 10));
    client.stream.destroy();
    await pending.reply.catch(() => undefined);
    expect(session.inflight).toBe(1);
    open();
    await session.detach();
    const [serverEnd, clientEnd] = duplexPair();
    const again = new P9Client(clientEnd);
    // The reply arrives on the new stream, under its tag.
    const replies: Buffer[] = [];
    clientEnd.on('data', (d: Buffer) => replies.push(d));
    void session.attach(serverEnd);
    await new Promise((r) => setTimeout(r, 20));
    const frame = Buffer.concat(replies);
    expect(frame.readUInt8(4)).toBe(117); // Rread
    expect(frame.readUInt16LE(5)).toBe(pending.tag);
    expect(frame.subarray(11).toString()).toBe('0123');
    again.close();
  });

  it('saves to JSON and rebuilds in a fresh server: fids, open files, cursors and locks', async () => {
    const { client, session } = await connectInProcess(server);
    const first = await setUp(client);
    writeFileSync(join(dir, 'gone'), '');
    await client.walk(1, 4, ['gone']);
    await client.rpc({ type: 'Tunlinkat', dirfid: 1, name: Buffer.from('gone'), flags: 0 }, 'Runlinkat');
    await client.walk(1, 5, ['f']);
    await client.rpc({ type: 'Txattrwalk', fid: 5, newfid: 6, name: Buffer.from('') }, 'Rxattrwalk');
    await session.detach();
    client.close();
    const saved = JSON.parse(JSON.stringify(serializeSession(session))) as SessionSnapshot;
    expect(saved.fids.map((f) => f.fid).sort()).toEqual([1, 2, 3, 4, 5, 6]);
    expect(saved.fids.find((f) => f.fid === 3)?.open?.dirOffset).toBe(String(first.length));
    expect(saved.locks).toHaveLength(1);

    // A new process: a new server, a new backend on the same directory.
    await server.close();
    server = new P9Server({ exports: { vol: { backend: new LocalBackend(dir) } } });
    const rebuilt = await server.restoreSession(saved);
    expect(rebuilt.id).toBe(saved.id);
    const again = reattach(rebuilt, saved.msize);
    await again.rpc({ type: 'Twrite', fid: 2, offset: 10n, data: Buffer.from('AB') }, 'Rwrite');
    expect((await again.rpc({ type: 'Tread', fid: 2, offset: 8n, count: 10 }, 'Rread')).data.toString()).toBe('89AB');
    const tail = await rest(again, BigInt(first.length));
    expect(new Set([...first, ...tail]).size).toBe(103);
    // The removed file's fid and the xattr fid are stale; their clunks still succeed.
    await expect(again.rpc({ type: 'Tgetattr', fid: 4, requestMask: 0x7ffn })).rejects.toMatchObject({ errno: Errno.ESTALE });
    await expect(again.rpc({ type: 'Tread', fid: 6, offset: 0n, count: 10 })).rejects.toBeInstanceOf(P9Error);
    await again.clunk(4);
    await again.clunk(6);
    // The lock came back with the session.
    const other = await connectInProcess(server);
    await other.client.attach(1, 'vol');
    await other.client.walk(1, 2, ['f']);
    const blocked = await other.client.rpc(
      { type: 'Tlock', fid: 2, lockType: LockType.RDLCK, flags: 0, start: 0n, length: 1n, procId: 1, clientId: 'h' },
      'Rlock',
    );
    expect(blocked.status).toBe(LockStatus.BLOCKED);
    await rebuilt.close();
    const free = await other.client.rpc(
      { type: 'Tlock', fid: 2, lockType: LockType.RDLCK, flags: 0, start: 0n, length: 1n, procId: 1, clientId: 'h' },
      'Rlock',
    );
    expect(free.status).toBe(LockStatus.SUCCESS);
    other.client.close();
  });

  it('refuses to save a session that is attached', async () => {
    const { session } = await connectInProcess(server);
    expect(() => serializeSession(session)).toThrow(/detach/);
  });
});
