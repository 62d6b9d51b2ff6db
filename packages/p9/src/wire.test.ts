import { describe, expect, it } from 'vitest';
import { HEADER_SIZE, MsgType } from './constants.js';
import { FrameReader } from './frames.js';
import { decode, decodeDirents, DecodeError, encode, encodeDirents, SCHEMAS, type Message, type MessageName } from './wire.js';

/** A sample value of each field kind, varied by field index so fields are told apart. */
function sample(kind: string, i: number): unknown {
  switch (kind) {
    case 'u8':
      return (7 + i) & 0xff;
    case 'u16':
      return 0xfff0 - i;
    case 'u32':
      return 0xfffffff0 - i;
    case 'u64':
      return 0xfffffffffffffff0n - BigInt(i);
    case 'str':
      return `héllo-${i}`;
    case 'name':
      return Buffer.from([0xff, 0xfe, 0x41 + i]);
    case 'qid':
      return { type: 0x80, version: 0xdeadbeef, path: 0x123456789abcdefn + BigInt(i) };
    case 'qids':
      return [
        { type: 0, version: 1, path: 2n },
        { type: 2, version: 3, path: 4n },
      ];
    case 'names':
      return [Buffer.from('a'), Buffer.from(''), Buffer.from([0x80, 0x81])];
    case 'data':
      return Buffer.from(`data-${i}`);
    default:
      throw new Error(kind);
  }
}

function sampleMessage(name: MessageName, tag = 0x1234): Message {
  const m: Record<string, unknown> = { type: name, tag };
  (SCHEMAS[name] as readonly (readonly [string, string])[]).forEach(([field, kind], i) => (m[field] = sample(kind, i)));
  return m as Message;
}

describe('9P2000.L codec', () => {
  const names = Object.keys(SCHEMAS) as MessageName[];

  it('knows every message of the Linux client and its reply', () => {
    for (const t of [
      'Tversion',
      'Tattach',
      'Twalk',
      'Tlopen',
      'Tlcreate',
      'Tread',
      'Twrite',
      'Tclunk',
      'Tflush',
      'Tgetattr',
      'Tsetattr',
      'Treaddir',
      'Tmkdir',
      'Tmknod',
      'Tsymlink',
      'Tlink',
      'Trename',
      'Trenameat',
      'Tunlinkat',
      'Tfsync',
      'Tstatfs',
      'Txattrwalk',
      'Txattrcreate',
      'Tlock',
      'Tgetlock',
      'Treadlink',
      'Tremove',
    ]) {
      expect(names).toContain(t);
      expect(names).toContain(`R${t.slice(1)}`);
      expect(MsgType[`R${t.slice(1)}` as keyof typeof MsgType]).toBe(MsgType[t as keyof typeof MsgType] + 1);
    }
    expect(names).toContain('Rlerror');
  });

  it.each(names)('round-trips %s', (name) => {
    const m = sampleMessage(name);
    const frame = encode(m);
    expect(frame.readUInt32LE(0)).toBe(frame.length);
    expect(frame.readUInt8(4)).toBe(MsgType[name]);
    expect(decode(frame)).toEqual(m);
  });

  it('encodes Rgetattr at its fixed size and Tgetattr/Twalk as the kernel lays them out', () => {
    expect(encode(sampleMessage('Rgetattr')).length).toBe(HEADER_SIZE + 8 + 13 + 4 * 3 + 8 * 15);
    const walk = encode({ type: 'Twalk', tag: 1, fid: 2, newfid: 3, names: [Buffer.from('ab')] });
    expect([...walk]).toEqual([21, 0, 0, 0, 110, 1, 0, 2, 0, 0, 0, 3, 0, 0, 0, 1, 0, 2, 0, 0x61, 0x62]);
  });

  it.each(names)('refuses every truncation of %s', (name) => {
    const frame = encode(sampleMessage(name));
    for (let len = HEADER_SIZE; len < frame.length; len++) {
      const cut = Buffer.from(frame.subarray(0, len));
      cut.writeUInt32LE(len, 0);
      expect(() => decode(cut)).toThrow(DecodeError);
    }
  });

  it('refuses trailing bytes, a wrong size field, an unknown type and over-long walks', () => {
    const frame = encode(sampleMessage('Tclunk'));
    const long = Buffer.concat([frame, Buffer.from([0])]);
    long.writeUInt32LE(long.length, 0);
    expect(() => decode(long)).toThrow(/after the last field/);
    const lying = Buffer.from(frame);
    lying.writeUInt32LE(frame.length + 1, 0);
    expect(() => decode(lying)).toThrow(/size field/);
    const unknown = Buffer.from(frame);
    unknown.writeUInt8(99, 4);
    expect(() => decode(unknown)).toThrow(/unknown message type 99/);
    const walk = encode({ type: 'Twalk', tag: 1, fid: 1, newfid: 2, names: Array.from({ length: 17 }, () => Buffer.from('x')) });
    expect(() => decode(walk)).toThrow(/17 names/);
  });

  it('refuses a string or data length past the frame without allocating it', () => {
    const frame = encode({ type: 'Twrite', tag: 1, fid: 1, offset: 0n, data: Buffer.from('abc') });
    frame.writeUInt32LE(0xffffffff, HEADER_SIZE + 12);
    expect(() => decode(frame)).toThrow(/needs 4294967295 bytes/);
  });

  it('throws RangeError (a caller bug) on fields out of range', () => {
    expect(() => encode({ type: 'Tclunk', tag: 70000, fid: 1 })).toThrow(RangeError);
    expect(() => encode({ type: 'Tclunk', tag: 1, fid: -1 })).toThrow(RangeError);
    expect(() => encode({ type: 'Tread', tag: 1, fid: 1, offset: -1n, count: 1 })).toThrow(RangeError);
  });

  it('round-trips directory entries and refuses truncated ones', () => {
    const entries = [
      { qid: { type: 0x80, version: 1, path: 2n }, offset: 1n, type: 4, name: Buffer.from('.') },
      { qid: { type: 0, version: 3, path: 4n }, offset: 2n, type: 8, name: Buffer.from([0xc3, 0x28]) },
    ];
    const data = encodeDirents(entries);
    expect(decodeDirents(data)).toEqual(entries);
    expect(() => decodeDirents(data.subarray(0, data.length - 1))).toThrow(DecodeError);
  });
});

describe('FrameReader', () => {
  const frames = [encode(sampleMessage('Twalk')), encode(sampleMessage('Tclunk')), encode(sampleMessage('Twrite'))];
  const bytes = Buffer.concat(frames);

  it('splits a stream cut at every byte into the same frames', () => {
    for (let cut = 0; cut <= bytes.length; cut++) {
      const reader = new FrameReader(8192);
      const out = [...reader.push(bytes.subarray(0, cut)), ...reader.push(bytes.subarray(cut))];
      expect(out).toEqual(frames);
      expect(reader.buffered).toBe(0);
    }
  });

  it('splits a stream fed one byte at a time', () => {
    const reader = new FrameReader(8192);
    const out: Buffer[] = [];
    for (const b of bytes) out.push(...reader.push(Buffer.from([b])));
    expect(out).toEqual(frames);
  });

  it('refuses a size over the bound or under the header before buffering it', () => {
    const big = Buffer.alloc(4);
    big.writeUInt32LE(8193);
    expect(() => new FrameReader(8192).push(big)).toThrow(/over msize/);
    const small = Buffer.alloc(4);
    small.writeUInt32LE(6);
    expect(() => new FrameReader(8192).push(small)).toThrow(/under the header/);
  });
});
