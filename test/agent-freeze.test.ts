import { existsSync, readFileSync, rmSync } from 'node:fs';
import { createServer, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { RoostError, type Sandbox } from '@roost/core';
import { AgentConnection, type ExecChannel } from '@roost/core/internal';
import {
  Capability,
  FrameDecoder,
  HelloFlags,
  MAX_PAYLOAD,
  MessageType,
  ProtocolError,
  VERSION,
  decodeCall,
  decodeFreezeResult,
  decodeHostHello,
  encodeAgentHello,
  encodeFrame,
  encodeFreeze,
  encodeFreezeResult,
  encodeHostHello,
  encodeThaw,
  type ExecExit,
  type ExecRequest,
  type Frame,
} from '@roost/protocol';
import { alive, eventually, TestHome } from './helpers.js';

// FREEZE/THAW (docs/PROTOCOL.md, "Snapshots"): the codec and the host's
// bookkeeping against a fake agent, then the real agent in one VM, driven
// through raw agent connections (the sandbox is detached and let go, so its
// own connection never reconnects behind the test's back).

const EOPNOTSUPP = 95;
const EIO = 5;

// ---- a fake agent on a unix socket -------------------------------------------

interface FakeAgent {
  path: string;
  /** The agent side of the (latest) connection. */
  socket(): Socket;
  close(): Promise<void>;
}

let fakeCount = 0;

/** Every capability this host knows. */
const ALL_CAPABILITIES = Capability.FREEZE | Capability.CALL | Capability.NET;

/**
 * Answers HELLO and PING like an agent and hands every other frame to
 * `onFrame`. Its HELLO announces `capabilities` (null: no CAPABILITIES, as
 * an agent older than the tag).
 */
async function fakeAgent(onFrame: (f: Frame, sock: Socket) => void = () => {}, capabilities: number | null = ALL_CAPABILITIES): Promise<FakeAgent> {
  const path = join(tmpdir(), `roost-fake-agent-${process.pid}-${++fakeCount}.sock`);
  rmSync(path, { force: true });
  let last: Socket | null = null;
  const server: Server = createServer((sock) => {
    last = sock;
    const decoder = new FrameDecoder();
    sock.on('error', () => {});
    sock.on('data', (chunk: Buffer) => {
      for (const f of decoder.push(chunk)) {
        if (f.type === MessageType.HELLO) {
          const h = decodeHostHello(f.payload);
          sock.write(
            encodeAgentHello({
              version: VERSION,
              agentVersion: 'fake',
              maxPayload: MAX_PAYLOAD,
              nonce: Buffer.from(h.nonce),
              capabilities: capabilities ?? undefined,
            }),
          );
        } else if (f.type === MessageType.PING) {
          sock.write(encodeFrame(0, MessageType.PONG, f.payload));
        } else {
          onFrame(f, sock);
        }
      }
    });
  });
  await new Promise<void>((resolve) => server.listen(path, resolve));
  return {
    path,
    socket: () => {
      if (!last) throw new Error('no connection to the fake agent');
      return last;
    },
    close: () =>
      new Promise<void>((resolve) => {
        last?.destroy();
        server.close(() => resolve());
      }),
  };
}

const answer = (type: typeof MessageType.FREEZE | typeof MessageType.THAW, errno: number, message?: string) =>
  encodeFreezeResult(type, message === undefined ? { errno } : { errno, message });

describe('FREEZE/THAW on the wire', () => {
  it('encodes the requests as empty control frames and round-trips the answers', () => {
    expect(encodeFreeze()).toEqual(Buffer.from([0, 0, 0, 5, 0, 0, 0, 0, 0x06]));
    expect(encodeThaw()).toEqual(Buffer.from([0, 0, 0, 5, 0, 0, 0, 0, 0x07]));
    const ok = answer(MessageType.FREEZE, 0);
    expect(ok.subarray(0, 9)).toEqual(Buffer.from([0, 0, 0, 15, 0, 0, 0, 0, 0x06]));
    expect(decodeFreezeResult(ok.subarray(9))).toEqual({ errno: 0 });
    const failed = answer(MessageType.THAW, EOPNOTSUPP, 'nothing to freeze');
    expect(failed[8]).toBe(0x07);
    expect(decodeFreezeResult(failed.subarray(9))).toEqual({ errno: EOPNOTSUPP, message: 'nothing to freeze' });
    expect(() => decodeFreezeResult(new Uint8Array(0))).toThrow(ProtocolError);
  });

  it('the host resolves freeze() and thaw() with the agent answers', async () => {
    const fake = await fakeAgent((f, sock) => {
      if (f.type === MessageType.FREEZE) sock.write(answer(MessageType.FREEZE, 0));
      if (f.type === MessageType.THAW) sock.write(answer(MessageType.THAW, EIO, 'FITHAW: I/O error'));
    });
    const conn = await AgentConnection.connect(fake.path, { flags: 0, timeoutMs: 5_000 });
    try {
      expect(await conn.freeze()).toEqual({ errno: 0 });
      expect(await conn.thaw()).toEqual({ errno: EIO, message: 'FITHAW: I/O error' });
      expect(await conn.freeze()).toEqual({ errno: 0 });
    } finally {
      conn.close();
      await fake.close();
    }
  });

  it('times out, refuses a second request while one waits, and drops a late answer', async () => {
    const seen: number[] = [];
    const fake = await fakeAgent((f) => seen.push(f.type));
    const conn = await AgentConnection.connect(fake.path, { flags: 0, timeoutMs: 5_000 });
    const violations: unknown[] = [];
    conn.on('violation', (e) => violations.push(e));
    try {
      const first = conn.freeze(200);
      await expect(conn.thaw()).rejects.toMatchObject({ code: 'INVALID_STATE' });
      await expect(first).rejects.toMatchObject({ code: 'TIMEOUT' });
      // The agent may still be busy with the FREEZE: a THAW may follow it at once.
      const thaw = conn.thaw(5_000);
      await eventually(() => seen.length === 2, 2_000, 'both requests at the fake agent');
      expect(seen).toEqual([MessageType.FREEZE, MessageType.THAW]);
      fake.socket().write(Buffer.concat([answer(MessageType.FREEZE, 0), answer(MessageType.THAW, 0)]));
      expect(await thaw).toEqual({ errno: 0 });
      expect(violations).toEqual([]);
      expect(await conn.ping()).toBeGreaterThanOrEqual(0);
    } finally {
      conn.close();
      await fake.close();
    }
  });

  it('an answer nobody asked for, or of the wrong type, is a protocol violation', async () => {
    const fake = await fakeAgent();
    const conn = await AgentConnection.connect(fake.path, { flags: 0, timeoutMs: 5_000 });
    const violation = new Promise<RoostError>((resolve) => conn.once('violation', resolve));
    fake.socket().write(answer(MessageType.THAW, 0));
    expect((await violation).message).toMatch(/THAW answer the host did not ask for/);
    await expect(conn.freeze()).rejects.toMatchObject({ code: 'AGENT' });
    await fake.close();

    const fake2 = await fakeAgent((f, sock) => {
      if (f.type === MessageType.FREEZE) sock.write(answer(MessageType.THAW, 0));
    });
    const conn2 = await AgentConnection.connect(fake2.path, { flags: 0, timeoutMs: 5_000 });
    conn2.on('violation', () => {});
    await expect(conn2.freeze()).rejects.toMatchObject({ code: 'AGENT', message: expect.stringMatching(/protocol/) });
    await fake2.close();
  });

  it('a request in flight fails with the connection when it ends', async () => {
    const fake = await fakeAgent((f, sock) => {
      if (f.type === MessageType.FREEZE) sock.destroy();
    });
    const conn = await AgentConnection.connect(fake.path, { flags: 0, timeoutMs: 5_000 });
    await expect(conn.freeze()).rejects.toMatchObject({ code: 'AGENT', message: expect.stringMatching(/closed/) });
    await fake.close();
  });
});

describe('capabilities: the host sends only what the agent announced', () => {
  const noListener = { started: () => {}, data: () => {}, eof: () => {}, exit: () => {}, failed: () => {} };
  const net = Buffer.alloc(21);

  it('an agent without CAPABILITIES gets no FREEZE, THAW, CALL or NET, and the errors say so', async () => {
    const seen: number[] = [];
    const fake = await fakeAgent((f) => seen.push(f.type), null);
    const conn = await AgentConnection.connect(fake.path, { flags: 0, timeoutMs: 5_000 });
    try {
      expect(conn.agent).toEqual({ protocolVersion: VERSION, version: 'fake', capabilities: [] });
      expect(conn.supports('FREEZE')).toBe(false);
      const refused = { code: 'AGENT', message: expect.stringMatching(/guest agent \(fake, protocol 1\) does not announce the FREEZE capability/) };
      await expect(conn.freeze()).rejects.toMatchObject(refused);
      await expect(conn.thaw()).rejects.toMatchObject(refused);
      await expect(conn.freeze()).rejects.toMatchObject({ details: { capability: 'FREEZE', agentVersion: 'fake', capabilities: [] } });
      expect(() => conn.call({ op: 'stat', args: ['/'] }, noListener)).toThrow(/fake, protocol 1\) does not announce the CALL capability/);
      // Commands were there from the start: an exec still goes out.
      conn.exec({ args: ['true'] }, noListener);
      expect(await conn.ping()).toBeGreaterThanOrEqual(0);
      expect(seen).toEqual([MessageType.EXEC]);
    } finally {
      conn.close();
      await fake.close();
    }
    const fake2 = await fakeAgent(() => {}, null);
    try {
      await expect(AgentConnection.connect(fake2.path, { flags: 0, timeoutMs: 5_000, net })).rejects.toMatchObject({
        code: 'AGENT',
        message: expect.stringMatching(/fake, protocol 1\) does not announce the NET capability, so the host cannot configure the sandbox's network/),
      });
    } finally {
      await fake2.close();
    }
  });

  it('each capability opens its own requests', async () => {
    const calls: string[] = [];
    const fake = await fakeAgent((f, sock) => {
      if (f.type === MessageType.CALL) calls.push(decodeCall(f.payload).op);
      if (f.type === MessageType.FREEZE) sock.write(answer(MessageType.FREEZE, 0));
    }, Capability.CALL | Capability.NET);
    const conn = await AgentConnection.connect(fake.path, { flags: 0, timeoutMs: 5_000, net });
    try {
      expect(conn.agent.capabilities).toEqual(['CALL', 'NET']);
      conn.call({ op: 'stat', args: ['/'] }, noListener);
      await expect(conn.freeze()).rejects.toMatchObject({ code: 'AGENT', details: { capability: 'FREEZE' } });
      await eventually(() => calls.length === 1, 2_000, 'the CALL at the fake agent');
      expect(calls).toEqual(['stat']);
    } finally {
      conn.close();
      await fake.close();
    }
  });
});

