import { mkdtempSync, rmSync } from 'node:fs';
import { createServer, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import {
  CallFlags,
  FrameDecoder,
  MAX_PAYLOAD,
  MAX_RECORD,
  MessageType,
  VERSION,
  WatchEvent,
  decodeCall,
  decodeCredit,
  decodeData,
  decodeEof,
  decodeHostHello,
  decodeSignal,
  Capability,
  encodeAgentHello,
  encodeData,
  encodeEntryRecord,
  encodeEof,
  encodeErrorRecord,
  encodeEventRecord,
  encodeExit,
  encodeRecord,
  encodeStarted,
  type CallRequest,
  type Fd,
} from '@roost/protocol';
import { AgentConnection } from './agent/connection.js';
import { Files, runCall } from './files.js';

/*
 * The host side of CALL against a scripted agent on a unix socket: what the
 * real agent does is covered by test/files.test.ts; this checks what the
 * host does with every shape of answer, including broken ones.
 */

/** One call stream as the fake agent sees it. */
class FakeStream {
  stdin: Buffer[] = [];
  stdinEof = false;
  signals: number[] = [];
  credit = [0, 0];
  #listeners: (() => void)[] = [];

  constructor(
    readonly sock: Socket,
    readonly id: number,
    readonly request: CallRequest,
  ) {
    const w = request.window ?? 262144;
    this.credit = [w, w];
  }

  started(stdinWindow = 65536): void {
    this.sock.write(encodeStarted(this.id, 4242, stdinWindow));
  }

  out(fd: 1 | 2, data: Uint8Array): void {
    for (let off = 0; off < data.length; off += MAX_PAYLOAD - 1) this.sock.write(encodeData(this.id, fd as Fd, data.subarray(off, off + MAX_PAYLOAD - 1)));
    this.credit[fd - 1]! -= data.length;
  }

  exit(code: number | null, signal: number | null = null): void {
    this.sock.write(Buffer.concat([encodeEof(this.id, 1), encodeEof(this.id, 2), encodeExit(this.id, { exitCode: code, signal, timedOut: false })]));
  }

  fail(errno: number, path: string, message: string): void {
    this.out(2, encodeErrorRecord({ errno, path, message }));
    this.exit(1);
  }

  /** Resolves once `check` holds (re-checked on every frame from the host). */
  until(check: () => boolean): Promise<void> {
    if (check()) return Promise.resolve();
    return new Promise((resolve) => {
      const l = () => {
        if (check()) {
          this.#listeners = this.#listeners.filter((x) => x !== l);
          resolve();
        }
      };
      this.#listeners.push(l);
    });
  }

  onFrame(type: number, payload: Uint8Array): void {
    if (type === MessageType.DATA) this.stdin.push(Buffer.from(decodeData(payload).data));
    else if (type === MessageType.EOF && decodeEof(payload) === 0) this.stdinEof = true;
    else if (type === MessageType.SIGNAL) this.signals.push(decodeSignal(payload));
    else if (type === MessageType.CREDIT) {
      const c = decodeCredit(payload);
      this.credit[c.fd - 1]! += c.bytes;
    }
    for (const l of [...this.#listeners]) l();
  }
}

type Handler = (s: FakeStream) => void | Promise<void>;

let server: Server;
let dir: string;
let handler: Handler = () => {};
const streams: FakeStream[] = [];

async function connect(): Promise<AgentConnection> {
  return AgentConnection.connect(join(dir, 'agent.sock'), { flags: 0, timeoutMs: 5_000 });
}

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'roost-fake-agent-'));
  server = createServer((sock) => {
    const dec = new FrameDecoder();
    const byId = new Map<number, FakeStream>();
    sock.on('error', () => {});
    sock.on('data', (chunk) => {
      for (const f of dec.push(chunk)) {
        if (f.type === MessageType.HELLO) {
          const h = decodeHostHello(f.payload);
          sock.write(
            encodeAgentHello({ version: VERSION, agentVersion: 'fake', maxPayload: MAX_PAYLOAD, nonce: Buffer.from(h.nonce), capabilities: Capability.CALL }),
          );
        } else if (f.type === MessageType.CALL) {
          const s = new FakeStream(sock, f.stream, decodeCall(f.payload));
          byId.set(f.stream, s);
          streams.push(s);
          void handler(s);
        } else {
          byId.get(f.stream)?.onFrame(f.type, f.payload);
        }
      }
    });
  });
  await new Promise<void>((r) => server.listen(join(dir, 'agent.sock'), r));
});
afterAll(() => {
  server.close();
  rmSync(dir, { recursive: true, force: true });
});
afterEach(() => {
  streams.length = 0;
});

