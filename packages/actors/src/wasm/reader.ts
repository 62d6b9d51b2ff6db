/**
 * Bounds-checked reading and writing of the WASM binary encoding (LEB128 integers,
 * bytes, names). Every failure is a RoostError INVALID_ARGUMENT, never a RangeError:
 * the bytes come from whoever deployed the module.
 */
import { RoostError } from '@roost/api';

/** A RoostError INVALID_ARGUMENT about a module. */
export function invalidModule(message: string, details: Record<string, unknown> = {}): RoostError {
  return new RoostError('INVALID_ARGUMENT', `invalid actor module: ${message}`, { details });
}

const utf8 = new TextDecoder('utf-8', { fatal: true });

/** A cursor over `bytes[pos, end)`. */
export class Reader {
  pos: number;

  constructor(
    readonly bytes: Uint8Array,
    pos = 0,
    readonly end = bytes.length,
  ) {
    this.pos = pos;
  }

  get done(): boolean {
    return this.pos >= this.end;
  }

  fail(message: string, at = this.pos): never {
    throw invalidModule(`${message} at byte ${at}`, { offset: at });
  }

  u8(): number {
    if (this.pos >= this.end) this.fail('unexpected end');
    return this.bytes[this.pos++] as number;
  }

  /** Skips `n` bytes and returns their start. */
  skip(n: number): number {
    if (n < 0 || n > this.end - this.pos) this.fail(`${n} bytes go past the end`);
    const start = this.pos;
    this.pos += n;
    return start;
  }

  /** A view of the next `n` bytes. */
  take(n: number): Uint8Array {
    const start = this.skip(n);
    return this.bytes.subarray(start, start + n);
  }

  /** An unsigned LEB128 of at most 32 bits (5 bytes). */
  u32(): number {
    const at = this.pos;
    let result = 0;
    for (let i = 0; i < 5; i++) {
      const b = this.u8();
      if (i === 4) {
        if (b & 0xf0) this.fail('u32 overflows 32 bits', at);
        return result + b * 2 ** 28;
      }
      result |= (b & 0x7f) << (7 * i);
      if (!(b & 0x80)) return result >>> 0;
    }
    return this.fail('bad u32', at);
  }

  /**
   * Skips a signed LEB128 of `bits` (32, 33 or 64) bits and returns its value when
   * it fits a safe integer (else a value of the same sign: callers use the sign or
   * small values only).
   */
  signed(bits: 32 | 33 | 64): number {
    const at = this.pos;
    const max = Math.ceil(bits / 7);
    let result = 0;
    let scale = 1;
    for (let i = 0; i < max; i++) {
      const b = this.u8();
      const last = i === max - 1;
      if (last) {
        if (b & 0x80) this.fail(`s${bits} is too long`, at);
        // The bits above the value's width must repeat its sign bit.
        const used = bits - 7 * i;
        const unused = 0x7f & ~((1 << used) - 1) & 0x7f;
        const signMask = 1 << (used - 1);
        const expect = b & signMask ? unused : 0;
        if ((b & unused) !== expect) this.fail(`s${bits} overflows`, at);
      }
      result += (b & 0x7f) * scale;
      scale *= 128;
      if (!(b & 0x80)) return b & 0x40 ? result - scale : result;
    }
    return this.fail(`bad s${bits}`, at);
  }

  /** A length-prefixed UTF-8 name. */
  name(): string {
    const at = this.pos;
    const bytes = this.take(this.u32());
    try {
      return utf8.decode(bytes);
    } catch {
      return this.fail('a name is not UTF-8', at);
    }
  }
}

/** A growable byte buffer. */
export class Writer {
  private buf: Uint8Array;
  length = 0;

  constructor(capacity = 256) {
    this.buf = new Uint8Array(Math.max(16, capacity));
  }

  private reserve(n: number): void {
    if (this.length + n <= this.buf.length) return;
    let size = this.buf.length * 2;
    while (size < this.length + n) size *= 2;
    const next = new Uint8Array(size);
    next.set(this.buf.subarray(0, this.length));
    this.buf = next;
  }

  u8(b: number): this {
    this.reserve(1);
    this.buf[this.length++] = b;
    return this;
  }

  bytes(b: Uint8Array): this {
    this.reserve(b.length);
    this.buf.set(b, this.length);
    this.length += b.length;
    return this;
  }

  /** An unsigned LEB128 (a safe non-negative integer). */
  u32(n: number): this {
    do {
      let b = n % 128;
      n = Math.floor(n / 128);
      if (n > 0) b |= 0x80;
      this.u8(b);
    } while (n > 0);
    return this;
  }

  /** A signed LEB128 (a safe integer). */
  s64(n: number): this {
    while (true) {
      const b = ((n % 128) + 128) % 128;
      n = Math.floor(n / 128);
      const done = (n === 0 && !(b & 0x40)) || (n === -1 && b & 0x40);
      this.u8(done ? b : b | 0x80);
      if (done) return this;
    }
  }

  name(s: string): this {
    const b = new TextEncoder().encode(s);
    return this.u32(b.length).bytes(b);
  }

  /** Section `id` with this writer's bytes as its contents, appended to `out`. */
  sectionInto(out: Writer, id: number): void {
    out.u8(id).u32(this.length).bytes(this.finish());
  }

  finish(): Uint8Array {
    return this.buf.subarray(0, this.length);
  }
}