// ---- the real agent ---------------------------------------------------------

interface Ran {
  channel: ExecChannel;
  pid: Promise<number>;
  done: Promise<{ exit: ExecExit; stdout: string; stderr: string }>;
  /** Resolves with the first output chunk. */
  firstOutput: Promise<void>;
}

/** Starts `sh -c script` on a raw connection, granting credit as output comes. */
function start(conn: AgentConnection, script: string, opts: Partial<ExecRequest> = {}): Ran {
  const out: [Buffer[], Buffer[]] = [[], []];
  let onPid!: (pid: number) => void;
  let onDone!: (r: { exit: ExecExit; stdout: string; stderr: string }) => void;
  let onFail!: (e: RoostError) => void;
  let onOutput!: () => void;
  const pid = new Promise<number>((resolve, reject) => {
    onPid = resolve;
    onFail = (e) => {
      reject(e);
      rejectDone(e);
    };
  });
  let rejectDone!: (e: RoostError) => void;
  const done = new Promise<{ exit: ExecExit; stdout: string; stderr: string }>((resolve, reject) => {
    onDone = resolve;
    rejectDone = reject;
  });
  const firstOutput = new Promise<void>((resolve) => (onOutput = resolve));
  // Streams the test abandons (orphans, a closed connection) fail later: not an unhandled rejection.
  pid.catch(() => {});
  done.catch(() => {});
  const channel: ExecChannel = conn.exec(
    { args: ['sh', '-c', script], ...opts },
    {
      started: (p) => onPid(p),
      data: (fd, chunk) => {
        out[fd === 1 ? 0 : 1].push(Buffer.from(chunk));
        channel.grant(fd, chunk.length);
        onOutput();
      },
      eof: () => {},
      exit: (exit) => onDone({ exit, stdout: Buffer.concat(out[0]).toString(), stderr: Buffer.concat(out[1]).toString() }),
      failed: (e) => onFail(e),
    },
  );
  return { channel, pid, done, firstOutput };
}

