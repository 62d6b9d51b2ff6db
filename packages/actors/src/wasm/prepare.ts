/**
 * The actor module loader: validates a WASM binary against the actor ABI
 * (docs/actors.md), injects fuel metering (./meter.ts) and caps its memory.
 */
import { RoostError, isRoostError } from '@roost/api';
import {
  ACTOR_GRANTS,
  FUEL_EXPORT,
  HANDLE_EXPORT,
  INIT_EXPORT,
  MAX_DATA_BYTES,
  MAX_MEMORY_PAGES,
  MAX_MODULE_BYTES,
  MEMORY_EXPORT,
  RESERVED_EXPORT_PREFIX,
  START_EXPORT,
  findAbiImport,
  type AbiValType,
  type ActorGrant,
} from '../abi.js';
import { FuelCode, meterBody } from './meter.js';
import { Reader, Writer, invalidModule } from './reader.js';
import { SECTION, WASM_HEADER, parseModule, readLimits, splitSections, type ExternKind, type FuncType, type ParsedModule } from './sections.js';

/** A module ready to run as an actor. */
export interface PreparedModule {
  /** The instrumented binary: fuel metering injected, exports FUEL_EXPORT (and START_EXPORT for a start function). */
  bytes: Uint8Array;
  imports: { module: string; name: string; kind: ExternKind }[];
  /** The module's own exports (not FUEL_EXPORT or START_EXPORT). */
  exports: { name: string; kind: ExternKind }[];
  /** The defined memory's limits in 64 KiB pages. */
  memory: { initialPages: number; maximumPages: number | null };
  /** Grants the module's imports need (e.g. ['fetch']), in ACTOR_GRANTS order. */
  grantsNeeded: ActorGrant[];
  hasInit: boolean;
  /**
   * The module had a start function: it is exported as START_EXPORT instead (the
   * start section is dropped, as the fuel is set only after instantiation); the
   * host calls it, metered, before `init` or `handle`.
   */
  hasStart: boolean;
}

/** The part of the WebAssembly JS API the loader uses (the project's lib has no DOM types). */
interface WasmApi {
  Module: new (bytes: Uint8Array) => object;
}
const WebAssemblyApi = (globalThis as unknown as { WebAssembly: WasmApi }).WebAssembly;

const VALTYPE: Record<AbiValType, number> = { i32: 0x7f, i64: 0x7e };
const VALTYPE_NAMES: Record<number, string> = { 0x7f: 'i32', 0x7e: 'i64', 0x7d: 'f32', 0x7c: 'f64', 0x7b: 'v128', 0x70: 'funcref', 0x6f: 'externref' };

function signature(t: FuncType): string {
  const names = (ts: number[]): string => ts.map((v) => VALTYPE_NAMES[v] ?? '?').join(', ');
  return `(${names(t.params)}) -> (${names(t.results)})`;
}

function sameTypes(actual: number[], expected: readonly AbiValType[]): boolean {
  return actual.length === expected.length && actual.every((t, i) => t === VALTYPE[expected[i] as AbiValType]);
}

/**
 * Validates `binary` as an actor module (docs/actors.md) and returns it with fuel
 * metering injected. Throws RoostError INVALID_ARGUMENT, with a message naming
 * what is wrong, for anything that is not a well-formed WASM module within the ABI.
 */
export function prepareModule(binary: Uint8Array): PreparedModule {
  if (binary.length > MAX_MODULE_BYTES) {
    throw invalidModule(`it is ${binary.length} bytes, over the limit of ${MAX_MODULE_BYTES}`, { bytes: binary.length, limit: MAX_MODULE_BYTES });
  }
  let prepared: PreparedModule;
  try {
    prepared = prepare(binary);
  } catch (err) {
    if (isRoostError(err)) throw err;
    // A bug of the decoder must not surface as a RangeError: the bytes are hostile.
    throw invalidModule(`malformed (${err instanceof Error ? err.message : String(err)})`);
  }
  try {
    new WebAssemblyApi.Module(prepared.bytes);
  } catch (err) {
    throw invalidModule(`WebAssembly refused it: ${err instanceof Error ? err.message : String(err)}`, { stage: 'compile' });
  }
  return prepared;
}

