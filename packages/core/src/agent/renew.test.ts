import { rmSync } from 'node:fs';
import { createServer, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import {
  Capability,
  decodeHostHello,
  encodeAgentHello,
  encodeFrame,
  FrameDecoder,
  HelloFlags,
  MAX_PAYLOAD,
  MessageType,
  VERSION,
  type HostHello,
} from '@roost/protocol';
import { AgentConnection } from './connection.js';

/*
 * AgentConnection.renew against a scripted agent: a new HELLO on the open
 * connection (what a pool's hand-over sends), answered, ignored or refused.
 * The real agent's side is test/pools.test.ts (the guest's clock and
 * /dev/urandom after a hand-over).
 */

let server: Server | null = null;
const sockets = new Set<Socket>();
let path = '';
let count = 0;

/** An agent that answers PING and the first HELLO, and later HELLOs as `later` says. */
async function agent(later: (hello: HostHello, sock: Socket) => void): Promise<HostHello[]> {
  const hellos: HostHello[] = [];
  path = join(tmpdir(), `roost-renew-${process.pid}-${++count}.sock`);
  rmSync(path, { force: true });
  server = createServer((sock) => {
    sockets.add(sock);
    const decoder = new FrameDecoder();
    sock.on('data', (chunk) => {
      for (const f of decoder.push(chunk)) {
        if (f.type === MessageType.PING) sock.write(encodeFrame(0, MessageType.PONG, f.payload));
        if (f.type !== MessageType.HELLO) continue;
        const hello = decodeHostHello(f.payload);
        hellos.push(hello);
        if (hellos.length === 1) answer(sock, hello.nonce);
        else later(hello, sock);
      }
    });
  });
  await new Promise<void>((r) => server!.listen(path, r));
  return hellos;
}

function answer(sock: Socket, nonce: Uint8Array, version = VERSION): void {
  sock.write(encodeAgentHello({ version, agentVersion: 'fake 1', maxPayload: MAX_PAYLOAD, nonce: Buffer.from(nonce), capabilities: Capability.NET }));
}

const connect = () => AgentConnection.connect(path, { flags: 0, timeoutMs: 2_000 });

afterEach(async () => {
  for (const s of sockets) s.destroy();
  sockets.clear();
  await new Promise((r) => (server ? server.close(r) : r(undefined)));
  server = null;
  rmSync(path, { force: true });
});

describe('AgentConnection.renew', () => {
  it('sends a new HELLO (clock now, fresh entropy and nonce, the flags and NET given) and resolves on its answer', async () => {
    const hellos = await agent((h, sock) => answer(sock, h.nonce));
    const conn = await connect();
    const net = new Uint8Array(21).fill(7);
    const before = BigInt(Date.now()) * 1_000_000n;
    await conn.renew({ flags: HelloFlags.POWEROFF_ON_DISCONNECT, net, timeoutMs: 2_000 });
    expect(hellos).toHaveLength(2);
    const [first, second] = hellos as [HostHello, HostHello];
    expect(second.flags).toBe(HelloFlags.POWEROFF_ON_DISCONNECT);
    expect(second.timeNs).toBeGreaterThanOrEqual(before);
    expect(Buffer.from(second.entropy)).toHaveLength(64);
    expect(Buffer.from(second.entropy).equals(Buffer.from(first.entropy))).toBe(false);
    expect(Buffer.from(second.nonce).equals(Buffer.from(first.nonce))).toBe(false);
    expect(Buffer.from(second.net!)).toEqual(Buffer.from(net));
    // The connection goes on as before.
    expect(await conn.ping(1_000)).toBeGreaterThanOrEqual(0);
    conn.close();
  });

  it('ignores an answer with another nonce, and times out without its own', async () => {
    await agent((_h, sock) => answer(sock, Buffer.alloc(16, 1)));
    const conn = await connect();
    await expect(conn.renew({ flags: 0, timeoutMs: 200 })).rejects.toMatchObject({ code: 'TIMEOUT' });
    conn.close();
  });

  it('refuses a second renewal while one waits, and an answer of another protocol version', async () => {
    let pending: (() => void) | null = null;
    await agent((h, sock) => (pending = () => answer(sock, h.nonce, VERSION + 1)));
    const conn = await connect();
    const first = conn.renew({ flags: 0, timeoutMs: 2_000 });
    await expect(conn.renew({ flags: 0 })).rejects.toMatchObject({ code: 'INVALID_STATE' });
    const deadline = Date.now() + 2_000;
    while (!pending && Date.now() < deadline) await new Promise((r) => setTimeout(r, 5));
    pending!();
    await expect(first).rejects.toMatchObject({ code: 'AGENT', message: /protocol version/ });
    conn.close();
  });

  it('refuses while a stream is open (the new session would end it), and fails with the connection', async () => {
    await agent(() => {});
    const conn = await connect();
    const listener = { started: () => {}, data: () => {}, eof: () => {}, exit: () => {}, failed: () => {} };
    conn.exec({ args: ['true'] }, listener);
    await expect(conn.renew({ flags: 0 })).rejects.toMatchObject({ code: 'INVALID_STATE', message: /1 commands/ });
    conn.close();
    await expect(conn.renew({ flags: 0 })).rejects.toMatchObject({ code: 'AGENT' });
  });
});
