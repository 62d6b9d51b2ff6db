import { mkdirSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { Backend, FileHandle, Path } from './backend.js';
import { Errno, OpenFlag } from './constants.js';
import { P9Error } from './errors.js';
import { connectInProcess } from './harness.js';
import { LocalBackend } from './local.js';
import { P9Server } from './server.js';
import { duplexPair } from './streams.js';
import { decode, encode, type RMessage } from './wire.js';

let dir: string;
let server: P9Server;
/** Reads on the slow export wait until this gate opens. */
let gate: { open: () => void; promise: Promise<void> };

function newGate(): typeof gate {
  let open!: () => void;
  const promise = new Promise<void>((r) => (open = r));
  return { open, promise };
}

/** The local backend, with reads that wait for the gate. */
function slowBackend(inner: LocalBackend): Backend {
  return new Proxy(inner, {
    get(target, prop, receiver) {
      if (prop === 'open') {
        return async (path: Path, flags: number): Promise<FileHandle> => {
          const h = await target.open(path, flags);
          return new Proxy(h, {
            get(t, p) {
              if (p === 'read')
                return async (offset: bigint, count: number) => {
                  await gate.promise;
                  return t.read(offset, count);
                };
              const v = Reflect.get(t, p, t) as unknown;
              return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(t) : v;
            },
          });
        };
      }
      const v = Reflect.get(target, prop, receiver) as unknown;
      return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(target) : v;
    },
  });
}

beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'p9-peers-'));
  writeFileSync(join(dir, 'f'), 'data');
  gate = newGate();
  server = new P9Server({ exports: { '': { backend: new LocalBackend(dir) }, slow: { backend: slowBackend(new LocalBackend(dir)) } } });
});

afterEach(async () => {
  gate.open();
  await server.close();
  rmSync(dir, { recursive: true, force: true });
});

/** A raw peer: writes frames or bytes, collects decoded replies. */
function rawPeer(options?: Parameters<P9Server['createSession']>[0]) {
  const [serverEnd, peer] = duplexPair();
  const session = server.createSession(options);
  const ended = session.attach(serverEnd);
  const replies: RMessage[] = [];
  let pending = Buffer.alloc(0);
  let closed = false;
  peer.on('data', (chunk: Buffer) => {
    pending = Buffer.concat([pending, chunk]);
    while (pending.length >= 4 && pending.length >= pending.readUInt32LE(0)) {
      const size = pending.readUInt32LE(0);
      replies.push(decode(pending.subarray(0, size)) as RMessage);
      pending = pending.subarray(size);
    }
  });
  peer.on('close', () => (closed = true));
  peer.on('end', () => (closed = true));
  return { session, ended, peer, replies, isClosed: () => closed };
}

const until = async (cond: () => boolean, ms = 5000): Promise<void> => {
  const start = Date.now();
  while (!cond()) {
    if (Date.now() - start > ms) throw new Error('timed out');
    await new Promise((r) => setTimeout(r, 2));
  }
};

/** Version, attach to the slow export, walk fid 2 to `f` and open it, one reply at a time. */
async function openSlowFile(p: ReturnType<typeof rawPeer>): Promise<void> {
  const steps: Array<Parameters<typeof encode>[0]> = [
    { type: 'Tversion', tag: 0xffff, msize: 65536, version: '9P2000.L' },
    { type: 'Tattach', tag: 1, fid: 1, afid: 0xffffffff, uname: '', aname: 'slow', nUname: 0 },
    { type: 'Twalk', tag: 2, fid: 1, newfid: 2, names: [Buffer.from('f')] },
    { type: 'Tlopen', tag: 3, fid: 2, flags: OpenFlag.RDONLY },
  ];
  for (const [i, m] of steps.entries()) {
    p.peer.write(encode(m));
    await until(() => p.replies.length === i + 1);
    expect(p.replies[i]!.type).not.toBe('Rlerror');
  }
}

