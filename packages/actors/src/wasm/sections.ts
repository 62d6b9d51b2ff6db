/**
 * The module's sections: the framing (magic, version, sections in order) and the
 * contents the loader needs (types, imports, functions, memories, globals, exports,
 * start, code bodies, data sizes). Table, tag, element and data-count sections
 * are kept as they are and left to V8's validation.
 */
import { isValType, skipConstExpr } from './opcodes.js';
import { Reader, invalidModule } from './reader.js';

export const SECTION = {
  custom: 0,
  type: 1,
  import: 2,
  function: 3,
  table: 4,
  memory: 5,
  global: 6,
  export: 7,
  start: 8,
  element: 9,
  code: 10,
  data: 11,
  dataCount: 12,
  tag: 13,
} as const;

const SECTION_NAMES = ['custom', 'type', 'import', 'function', 'table', 'memory', 'global', 'export', 'start', 'element', 'code', 'data', 'data count', 'tag'];

/** Where each section id goes in a module (the tag section sits between memory and global). */
export const SECTION_RANK: Record<number, number> = { 1: 1, 2: 2, 3: 3, 4: 4, 5: 5, 13: 6, 6: 7, 7: 8, 8: 9, 9: 10, 12: 11, 10: 12, 11: 13 };

export const WASM_HEADER = new Uint8Array([0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00]);

export type ExternKind = 'func' | 'table' | 'memory' | 'global' | 'tag';
const KINDS: readonly ExternKind[] = ['func', 'table', 'memory', 'global', 'tag'];

/** A section: its id and where its contents lie in the module's bytes. */
export interface SectionRange {
  id: number;
  /** The section's first byte (its id). */
  head: number;
  /** Its contents: [start, end). */
  start: number;
  end: number;
}

export interface FuncType {
  params: number[];
  results: number[];
}

export interface ImportEntry {
  module: string;
  name: string;
  kind: ExternKind;
  /** The function's type index (kind 'func'). */
  typeIndex: number;
}

export interface ExportEntry {
  name: string;
  kind: ExternKind;
  index: number;
}

export interface Limits {
  min: number;
  max: number | null;
}

export interface ParsedModule {
  bytes: Uint8Array;
  /** The non-custom sections, in order. */
  sections: SectionRange[];
  types: FuncType[];
  imports: ImportEntry[];
  /** The type index of every function, imported ones first. */
  funcTypes: number[];
  importedFuncs: number;
  /** The defined memories' limits. */
  memories: Limits[];
  /** The number of defined globals. */
  globals: number;
  exports: ExportEntry[];
  start: number | null;
  /** The function bodies: [start, end) in `bytes`, after each body's size. */
  bodies: { start: number; end: number }[];
  /** The data segments' total size. */
  dataBytes: number;
}

/** Splits a module into its sections (checks the header, the framing and the order). */
export function splitSections(bytes: Uint8Array): SectionRange[] {
  if (bytes.length < 8 || !WASM_HEADER.every((b, i) => bytes[i] === b)) {
    const magic = WASM_HEADER.subarray(0, 4).every((b, i) => bytes[i] === b);
    throw invalidModule(magic ? 'unsupported WASM binary version (only version 1 is)' : 'not a WASM binary (no \\0asm magic)');
  }
  const r: Reader = new Reader(bytes, 8);
  const sections: SectionRange[] = [];
  let rank = 0;
  while (!r.done) {
    const head = r.pos;
    const id = r.u8();
    const size = r.u32();
    const start = r.skip(size);
    if (id === SECTION.custom) continue;
    const next = SECTION_RANK[id];
    if (next === undefined) r.fail(`unknown section id ${id}`, head);
    if (next <= rank) r.fail(`the ${SECTION_NAMES[id]} section is duplicated or out of order`, head);
    rank = next;
    sections.push({ id, head, start, end: start + size });
  }
  return sections;
}

