/**
 * Instruction decoding: skips one instruction and its immediates, and says what it
 * does to control flow. Supported: the MVP, sign extension, non-trapping
 * float-to-int, bulk memory, reference types, multi-value, SIMD (fixed-width),
 * tail calls and the (legacy, shipped) exception handling. Anything else (threads,
 * GC, typed function references, memory64, relaxed SIMD, ...) is refused: the
 * metering must decode exactly what V8 decodes, so an opcode this table does not
 * know is never guessed at.
 */
import type { Reader } from './reader.js';

/** What an instruction does to control flow (the metering's view). */
export const Op = {
  /** Straight-line: cost 1. */
  Plain: 0,
  /** `block`, `try`: opens a label, entered only from above; cost 0. */
  Block: 1,
  /** `loop`: opens a label branched to from below; cost 0; a metering point (with a check) after. */
  Loop: 2,
  /** `if`: opens a label, a conditional entry; cost 1; a metering point after. */
  If: 3,
  /** `else`, `catch`, `catch_all`: another entry into the open block; cost 0; a metering point after. */
  Else: 4,
  /** `end`, `delegate`: closes a label (a branch target); cost 0; a metering point after. */
  End: 5,
  /** Branches, calls, returns, throws, `unreachable`: cost 1; a metering point after. */
  Jump: 6,
  /** memory.fill/copy/init, table.fill/copy/init: cost 1 plus 1 per byte (or element) (n on the stack). */
  Bulk: 7,
} as const;
export type Op = (typeof Op)[keyof typeof Op];

/** Value types as their one-byte encodings: i32, i64, f32, f64, v128, funcref, externref. */
export function isValType(b: number): boolean {
  return (b >= 0x7b && b <= 0x7f) || b === 0x70 || b === 0x6f;
}

function blockType(r: Reader): void {
  const at = r.pos;
  const t = r.signed(33);
  // Negative: a one-byte value type or 0x40 (empty) read as s33; else a type index.
  if (t < 0 && t !== -64 && !isValType(t + 128)) r.fail(`unsupported block type 0x${(t + 128).toString(16)}`, at);
}

function memarg(r: Reader): void {
  const align = r.u32();
  // Bit 6 of the alignment says a memory index follows (multi-memory).
  if (align & 0x40) r.u32();
  r.u32();
}

function heapType(r: Reader): void {
  const at = r.pos;
  const t = r.signed(33);
  if (t !== -16 && t !== -17) r.fail('unsupported heap type', at);
}

/** SIMD opcodes (after 0xFD) that are not defined: gaps in 0x00-0xFF. */
const SIMD_GAPS = new Set([0x9a, 0xa2, 0xa5, 0xa6, 0xaf, 0xb0, 0xb2, 0xb3, 0xb4, 0xbb, 0xc2, 0xc5, 0xc6, 0xcf, 0xd0, 0xd2, 0xd3, 0xd4, 0xe2, 0xee]);

function simd(r: Reader, at: number): Op {
  const op = r.u32();
  if (op <= 0x0b || op === 0x5c || op === 0x5d) memarg(r);
  else if (op === 0x0c || op === 0x0d) r.skip(16);
  else if (op >= 0x15 && op <= 0x22) r.u8();
  else if (op >= 0x54 && op <= 0x5b) {
    memarg(r);
    r.u8();
  } else if (op > 0xff || SIMD_GAPS.has(op)) r.fail(`unknown SIMD opcode 0xfd 0x${op.toString(16)}`, at);
  return Op.Plain;
}

