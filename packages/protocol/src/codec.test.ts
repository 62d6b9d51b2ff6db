import { randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { CallFlags, MAX_PAYLOAD, MAX_RECORD, MessageType, Tag, WatchEvent } from './constants.js';
import { ProtocolError } from './errors.js';
import { encodeFrame, FrameDecoder, type Frame } from './frame.js';
import {
  decodeAgentHello,
  decodeCall,
  decodeCredit,
  decodeData,
  decodeEof,
  decodeExec,
  decodeExit,
  decodeHostHello,
  decodeResize,
  decodeSignal,
  decodeStarted,
  encodeAgentHello,
  encodeCall,
  encodeCredit,
  encodeData,
  encodeEof,
  encodeExec,
  encodeExit,
  encodeHostHello,
  encodeResize,
  encodeSignal,
  encodeStarted,
} from './messages.js';
import {
  decodeEntryRecord,
  decodeErrorRecord,
  decodeEventRecord,
  encodeEntryRecord,
  encodeErrorRecord,
  encodeEventRecord,
  encodeRecord,
  RecordDecoder,
} from './records.js';
import { parseTlv, TlvReader, TlvWriter } from './tlv.js';

/** A deterministic PRNG so a failure can be replayed. */
function prng(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function payloadOf(frame: Buffer): Frame {
  const frames = new FrameDecoder().push(frame);
  expect(frames).toHaveLength(1);
  return frames[0]!;
}

describe('frames', () => {
  it('round-trips header fields and payload', () => {
    const f = payloadOf(encodeFrame(0xfffffffe, 0x7f, Buffer.from('hello')));
    expect(f.stream).toBe(0xfffffffe);
    expect(f.type).toBe(0x7f);
    expect(Buffer.from(f.payload).toString()).toBe('hello');
  });

  it('decodes a stream of frames split at every byte boundary', () => {
    const frames = [encodeFrame(1, 2, Buffer.alloc(0)), encodeFrame(3, 4, randomBytes(1000)), encodeFrame(5, 6, randomBytes(MAX_PAYLOAD))];
    const wire = Buffer.concat(frames);
    for (const cut of [1, 2, 3, 4, 5, 8, 9, 10, 999, 1009, wire.length - 1]) {
      const d = new FrameDecoder();
      const got = [...d.push(wire.subarray(0, cut)), ...d.push(wire.subarray(cut))];
      expect(got.map((f) => [f.stream, f.type, f.payload.length])).toEqual([
        [1, 2, 0],
        [3, 4, 1000],
        [5, 6, MAX_PAYLOAD],
      ]);
      expect(d.buffered).toBe(0);
    }
    // and one byte at a time
    const d = new FrameDecoder();
    const got: Frame[] = [];
    for (const b of wire) got.push(...d.push(Buffer.of(b)));
    expect(got).toHaveLength(3);
    expect(Buffer.compare(Buffer.from(got[1]!.payload), frames[1]!.subarray(9))).toBe(0);
  });

  it('refuses lengths outside the protocol bounds', () => {
    const tooShort = Buffer.from([0, 0, 0, 4, 0, 0, 0, 0]);
    expect(() => new FrameDecoder().push(tooShort)).toThrow(ProtocolError);
    const tooLong = Buffer.alloc(9);
    tooLong.writeUInt32BE(5 + MAX_PAYLOAD + 1);
    expect(() => new FrameDecoder().push(tooLong)).toThrow(ProtocolError);
    expect(() => encodeFrame(1, 1, Buffer.alloc(MAX_PAYLOAD + 1))).toThrow(RangeError);
  });

  it('never crashes on random bytes: it yields frames or throws ProtocolError', () => {
    const rand = prng(42);
    for (let i = 0; i < 5000; i++) {
      const d = new FrameDecoder();
      const len = Math.floor(rand() * 64);
      const bytes = Buffer.alloc(len);
      for (let j = 0; j < len; j++) bytes[j] = Math.floor(rand() * 256);
      // Small lengths make well-formed frames likely, too.
      if (rand() < 0.5 && len >= 4) bytes.writeUInt32BE(5 + Math.floor(rand() * 8), 0);
      try {
        for (const f of d.push(bytes)) {
          expect(f.payload.length).toBeLessThanOrEqual(MAX_PAYLOAD);
          // Every decoder on the frame either succeeds or throws ProtocolError.
          for (const dec of [
            decodeAgentHello,
            decodeExit,
            decodeData,
            decodeEof,
            decodeCredit,
            decodeSignal,
            decodeResize,
            decodeStarted,
            decodeExec,
            decodeCall,
            decodeEntryRecord,
            decodeEventRecord,
            decodeErrorRecord,
          ]) {
            try {
              dec(f.payload);
            } catch (e) {
              expect(e).toBeInstanceOf(ProtocolError);
            }
          }
        }
      } catch (e) {
        expect(e).toBeInstanceOf(ProtocolError);
      }
    }
  });
});

describe('TLV', () => {
  it('round-trips every kind of value', () => {
    const p = new TlvWriter()
      .u32(1, 0xffffffff)
      .u64(2, 2n ** 63n)
      .string(3, 'héllo')
      .bytes(4, Buffer.from([0, 1, 2]))
      .string(3, 'again')
      .finish();
    const r = new TlvReader(p);
    expect(r.u32(1)).toBe(0xffffffff);
    expect(r.u64(2)).toBe(2n ** 63n);
    expect(r.strings(3)).toEqual(['héllo', 'again']);
    expect([...r.bytes(4)!]).toEqual([0, 1, 2]);
    expect(r.u32(99)).toBeUndefined();
  });

  it('rejects truncated fields at every cut', () => {
    const p = new TlvWriter().string(Tag.ARG, 'echo').string(Tag.ARG, 'hi').finish();
    for (let cut = 1; cut < p.length; cut++) {
      const truncated = p.subarray(0, cut);
      if (cut === 10) continue; // exactly the first whole field: valid
      expect(() => parseTlv(truncated), `cut at ${cut}`).toThrow(ProtocolError);
    }
  });

  it('rejects wrong integer widths and NUL in strings', () => {
    const p = new TlvWriter()
      .bytes(Tag.VERSION, Buffer.from([1, 2]))
      .bytes(Tag.ARG, Buffer.from('a\0b'))
      .finish();
    const r = new TlvReader(p);
    expect(() => r.u32(Tag.VERSION)).toThrow(ProtocolError);
    expect(() => r.strings(Tag.ARG)).toThrow(ProtocolError);
    expect(() => new TlvWriter().string(Tag.ARG, 'a\0b')).toThrow(RangeError);
  });

  it('ignores unknown tags so fields can be added', () => {
    const p = new TlvWriter().u32(0x7777, 5).u32(Tag.PID, 42).finish();
    expect(decodeStarted(p)).toEqual({ pid: 42, stdinWindow: 0 });
  });
});

describe('messages', () => {
  it('round-trips HELLO both ways', () => {
    const nonce = randomBytes(16);
    const host = decodeHostHello(payloadOf(encodeHostHello({ version: 1, flags: 1, timeNs: 123n, entropy: randomBytes(64), nonce })).payload);
    expect(host.version).toBe(1);
    expect(host.timeNs).toBe(123n);
    expect(Buffer.compare(Buffer.from(host.nonce), nonce)).toBe(0);
    const agent = decodeAgentHello(payloadOf(encodeAgentHello({ version: 1, agentVersion: 'x', maxPayload: MAX_PAYLOAD, nonce })).payload);
    expect(agent).toMatchObject({ version: 1, agentVersion: 'x', maxPayload: MAX_PAYLOAD });
  });

  it('round-trips EXEC, STARTED, EXIT, DATA, EOF, CREDIT, SIGNAL, RESIZE', () => {
    const req = {
      args: ['sh', '-c', 'echo hi'],
      env: ['A=1'],
      cwd: '/tmp',
      user: 'nobody',
      pty: true,
      rows: 30,
      cols: 100,
      timeoutMs: 5000,
      stdin: true,
      window: 1 << 20,
    };
    const f = payloadOf(encodeExec(7, req));
    expect(f).toMatchObject({ stream: 7, type: MessageType.EXEC });
    expect(decodeExec(f.payload)).toEqual(req);
    expect(decodeStarted(payloadOf(encodeStarted(7, 99, 65536)).payload)).toEqual({ pid: 99, stdinWindow: 65536 });
    expect(decodeExit(payloadOf(encodeExit(7, { exitCode: 3, signal: null, timedOut: false })).payload)).toEqual({
      exitCode: 3,
      signal: null,
      timedOut: false,
    });
    expect(decodeExit(payloadOf(encodeExit(7, { exitCode: null, signal: 9, timedOut: true })).payload)).toEqual({ exitCode: null, signal: 9, timedOut: true });
    const d = decodeData(payloadOf(encodeData(7, 2, Buffer.from('err'))).payload);
    expect([d.fd, Buffer.from(d.data).toString()]).toEqual([2, 'err']);
    expect(decodeEof(payloadOf(encodeEof(7, 1)).payload)).toBe(1);
    expect(decodeCredit(payloadOf(encodeCredit(7, 1, 4096)).payload)).toEqual({ fd: 1, bytes: 4096 });
    expect(decodeSignal(payloadOf(encodeSignal(7, 15)).payload)).toBe(15);
    expect(decodeResize(payloadOf(encodeResize(7, 50, 132)).payload)).toEqual({ rows: 50, cols: 132 });
  });

  it('refuses an EXEC that does not fit one frame', () => {
    expect(() => encodeExec(1, { args: ['x'], env: ['BIG=' + 'x'.repeat(MAX_PAYLOAD)] })).toThrow(/at most 65536 fit/);
  });

  it('refuses inconsistent EXIT and bad fds', () => {
    expect(() => decodeExit(new TlvWriter().finish())).toThrow(ProtocolError);
    expect(() => decodeExit(new TlvWriter().u32(Tag.EXIT_CODE, 0).u32(Tag.EXIT_SIGNAL, 9).finish())).toThrow(ProtocolError);
    expect(() => decodeExit(new TlvWriter().u32(Tag.EXIT_CODE, 256).finish())).toThrow(ProtocolError);
    expect(() => decodeData(Buffer.of(3, 1))).toThrow(ProtocolError);
    expect(() => decodeEof(Buffer.alloc(0))).toThrow(ProtocolError);
  });
});

describe('CALL', () => {
  it('round-trips every field', () => {
    const req = {
      op: 'write',
      args: ['/tmp/a b', 'ü'],
      user: 'nobody',
      cwd: '/tmp',
      stdin: true,
      window: 1 << 20,
      timeoutMs: 1000,
      mode: 0o640,
      flags: CallFlags.PARENTS | CallFlags.NO_REPLACE,
      depth: 3,
      size: 2n ** 40n,
    };
    const f = payloadOf(encodeCall(9, req));
    expect(f).toMatchObject({ stream: 9, type: MessageType.CALL });
    expect(decodeCall(f.payload)).toEqual(req);
    expect(decodeCall(payloadOf(encodeCall(1, { op: 'stat', args: ['/'] })).payload)).toEqual({ op: 'stat', args: ['/'], stdin: false });
  });

  it('refuses a call without an op, or too large for one frame, or with a NUL', () => {
    expect(() => encodeCall(1, { op: '', args: [] })).toThrow(RangeError);
    expect(() => encodeCall(1, { op: 'stat', args: ['x'.repeat(MAX_PAYLOAD)] })).toThrow(/at most 65536 fit/);
    expect(() => encodeCall(1, { op: 'stat', args: ['a\0b'] })).toThrow(RangeError);
    expect(() => decodeCall(new TlvWriter().string(Tag.ARG, '/').finish())).toThrow(ProtocolError);
  });
});

describe('records', () => {
  const entry = { path: '/etc/passwd', name: 'passwd', stMode: 0o100644, size: 123n, uid: 0, gid: 0, mtimeNs: 1_700_000_000_123_456_789n };

  it('round-trips entry, event and error records', () => {
    const link = { ...entry, path: '/bin/sh', name: 'sh', stMode: 0o120777, size: 12n, link: '/bin/busybox' };
    const dir = { ...entry, path: '/tmp/d', name: 'd', stMode: 0o40755, event: 1 };
    const wire = Buffer.concat([
      encodeEntryRecord(entry),
      encodeEntryRecord(link),
      encodeEntryRecord(dir),
      encodeEventRecord({ event: WatchEvent.READY, path: '', stMode: 0 }),
      encodeEventRecord({ event: WatchEvent.RENAME_TO, path: '/tmp/x', stMode: 0o100000 }),
      encodeErrorRecord({ errno: 2, path: '/nope', message: 'open: No such file or directory' }),
    ]);
    const got = new RecordDecoder().push(wire);
    expect(got).toHaveLength(6);
    expect(got.slice(0, 3).map(decodeEntryRecord)).toEqual([entry, link, dir]);
    expect(got.slice(3, 5).map(decodeEventRecord)).toEqual([
      { event: 0, path: '', stMode: 0 },
      { event: 5, path: '/tmp/x', stMode: 0o100000 },
    ]);
    expect(decodeErrorRecord(got[5]!)).toEqual({ errno: 2, path: '/nope', message: 'open: No such file or directory' });
  });

  it('decodes records split at every byte boundary, and a maximal one', () => {
    const big = encodeRecord(new TlvWriter().bytes(0x7777, Buffer.alloc(MAX_RECORD - 6)).finish());
    const wire = Buffer.concat([encodeEntryRecord(entry), encodeRecord(Buffer.alloc(0)), big, encodeEntryRecord(entry)]);
    for (let cut = 0; cut <= wire.length; cut += cut < 200 ? 1 : 4099) {
      const d = new RecordDecoder();
      const got = [...d.push(wire.subarray(0, cut)), ...d.push(wire.subarray(cut))];
      expect(got.map((r) => r.length)).toEqual([wire.readUInt32BE(0), 0, MAX_RECORD, wire.readUInt32BE(0)]);
      expect(d.buffered).toBe(0);
      d.end();
    }
    const d = new RecordDecoder();
    const got: Buffer[] = [];
    for (const b of encodeEntryRecord(entry)) got.push(...d.push(Buffer.of(b)));
    expect(got.map(decodeEntryRecord)).toEqual([entry]);
  });

  it('refuses a record over the bound and a stream that ends inside one', () => {
    const head = Buffer.alloc(4);
    head.writeUInt32BE(MAX_RECORD + 1);
    expect(() => new RecordDecoder().push(head)).toThrow(ProtocolError);
    expect(() => encodeRecord(Buffer.alloc(MAX_RECORD + 1))).toThrow(RangeError);
    const d = new RecordDecoder();
    expect(d.push(encodeEntryRecord(entry).subarray(0, 10))).toEqual([]);
    expect(() => d.end()).toThrow(ProtocolError);
  });

  it('refuses records without their required fields, and defaults the rest', () => {
    expect(() => decodeEntryRecord(new TlvWriter().u32(Tag.ST_MODE, 0o100644).finish())).toThrow(/without PATH/);
    expect(() => decodeEntryRecord(new TlvWriter().string(Tag.PATH, '/a').finish())).toThrow(/without ST_MODE/);
    expect(decodeEntryRecord(new TlvWriter().string(Tag.PATH, '/a/b').u32(Tag.ST_MODE, 0o40700).finish())).toEqual({
      path: '/a/b',
      name: 'b',
      stMode: 0o40700,
      size: 0n,
      uid: 0,
      gid: 0,
      mtimeNs: 0n,
    });
    expect(() => decodeEventRecord(new TlvWriter().string(Tag.PATH, '/a').finish())).toThrow(ProtocolError);
    expect(() => decodeErrorRecord(new TlvWriter().string(Tag.MESSAGE, 'x').finish())).toThrow(ProtocolError);
    expect(() => decodeErrorRecord(new TlvWriter().bytes(Tag.ERRNO, Buffer.of(1)).finish())).toThrow(ProtocolError);
  });

  it('never crashes on random bytes: it yields records or throws ProtocolError', () => {
    const rand = prng(7);
    for (let i = 0; i < 5000; i++) {
      const len = Math.floor(rand() * 80);
      const bytes = Buffer.alloc(len);
      for (let j = 0; j < len; j++) bytes[j] = Math.floor(rand() * 256);
      if (rand() < 0.7 && len >= 4) bytes.writeUInt32BE(Math.floor(rand() * (len - 3)), 0);
      try {
        for (const r of new RecordDecoder().push(bytes)) {
          for (const dec of [decodeEntryRecord, decodeEventRecord, decodeErrorRecord]) {
            try {
              dec(r);
            } catch (e) {
              expect(e).toBeInstanceOf(ProtocolError);
            }
          }
        }
      } catch (e) {
        expect(e).toBeInstanceOf(ProtocolError);
      }
    }
  });
});
