import { isRoostError } from '@roost/api';
import { describe, expect, it } from 'vitest';
import { FUEL_EXPORT, MAX_MODULE_BYTES } from '../abi.js';
import { capMemory, prepareModule } from './prepare.js';
import { parseModule } from './sections.js';

const wabt = await (await import('wabt')).default();
const FEATURES = { simd: true, multi_value: true, bulk_memory: true, reference_types: true, threads: true, exceptions: true };

function wat(src: string): Uint8Array {
  const m = wabt.parseWat('test.wat', src, FEATURES);
  try {
    return m.toBinary({}).buffer;
  } finally {
    m.destroy();
  }
}

interface WasmApi {
  Module: new (bytes: Uint8Array) => object;
  Instance: new (module: object, imports?: object) => { exports: Record<string, unknown> };
}
const WA = (globalThis as unknown as { WebAssembly: WasmApi }).WebAssembly;
type Fn = (...args: unknown[]) => unknown;

const HANDLE = '(func (export "handle") (param i32) (result i32) (i32.const 0))';
const MEMORY = '(memory (export "memory") 1)';

/** The INVALID_ARGUMENT message prepareModule throws for `binary`. */
function refusal(binary: Uint8Array): string {
  try {
    prepareModule(binary);
  } catch (err) {
    if (isRoostError(err, 'INVALID_ARGUMENT')) return err.message;
    throw err;
  }
  throw new Error('prepareModule accepted the module');
}

/** `bytes` with the first occurrence of `from` replaced by `to`. */
function patch(bytes: Uint8Array, from: number[], to: number[]): Uint8Array {
  const hex = (b: ArrayLike<number>): string => Buffer.from(Array.from(b)).toString('hex');
  const at = hex(bytes).indexOf(hex(from));
  if (at < 0 || at % 2) throw new Error('pattern not found');
  return new Uint8Array([...bytes.subarray(0, at / 2), ...to, ...bytes.subarray(at / 2 + from.length)]);
}