const entry = (path: string, stMode: number, extra: { size?: bigint; link?: string; event?: number } = {}) =>
  encodeEntryRecord({
    path,
    name: path.slice(path.lastIndexOf('/') + 1),
    stMode,
    size: extra.size ?? 0n,
    uid: 1,
    gid: 2,
    mtimeNs: 1_700_000_000_500_000_000n,
    ...extra,
  });

describe('runCall', () => {
  it('returns fd 1 and maps an error record to a RoostError', async () => {
    const conn = await connect();
    handler = (s) => {
      s.started();
      if (s.request.args[0] === '/ok') {
        s.out(1, Buffer.from('hello'));
        s.exit(0);
      } else s.fail(2, s.request.args[0]!, 'open: No such file or directory');
    };
    expect((await runCall(conn, { op: 'read', args: ['/ok'] })).toString()).toBe('hello');
    const err = await runCall(conn, { op: 'read', args: ['/etc/nope'] }).catch((e: unknown) => e);
    expect(err).toMatchObject({
      code: 'NOT_FOUND',
      message: 'read /etc/nope: open: No such file or directory (ENOENT)',
      details: { errno: 'ENOENT', path: '/etc/nope' },
    });
    conn.close();
  });

  it('maps errnos by the shared table, and names a path other than the operand', async () => {
    const conn = await connect();
    const cases: [number, string, string][] = [
      [13, 'EACCES', 'PERMISSION_DENIED'],
      [1, 'EPERM', 'PERMISSION_DENIED'],
      [17, 'EEXIST', 'ALREADY_EXISTS'],
      [21, 'EISDIR', 'INVALID_STATE'],
      [20, 'ENOTDIR', 'INVALID_STATE'],
      [39, 'ENOTEMPTY', 'INVALID_STATE'],
      [30, 'EROFS', 'INVALID_STATE'],
      [16, 'EBUSY', 'INVALID_STATE'],
      [18, 'EXDEV', 'INVALID_STATE'],
      [26, 'ETXTBSY', 'INVALID_STATE'],
      [22, 'EINVAL', 'INVALID_ARGUMENT'],
      [36, 'ENAMETOOLONG', 'INVALID_ARGUMENT'],
      [40, 'ELOOP', 'INVALID_ARGUMENT'],
      [28, 'ENOSPC', 'RESOURCE_EXHAUSTED'],
      [122, 'EDQUOT', 'RESOURCE_EXHAUSTED'],
      [27, 'EFBIG', 'RESOURCE_EXHAUSTED'],
      [5, 'EIO', 'AGENT'],
    ];
    for (const [errno, name, code] of cases) {
      handler = (s) => {
        s.started();
        s.fail(errno, '/a', 'mkdir: x');
      };
      await expect(runCall(conn, { op: 'write', args: ['/a/b'] })).rejects.toMatchObject({
        code,
        details: { errno: name, path: '/a' },
        message: `write /a/b: mkdir /a: x (${name})`,
      });
    }
    conn.close();
  });

  it('reports a child that died otherwise as AGENT with its stderr', async () => {
    const conn = await connect();
    handler = (s) => {
      s.started();
      s.out(2, Buffer.from('fileops: assertion failed\n'));
      s.exit(null, 11);
    };
    await expect(runCall(conn, { op: 'stat', args: ['/'] })).rejects.toMatchObject({
      code: 'AGENT',
      message: expect.stringMatching(/killed by signal 11: fileops: assertion failed/),
    });
    handler = (s) => {
      s.started();
      s.exit(3);
    };
    await expect(runCall(conn, { op: 'stat', args: ['/'] })).rejects.toMatchObject({ code: 'AGENT', message: expect.stringMatching(/exited with status 3/) });
    conn.close();
  });

  it('stops a call whose output goes over the bound', async () => {
    const conn = await connect();
    handler = async (s) => {
      s.started();
      s.out(1, Buffer.alloc(100_000));
      await s.until(() => s.signals.length > 0);
      s.exit(null, 15);
    };
    await expect(runCall(conn, { op: 'read', args: ['/big'] }, { maxBytes: 50_000 })).rejects.toMatchObject({ code: 'RESOURCE_EXHAUSTED' });
    expect(streams[0]!.signals).toEqual([15]);
    conn.close();
  });

  it('sends stdin under credit, then EOF', async () => {
    const conn = await connect();
    handler = async (s) => {
      s.started(1000);
      // Credit is handed out in small steps: the host must never send beyond it.
      let granted = 1000;
      while (!s.stdinEof) {
        await s.until(() => s.stdinEof || s.stdin.reduce((n, b) => n + b.length, 0) === granted);
        expect(s.stdin.reduce((n, b) => n + b.length, 0)).toBeLessThanOrEqual(granted);
        if (!s.stdinEof) {
          s.sock.write(creditFrame(s.id, 1000));
          granted += 1000;
        }
      }
      s.out(1, entry('/f', 0o100644, { size: 2500n }));
      s.exit(0);
    };
    async function* parts() {
      yield 'a'.repeat(1500);
      yield new Uint8Array(1000);
    }
    const out = await runCall(conn, { op: 'write', args: ['/f'] }, { stdin: parts() });
    expect(out.length).toBeGreaterThan(0);
    expect(Buffer.concat(streams[0]!.stdin).length).toBe(2500);
    expect(streams[0]!.request.stdin).toBe(true);
    conn.close();
  });

  it('treats a malformed error record as a protocol violation', async () => {
    const conn = await connect();
    const violations: unknown[] = [];
    conn.on('violation', (e) => violations.push(e));
    handler = (s) => {
      s.started();
      s.out(2, Buffer.from('not a record at all'));
      s.exit(1);
    };
    await expect(runCall(conn, { op: 'stat', args: ['/'] })).rejects.toMatchObject({ code: 'AGENT', message: expect.stringMatching(/malformed/) });
    expect(violations).toHaveLength(1);
  });
});

