import { describe, expect, it } from 'vitest';
import { FUEL_EXPORT, START_EXPORT } from '../abi.js';
import { prepareModule } from './prepare.js';

const wabt = await (await import('wabt')).default();
const FEATURES = { simd: true, multi_value: true, bulk_memory: true, reference_types: true, tail_call: true, exceptions: true, sign_extension: true };

function wat(src: string): Uint8Array {
  const m = wabt.parseWat('test.wat', src, FEATURES);
  try {
    return m.toBinary({}).buffer;
  } finally {
    m.destroy();
  }
}

interface WasmGlobal {
  value: bigint;
}
interface WasmApi {
  Module: new (bytes: Uint8Array) => object;
  Instance: new (module: object, imports?: object) => { exports: Record<string, unknown> };
}
const WA = (globalThis as unknown as { WebAssembly: WasmApi }).WebAssembly;

function instantiate(bytes: Uint8Array, imports: object = {}): Record<string, unknown> {
  return new WA.Instance(new WA.Module(bytes), imports).exports;
}

type Fn = (...args: unknown[]) => unknown;

/** Runs export `name` of a prepared module with `fuel`; the result (or the trap) and the fuel used. */
function metered(bytes: Uint8Array, fuel: number, name: string, ...args: unknown[]): { result?: unknown; trap?: Error; used: number; left: bigint } {
  const exports = instantiate(bytes);
  const global = exports[FUEL_EXPORT] as WasmGlobal;
  global.value = BigInt(fuel);
  try {
    const result = (exports[name] as Fn)(...args);
    return { result, used: fuel - Number(global.value), left: global.value };
  } catch (err) {
    return { trap: err as Error, used: fuel - Number(global.value), left: global.value };
  }
}

/** An actor module: memory and a `handle` around the given functions. */
function actor(body: string, handle = '(func (export "handle") (param i32) (result i32) (i32.const 0))'): Uint8Array {
  return wat(`(module (memory (export "memory") 1) ${handle} ${body})`);
}

const COUNT = `(func (export "count") (param $n i32) (result i32) (local $i i32)
  (loop $l
    (local.set $i (i32.add (local.get $i) (i32.const 1)))
    (br_if $l (i32.lt_u (local.get $i) (local.get $n))))
  (local.get $i))`;