describe('prepareModule', () => {
  it('describes a valid module', () => {
    const prepared = prepareModule(
      wat(`(module (import "roost" "fetch" (func (param i32 i32) (result i32))) (import "roost" "log" (func (param i32 i32)))
        (import "roost" "random" (func (param i32 i32) (result i32)))
        (memory (export "memory") 2 10) ${HANDLE} (func (export "init") (param i32) (result i32) (i32.const 0)))`),
    );
    expect(prepared).toMatchObject({
      memory: { initialPages: 2, maximumPages: 10 },
      grantsNeeded: ['random', 'fetch'],
      hasInit: true,
      hasStart: false,
      exports: [
        { name: 'memory', kind: 'memory' },
        { name: 'handle', kind: 'func' },
        { name: 'init', kind: 'func' },
      ],
    });
    expect(prepared.imports[0]).toEqual({ module: 'roost', name: 'fetch', kind: 'func' });
    expect(prepareModule(wat(`(module (memory (export "memory") 1) ${HANDLE})`)).memory.maximumPages).toBeNull();
  });

  const REFUSED: [string, () => Uint8Array, RegExp][] = [
    ['not WASM', () => new TextEncoder().encode('#!/bin/sh\necho hi\n'), /not a WASM binary/],
    ['an unknown version', () => patch(wat(`(module ${MEMORY} ${HANDLE})`), [1, 0, 0, 0], [2, 0, 0, 0]), /version/],
    ['a truncated module', () => wat(`(module ${MEMORY} ${HANDLE})`).subarray(0, 30), /invalid actor module/],
    ['over MAX_MODULE_BYTES', () => new Uint8Array(MAX_MODULE_BYTES + 1), /over the limit of 16777216/],
    ['an import outside the ABI', () => wat(`(module (import "roost" "foo" (func)) ${MEMORY} ${HANDLE})`), /imports roost\.foo, which is not in the actor ABI/],
    ['an import of another module', () => wat(`(module (import "wasi" "fd_write" (func)) ${MEMORY} ${HANDLE})`), /imports wasi\.fd_write, which is not in/],
    [
      'an ABI import with the wrong signature',
      () => wat(`(module (import "roost" "send" (func (param i32) (result i32))) ${MEMORY} ${HANDLE})`),
      /imports roost\.send as \(i32\) -> \(i32\), but the ABI's is \(i32, i32, i32\) -> \(i32\)/,
    ],
    ['an imported memory', () => wat(`(module (import "env" "memory" (memory 1)) (export "memory" (memory 0)) ${HANDLE})`), /imports the memory env\.memory/],
    ['an imported table', () => wat(`(module (import "env" "t" (table 1 funcref)) ${MEMORY} ${HANDLE})`), /imports the table env\.t/],
    ['an imported global', () => wat(`(module (import "env" "g" (global i32)) ${MEMORY} ${HANDLE})`), /imports the global env\.g/],
    ['no memory', () => wat(`(module ${HANDLE})`), /defines no memory/],
    ['an unexported memory', () => wat(`(module (memory 1) ${HANDLE})`), /does not export its memory as "memory"/],
    [
      '"memory" exporting something else',
      () => wat(`(module (memory 1) (global (export "memory") i32 (i32.const 0)) ${HANDLE})`),
      /does not export its memory/,
    ],
    ['two memories', () => patch(wat(`(module ${MEMORY} ${HANDLE})`), [5, 3, 1, 0, 1], [5, 5, 2, 0, 1, 0, 1]), /defines 2 memories/],
    ['no handle', () => wat(`(module ${MEMORY})`), /does not export a "handle" function/],
    [
      'handle of the wrong type',
      () => wat(`(module ${MEMORY} (func (export "handle") (param i64) (result i32) (i32.const 0)))`),
      /exports "handle" as \(i64\) -> \(i32\)/,
    ],
    ['handle that is a global', () => wat(`(module ${MEMORY} (global (export "handle") i32 (i32.const 0)))`), /exports "handle" as a global/],
    [
      'init of the wrong type',
      () => wat(`(module ${MEMORY} ${HANDLE} (func (export "init") (result i32) (i32.const 0)))`),
      /exports "init" as \(\) -> \(i32\)/,
    ],
    [
      'a reserved export',
      () => wat(`(module ${MEMORY} ${HANDLE} (global (export "__roost_fuel") i32 (i32.const 0)))`),
      /exports __roost_fuel; names starting with __roost_ are reserved/,
    ],
    ['a shared memory', () => wat(`(module (memory (export "memory") 1 1 shared) ${HANDLE})`), /shared memory \(threads proposal\)/],
    [
      'atomics',
      () => wat(`(module ${MEMORY} (func (export "handle") (param i32) (result i32) (i32.atomic.load (i32.const 0))))`),
      /threads proposal \(atomic instruction 0xfe\)/,
    ],
    ['initial memory over 4096 pages', () => wat(`(module (memory (export "memory") 4097) ${HANDLE})`), /initial memory is 4097 pages, over the limit of 4096/],
    [
      'an unknown opcode',
      () => patch(wat(`(module ${MEMORY} (func (export "handle") (param i32) (result i32) nop nop nop (i32.const 0)))`), [1, 1, 1, 0x41], [1, 0x27, 1, 0x41]),
      /unknown or unsupported opcode 0x27/,
    ],
    [
      'a body V8 refuses',
      () => wat(`(module ${MEMORY} (func (export "handle") (param i32) (result i32) (i64.const 0)))`),
      /WebAssembly refused it: .*type error/,
    ],
    [
      'bytes after a function end',
      () =>
        patch(
          wat(`(module ${MEMORY} (func (export "handle") (param i32) (result i32) nop (i32.const 0)))`),
          [0x05, 0x00, 0x01, 0x41, 0x00, 0x0b],
          [0x05, 0x00, 0x41, 0x00, 0x0b, 0x01],
        ),
      /1 bytes after its end/,
    ],
  ];
  for (const [what, make, message] of REFUSED) {
    it(`refuses ${what}`, () => {
      expect(refusal(make())).toMatch(message);
    });
  }

  it('counts data segment bytes (over 16 MiB is refused; such a module is also over MAX_MODULE_BYTES)', () => {
    const m = parseModule(wat(`(module ${MEMORY} ${HANDLE} (data (i32.const 8) "hello") (data "world!"))`));
    expect(m.dataBytes).toBe(11);
  });

  it('gives only INVALID_ARGUMENT or success for truncations and byte flips (seeded fuzz)', () => {
    const seeds = [
      wat(`(module (import "roost" "log" (func $log (param i32 i32))) (memory (export "memory") 1 4) (global $g (mut i32) (i32.const 7))
        (table 2 funcref) (elem (i32.const 0) $a $b) (type $t (func (param i32) (result i32)))
        (func $a (type $t) (i32.add (local.get 0) (global.get $g)))
        (func $b (type $t) (local i64) (block $x (loop $l (br_if $x (i32.eqz (local.get 0))) (local.set 0 (i32.sub (local.get 0) (i32.const 1))) (br $l))) (local.get 0))
        (func (export "handle") (param i32) (result i32)
          (memory.fill (i32.const 0) (i32.const 1) (i32.const 64)) (call $log (i32.const 0) (i32.const 4))
          (drop (i32x4.extract_lane 1 (v128.const i32x4 1 2 3 4)))
          (br_table 0 0 (i32.const 0))
          (call_indirect (type $t) (local.get 0) (i32.const 1)))
        (data (i32.const 16) "state"))`),
    ];
    let state = 0x2545f491;
    const rand = (n: number): number => {
      state ^= state << 13;
      state ^= state >>> 17;
      state ^= state << 5;
      return (state >>> 0) % n;
    };
    const outcomes = { ok: 0, refused: 0 };
    for (const seed of seeds) {
      for (let i = 0; i < 3000; i++) {
        let bytes: Uint8Array;
        if (i % 3 === 0) bytes = seed.subarray(0, rand(seed.length));
        else {
          bytes = seed.slice();
          for (let f = 0, flips = 1 + rand(3); f < flips; f++) {
            const at = 8 + rand(bytes.length - 8);
            bytes[at] = i % 3 === 1 ? (bytes[at] as number) ^ (1 << rand(8)) : rand(256);
          }
        }
        try {
          prepareModule(bytes);
          outcomes.ok++;
        } catch (err) {
          if (!isRoostError(err, 'INVALID_ARGUMENT')) throw new Error(`case ${i}: ${String(err)}`, { cause: err });
          outcomes.refused++;
        }
      }
    }
    expect(outcomes.refused).toBeGreaterThan(1000);
    expect(outcomes.ok).toBeGreaterThan(0);
  });
});

