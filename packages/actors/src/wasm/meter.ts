/**
 * Deterministic fuel metering, injected into each function body.
 *
 * The fuel is one mutable i64 global (exported as FUEL_EXPORT). The host sets it
 * before a message and reads it after.
 *
 * Cost model (deterministic: it depends only on the instructions executed):
 * - every instruction costs 1, except the structural markers `block`, `loop`,
 *   `else`, `end`, `try`, `catch`, `catch_all` and `delegate`, which cost 0;
 * - memory.fill/copy/init and table.fill/copy/init cost 1 more per byte (element)
 *   they touch: their count operand, charged before they run.
 *
 * Charging: a body is cut into straight-line segments at its metering points: the
 * function's entry and right after every `loop`, `if`, `else`, `end`, `catch`,
 * `catch_all`, `delegate`, branch, call, return, throw and `unreachable` (the places
 * control can arrive other than from the instruction before; `block` and `try` are
 * entered only from above, so they do not cut). At each metering point the cost of
 * the segment that follows (through the control instruction that ends it) is
 * subtracted from the fuel: `global.get; i64.const N; i64.sub; global.set`.
 *
 * Checking: at the function's entry, right after every `loop` (each iteration),
 * at the start of a segment that calls an imported function (so the host is never
 * called with the fuel overdrawn), and after every per-byte charge, the fuel is checked: `global.get; i64.const 0;
 * i64.lt_s; if unreachable end`. Every unbounded execution goes through a function
 * entry (recursion) or a loop header (iteration) again and again, so a module can
 * overdraw its fuel only by one function's straight-line code between two checks.
 * Hence the host's rule: a trap with fuel < 0 is OUT_OF_FUEL, and so is a return
 * with fuel < 0 (the overdraw is deterministic too).
 *
 * The inserted code is straight-line and stack-neutral, and its one block (`if ...
 * end`) closes before any original instruction, so every original label keeps its
 * depth. Per-byte charges need the count without disturbing the stack: a scratch
 * i32 local is appended to the function's locals (existing indices do not move),
 * `local.tee` copies the count into it, the charge reads it back.
 */
import { Op, isValType, readInstr } from './opcodes.js';
import { Reader, Writer } from './reader.js';

/** V8's limit on a function's locals. */
const MAX_LOCALS = 50_000;

function leb(n: number): Uint8Array {
  return new Writer(8).u32(n).finish().slice();
}

/** The byte sequences inserted for one fuel global. */
export class FuelCode {
  /** global.get $fuel */
  readonly get: Uint8Array;
  /** i64.sub; global.set $fuel */
  readonly subSet: Uint8Array;
  /** global.get $fuel; i64.const 0; i64.lt_s; if; unreachable; end */
  readonly check: Uint8Array;

  constructor(readonly fuelGlobal: number) {
    const g = leb(fuelGlobal);
    this.get = Uint8Array.of(0x23, ...g);
    this.subSet = Uint8Array.of(0x7d, 0x24, ...g);
    this.check = Uint8Array.of(0x23, ...g, 0x42, 0x00, 0x53, 0x04, 0x40, 0x00, 0x0b);
  }

  /** Subtracts `cost` from the fuel, then checks it when `check`. */
  charge(w: Writer, cost: number, check: boolean): void {
    if (cost > 0) w.bytes(this.get).u8(0x42).s64(cost).bytes(this.subSet);
    if (check) w.bytes(this.check);
  }

  /** Before a bulk operation (count n on top of the stack): subtracts n from the fuel, checks it, keeps n. */
  chargeCount(w: Writer, scratch: number): void {
    const s = leb(scratch);
    w.u8(0x22).bytes(s); // local.tee $scratch
    w.bytes(this.get).u8(0x20).bytes(s).u8(0xad).bytes(this.subSet); // fuel -= i64.extend_i32_u($scratch)
    w.bytes(this.check);
  }
}

/** Statistics of one instrumented body (for tests and reports). */
export interface MeterStats {
  points: number;
  checks: number;
  bulk: number;
}

/**
 * The body `bytes[start, end)` (locals, then the expression) with fuel metering
 * injected. `params` is the number of the function's parameters (the scratch
 * local's index comes after them and the declared locals); functions below
 * `importedFuncs` are the host's.
 */
export function meterBody(
  bytes: Uint8Array,
  start: number,
  end: number,
  params: number,
  importedFuncs: number,
  fuel: FuelCode,
  stats?: MeterStats,
): Uint8Array {
  const r: Reader = new Reader(bytes, start, end);
  const groups = r.u32();
  let locals = params;
  for (let i = 0; i < groups; i++) {
    locals += r.u32();
    if (locals > MAX_LOCALS) r.fail(`a function has more than ${MAX_LOCALS} locals`);
    const t = r.u8();
    if (!isValType(t)) r.fail(`unsupported local type 0x${t.toString(16)}`, r.pos - 1);
  }
  const localsEnd = r.pos;

  // Pass 1: decode; record the metering points (position, cost, check) and the bulk operations.
  const points: number[] = [];
  const bulks: number[] = [];
  let segStart = r.pos;
  let cost = 0;
  let check = true;
  let depth = 1;
  const cut = (): void => {
    if (cost > 0 || check) points.push(segStart, cost, check ? 1 : 0);
    segStart = r.pos;
    cost = 0;
    check = false;
  };
  while (depth > 0) {
    const at = r.pos;
    switch (readInstr(r)) {
      case Op.Plain:
        cost++;
        break;
      case Op.Bulk:
        cost++;
        bulks.push(at);
        break;
      case Op.Block:
        depth++;
        break;
      case Op.Loop:
        depth++;
        cut();
        check = true;
        break;
      case Op.If:
        cost++;
        depth++;
        cut();
        break;
      case Op.Else:
        cut();
        break;
      case Op.End:
        depth--;
        cut();
        break;
      case Op.Jump: {
        cost++;
        const op = bytes[at];
        if ((op === 0x10 || op === 0x12) && new Reader(bytes, at + 1, end).u32() < importedFuncs) check = true;
        cut();
        break;
      }
    }
  }
  if (r.pos !== end) r.fail(`a function body has ${end - r.pos} bytes after its end`);

  // Pass 2: copy, inserting the charges.
  const w = new Writer(Math.ceil((end - start) * 1.5) + 16);
  if (bulks.length > 0) {
    if (locals + 1 > MAX_LOCALS) r.fail(`a function has more than ${MAX_LOCALS} locals`);
    const groupsEnd = new Reader(bytes, start, end);
    groupsEnd.u32();
    w.u32(groups + 1)
      .bytes(bytes.subarray(groupsEnd.pos, localsEnd))
      .u8(1)
      .u8(0x7f);
  } else {
    w.bytes(bytes.subarray(start, localsEnd));
  }
  let cursor = localsEnd;
  let p = 0;
  let b = 0;
  while (p < points.length || b < bulks.length) {
    const pointAt = p < points.length ? (points[p] as number) : Infinity;
    const bulkAt = b < bulks.length ? (bulks[b] as number) : Infinity;
    const at = Math.min(pointAt, bulkAt);
    w.bytes(bytes.subarray(cursor, at));
    cursor = at;
    if (pointAt <= bulkAt) {
      fuel.charge(w, points[p + 1] as number, points[p + 2] === 1);
      if (stats) {
        stats.points++;
        if (points[p + 2] === 1) stats.checks++;
      }
      p += 3;
    } else {
      fuel.chargeCount(w, locals);
      if (stats) stats.bulk++;
      b++;
    }
  }
  w.bytes(bytes.subarray(cursor, end));
  return w.finish();
}
