/**
 * Makes a prepared module's memory an import (`roost.__memory`), so the
 * host can hand each instance a memory from a pool instead of having
 * instantiation allocate one: a fresh WASM memory costs a large virtual
 * reservation and garbage collection work, which dominated a small
 * message's cost. The instance still starts as fresh (the host zeroes a
 * reused memory; data segments are copied at instantiation), and the
 * module's `memory` export re-exports the import. Only the loader's own
 * output goes through this: user modules may not import a memory.
 */
import { isRoostError } from '@roost/api';
import { Reader, Writer, invalidModule } from './reader.js';
import { SECTION, SECTION_RANK, WASM_HEADER, readLimits, splitSections } from './sections.js';

export const MEMORY_IMPORT_MODULE = 'roost';
export const MEMORY_IMPORT_NAME = '__memory';

export interface MemoryImported {
  bytes: Uint8Array;
  initialPages: number;
  maximumPages: number;
}

function name(w: Writer, s: string): void {
  const b = new TextEncoder().encode(s);
  w.u32(b.length).bytes(b);
}

/** `prepared` (capped to `maxPages` as capMemory does) with its memory imported. */
export function importMemory(prepared: Uint8Array, maxPages: number): MemoryImported {
  let sections;
  let limits;
  try {
    sections = splitSections(prepared);
    const mem = sections.find((s) => s.id === SECTION.memory);
    if (!mem) throw invalidModule('defines no memory');
    const r = new Reader(prepared, mem.start, mem.end);
    if (r.u32() !== 1) throw invalidModule('does not define exactly one memory');
    limits = readLimits(r, 'memory');
  } catch (err) {
    if (isRoostError(err)) throw err;
    throw invalidModule(`malformed (${err instanceof Error ? err.message : String(err)})`);
  }
  const maximumPages = Math.min(limits.max ?? Infinity, maxPages);
  if (limits.min > maximumPages) {
    throw invalidModule(`the module's initial memory is ${limits.min} pages, over the actor's limit of ${maxPages} pages`);
  }
  const entry = new Writer(32);
  name(entry, MEMORY_IMPORT_MODULE);
  name(entry, MEMORY_IMPORT_NAME);
  entry.u8(0x02).u8(0x01).u32(limits.min).u32(maximumPages);
  const entryBytes = entry.finish();

  const out = new Writer(prepared.length + 64);
  out.bytes(WASM_HEADER);
  let importWritten = false;
  const writeImports = (existing?: { start: number; end: number }): void => {
    const contents = new Writer(64);
    if (existing) {
      const r = new Reader(prepared, existing.start, existing.end);
      const count = r.u32();
      contents.u32(count + 1).bytes(prepared.subarray(r.pos, existing.end));
    } else {
      contents.u32(1);
    }
    contents.bytes(entryBytes);
    contents.sectionInto(out, SECTION.import);
    importWritten = true;
  };
  for (const s of sections) {
    if (s.id === SECTION.memory) continue;
    if (s.id === SECTION.import) {
      writeImports(s);
      continue;
    }
    // No import section: one goes before the first section ranked after imports.
    if (!importWritten && s.id !== 0 && (SECTION_RANK[s.id] ?? 0) > (SECTION_RANK[SECTION.import] ?? 0)) writeImports();
    out.bytes(prepared.subarray(s.head, s.end));
  }
  if (!importWritten) writeImports();
  return { bytes: out.finish(), initialPages: limits.min, maximumPages };
}