describe('fuel metering', () => {
  it('charges a counting loop an exact, deterministic amount', () => {
    const { bytes } = prepareModule(actor(COUNT));
    // Per iteration: local.get, i32.const, i32.add, local.set, local.get, local.get, i32.lt_u, br_if (8);
    // then local.get (1); block markers (loop, end) cost 0.
    for (const n of [1, 10, 1000]) {
      const runs = [metered(bytes, 1e9, 'count', n), metered(bytes, 1e9, 'count', n)];
      for (const run of runs) expect(run).toMatchObject({ result: n, used: 8 * n + 1 });
    }
  });

  it('traps with fuel < 0 when given too little', () => {
    const { bytes } = prepareModule(actor(COUNT));
    const run = metered(bytes, 4000, 'count', 1000);
    expect(run.trap?.message).toMatch(/unreachable/);
    expect(run.left).toBeLessThan(0n);
    expect(metered(bytes, 4000, 'count', 1000).left).toBe(run.left);
    // Exactly enough fuel runs to the end with 0 left.
    expect(metered(bytes, 8 * 1000 + 1, 'count', 1000)).toMatchObject({ result: 1000, left: 0n });
    // One short: the straight-line code after the loop (no check there) overdraws; the host reads fuel < 0 as OUT_OF_FUEL.
    expect(metered(bytes, 8 * 1000, 'count', 1000)).toMatchObject({ result: 1000, left: -1n });
  });

  it('ends an infinite loop with a trap and fuel < 0', () => {
    const { bytes } = prepareModule(actor('(func (export "spin") (loop $l (br $l)))'));
    const run = metered(bytes, 1e6, 'spin');
    expect(run.trap).toBeInstanceOf(Error);
    expect(run.left).toBeLessThan(0n);
  });

  it('ends nested loops whose headers cost nothing', () => {
    const { bytes } = prepareModule(actor('(func (export "spin") (loop $outer (loop $inner) (br $outer)))'));
    const run = metered(bytes, 1e5, 'spin');
    expect(run.trap).toBeInstanceOf(Error);
    expect(run.left).toBeLessThan(0n);
  });

  it('ends unbounded recursion', () => {
    const { bytes } = prepareModule(actor('(func $f (export "f") (call $f))'));
    const run = metered(bytes, 1e4, 'f');
    expect(run.left).toBeLessThan(0n);
  });

  const PROGRAMS: { name: string; src: string; fn: string; args: unknown[] }[] = [
    {
      name: 'recursive fib',
      fn: 'fib',
      args: [20],
      src: `(func $fib (export "fib") (param $n i32) (result i32)
        (if (result i32) (i32.lt_u (local.get $n) (i32.const 2))
          (then (local.get $n))
          (else (i32.add (call $fib (i32.sub (local.get $n) (i32.const 1))) (call $fib (i32.sub (local.get $n) (i32.const 2)))))))`,
    },
    {
      name: 'an i64 loop',
      fn: 'sum',
      args: [100000n],
      src: `(func (export "sum") (param $n i64) (result i64) (local $acc i64)
        (block $done (loop $l
          (br_if $done (i64.eqz (local.get $n)))
          (local.set $acc (i64.add (local.get $acc) (i64.mul (local.get $n) (local.get $n))))
          (local.set $n (i64.sub (local.get $n) (i64.const 1)))
          (br $l)))
        (local.get $acc))`,
    },
    {
      name: 'br_table',
      fn: 'classify',
      args: [2],
      src: `(func (export "classify") (param $x i32) (result i32) (local $r i32) (local $i i32)
        (loop $l
          (block $b2 (block $b1 (block $b0
            (br_table $b0 $b1 $b2 (i32.rem_u (local.get $i) (i32.const 3))))
            (local.set $r (i32.add (local.get $r) (i32.const 1))) (br $b2))
            (local.set $r (i32.add (local.get $r) (i32.const 10))) (br $b2))
          (local.set $i (i32.add (local.get $i) (i32.const 1)))
          (br_if $l (i32.lt_u (local.get $i) (i32.mul (local.get $x) (i32.const 10)))))
        (local.get $r))`,
    },
    {
      name: 'multi-value blocks',
      fn: 'swap',
      args: [3, 4],
      src: `(func (export "swap") (param i32 i32) (result i32)
        (local.get 0) (local.get 1)
        (block (param i32 i32) (result i32 i32)
          (if (param i32 i32) (result i32 i32) (i32.const 1) (then) (else (drop) (drop) (i32.const 0) (i32.const 0))))
        (i32.sub))`,
    },
    {
      name: 'a SIMD op',
      fn: 'simd',
      args: [5],
      src: `(func (export "simd") (param i32) (result i32)
        (v128.store (i32.const 16) (i32x4.add (i32x4.splat (local.get 0)) (v128.const i32x4 1 2 3 4)))
        (i32.add (i32x4.extract_lane 3 (v128.load (i32.const 16)))
          (i8x16.extract_lane_u 0 (i8x16.shuffle 0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 (v128.load (i32.const 16)) (v128.load (i32.const 16))))))`,
    },
    {
      name: 'call_indirect',
      fn: 'dispatch',
      args: [1, 7],
      src: `(type $t (func (param i32) (result i32)))
        (table 2 funcref) (elem (i32.const 0) $double $square)
        (func $double (type $t) (i32.add (local.get 0) (local.get 0)))
        (func $square (type $t) (i32.mul (local.get 0) (local.get 0)))
        (func (export "dispatch") (param $which i32) (param $x i32) (result i32)
          (call_indirect (type $t) (local.get $x) (local.get $which)))`,
    },
    {
      name: 'tail calls',
      fn: 'down',
      args: [100000],
      src: `(func $down (export "down") (param i32) (result i32)
        (if (i32.eqz (local.get 0)) (then (return (i32.const 42))))
        (return_call $down (i32.sub (local.get 0) (i32.const 1))))`,
    },
  ];

  for (const p of PROGRAMS) {
    it(`gives the uninstrumented results: ${p.name}`, () => {
      const original = actor(p.src);
      const expected = (instantiate(original)[p.fn] as Fn)(...p.args);
      const { bytes } = prepareModule(original);
      const first = metered(bytes, 1e9, p.fn, ...p.args);
      expect(first.trap).toBeUndefined();
      expect(first.result).toEqual(expected);
      expect(first.used).toBeGreaterThan(0);
      expect(metered(bytes, 1e9, p.fn, ...p.args).used).toBe(first.used);
    });
  }

  it('charges memory.fill, memory.copy and table.fill per byte', () => {
    const { bytes } = prepareModule(
      actor(`(table 10 funcref)
        (func (export "fill") (param $n i32) (memory.fill (i32.const 0) (i32.const 7) (local.get $n)))
        (func (export "copy") (param $n i32) (memory.copy (i32.const 100) (i32.const 0) (local.get $n)))
        (func (export "tfill") (param $n i32) (table.fill (i32.const 0) (ref.null func) (local.get $n)))
        (func (export "peek") (param i32) (result i32) (i32.load8_u (local.get 0)))`),
    );
    for (const fn of ['fill', 'copy', 'tfill']) {
      const small = metered(bytes, 1e9, fn, 10).used;
      expect(metered(bytes, 1e9, fn, 1010).used - small).toBe(1000);
    }
    const exports = instantiate(bytes);
    (exports[FUEL_EXPORT] as WasmGlobal).value = 100n;
    expect(() => (exports.fill as Fn)(1000)).toThrow();
    expect((exports[FUEL_EXPORT] as WasmGlobal).value).toBeLessThan(0n);
    // The fill did not run.
    (exports[FUEL_EXPORT] as WasmGlobal).value = 100n;
    expect((exports.peek as Fn)(0)).toBe(0);
  });

  it('never calls the host with the fuel overdrawn', () => {
    const straight = Array.from({ length: 20 }, () => '(drop (i32.const 1))').join(' ');
    const { bytes } = prepareModule(
      wat(`(module (import "roost" "log" (func $log (param i32 i32))) (memory (export "memory") 1)
        (func (export "handle") (param i32) (result i32) ${straight} (call $log (i32.const 0) (i32.const 0)) (i32.const 0)))`),
    );
    const calls: number[] = [];
    const exports = new WA.Instance(new WA.Module(bytes), { roost: { log: (p: number) => calls.push(p) } }).exports;
    const fuel = exports[FUEL_EXPORT] as WasmGlobal;
    fuel.value = 30n;
    expect(() => (exports.handle as Fn)(0)).toThrow(/unreachable/);
    expect(calls).toEqual([]);
    expect(fuel.value).toBeLessThan(0n);
    fuel.value = 100n;
    expect((exports.handle as Fn)(0)).toBe(0);
    expect(calls).toEqual([0]);
  });

  it('runs a start function only when the host calls it, metered', () => {
    const prepared = prepareModule(
      actor(`(global $g (mut i32) (i32.const 0)) (start $s)
        (func $s (global.set $g (i32.const 99)))
        (func (export "get") (result i32) (global.get $g))`),
    );
    expect(prepared.hasStart).toBe(true);
    const exports = instantiate(prepared.bytes);
    const fuel = exports[FUEL_EXPORT] as WasmGlobal;
    // The fuel starts at 0: nothing runs before the host sets it.
    expect(fuel.value).toBe(0n);
    expect(() => (exports.get as Fn)()).toThrow();
    fuel.value = 1000n;
    expect((exports.get as Fn)()).toBe(0);
    (exports[START_EXPORT] as Fn)();
    expect((exports.get as Fn)()).toBe(99);
    expect(fuel.value).toBeLessThan(1000n);
  });

  it('keeps exceptions (try/catch/throw) working and metered', () => {
    const original = actor(`(tag $e (param i32))
      (func (export "catch") (param i32) (result i32)
        (try (result i32) (do (throw $e (i32.add (local.get 0) (i32.const 1)))) (catch $e (i32.mul (i32.const 2))) (catch_all (i32.const -1))))`);
    const { bytes } = prepareModule(original);
    expect(metered(bytes, 1e6, 'catch', 20)).toMatchObject({ result: 42 });
  });

  it('accepts real AssemblyScript output', async () => {
    const asc = (await import('assemblyscript/asc')).default;
    const source = `
      @external("roost", "state_set") declare function state_set(k: usize, kl: i32, v: usize, vl: i32): i32;
      @external("roost", "log") declare function log(p: usize, l: i32): void;
      export function handle(len: i32): i32 {
        const parts = new Array<string>();
        for (let i = 0; i < len; i++) parts.push(i.toString());
        const text = parts.join(",");
        const buf = String.UTF8.encode(text);
        const map = new Map<string, i32>();
        map.set(text, len);
        log(changetype<usize>(buf), buf.byteLength);
        return state_set(changetype<usize>(buf), buf.byteLength, changetype<usize>(buf), buf.byteLength) + map.get(text) - len;
      }`;
    let binary: Uint8Array | undefined;
    const { error, stderr } = await asc.main(['actor.ts', '--outFile', 'actor.wasm', '--optimize', '--runtime', 'incremental', '--exportRuntime'], {
      readFile: (name: string) => (name === 'actor.ts' ? source : null),
      writeFile: (name: string, contents: Uint8Array | string) => {
        if (name === 'actor.wasm') binary = contents as Uint8Array;
      },
      listFiles: () => [],
    });
    expect(error, stderr.toString()).toBeNull();
    const prepared = prepareModule(binary as Uint8Array);
    expect(prepared.imports.map((i) => `${i.module}.${i.name}`).sort()).toEqual(['env.abort', 'roost.log', 'roost.state_set']);
    const logs: string[] = [];
    const exports = new WA.Instance(new WA.Module(prepared.bytes), {
      env: { abort: () => expect.fail('abort') },
      roost: { state_set: () => 0, log: (_p: number, l: number) => logs.push(String(l)) },
    }).exports;
    (exports[FUEL_EXPORT] as WasmGlobal).value = 10_000_000n;
    if (prepared.hasStart) (exports[START_EXPORT] as Fn)();
    expect((exports.handle as Fn)(12)).toBe(0);
    expect(logs).toEqual([String('0,1,2,3,4,5,6,7,8,9,10,11'.length)]);
    expect((exports[FUEL_EXPORT] as WasmGlobal).value).toBeLessThan(10_000_000n);
  }, 60_000);
});