describe('bad peers', () => {
  it('garbage ends that session only; another session keeps working', async () => {
    const good = await connectInProcess(server);
    await good.client.attach(1);
    for (const garbage of [Buffer.from('GET / HTTP/1.1\r\n\r\n'), Buffer.alloc(64, 0xff), Buffer.from([3, 0, 0, 0])]) {
      const bad = rawPeer();
      bad.peer.write(encode({ type: 'Tversion', tag: 0xffff, msize: 65536, version: '9P2000.L' }));
      bad.peer.write(garbage);
      await until(() => bad.session.closed);
      expect(bad.session.error).toBeDefined();
      await until(bad.isClosed);
    }
    expect((await good.client.walk(1, 2, ['f'])).qids).toHaveLength(1);
    good.client.close();
  });

  it('a frame over msize ends the session before it is buffered', async () => {
    const bad = rawPeer();
    bad.peer.write(encode({ type: 'Tversion', tag: 0xffff, msize: 8192, version: '9P2000.L' }));
    await until(() => bad.replies.length === 1);
    const header = Buffer.alloc(7);
    header.writeUInt32LE(512 << 20);
    header.writeUInt8(118, 4);
    bad.peer.write(header);
    bad.peer.write(Buffer.alloc(65536));
    await until(() => bad.session.closed);
    expect(bad.session.error?.message).toMatch(/over msize 8192/);
  });

  it('requests before Tversion, R-messages, and reused tags end the session', async () => {
    const early = rawPeer();
    early.peer.write(encode({ type: 'Tclunk', tag: 1, fid: 1 }));
    await until(() => early.session.closed);
    const reply = rawPeer();
    reply.peer.write(encode({ type: 'Tversion', tag: 0xffff, msize: 8192, version: '9P2000.L' }));
    reply.peer.write(encode({ type: 'Rclunk', tag: 1 }));
    await until(() => reply.session.closed);
    const dup = rawPeer();
    await openSlowFile(dup);
    dup.peer.write(encode({ type: 'Tread', tag: 4, fid: 2, offset: 0n, count: 10 }));
    dup.peer.write(encode({ type: 'Tread', tag: 4, fid: 2, offset: 0n, count: 10 }));
    await until(() => dup.session.closed);
    expect(dup.session.error?.message).toMatch(/tag 4 is in use/);
  });

  it('fids beyond the bound get EMFILE, memory stays bounded, and the session goes on', async () => {
    const { client, session } = await connectInProcess(server, 262144, { maxFids: 10_000 });
    await client.attach(0);
    const before = process.memoryUsage().heapUsed;
    const results = await Promise.all(
      Array.from({ length: 12_000 }, (_, i) =>
        client.walk(0, i + 1, ['f']).then(
          () => 0,
          (e: P9Error) => e.errno,
        ),
      ),
    );
    expect(results.filter((r) => r === 0)).toHaveLength(9_999);
    expect(results.filter((r) => r === Errno.EMFILE)).toHaveLength(2_001);
    expect(session.fids.size).toBe(10_000);
    // All fids name the same file: one node in the tree below the root.
    expect(server.exportFor('').tree.size).toBe(2);
    expect(process.memoryUsage().heapUsed - before).toBeLessThan(64 << 20);
    await client.clunk(1);
    expect((await client.walk(0, 1, ['f'])).qids).toHaveLength(1);
    client.close();
  });

  it('a flood of Tflush for unknown tags is answered, with requests in flight bounded', async () => {
    const p = rawPeer({ maxInflight: 16 });
    p.peer.write(encode({ type: 'Tversion', tag: 0xffff, msize: 65536, version: '9P2000.L' }));
    const flood = Buffer.concat(Array.from({ length: 50_000 }, (_, i) => encode({ type: 'Tflush', tag: i % 60_000, oldtag: (i * 7) % 65535 })));
    p.peer.write(flood);
    await until(() => p.replies.length === 50_001, 20_000);
    expect(p.replies.slice(1).every((r) => r.type === 'Rflush')).toBe(true);
    expect(p.session.closed).toBe(false);
  });

  it('flushes: a request waiting for its fid is cancelled (no reply); a running one replies before the Rflush', async () => {
    const p = rawPeer({ maxInflight: 64 });
    const send = (m: Parameters<typeof encode>[0]) => p.peer.write(encode(m));
    await openSlowFile(p);
    send({ type: 'Tread', tag: 10, fid: 2, offset: 0n, count: 4 }); // runs, waits in the backend
    send({ type: 'Tclunk', tag: 11, fid: 2 }); // waits for the read (exclusive on fid 2)
    await until(() => p.session.inflight === 2);
    send({ type: 'Tflush', tag: 12, oldtag: 11 });
    await until(() => p.replies.length === 5);
    expect(p.replies[4]).toEqual({ type: 'Rflush', tag: 12 });
    send({ type: 'Tflush', tag: 13, oldtag: 10 });
    await new Promise((r) => setTimeout(r, 20));
    expect(p.replies).toHaveLength(5); // the Rflush waits for the read
    gate.open();
    await until(() => p.replies.length === 7);
    expect(p.replies[5]).toMatchObject({ type: 'Rread', tag: 10 });
    expect(p.replies[6]).toEqual({ type: 'Rflush', tag: 13 });
    // The cancelled clunk had no effect: fid 2 is still there.
    send({ type: 'Tclunk', tag: 14, fid: 2 });
    await until(() => p.replies.length === 8);
    expect(p.replies[7]).toEqual({ type: 'Rclunk', tag: 14 });
    expect(p.replies.some((r) => r.tag === 11)).toBe(false);
  });

  it('starts at most maxInflight requests at once; the others wait, unread', async () => {
    const p = rawPeer({ maxInflight: 8 });
    await openSlowFile(p);
    p.peer.write(Buffer.concat(Array.from({ length: 1000 }, (_, i) => encode({ type: 'Tread', tag: 100 + i, fid: 2, offset: 0n, count: 4 }))));
    await new Promise((r) => setTimeout(r, 50));
    expect(p.session.inflight).toBe(8);
    gate.open();
    await until(() => p.replies.length === 1004);
    expect(p.replies.slice(4).every((r) => r.type === 'Rread')).toBe(true);
  });

  it('holds at most maxInflightBytes of requests and the replies they may make', async () => {
    const p = rawPeer({ maxInflight: 64, maxInflightBytes: 256 << 10 });
    await openSlowFile(p);
    p.peer.write(Buffer.concat(Array.from({ length: 100 }, (_, i) => encode({ type: 'Tread', tag: 100 + i, fid: 2, offset: 0n, count: 65536 }))));
    await new Promise((r) => setTimeout(r, 50));
    expect(p.session.inflight).toBe(3); // 3 x (64 KiB + 23) fit in 256 KiB, 4 do not
    gate.open();
    await until(() => p.replies.length === 104);
  });

  it('a peer that does not read its replies stops the session reading, with memory bounded', async () => {
    writeFileSync(join(dir, 'big'), Buffer.alloc(1 << 20, 7));
    const port = await server.listen(0);
    const socket = connect(port, '127.0.0.1');
    await new Promise((r) => socket.once('connect', r));
    let received = 0;
    let pending = Buffer.alloc(0);
    socket.on('data', (chunk: Buffer) => {
      pending = Buffer.concat([pending, chunk]);
      while (pending.length >= 4 && pending.length >= pending.readUInt32LE(0)) {
        pending = pending.subarray(pending.readUInt32LE(0));
        received++;
      }
    });
    const steps: Array<Parameters<typeof encode>[0]> = [
      { type: 'Tversion', tag: 0xffff, msize: 1 << 20, version: '9P2000.L' },
      { type: 'Tattach', tag: 1, fid: 1, afid: 0xffffffff, uname: '', aname: '', nUname: 0 },
      { type: 'Twalk', tag: 2, fid: 1, newfid: 2, names: [Buffer.from('big')] },
      { type: 'Tlopen', tag: 3, fid: 2, flags: OpenFlag.RDONLY },
    ];
    for (const [i, m] of steps.entries()) {
      socket.write(encode(m));
      await until(() => received === i + 1);
    }
    socket.pause();
    const before = process.memoryUsage().rss;
    const reads = 1000; // 1 GiB of replies if nothing held the server back
    const frames = Buffer.concat(Array.from({ length: reads }, (_, i) => encode({ type: 'Tread', tag: i, fid: 2, offset: 0n, count: 1 << 20 })));
    socket.write(frames);
    await new Promise((r) => setTimeout(r, 1000));
    const [session] = [...server.sessions];
    expect(session!.inflight).toBeLessThanOrEqual(16);
    expect(process.memoryUsage().rss - before).toBeLessThan(256 << 20);
    socket.resume();
    await until(() => received === 4 + reads, 60_000);
    socket.destroy();
  }, 90_000);

  it('an Rlerror for messages it does not serve (Tauth, 9P2000 ones are unknown types)', async () => {
    const { client } = await connectInProcess(server);
    const r = await client.send({ type: 'Tauth', afid: 5, uname: 'u', aname: '', nUname: 0 }).reply;
    expect(r).toMatchObject({ type: 'Rlerror', ecode: Errno.EOPNOTSUPP });
    await expect(client.rpc({ type: 'Tattach', fid: 1, afid: 5, uname: '', aname: '', nUname: 0 })).rejects.toThrow(P9Error);
    client.close();
  });
});

