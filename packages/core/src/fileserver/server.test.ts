import { mkdtempSync, readFileSync, rmSync, writeFileSync, mkdirSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Duplex } from 'node:stream';
import { afterEach, describe, expect, it } from 'vitest';
import { duplexPair, OpenFlag, P9Client } from '@roost/p9';
import { encodeMuxFrame, MuxKind, MuxParser } from '@roost/protocol';
import type { FileServerConfig, FileServerState } from './config.js';
import { FileServerControl } from './process.js';
import { FileServer, serveControl } from './server.js';

// The file server against a relay written here in TypeScript (what the
// guest agent's relay does, per docs/PROTOCOL.md): one "guest" 9P client per
// channel, multiplexed over a unix socket that stands for QEMU's port.

const b = (s: string): Buffer => Buffer.from(s);

/** The guest side: QEMU's port socket, and the relay's state, which (like guest memory) survives a "restore". */
class FakeRelay {
  readonly guests = new Map<number, Duplex>();
  quiesced = false;
  /** Guest bytes held while quiesced (in the guest's socket buffers). */
  readonly held: Array<[number, Buffer]> = [];
  port: net.Socket | null = null;
  readonly frames: number[] = [];

  /** A 9P client on `channel` (the guest kernel's mount). */
  client(channel: number): P9Client {
    const [guest, relayEnd] = duplexPair();
    this.guests.set(channel, relayEnd);
    relayEnd.on('data', (chunk: Buffer) => {
      if (this.quiesced || !this.port) this.held.push([channel, chunk]);
      else this.port.write(encodeMuxFrame(channel, MuxKind.DATA, chunk));
    });
    return new P9Client(guest);
  }

  /** Serves the port on `path` (a new QEMU); resolves with the socket once the file server connects. */
  listen(path: string): Promise<net.Server> {
    return new Promise((resolve) => {
      const server = net.createServer((socket) => {
        this.port = socket;
        const parser = new MuxParser();
        socket.on('data', (chunk: Buffer) => {
          for (const f of parser.feed(chunk)) {
            this.frames.push(f.kind);
            if (f.kind === MuxKind.DATA) this.guests.get(f.channel)?.write(f.payload);
            else if (f.kind === MuxKind.QUIESCE) {
              this.quiesced = true;
              socket.write(encodeMuxFrame(0, MuxKind.QUIESCED));
            } else if (f.kind === MuxKind.BARRIER) socket.write(encodeMuxFrame(0, MuxKind.BARRIER_ACK, f.payload));
            else if (f.kind === MuxKind.RESUME) {
              this.quiesced = false;
              for (const [channel, chunk] of this.held.splice(0)) socket.write(encodeMuxFrame(channel, MuxKind.DATA, chunk));
            }
          }
        });
        socket.on('error', () => {});
        socket.write(encodeMuxFrame(0, MuxKind.HELLO, Buffer.from([this.quiesced ? 1 : 0])));
      });
      server.listen(path, () => resolve(server));
    });
  }
}

const cleanups: Array<() => unknown> = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

function setup(): { dir: string; vol: string; config: FileServerConfig } {
  const dir = mkdtempSync(join(tmpdir(), 'roost-fileserver-'));
  cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
  const vol = join(dir, 'vol');
  mkdirSync(vol);
  mkdirSync(join(dir, 'ro'));
  writeFileSync(join(dir, 'ro', 'r.txt'), 'read only\n');
  const config: FileServerConfig = {
    socket: join(dir, 'files.sock'),
    control: join(dir, 'files.ctl'),
    exports: [
      { channel: 0, path: vol, readOnly: false },
      { channel: 3, path: join(dir, 'ro'), readOnly: true },
    ],
  };
  return { dir, vol, config };
}

async function start(config: FileServerConfig, relay: FakeRelay, restore?: string): Promise<{ fs: FileServer; stop: () => Promise<void> }> {
  const qemu = await relay.listen(config.socket);
  const fs = await FileServer.create(config, () => {});
  if (restore) await fs.restore(restore);
  const control = await serveControl(fs, config.control);
  await fs.connect();
  let stopped = false;
  const stop = async (): Promise<void> => {
    if (stopped) return;
    stopped = true;
    control.close();
    qemu.close();
    await fs.close();
  };
  cleanups.push(stop);
  return { fs, stop };
}

