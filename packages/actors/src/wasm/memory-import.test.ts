import { describe, expect, it } from 'vitest';
import { FUEL_EXPORT } from '../abi.js';
import { importMemory, MEMORY_IMPORT_MODULE, MEMORY_IMPORT_NAME } from './memory-import.js';
import { prepareModule } from './prepare.js';

const wabt = await (await import('wabt')).default();

function wat(src: string): Uint8Array {
  const m = wabt.parseWat('test.wat', src, { bulk_memory: true });
  try {
    return m.toBinary({}).buffer;
  } finally {
    m.destroy();
  }
}

/** The part of the WebAssembly JS API the test uses (the project's lib has no DOM types). */
interface Memory {
  buffer: ArrayBuffer;
}
interface WasmApi {
  Module: { new (bytes: Uint8Array): object; imports(m: object): unknown[] };
  Instance: new (module: object, imports?: object) => { exports: Record<string, unknown> };
  Memory: new (d: { initial: number; maximum: number }) => Memory;
}
const WA = (globalThis as unknown as { WebAssembly: WasmApi }).WebAssembly;

const run = (prepared: Uint8Array, pages: number, memory: Memory, extraImports: Record<string, unknown> = {}) => {
  const imported = importMemory(prepared, pages);
  const instance = new WA.Instance(new WA.Module(imported.bytes), {
    [MEMORY_IMPORT_MODULE]: { [MEMORY_IMPORT_NAME]: memory, ...extraImports },
  });
  (instance.exports[FUEL_EXPORT] as { value: bigint }).value = 1_000_000n;
  return { imported, instance };
};

describe('importMemory', () => {
  it('makes the memory an import the host gives, capped, with data segments copied in at instantiation', () => {
    const prepared = prepareModule(
      wat(`(module
        (import "roost" "reply" (func $reply (param i32 i32) (result i32)))
        (memory (export "memory") 2 100)
        (data (i32.const 16) "hello")
        (func (export "grow") (result i32) (memory.grow (i32.const 10)))
        (func (export "handle") (param i32) (result i32) (i32.load8_u (i32.const 16))))`),
    ).bytes;
    const memory = new WA.Memory({ initial: 2, maximum: 8 });
    new Uint8Array(memory.buffer).fill(0xee);
    const { imported, instance } = run(prepared, 8, memory, { reply: () => 0 });
    expect(imported).toMatchObject({ initialPages: 2, maximumPages: 8 });
    expect(instance.exports.memory).toBe(memory);
    expect((instance.exports.handle as (n: number) => number)(0)).toBe('h'.charCodeAt(0));
    // The cap holds: 2 + 10 pages is over 8.
    expect((instance.exports.grow as () => number)()).toBe(-1);
  });

  it('works for a module without imports (an import section is made) and refuses an initial size over the cap', () => {
    const prepared = prepareModule(wat(`(module (memory (export "memory") 3) (func (export "handle") (param i32) (result i32) (i32.const 0)))`)).bytes;
    const { imported } = run(prepared, 5, new WA.Memory({ initial: 3, maximum: 5 }));
    expect(WA.Module.imports(new WA.Module(imported.bytes))).toEqual([{ module: 'roost', name: '__memory', kind: 'memory' }]);
    expect(() => importMemory(prepared, 2)).toThrow(/initial memory is 3 pages/);
  });
});