describe('fuzzing', () => {
  /** A deterministic generator (so a failure can be replayed). */
  function rng(seed: number): () => number {
    let s = seed >>> 0;
    return () => {
      s = (s * 1664525 + 1013904223) >>> 0;
      return s / 0x100000000;
    };
  }

  it('answers every well-formed request with random fields, never crashing, never writing outside', async () => {
    const rand = rng(21);
    const names = ['f', 'd', '..', '.', '', 'a/b', 'x'.repeat(300), 'new', 'sub'];
    const pick = <T>(xs: readonly T[]): T => xs[Math.floor(rand() * xs.length)]!;
    const value = (kind: string): unknown => {
      switch (kind) {
        case 'u8':
          return Math.floor(rand() * 4);
        case 'u16':
          return Math.floor(rand() * 20);
        case 'u32':
          return rand() < 0.8 ? Math.floor(rand() * 8) : Math.floor(rand() * 0xffffffff);
        case 'u64':
          return rand() < 0.8 ? BigInt(Math.floor(rand() * 100)) : 0xffffffffffffffffn;
        case 'str':
          return pick(['', 'user.x', '9P2000.L', 'guest']);
        case 'name':
          return Buffer.from(pick(names));
        case 'names':
          return Array.from({ length: Math.floor(rand() * 4) }, () => Buffer.from(pick(names)));
        case 'data':
          return Buffer.alloc(Math.floor(rand() * 100), 0x41);
        default:
          return { type: 0, version: 0, path: 0n };
      }
    };
    const { SCHEMAS } = await import('./wire.js');
    const types = (Object.keys(SCHEMAS) as Array<keyof typeof SCHEMAS>).filter((t) => t.startsWith('T') && t !== 'Tversion' && t !== 'Tflush');
    // A private parent, to see that nothing lands beside the export.
    const base = mkdtempSync(join(tmpdir(), 'p9-fuzz-'));
    const exportDir = join(base, 'export');
    mkdirSync(join(exportDir, 'd'), { recursive: true });
    writeFileSync(join(exportDir, 'f'), 'data');
    const fuzzServer = new P9Server({ exports: { '': { backend: new LocalBackend(exportDir) } } });
    const { client, session } = await connectInProcess(fuzzServer);
    await client.attach(0);
    await client.attach(1);
    const replies: Promise<unknown>[] = [];
    for (let i = 0; i < 5000; i++) {
      const type = pick(types);
      const m: Record<string, unknown> = { type };
      for (const [field, kind] of SCHEMAS[type] as readonly (readonly [string, string])[]) m[field] = value(kind);
      replies.push(client.send(m as never).reply);
    }
    const got = await Promise.all(replies);
    expect(got).toHaveLength(5000);
    expect(session.closed).toBe(false);
    // Nothing was made beside the export.
    expect(readdirSync(base)).toEqual(['export']);
    client.close();
    await fuzzServer.close();
    rmSync(base, { recursive: true, force: true });
  });
});