function prepare(binary: Uint8Array): PreparedModule {
  const m = parseModule(binary);
  const typeOf = (typeIndex: number): FuncType => m.types[typeIndex] ?? fail(`a function uses type ${typeIndex}, which is not defined`);

  const grants = new Set<ActorGrant>();
  for (const imp of m.imports) {
    const abi = findAbiImport(imp.module, imp.name);
    const what = `${imp.module}.${imp.name}`;
    if (!abi) fail(`imports ${what}, which is not in the actor ABI`, { import: what });
    const t = typeOf(imp.typeIndex);
    if (!sameTypes(t.params, abi.params) || !sameTypes(t.results, abi.results)) {
      const expected = `(${abi.params.join(', ')}) -> (${abi.results.join(', ')})`;
      fail(`imports ${what} as ${signature(t)}, but the ABI's is ${expected}`, { import: what });
    }
    if (abi.grant) grants.add(abi.grant);
  }

  if (m.memories.length === 0) fail(`defines no memory; an actor module defines its own and exports it as "${MEMORY_EXPORT}"`);
  if (m.memories.length > 1) fail(`defines ${m.memories.length} memories; an actor module has one`);
  const memory = m.memories[0] as { min: number; max: number | null };
  if (memory.min > MAX_MEMORY_PAGES) {
    fail(`its initial memory is ${memory.min} pages, over the limit of ${MAX_MEMORY_PAGES} (256 MiB)`, { pages: memory.min, limit: MAX_MEMORY_PAGES });
  }
  if (m.dataBytes > MAX_DATA_BYTES) fail(`its data segments hold ${m.dataBytes} bytes, over the limit of ${MAX_DATA_BYTES}`, { bytes: m.dataBytes });

  const defined = m.funcTypes.length - m.importedFuncs;
  if (defined !== m.bodies.length) fail(`it declares ${defined} functions but has ${m.bodies.length} bodies`);
  const exportsByName = new Map(m.exports.map((e) => [e.name, e]));
  for (const e of m.exports) {
    if (e.name.startsWith(RESERVED_EXPORT_PREFIX)) fail(`exports ${e.name}; names starting with ${RESERVED_EXPORT_PREFIX} are reserved`, { export: e.name });
  }
  const mem = exportsByName.get(MEMORY_EXPORT);
  if (!mem || mem.kind !== 'memory' || mem.index !== 0) fail(`does not export its memory as "${MEMORY_EXPORT}"`);
  const checkEntry = (name: string, required: boolean): boolean => {
    const e = exportsByName.get(name);
    if (!e) {
      if (required) fail(`does not export a "${name}" function (i32) -> (i32)`);
      return false;
    }
    const typeIndex = e.kind === 'func' ? m.funcTypes[e.index] : undefined;
    const t = typeIndex === undefined ? undefined : typeOf(typeIndex);
    if (!t || t.params.length !== 1 || t.params[0] !== 0x7f || t.results.length !== 1 || t.results[0] !== 0x7f) {
      fail(`exports "${name}" as ${t ? signature(t) : `a ${e.kind}`}, but it must be a function (i32) -> (i32)`, { export: name });
    }
    return true;
  };
  checkEntry(HANDLE_EXPORT, true);
  const hasInit = checkEntry(INIT_EXPORT, false);

  return {
    bytes: instrument(m, typeOf),
    imports: m.imports.map(({ module, name, kind }) => ({ module, name, kind })),
    exports: m.exports.map(({ name, kind }) => ({ name, kind })),
    memory: { initialPages: memory.min, maximumPages: memory.max },
    grantsNeeded: ACTOR_GRANTS.filter((g) => grants.has(g)),
    hasInit,
    hasStart: m.start !== null,
  };
}

function fail(message: string, details: Record<string, unknown> = {}): never {
  throw invalidModule(message, details);
}

const KIND_CODES: Record<ExternKind, number> = { func: 0, table: 1, memory: 2, global: 3, tag: 4 };