function creditFrame(stream: number, bytes: number): Buffer {
  const b = Buffer.alloc(14);
  b.writeUInt32BE(10, 0);
  b.writeUInt32BE(stream, 4);
  b[8] = MessageType.CREDIT;
  b[9] = 0;
  b.writeUInt32BE(bytes, 10);
  return b;
}

describe('Files', () => {
  let conn: AgentConnection;
  let files: Files;
  beforeAll(async () => {
    conn = await connect();
    files = new Files(
      async () => conn,
      () => ({ user: 'app' }),
    );
  });
  afterAll(() => conn.close());

  it('sends the operation, operands, flags and the default user', async () => {
    handler = (s) => {
      s.started();
      if (s.request.op === 'stat') s.out(1, entry('/l', 0o120777, { size: 3n, link: '/x' }));
      if (s.request.op === 'mkdir') s.out(1, entry('/d', 0o40755, { event: 1 }));
      s.exit(0);
    };
    expect(await files.stat('/l')).toEqual({
      path: '/l',
      name: 'l',
      type: 'symlink',
      size: 3,
      mode: 0o777,
      uid: 1,
      gid: 2,
      mtime: '2023-11-14T22:13:20.500Z',
      symlinkTarget: '/x',
    });
    await files.stat('/l', { follow: true, user: 0 });
    expect(await files.makeDir('/d', { mode: 0o700 })).toBe(true);
    await files.remove('/d');
    await files.remove('/d', { recursive: false });
    expect(streams.map((s) => s.request)).toEqual([
      { op: 'stat', args: ['/l'], user: 'app', stdin: false, window: 262144 },
      { op: 'stat', args: ['/l'], user: '0', stdin: false, window: 262144, flags: CallFlags.FOLLOW },
      { op: 'mkdir', args: ['/d'], user: 'app', stdin: false, window: 262144, flags: CallFlags.PARENTS, mode: 0o700 },
      { op: 'remove', args: ['/d'], user: 'app', stdin: false, window: 262144, flags: CallFlags.RECURSIVE },
      { op: 'remove', args: ['/d'], user: 'app', stdin: false, window: 262144 },
    ]);
  });

  it('validates arguments, naming the field', async () => {
    await expect(files.read('')).rejects.toMatchObject({ code: 'INVALID_ARGUMENT', message: expect.stringMatching(/^path: /) });
    await expect(files.read('/a\0b')).rejects.toMatchObject({ code: 'INVALID_ARGUMENT', message: expect.stringMatching(/NUL/) });
    await expect(files.rename('/a', 7 as unknown as string)).rejects.toMatchObject({ code: 'INVALID_ARGUMENT', message: expect.stringMatching(/^to: /) });
    await expect(files.list('/', { depth: 0 })).rejects.toMatchObject({ code: 'INVALID_ARGUMENT', message: expect.stringMatching(/depth/) });
    await expect(files.write('/a', 'x', { mode: 0o10000 })).rejects.toMatchObject({ code: 'INVALID_ARGUMENT', message: expect.stringMatching(/mode/) });
    await expect(files.write('/a', 42 as unknown as string)).rejects.toMatchObject({ code: 'INVALID_ARGUMENT', message: expect.stringMatching(/^data: /) });
    await expect(files.read('/a', { format: 'json' as 'text' })).rejects.toMatchObject({ code: 'INVALID_ARGUMENT', message: expect.stringMatching(/format/) });
    await expect(files.stat('/a', { bogus: 1 } as object)).rejects.toMatchObject({ code: 'INVALID_ARGUMENT', message: expect.stringMatching(/bogus/) });
    await expect(files.stat('/a', { user: '' })).rejects.toMatchObject({ code: 'INVALID_ARGUMENT', message: expect.stringMatching(/user/) });
    expect(streams).toHaveLength(0);
  });

  it('lists sorted by path; exists is false for ENOENT and ENOTDIR', async () => {
    handler = (s) => {
      s.started();
      if (s.request.op === 'list') {
        s.out(1, Buffer.concat([entry('/d/b', 0o100644), entry('/d/a/z', 0o100644), entry('/d/a', 0o40755)]));
        s.exit(0);
      } else if (s.request.args[0] === '/yes') {
        s.out(1, entry('/yes', 0o100644));
        s.exit(0);
      } else s.fail(s.request.args[0] === '/f/x' ? 20 : 2, s.request.args[0]!, 'lstat: x');
    };
    expect((await files.list('/d', { depth: 2 })).map((e) => e.path)).toEqual(['/d/a', '/d/a/z', '/d/b']);
    expect(streams[0]!.request.depth).toBe(2);
    expect(await files.exists('/yes')).toBe(true);
    expect(await files.exists('/no')).toBe(false);
    expect(await files.exists('/f/x')).toBe(false);
  });

  it('rejects a stream read that fails before its first byte, and ends one that fails later with the error', async () => {
    handler = (s) => {
      s.started();
      if (s.request.args[0] === '/missing') s.fail(2, '/missing', 'open: No such file or directory');
      else {
        s.out(1, Buffer.from('partial'));
        s.fail(5, '/half', 'read: I/O error');
      }
    };
    await expect(files.read('/missing', { format: 'stream' })).rejects.toMatchObject({ code: 'NOT_FOUND', details: { errno: 'ENOENT', path: '/missing' } });
    const stream = await files.read('/half', { format: 'stream' });
    const got: Buffer[] = [];
    await expect(
      (async () => {
        for await (const c of stream) got.push(Buffer.from(c));
      })(),
    ).rejects.toMatchObject({ code: 'AGENT', details: { errno: 'EIO' } });
    expect(Buffer.concat(got).toString()).toBe('partial');
  });

  it('ends a stream read with SIGTERM when the reader breaks out', async () => {
    handler = async (s) => {
      s.started();
      s.out(1, Buffer.alloc(1000, 1));
      s.out(1, Buffer.alloc(1000, 2));
      await s.until(() => s.signals.length > 0);
      s.fail(125, '/f', 'read: Operation canceled');
    };
    for await (const chunk of await files.read('/f', { format: 'stream' })) {
      expect(chunk.length).toBeGreaterThan(0);
      break;
    }
    await streams[0]!.until(() => streams[0]!.signals.length > 0);
    expect(streams[0]!.signals).toEqual([15]);
  });

  it("stops reads past maxBytes (the caller's, else the sandbox's) with RESOURCE_EXHAUSTED naming the limit", async () => {
    handler = async (s) => {
      s.started();
      // A guest that sends more than asked for (a sparse file claims any size), then waits to be stopped.
      for (let i = 0; i < 4; i++) s.out(1, Buffer.alloc(1000, i));
      if (s.request.args[0] === '/exact') return s.exit(0);
      await s.until(() => s.signals.length > 0);
      s.fail(125, '/big', 'read: Operation canceled');
    };
    const limited = new Files(
      async () => conn,
      () => ({ maxBytes: 2500 }),
    );
    const tooMuch = { code: 'RESOURCE_EXHAUSTED', details: { maxBytes: 2500, option: 'maxBytes', path: '/big' } };
    await expect(limited.read('/big', { format: 'bytes' })).rejects.toMatchObject(tooMuch);
    await expect(limited.read('/big')).rejects.toMatchObject({
      message: expect.stringMatching(/more than 2.4 KiB \(2500 bytes\).*Raise the limit with maxBytes/),
    });
    // Streams end with the error once past the limit, after what fitted; the guest's call is stopped.
    const got: Buffer[] = [];
    await expect(
      (async () => {
        for await (const c of await limited.read('/big', { format: 'stream' })) got.push(Buffer.from(c));
      })(),
    ).rejects.toMatchObject(tooMuch);
    expect(Buffer.concat(got).length).toBeLessThanOrEqual(2500);
    await expect(
      (async () => {
        for await (const c of await limited.readArchive('/big')) expect(c.length).toBeGreaterThan(0);
      })(),
    ).rejects.toMatchObject(tooMuch);
    for (const st of streams) await st.until(() => st.signals.includes(15));
    // The caller's maxBytes wins over the default; under it, reads are whole.
    expect((await limited.read('/exact', { format: 'bytes', maxBytes: 4000 })).length).toBe(4000);
    await expect(limited.read('/big', { maxBytes: 0 })).rejects.toMatchObject({ code: 'INVALID_ARGUMENT' });
    await expect(files.readArchive('/big', { maxBytes: 1.5 })).rejects.toMatchObject({ code: 'INVALID_ARGUMENT' });
  });

  it('writes bytes with SIZE and PARENTS; an aborted write sends SIGTERM, no EOF, and rejects once the call ended', async () => {
    let exited = false;
    handler = async (s) => {
      s.started(1 << 20);
      if (s.request.args[0] === '/slow') {
        await s.until(() => s.signals.length > 0);
        await new Promise((r) => setTimeout(r, 100));
        exited = true;
        s.fail(125, '/slow', 'write: Operation canceled');
        return;
      }
      await s.until(() => s.stdinEof);
      s.out(1, entry('/w', 0o100600, { size: 5n }));
      s.exit(0);
    };
    const info = await files.write('/w', 'hello', { mode: 0o600, noReplace: true });
    expect(info).toMatchObject({ path: '/w', type: 'file', size: 5, mode: 0o600 });
    expect(streams[0]!.request).toMatchObject({ op: 'write', stdin: true, size: 5n, mode: 0o600, flags: CallFlags.PARENTS | CallFlags.NO_REPLACE });
    expect(Buffer.concat(streams[0]!.stdin).toString()).toBe('hello');

    const ac = new AbortController();
    async function* forever() {
      for (;;) {
        yield new Uint8Array(4096);
        await new Promise((r) => setTimeout(r, 5));
      }
    }
    const p = files.write('/slow', forever(), { signal: ac.signal });
    await new Promise((r) => setTimeout(r, 100));
    ac.abort();
    await expect(p).rejects.toMatchObject({ code: 'ABORTED' });
    expect(exited).toBe(true);
    const slow = streams[1]!;
    expect(slow.request.size).toBeUndefined();
    expect(slow.signals).toEqual([15]);
    expect(slow.stdinEof).toBe(false);
  });

  it('cancels a write whose data source throws, without EOF', async () => {
    handler = async (s) => {
      s.started();
      await s.until(() => s.signals.length > 0 || s.stdinEof);
      s.fail(125, '/w', 'write: Operation canceled');
    };
    async function* broken() {
      yield 'some';
      throw new Error('disk on fire');
    }
    await expect(files.write('/w', broken())).rejects.toMatchObject({ code: 'ABORTED', message: expect.stringMatching(/disk on fire/) });
    expect(streams[0]!.stdinEof).toBe(false);
  });

  it('watches: waits for READY, merges adjacent rename pairs, and closes with SIGTERM', async () => {
    const S_IFREG = 0o100000;
    const S_IFDIR = 0o040000;
    handler = async (s) => {
      s.started();
      s.out(1, encodeEventRecord({ event: WatchEvent.READY, path: '', stMode: 0 }));
      s.out(
        1,
        Buffer.concat([
          encodeEventRecord({ event: WatchEvent.CREATE, path: '/w/a', stMode: S_IFREG }),
          encodeEventRecord({ event: WatchEvent.WRITE, path: '/w/a', stMode: S_IFREG }),
          encodeEventRecord({ event: WatchEvent.RENAME_FROM, path: '/w/a', stMode: S_IFREG }),
          encodeEventRecord({ event: WatchEvent.RENAME_TO, path: '/w/b', stMode: S_IFREG }),
          encodeEventRecord({ event: 99, path: '/w/future', stMode: S_IFREG }),
          encodeEventRecord({ event: WatchEvent.RENAME_TO, path: '/w/in', stMode: S_IFDIR }),
          encodeEventRecord({ event: WatchEvent.CHMOD, path: '/w/b', stMode: S_IFREG }),
          encodeEventRecord({ event: WatchEvent.RENAME_FROM, path: '/w/b', stMode: S_IFREG }),
        ]),
      );
      await new Promise((r) => setTimeout(r, 200));
      s.out(1, encodeEventRecord({ event: WatchEvent.REMOVE, path: '/w/in', stMode: S_IFDIR }));
      await s.until(() => s.signals.length > 0);
      s.exit(0);
    };
    const watch = await files.watch('/w', { recursive: true });
    expect(streams[0]!.request.flags).toBe(CallFlags.RECURSIVE);
    const seen: unknown[] = [];
    for await (const ev of watch) {
      seen.push(ev);
      if (seen.length === 7) await watch.close();
    }
    expect(seen).toEqual([
      { type: 'create', path: '/w/a', isDir: false },
      { type: 'write', path: '/w/a', isDir: false },
      { type: 'rename', path: '/w/b', oldPath: '/w/a', isDir: false },
      { type: 'rename', path: '/w/in', isDir: true },
      { type: 'chmod', path: '/w/b', isDir: false },
      { type: 'remove', path: '/w/b', isDir: false },
      { type: 'remove', path: '/w/in', isDir: true },
    ]);
    expect(streams[0]!.signals).toEqual([15]);
  });

  it('rejects a watch that fails before READY, and ends one whose path went away', async () => {
    handler = (s) => {
      s.started();
      if (s.request.args[0] === '/nope') return s.fail(2, '/nope', 'inotify_add_watch: No such file or directory');
      s.out(1, encodeEventRecord({ event: WatchEvent.READY, path: '', stMode: 0 }));
      s.out(1, encodeEventRecord({ event: WatchEvent.REMOVE, path: '/gone', stMode: 0o40000 }));
      s.exit(0);
    };
    await expect(files.watch('/nope')).rejects.toMatchObject({ code: 'NOT_FOUND' });
    const events = [];
    for await (const ev of await files.watch('/gone')) events.push(ev);
    expect(events).toEqual([{ type: 'remove', path: '/gone', isDir: true }]);
  });
});