describe('the file server over a relay port', () => {
  it('serves each channel its own export: files reach the host, a read-only one refuses writes', async () => {
    const { vol, config } = setup();
    const relay = new FakeRelay();
    await start(config, relay);
    const c0 = relay.client(0);
    await c0.version();
    await c0.attach(1, 'v0');
    await c0.walk(1, 2, []);
    await c0.rpc({ type: 'Tlcreate', fid: 2, name: b('hello.txt'), flags: OpenFlag.RDWR, mode: 0o644, gid: 0 }, 'Rlcreate');
    expect((await c0.rpc({ type: 'Twrite', fid: 2, offset: 0n, data: b('hi there') }, 'Rwrite')).count).toBe(8);
    expect(readFileSync(join(vol, 'hello.txt'), 'utf8')).toBe('hi there');
    const c3 = relay.client(3);
    await c3.version();
    await c3.attach(1, 'v3');
    await c3.walk(1, 2, []);
    await expect(c3.rpc({ type: 'Tlcreate', fid: 2, name: b('x'), flags: OpenFlag.RDWR, mode: 0o644, gid: 0 })).rejects.toThrow(/EROFS/);
  });

  it('a channel that is no volume is ended, not served', async () => {
    const { config } = setup();
    const relay = new FakeRelay();
    await start(config, relay);
    const c = relay.client(7);
    const ended = new Promise<number>((resolve) => {
      const parser = new MuxParser();
      relay.port!.on('data', (chunk: Buffer) => {
        for (const f of parser.feed(chunk)) if (f.kind === MuxKind.EOF) resolve(f.channel);
      });
    });
    c.send({ type: 'Tversion', msize: 65536, version: '9P2000.L' });
    expect(await ended).toBe(7);
  });

  it('quiesces with requests in flight, saves the sessions, and a new server rebuilds them: open files go on', async () => {
    const { dir, vol, config } = setup();
    writeFileSync(join(vol, 'data.bin'), Buffer.alloc(1 << 20, 7));
    const relay = new FakeRelay();
    const first = await start(config, relay);
    const c = relay.client(0);
    await c.version();
    await c.attach(1, 'v0');
    await c.walk(1, 2, ['data.bin']);
    await c.rpc({ type: 'Tlopen', fid: 2, flags: OpenFlag.RDWR }, 'Rlopen');
    // Reads in flight while the quiesce starts: each is answered, before or after it.
    const reads = Array.from({ length: 20 }, (_, i) => c.rpc({ type: 'Tread', fid: 2, offset: BigInt(i * 4096), count: 4096 }, 'Rread'));
    const control = new FileServerControl(dir);
    const state: FileServerState = await control.quiesce(5000);
    expect(state.channels.map((ch) => ch.channel)).toEqual([0]);
    expect(state.channels[0]!.session.fids.map((f) => f.fid).sort()).toEqual([1, 2]);
    // Requests made while quiesced wait (in the guest) ...
    const late = c.rpc({ type: 'Tread', fid: 2, offset: 0n, count: 3 }, 'Rread');
    // ... and the "restore": the old server goes, a new one rebuilds the sessions from the saved state.
    await first.stop();
    control.close();
    const saved = join(dir, 'volumes.json');
    writeFileSync(saved, JSON.stringify(state));
    await start(config, relay, saved);
    expect((await late).data).toEqual(Buffer.alloc(3, 7));
    for (const r of await Promise.all(reads)) expect(r.data.length).toBe(4096);
    // The open fid works in the new server: write through it, read back.
    await c.rpc({ type: 'Twrite', fid: 2, offset: 0n, data: b('after') }, 'Rwrite');
    expect(readFileSync(join(vol, 'data.bin')).subarray(0, 5).toString()).toBe('after');
    expect(relay.frames).toContain(MuxKind.RESUME);
  });

  it('resumes by itself when the owner that quiesced it goes away', async () => {
    const { dir, config } = setup();
    const relay = new FakeRelay();
    await start(config, relay);
    const c = relay.client(0);
    await c.version();
    const control = new FileServerControl(dir);
    await control.quiesce(5000);
    const pending = c.attach(1, 'v0');
    control.close();
    await expect(pending).resolves.toMatchObject({ type: 'Rattach' });
  });
});