describe('capMemory', () => {
  const GROW = '(func (export "grow") (param i32) (result i32) (memory.grow (local.get 0)))';

  function grow(bytes: Uint8Array, pages: number): number {
    const exports = new WA.Instance(new WA.Module(bytes)).exports;
    (exports[FUEL_EXPORT] as { value: bigint }).value = 1000n;
    return (exports.grow as Fn)(pages) as number;
  }

  it('lowers a declared maximum', () => {
    const { bytes } = prepareModule(wat(`(module (memory (export "memory") 2 100) ${HANDLE} ${GROW})`));
    const capped = capMemory(bytes, 10);
    expect(parseModule(capped).memories).toEqual([{ min: 2, max: 10 }]);
    expect(grow(capped, 9)).toBe(-1);
    expect(grow(capped, 8)).toBe(2);
    // A higher cap keeps the declared maximum.
    expect(parseModule(capMemory(bytes, 4096)).memories).toEqual([{ min: 2, max: 100 }]);
  });

  it('sets a maximum when none is declared', () => {
    const { bytes } = prepareModule(wat(`(module (memory (export "memory") 1) ${HANDLE} ${GROW})`));
    const capped = capMemory(bytes, 3);
    expect(parseModule(capped).memories).toEqual([{ min: 1, max: 3 }]);
    expect(grow(capped, 3)).toBe(-1);
    expect(grow(capped, 2)).toBe(1);
  });

  it('refuses a memory whose initial size is over the cap, and bad caps', () => {
    const { bytes } = prepareModule(wat(`(module (memory (export "memory") 20) ${HANDLE})`));
    expect(() => capMemory(bytes, 19)).toThrow(/initial memory is 20 pages, over the actor's limit of 19 pages/);
    expect(() => capMemory(bytes, 1.5)).toThrow(/maxPages must be an integer/);
    expect(() => capMemory(new Uint8Array(4), 10)).toThrow(/not a WASM binary/);
  });
});