function within<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout;
  return Promise.race([
    p.finally(() => clearTimeout(timer)),
    new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error(`${what}: not within ${ms} ms`)), ms))),
  ]);
}

/** Runs a script to its end and returns its stdout; a non-zero exit throws. */
async function sh(conn: AgentConnection, script: string, ms = 20_000): Promise<string> {
  const r = await within(start(conn, script).done, ms, script);
  if (r.exit.exitCode !== 0) throw new Error(`${script}: exit ${r.exit.exitCode ?? `signal ${r.exit.signal}`}: ${r.stderr}`);
  return r.stdout;
}

/** The exit code of `kill -0 pid` in the guest: 0 while the process lives. */
async function probe(conn: AgentConnection, pid: number): Promise<number | null> {
  return (await within(start(conn, `kill -0 ${pid} 2>/dev/null`).done, 20_000, `kill -0 ${pid}`)).exit.exitCode;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

const home = new TestHome();
let sb: Sandbox;
let qemuPid: number;
const connections: AgentConnection[] = [];

/** A new host connection: a new HELLO with fresh ENTROPY and NONCE. */
async function connectAgent(flags: number): Promise<AgentConnection> {
  const conn = await AgentConnection.connect(join(sb.dir, 'agent.sock'), { flags, timeoutMs: 20_000 });
  conn.on('violation', () => {});
  connections.push(conn);
  return conn;
}

describe('the agent: FREEZE, THAW and a restored copy', () => {
  beforeAll(async () => {
    // Detached: the sandbox's own connection carries no POWEROFF flag, and
    // once it is let go the test alone speaks to the agent.
    sb = await home.create({ detached: true });
    qemuPid = sb.info.pid!;
    sb.disconnect();
  });
  afterAll(async () => {
    for (const c of connections) c.close();
    await home.cleanup();
  });

  it('FREEZE holds writes to the disk until THAW', async () => {
    const conn = await connectAgent(0);
    expect(conn.agent).toEqual({ protocolVersion: VERSION, version: 'roost-agent 0.2.0', capabilities: ['FREEZE', 'CALL', 'NET', 'LAYERS', 'P9_RELAY'] });
    await sh(conn, 'echo before > /root/before && sync');
    const t0 = performance.now();
    expect(await conn.freeze()).toEqual({ errno: 0 });
    const freezeMs = performance.now() - t0;
    expect(await conn.freeze()).toEqual({ errno: 0 }); // already frozen: still 0
    // Reading works while frozen; writing blocks.
    expect(await sh(conn, 'cat /root/before')).toBe('before\n');
    const writer = start(conn, 'echo x > /root/f; sync; cat /root/f');
    await writer.pid;
    let finished = false;
    void writer.done.then(
      () => (finished = true),
      () => {},
    );
    await sleep(400);
    expect(finished).toBe(false);
    const t1 = performance.now();
    expect(await conn.thaw()).toEqual({ errno: 0 });
    const thawMs = performance.now() - t1;
    const r = await within(writer.done, 10_000, 'the writer after THAW');
    expect(r.exit.exitCode).toBe(0);
    expect(r.stdout).toBe('x\n');
    expect(await conn.thaw()).toEqual({ errno: 0 }); // not frozen: 0
    console.log(`freeze ${freezeMs.toFixed(1)} ms, thaw ${thawMs.toFixed(1)} ms`);
    conn.close();
  });

  it('a restored copy (disconnect while frozen) keeps commands as orphans, thaws and stays up despite POWEROFF_ON_DISCONNECT', async () => {
    const conn = await connectAgent(HelloFlags.POWEROFF_ON_DISCONNECT);
    await sh(conn, 'rm -f /tmp/flood.done /tmp/ticker.pid');
    const ticker = start(conn, 'echo $$ > /tmp/ticker.pid; while :; do echo tick; sleep 0.05; done');
    // Waits for stdin EOF, then writes 1 MiB to stdout (more than a pipe holds), then leaves a mark.
    const flood = start(conn, 'cat > /dev/null; head -c 1048576 /dev/zero; echo ok > /tmp/flood.done', { stdin: true });
    const tickerPid = await ticker.pid;
    const floodPid = await flood.pid;
    await within(ticker.firstOutput, 10_000, 'the first tick');
    expect(await conn.freeze()).toEqual({ errno: 0 });
    conn.close(); // the copy's first event: its (old) host is gone

    await sleep(1_000);
    expect(alive(qemuPid)).toBe(true);
    const conn2 = await connectAgent(0);
    expect(alive(qemuPid)).toBe(true);
    expect(await sh(conn2, 'cat /tmp/ticker.pid')).toBe(`${tickerPid}\n`);
    expect(await probe(conn2, tickerPid)).toBe(0);
    // Thawed: the disk takes writes again.
    expect(await sh(conn2, 'echo y > /root/g && sync && cat /root/g', 10_000)).toBe('y\n');
    // The orphan's stdin was closed and its output is drained: it ran to its end.
    await eventually(async () => (await sh(conn2, 'cat /tmp/flood.done 2>/dev/null || true')) === 'ok\n', 10_000, 'the flood orphan finished');
    await eventually(async () => (await probe(conn2, floodPid)) !== 0, 5_000, 'the flood orphan reaped');
    // The ticker keeps ticking: a second later it is still there.
    await sleep(1_000);
    expect(await probe(conn2, tickerPid)).toBe(0);

    // An ordinary disconnect (no FREEZE) still kills that session's commands, and leaves orphans alone.
    const sleeper = start(conn2, 'sleep 1000');
    const sleeperPid = await sleeper.pid;
    conn2.close();
    const conn3 = await connectAgent(0);
    await eventually(async () => (await probe(conn3, sleeperPid)) !== 0, 5_000, 'the sleeper killed');
    expect(await probe(conn3, tickerPid)).toBe(0);
    await sh(conn3, `kill ${tickerPid}`);
    await eventually(async () => (await probe(conn3, tickerPid)) !== 0, 5_000, 'the ticker gone');
    conn3.close();
  });

  it('a restored copy (a new HELLO while frozen) does the same, and ends its calls', async () => {
    const conn = await connectAgent(0);
    const ticker = start(conn, 'while :; do echo tick; sleep 0.05; done');
    const tickerPid = await ticker.pid;
    await within(ticker.firstOutput, 10_000, 'the first tick');
    // A call of the previous session is ended (SIGTERM), not orphaned.
    let callPid = 0;
    const callStarted = new Promise<void>((resolve, reject) => {
      conn.call(
        { op: 'watch', args: ['/tmp'], stdin: false },
        {
          started: (pid) => {
            callPid = pid;
            resolve();
          },
          data: () => {},
          eof: () => {},
          exit: () => {},
          failed: (e) => reject(e),
        },
      );
    });
    await within(callStarted, 10_000, 'the watch call');
    expect(await conn.freeze()).toEqual({ errno: 0 });
    // A new session on the same connection, as a restored copy sees when its new host is quick.
    conn.send(
      encodeHostHello({ version: VERSION, flags: 0, timeNs: BigInt(Date.now()) * 1_000_000n, entropy: Buffer.alloc(32, 7), nonce: Buffer.from('again') }),
    );
    await sleep(500);
    conn.close(); // flags 0 in the second HELLO: no power off
    const conn2 = await connectAgent(0);
    expect(await sh(conn2, 'echo z > /root/h && sync && cat /root/h', 10_000)).toBe('z\n');
    expect(await probe(conn2, tickerPid)).toBe(0);
    await eventually(async () => (await probe(conn2, callPid)) !== 0, 10_000, 'the call ended');
    await sh(conn2, `kill ${tickerPid}`);
    expect(alive(qemuPid)).toBe(true);
    conn2.close();
  });

  it('every HELLO mixes entropy and reseeds: /dev/urandom works after several sessions', async () => {
    const a = await connectAgent(0);
    const first = await sh(a, 'head -c 32 /dev/urandom | od -An -tx1 | tr -d " \\n"');
    a.close();
    const b = await connectAgent(0);
    const second = await sh(b, 'head -c 32 /dev/urandom | od -An -tx1 | tr -d " \\n"');
    expect(first).toMatch(/^[0-9a-f]{64}$/);
    expect(second).toMatch(/^[0-9a-f]{64}$/);
    expect(second).not.toBe(first);
    b.close();
    // The agent logs a failed RNDRESEEDCRNG (once) to the console; there must be none.
    const log = existsSync(sb.consoleLogPath) ? readFileSync(sb.consoleLogPath, 'utf8') : '';
    expect(log).toMatch(/roost-agent: ready/); // the agent's log does reach this file
    expect(log).not.toMatch(/RNDRESEEDCRNG/);
    expect(log).not.toMatch(/FIFREEZE|FITHAW/);
  });
});