describe('a hostile agent', () => {
  it('an oversized watch record is a violation that ends the connection', async () => {
    const conn = await connect();
    const files = new Files(async () => conn);
    const violations: unknown[] = [];
    conn.on('violation', (e) => violations.push(e));
    handler = (s) => {
      s.started();
      s.out(1, encodeEventRecord({ event: WatchEvent.READY, path: '', stMode: 0 }));
      const head = Buffer.alloc(4);
      head.writeUInt32BE(MAX_RECORD + 1);
      s.out(1, head);
    };
    const watch = await files.watch('/w');
    await expect(
      (async () => {
        for await (const ev of watch) void ev;
      })(),
    ).rejects.toMatchObject({ code: 'AGENT' });
    expect(violations).toHaveLength(1);
  });

  it('a first watch record other than READY is a violation', async () => {
    const conn = await connect();
    const files = new Files(async () => conn);
    handler = (s) => {
      s.started();
      s.out(1, encodeRecord(Buffer.alloc(0)));
    };
    await expect(files.watch('/w')).rejects.toMatchObject({ code: 'AGENT', message: expect.stringMatching(/protocol/) });
  });

  it('a write answered with two records is a violation', async () => {
    const conn = await connect();
    const files = new Files(async () => conn);
    handler = async (s) => {
      s.started();
      await s.until(() => s.stdinEof);
      s.out(1, Buffer.concat([entry('/a', 0o100644), entry('/b', 0o100644)]));
      s.exit(0);
    };
    await expect(files.write('/a', 'x')).rejects.toMatchObject({ code: 'AGENT', message: expect.stringMatching(/malformed/) });
  });
});