function misc(r: Reader, at: number): Op {
  const op = r.u32();
  switch (op) {
    case 0: // i32.trunc_sat_f32_s ... i64.trunc_sat_f64_u
    case 1:
    case 2:
    case 3:
    case 4:
    case 5:
    case 6:
    case 7:
      return Op.Plain;
    case 8: // memory.init data mem
      r.u32();
      r.u32();
      return Op.Bulk;
    case 9: // data.drop
    case 13: // elem.drop
      r.u32();
      return Op.Plain;
    case 10: // memory.copy mem mem
      r.u32();
      r.u32();
      return Op.Bulk;
    case 11: // memory.fill mem
      r.u32();
      return Op.Bulk;
    case 12: // table.init elem table
    case 14: // table.copy table table
      r.u32();
      r.u32();
      return Op.Bulk;
    case 15: // table.grow
    case 16: // table.size
      r.u32();
      return Op.Plain;
    case 17: // table.fill
      r.u32();
      return Op.Bulk;
    default:
      return r.fail(`unknown opcode 0xfc ${op}`, at);
  }
}

/** Skips the instruction at `r.pos` and returns its class. */
export function readInstr(r: Reader): Op {
  const at = r.pos;
  const op = r.u8();
  if (op >= 0x45 && op <= 0xc4) return Op.Plain; // numeric, incl. sign extension
  if (op >= 0x20 && op <= 0x26) {
    r.u32(); // local.get/set/tee, global.get/set, table.get/set
    return Op.Plain;
  }
  if (op >= 0x28 && op <= 0x3e) {
    memarg(r);
    return Op.Plain;
  }
  switch (op) {
    case 0x00: // unreachable
    case 0x0f: // return
      return Op.Jump;
    case 0x01: // nop
    case 0x1a: // drop
    case 0x1b: // select
    case 0xd1: // ref.is_null
      return Op.Plain;
    case 0x02: // block
    case 0x06: // try
      blockType(r);
      return Op.Block;
    case 0x03:
      blockType(r);
      return Op.Loop;
    case 0x04:
      blockType(r);
      return Op.If;
    case 0x05: // else
    case 0x19: // catch_all
      return Op.Else;
    case 0x07: // catch tag
      r.u32();
      return Op.Else;
    case 0x0b: // end
      return Op.End;
    case 0x18: // delegate label
      r.u32();
      return Op.End;
    case 0x08: // throw tag
    case 0x09: // rethrow label
    case 0x0c: // br
    case 0x0d: // br_if
    case 0x10: // call
    case 0x12: // return_call
      r.u32();
      return Op.Jump;
    case 0x0e: {
      // br_table: a vector of labels, then the default
      const n = r.u32();
      for (let i = 0; i <= n; i++) r.u32();
      return Op.Jump;
    }
    case 0x11: // call_indirect type table
    case 0x13: // return_call_indirect type table
      r.u32();
      r.u32();
      return Op.Jump;
    case 0x1c: {
      // select t*
      const n = r.u32();
      for (let i = 0; i < n; i++) {
        const t = r.u8();
        if (!isValType(t)) r.fail(`unsupported value type 0x${t.toString(16)} in select`, r.pos - 1);
      }
      return Op.Plain;
    }
    case 0x3f: // memory.size mem
    case 0x40: // memory.grow mem
    case 0xd2: // ref.func
      r.u32();
      return Op.Plain;
    case 0x41:
      r.signed(32);
      return Op.Plain;
    case 0x42:
      r.signed(64);
      return Op.Plain;
    case 0x43:
      r.skip(4);
      return Op.Plain;
    case 0x44:
      r.skip(8);
      return Op.Plain;
    case 0xd0:
      heapType(r);
      return Op.Plain;
    case 0xfc:
      return misc(r, at);
    case 0xfd:
      return simd(r, at);
    case 0xfe:
      return r.fail('uses the threads proposal (atomic instruction 0xfe), which actors do not support', at);
    default:
      return r.fail(`unknown or unsupported opcode 0x${op.toString(16)}`, at);
  }
}

/** Skips a constant expression (global initializers, segment offsets) through its `end`. */
export function skipConstExpr(r: Reader): void {
  let depth = 1;
  while (depth > 0) {
    const op = readInstr(r);
    if (op === Op.End) depth--;
    else if (op === Op.Block || op === Op.Loop || op === Op.If) depth++;
  }
}