/** A memory's or table's limits. */
export function readLimits(r: Reader, what: string): Limits {
  const at = r.pos;
  const flags = r.u8();
  if (flags === 0x02 || flags === 0x03) r.fail(`a shared ${what} (threads proposal) is not supported`, at);
  if (flags > 0x01) r.fail(`unsupported ${what} limits (flags 0x${flags.toString(16)}; memory64 is not supported)`, at);
  const min = r.u32();
  const max = flags === 0x01 ? r.u32() : null;
  return { min, max };
}

function vec<T>(r: Reader, item: () => T): T[] {
  const n = r.u32();
  const out: T[] = [];
  for (let i = 0; i < n; i++) out.push(item());
  return out;
}

function valType(r: Reader): number {
  const t = r.u8();
  if (!isValType(t)) r.fail(`unsupported value type 0x${t.toString(16)}`, r.pos - 1);
  return t;
}

function kind(r: Reader): ExternKind {
  const k = r.u8();
  return KINDS[k] ?? r.fail(`unknown external kind ${k}`, r.pos - 1);
}

/** Parses what the loader needs of a module. */
export function parseModule(bytes: Uint8Array): ParsedModule {
  const m: ParsedModule = {
    bytes,
    sections: splitSections(bytes),
    types: [],
    imports: [],
    funcTypes: [],
    importedFuncs: 0,
    memories: [],
    globals: 0,
    exports: [],
    start: null,
    bodies: [],
    dataBytes: 0,
  };
  for (const s of m.sections) {
    const r: Reader = new Reader(bytes, s.start, s.end);
    switch (s.id) {
      case SECTION.type:
        m.types = vec(r, () => {
          const form = r.u8();
          if (form !== 0x60) r.fail(`unsupported type form 0x${form.toString(16)} (only function types are supported)`, r.pos - 1);
          return { params: vec(r, () => valType(r)), results: vec(r, () => valType(r)) };
        });
        break;
      case SECTION.import:
        m.imports = vec(r, () => {
          const module = r.name();
          const name = r.name();
          const k = kind(r);
          if (k !== 'func') {
            throw invalidModule(`imports the ${k} ${module}.${name}; an actor module defines its own memory, tables and globals`, {
              import: `${module}.${name}`,
              kind: k,
            });
          }
          const typeIndex = r.u32();
          m.funcTypes.push(typeIndex);
          return { module, name, kind: k, typeIndex };
        });
        m.importedFuncs = m.funcTypes.length;
        break;
      case SECTION.function:
        for (const t of vec(r, () => r.u32())) m.funcTypes.push(t);
        break;
      case SECTION.memory:
        m.memories = vec(r, () => readLimits(r, 'memory'));
        break;
      case SECTION.global:
        m.globals = vec(r, () => {
          valType(r);
          const mut = r.u8();
          if (mut > 1) r.fail(`bad global mutability ${mut}`, r.pos - 1);
          skipConstExpr(r);
        }).length;
        break;
      case SECTION.export:
        m.exports = vec(r, () => ({ name: r.name(), kind: kind(r), index: r.u32() }));
        break;
      case SECTION.start:
        m.start = r.u32();
        break;
      case SECTION.code:
        m.bodies = vec(r, () => {
          const size = r.u32();
          const start = r.skip(size);
          return { start, end: start + size };
        });
        break;
      case SECTION.data:
        vec(r, () => {
          const at = r.pos;
          const flags = r.u32();
          if (flags === 2) r.u32();
          if (flags === 0 || flags === 2) skipConstExpr(r);
          else if (flags !== 1) r.fail(`bad data segment flags ${flags}`, at);
          const len = r.u32();
          r.skip(len);
          m.dataBytes += len;
        });
        break;
      default:
        continue; // table, tag, element, data count: V8 validates them
    }
    if (r.pos !== s.end) r.fail(`the ${SECTION_NAMES[s.id]} section has ${s.end - r.pos} bytes left over`);
  }
  return m;
}