/** The module with every body metered, the fuel global added and exported, and the start function exported. */
function instrument(m: ParsedModule, typeOf: (typeIndex: number) => FuncType): Uint8Array {
  const bytes = m.bytes;
  // Imported globals are refused, so the new global's index is the count of defined ones.
  const fuel = new FuelCode(m.globals);

  const code = new Writer(Math.ceil(bytes.length * 1.3));
  code.u32(m.bodies.length);
  m.bodies.forEach((body, i) => {
    const params = typeOf(m.funcTypes[m.importedFuncs + i] as number).params.length;
    const metered = meterBody(bytes, body.start, body.end, params, m.importedFuncs, fuel);
    code.u32(metered.length).bytes(metered);
  });

  // global (mut i64) (i64.const 0), after the module's own.
  const globals = new Writer();
  globals.u32(m.globals + 1);
  const globalSection = m.sections.find((s) => s.id === SECTION.global);
  if (globalSection) {
    const r: Reader = new Reader(bytes, globalSection.start, globalSection.end);
    r.u32();
    globals.bytes(bytes.subarray(r.pos, globalSection.end));
  }
  globals.u8(0x7e).u8(0x01).u8(0x42).u8(0x00).u8(0x0b);

  const exports = new Writer();
  exports.u32(m.exports.length + 1 + (m.start === null ? 0 : 1));
  for (const e of m.exports) exports.name(e.name).u8(KIND_CODES[e.kind]).u32(e.index);
  exports.name(FUEL_EXPORT).u8(KIND_CODES.global).u32(m.globals);
  if (m.start !== null) exports.name(START_EXPORT).u8(KIND_CODES.func).u32(m.start);

  const out = new Writer(code.length + bytes.length);
  out.bytes(WASM_HEADER);
  let globalsWritten = false;
  for (const s of m.sections) {
    if (!globalsWritten && (s.id === SECTION.global || s.id === SECTION.export)) {
      globals.sectionInto(out, SECTION.global);
      globalsWritten = true;
    }
    if (s.id === SECTION.global) continue;
    else if (s.id === SECTION.export) exports.sectionInto(out, SECTION.export);
    else if (s.id === SECTION.code) code.sectionInto(out, SECTION.code);
    else if (s.id !== SECTION.start) out.bytes(bytes.subarray(s.head, s.end));
  }
  return out.finish();
}

/**
 * The prepared bytes with the memory's maximum set to min(declared, maxPages).
 * Throws RoostError INVALID_ARGUMENT when the memory's initial size is over
 * maxPages. Cheap: only the memory section is rewritten.
 */
export function capMemory(prepared: Uint8Array, maxPages: number): Uint8Array {
  if (!Number.isInteger(maxPages) || maxPages < 0 || maxPages > 65536) {
    throw new RoostError('INVALID_ARGUMENT', `maxPages must be an integer from 0 to 65536, not ${maxPages}`, { details: { maxPages } });
  }
  let section;
  let limits;
  try {
    section = splitSections(prepared).find((s) => s.id === SECTION.memory);
    if (!section) fail('defines no memory');
    const r: Reader = new Reader(prepared, section.start, section.end);
    if (r.u32() !== 1) fail('does not define exactly one memory');
    limits = readLimits(r, 'memory');
    if (r.pos !== section.end) r.fail('the memory section has bytes left over');
  } catch (err) {
    if (isRoostError(err)) throw err;
    throw invalidModule(`malformed (${err instanceof Error ? err.message : String(err)})`);
  }
  if (limits.min > maxPages) {
    throw new RoostError('INVALID_ARGUMENT', `the module's initial memory is ${limits.min} pages, over the actor's limit of ${maxPages} pages`, {
      details: { initialPages: limits.min, maxPages },
    });
  }
  const max = Math.min(limits.max ?? Infinity, maxPages);
  const contents = new Writer(16).u32(1).u8(0x01).u32(limits.min).u32(max);
  const out = new Writer(prepared.length + 16);
  out.bytes(prepared.subarray(0, section.head));
  contents.sectionInto(out, SECTION.memory);
  out.bytes(prepared.subarray(section.end));
  return out.finish();
}
