/**
 * The actor ABI (version 1) as data: the imports an actor module may make, their
 * WASM signatures and the grants they need, the error codes, and the limits the
 * module loader (./wasm/) enforces. docs/actors.md is the prose of this table.
 */

/** The version of the ABI this table describes. */
export const ABI_VERSION = 1;

/** A grant an actor can be created with, which some imports need. */
export type ActorGrant = 'random' | 'clock' | 'fetch' | 'sandbox';

/** Every grant, in a stable order. */
export const ACTOR_GRANTS: readonly ActorGrant[] = ['random', 'clock', 'fetch', 'sandbox'];

/** A WASM value type the ABI uses. */
export type AbiValType = 'i32' | 'i64';

/** One import the ABI allows. */
export interface AbiImport {
  readonly module: string;
  readonly name: string;
  readonly params: readonly AbiValType[];
  readonly results: readonly AbiValType[];
  /** The grant the actor needs to be created with a module making this import. */
  readonly grant?: ActorGrant;
}

/** The imports an actor module may make (docs/actors.md, "Imports"); anything else is refused. */
export const ABI_IMPORTS: readonly AbiImport[] = [
  { module: 'roost', name: 'msg_read', params: ['i32', 'i32', 'i32'], results: ['i32'] },
  { module: 'roost', name: 'state_get', params: ['i32', 'i32', 'i32', 'i32'], results: ['i32'] },
  { module: 'roost', name: 'state_set', params: ['i32', 'i32', 'i32', 'i32'], results: ['i32'] },
  { module: 'roost', name: 'state_delete', params: ['i32', 'i32'], results: ['i32'] },
  { module: 'roost', name: 'reply', params: ['i32', 'i32'], results: ['i32'] },
  { module: 'roost', name: 'sender', params: [], results: ['i32'] },
  { module: 'roost', name: 'send', params: ['i32', 'i32', 'i32'], results: ['i32'] },
  { module: 'roost', name: 'create', params: ['i32', 'i32', 'i32', 'i32'], results: ['i32'] },
  { module: 'roost', name: 'timer', params: ['i64', 'i32', 'i32'], results: ['i32'] },
  { module: 'roost', name: 'time', params: [], results: ['i64'] },
  { module: 'roost', name: 'log', params: ['i32', 'i32'], results: [] },
  { module: 'roost', name: 'result_read', params: ['i32', 'i32', 'i32'], results: ['i32'] },
  { module: 'roost', name: 'random', params: ['i32', 'i32'], results: ['i32'], grant: 'random' },
  { module: 'roost', name: 'clock', params: [], results: ['i64'], grant: 'clock' },
  { module: 'roost', name: 'fetch', params: ['i32', 'i32'], results: ['i32'], grant: 'fetch' },
  { module: 'roost', name: 'sandbox_exec', params: ['i32', 'i32'], results: ['i32'], grant: 'sandbox' },
  { module: 'env', name: 'abort', params: ['i32', 'i32', 'i32', 'i32'], results: [] },
];

/** The ABI import `module.name`, or undefined when the ABI has none. */
export function findAbiImport(module: string, name: string): AbiImport | undefined {
  return ABI_IMPORTS.find((entry) => entry.module === module && entry.name === name);
}

/** The export every actor module must have: its own (not imported) linear memory. */
export const MEMORY_EXPORT = 'memory';
/** `(len: i32) -> i32`, run once per message. */
export const HANDLE_EXPORT = 'handle';
/** Optional `(len: i32) -> i32`, run once when the actor is created. */
export const INIT_EXPORT = 'init';

/**
 * The mutable i64 global the loader adds and exports: the fuel left. The host sets
 * it before running a message and reads it after; fuel < 0 after a trap (or after
 * a return) means the message ran out of fuel (OUT_OF_FUEL). See ./wasm/meter.ts.
 */
export const FUEL_EXPORT = '__roost_fuel';
/**
 * The loader turns a module's `start` function into this export (and drops the
 * start section), so that it runs metered: the host sets the fuel, then calls it
 * before `init` or `handle`.
 */
export const START_EXPORT = '__roost_start';
/** Export names with this prefix are the loader's; a module may not export them. */
export const RESERVED_EXPORT_PREFIX = '__roost_';

/** Not found (`state_get`, `create`). */
export const E_NOT_FOUND = -1;
/** A reference the actor does not hold (`send`). */
export const E_BAD_REF = -2;
/** Over a limit (sizes, counts, state). */
export const E_LIMIT = -3;
/** Invalid input (`create`: the module does not fit the child's grants). */
export const E_INVALID = -4;
/** The operation failed (`fetch`, `sandbox_exec`). */
export const E_FAILED = -5;
/** The operation is not allowed (egress policy, sandbox not granted). */
export const E_DENIED = -6;

/** A WASM page: 64 KiB. */
export const WASM_PAGE_BYTES = 65536;
/** The largest module binary accepted: 16 MiB. */
export const MAX_MODULE_BYTES = 16 * 1024 * 1024;
/** The most linear memory an actor may have: 4096 pages (256 MiB). */
export const MAX_MEMORY_PAGES = 4096;
/** The most bytes of data segments a module may carry: 16 MiB. */
export const MAX_DATA_BYTES = 16 * 1024 * 1024;
/** The default fuel per message. */
export const DEFAULT_FUEL = 100_000_000;
