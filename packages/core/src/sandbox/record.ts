import type { EventType, SandboxInfo, SandboxStatus } from '@roost/api';
import { rethrowDiskFull, RoostError } from '../errors.js';
import { pendingWrites } from '../state/pending-writes.js';
import type { EventInput, EventLog } from '../state/events.js';
import type { SandboxRecords } from '../state/sandboxes.js';
import { witnessWanted, type SandboxWitnesses } from '../state/witness.js';
import type { CommandHooks } from '../commands.js';
import type { RuntimeCounters } from './services.js';

/**
 * The status changes a sandbox's record may make, from each status. A save
 * that keeps the status is always allowed; any other change not in this
 * table is a bug, refused (INTERNAL) before anything is written.
 *
 * - creating: the VM boots (`running`), fails to (`failed`), is killed or
 *   stopped while it boots (`stopping`, `stopped`).
 * - running / paused: pause and resume, stop, kill, a VM that dies or a
 *   guest that misbehaves (`failed`).
 * - stopping: the VM is gone (`stopped`), or died first (`failed`).
 * - stopped / failed: `start` boots it again (`creating`); a VM killed while
 *   it booted is `stopped`, then the boot's failure is recorded (`failed`).
 */
export const STATUS_TRANSITIONS: Readonly<Record<SandboxStatus, readonly SandboxStatus[]>> = {
  creating: ['running', 'failed', 'stopping', 'stopped'],
  running: ['paused', 'stopping', 'stopped', 'failed'],
  paused: ['running', 'stopping', 'stopped', 'failed'],
  stopping: ['stopped', 'failed'],
  stopped: ['creating', 'failed'],
  failed: ['creating'],
};

/** True when a record may go from `from` to `to` (see STATUS_TRANSITIONS). */
export function canTransition(from: SandboxStatus, to: SandboxStatus): boolean {
  return from === to || STATUS_TRANSITIONS[from].includes(to);
}

/** True while a sandbox has (or is getting, or is losing) a VM. */
export function isLive(status: SandboxStatus): boolean {
  return status === 'creating' || status === 'running' || status === 'paused' || status === 'stopping';
}

/**
 * Where a record is written: the sandboxes table and the event log of one
 * database, and the witness copy in the sandbox's directory (absent: none).
 */
export interface RecordStore {
  readonly records: SandboxRecords;
  readonly events: EventLog;
  readonly witnesses?: SandboxWitnesses;
}

/**
 * One sandbox's record as this process knows it, and the only way to change
 * it: every change is written with its event in one transaction, before the
 * caller acts on it (a crash then leaves a record to recover from, not an
 * orphan). One runtime owns a home at a time, so this object is the only
 * writer of its row. Once removed, saves are ignored. After the database,
 * each change but a hot one (an exec's count) rewrites the witness in the
 * sandbox's directory (state/witness.ts), the record's second copy.
 */
export class SandboxRecord {
  readonly id: string;
  #info: SandboxInfo;
  #removed = false;
  readonly #store: RecordStore;

  constructor(store: RecordStore, info: SandboxInfo) {
    this.id = info.id;
    this.#info = info;
    this.#store = store;
  }

  /** The record as it is now (not a copy: callers must not change it). */
  get info(): Readonly<SandboxInfo> {
    return this.#info;
  }

  get status(): SandboxStatus {
    return this.#info.status;
  }

  /** True once the sandbox was removed: its row is gone, and nothing more is written. */
  get removed(): boolean {
    return this.#removed;
  }

