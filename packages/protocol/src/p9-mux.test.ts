import { describe, expect, it } from 'vitest';
import { ProtocolError } from './errors.js';
import { MUX_HEADER, MUX_MAX_PAYLOAD, MuxKind, MuxParser, decodeMuxHello, encodeMuxFrame } from './p9-mux.js';

describe('mux frames of the 9P relay port', () => {
  it('freezes the header layout and kinds', () => {
    expect(MUX_HEADER).toBe(8);
    expect(MUX_MAX_PAYLOAD).toBe(1048576);
    expect(MuxKind).toEqual({ DATA: 0, EOF: 1, QUIESCE: 2, QUIESCED: 3, BARRIER: 4, BARRIER_ACK: 5, RESUME: 6, HELLO: 7 });
    expect(encodeMuxFrame(0x0102, MuxKind.BARRIER, Buffer.from('ab'))).toEqual(Buffer.from([2, 0, 0, 0, 2, 1, 4, 0, 0x61, 0x62]));
    expect(encodeMuxFrame(7, MuxKind.QUIESCE)).toEqual(Buffer.from([0, 0, 0, 0, 7, 0, 2, 0]));
  });

  it('parses frames split anywhere and joined in one chunk', () => {
    const frames = [
      encodeMuxFrame(3, MuxKind.DATA, Buffer.from('hello')),
      encodeMuxFrame(0, MuxKind.QUIESCED),
      encodeMuxFrame(65535, MuxKind.DATA, Buffer.alloc(1000, 9)),
      encodeMuxFrame(0, MuxKind.HELLO, Buffer.from([1, 3, 0, 255, 255])),
    ];
    const all = Buffer.concat(frames);
    const expected = [
      { channel: 3, kind: 0, payload: Buffer.from('hello') },
      { channel: 0, kind: 3, payload: Buffer.alloc(0) },
      { channel: 65535, kind: 0, payload: Buffer.alloc(1000, 9) },
      { channel: 0, kind: 7, payload: Buffer.from([1, 3, 0, 255, 255]) },
    ];
    expect(new MuxParser().feed(all)).toEqual(expected);
    for (const step of [1, 3, 8, 9, 1000]) {
      const p = new MuxParser();
      const got = [];
      for (let i = 0; i < all.length; i += step) got.push(...p.feed(all.subarray(i, i + step)));
      expect(got).toEqual(expected);
      expect(p.buffered).toBe(0);
    }
    expect(decodeMuxHello(expected[3]!.payload)).toEqual({ quiesced: true, channels: [3, 65535] });
  });

  it('takes the largest frame and refuses a larger length', () => {
    const big = encodeMuxFrame(1, MuxKind.DATA, Buffer.alloc(MUX_MAX_PAYLOAD, 1));
    const p = new MuxParser();
    expect(p.feed(big.subarray(0, 100))).toEqual([]);
    const [f] = p.feed(big.subarray(100));
    expect(f!.payload.length).toBe(MUX_MAX_PAYLOAD);
    const bad = Buffer.alloc(MUX_HEADER);
    bad.writeUInt32LE(MUX_MAX_PAYLOAD + 1, 0);
    expect(() => new MuxParser().feed(bad)).toThrow(ProtocolError);
    expect(() => new MuxParser().feed(Buffer.from([0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0]))).toThrow(ProtocolError);
  });

  it('refuses to encode what the guest would refuse', () => {
    expect(() => encodeMuxFrame(65536, MuxKind.DATA)).toThrow(RangeError);
    expect(() => encodeMuxFrame(-1, MuxKind.DATA)).toThrow(RangeError);
    expect(() => encodeMuxFrame(0, 256)).toThrow(RangeError);
    expect(() => encodeMuxFrame(0, MuxKind.DATA, Buffer.alloc(MUX_MAX_PAYLOAD + 1))).toThrow(RangeError);
    expect(() => decodeMuxHello(Buffer.from([2]))).toThrow(ProtocolError);
    expect(() => decodeMuxHello(Buffer.from([0, 1]))).toThrow(ProtocolError);
  });
});