  /**
   * Applies a change to the record and writes it, with an event in the same
   * transaction. A key set to undefined is deleted. INTERNAL for a status
   * change STATUS_TRANSITIONS does not allow.
   */
  save(patch: Partial<SandboxInfo>, event?: EventType, input: EventInput = {}): void {
    if (this.#removed) return;
    if (patch.status !== undefined && !canTransition(this.#info.status, patch.status)) {
      throw new RoostError('INTERNAL', `sandbox ${this.id}: its record cannot go from ${this.#info.status} to ${patch.status}`);
    }
    const next = { ...this.#info, ...patch };
    for (const k of Object.keys(patch) as (keyof SandboxInfo)[]) if (patch[k] === undefined) delete next[k];
    const { records, events } = this.#store;
    const eventInput = { ...input, sandboxId: this.id, ...(next.image ? { imageId: next.image.id } : {}), time: new Date().toISOString() };
    // On a full disk the change is kept in memory and written, in order, once the disk takes writes again (PendingWrites):
    // the VM's state changed whether or not the database could say so.
    pendingWrites(records.db).write(() => {
      records.put(next);
      if (event) events.append(event, eventInput);
    });
    this.#info = next;
    if (witnessWanted(patch)) this.#store.witnesses?.write(next);
  }

  /**
   * Writes a new sandbox's first row with its `sandbox.created` event. A
   * restore names its snapshot (from here the snapshot counts it as a
   * dependent); a boot names its image, and `also` runs in the same
   * IMMEDIATE transaction (named volumes are made or found there, so a
   * concurrent `volumes.remove`, in another process too, sees them in use or
   * removes them before they are made again).
   */
  created(restoredFrom: { id: string; name: string } | undefined, also: () => void = () => {}): void {
    const info = this.#info;
    const common = { cpus: info.cpus, memoryMiB: info.memoryMiB, detached: info.detached, labels: info.labels };
    const data = restoredFrom ? { snapshot: restoredFrom.name, snapshotId: restoredFrom.id, ...common } : { image: info.image?.reference ?? null, ...common };
    const { records, events } = this.#store;
    const pending = pendingWrites(records.db);
    // A sandbox is not made on a disk that cannot record it (RESOURCE_EXHAUSTED).
    try {
      if (!pending.flush()) rethrowDiskFull({ code: 'SQLITE_FULL' }, records.db.name);
      records.db
        .transaction(() => {
          also();
          records.put(info);
          events.append('sandbox.created', { data, sandboxId: this.id, ...(info.image ? { imageId: info.image.id } : {}) });
        })
        .immediate();
    } catch (e) {
      rethrowDiskFull(e, records.db.name);
    }
    this.#store.witnesses?.write(info);
  }

  /** Appends an event about this sandbox without changing its record (none once it is removed). */
  event(type: EventType, data: Record<string, unknown>): void {
    if (!this.#removed) this.#store.events.appendOrKeep(type, { sandboxId: this.id, data });
  }

  /** Re-reads the row (another writer of the database may have changed it; not while changes wait for the disk). */
  reload(): void {
    if (pendingWrites(this.#store.records.db).size > 0) return;
    const rec = this.#store.records.get(this.id);
    if (rec) this.#info = rec;
  }

  /** Records that the VM is gone, once: `stopped` or `failed` with its reason, if the record says it had one. */
  exited(status: 'stopped' | 'failed', reason: string, data: Record<string, unknown> = {}): void {
    if (!isLive(this.#info.status)) return;
    this.save({ status, pid: null, reason, stoppedAt: new Date().toISOString() }, status === 'failed' ? 'sandbox.failed' : 'sandbox.exited', {
      data: { reason, ...data },
    });
  }

  /** From now on nothing is written: the sandbox is being removed (`false`: its removal failed, it is kept). */
  markRemoved(removed = true): void {
    this.#removed = removed;
  }

  /**
   * Deletes the row with a `sandbox.deleted` event, and `also` in the same
   * transaction; later saves are ignored. Not kept for later: on a full disk
   * it fails (RESOURCE_EXHAUSTED) and the record stays as it was.
   */
  delete(also: () => void = () => {}): void {
    const { records, events } = this.#store;
    const pending = pendingWrites(records.db);
    try {
      if (!pending.flush()) rethrowDiskFull({ code: 'SQLITE_FULL' }, records.db.name);
      records.db.transaction(() => {
        records.delete(this.id);
        also();
        events.append('sandbox.deleted', { sandboxId: this.id, data: {} });
      })();
    } catch (e) {
      rethrowDiskFull(e, records.db.name);
    }
    this.#removed = true;
    // The witness goes at once (the directory may take a while): nothing must bring the record back.
    this.#store.witnesses?.remove(this.id);
  }
}

/** Command bookkeeping: counts, and `exec.started` / `exec.exited` events on the record. */
export function commandHooks(record: SandboxRecord, counters: RuntimeCounters): CommandHooks {
  return {
    started: (cmd) => {
      counters.execs++;
      record.save({ execs: record.info.execs + 1 }, 'exec.started', {
        data: { execId: cmd.id, pid: cmd.pid, argv: cmd.argv.map((a) => a.slice(0, 256)).slice(0, 32) },
      });
    },
    exited: (cmd) => record.event('exec.exited', { ...cmd }),
    bytes: (stream, n) => {
      counters.execBytes[stream] += n;
    },
  };
}
