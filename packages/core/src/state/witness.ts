import { existsSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { SandboxInfoSchema, type SandboxInfo } from '@roost/api';
import type { HomeLayout } from '../home.js';

/**
 * Witnesses: a copy of a record kept beside the files it describes, so the
 * database is not the only thing that knows what a directory of the home
 * is. A sandbox's is `<home>/sandboxes/<id>/record.json`, a snapshot's
 * `<home>/snapshots/<id>/record.json`. They are written after the database
 * (which stays the truth while it is whole) and read only when a directory
 * has no record: at open, and by `roost doctor`.
 */
export const WITNESS_FILE = 'record.json';

/** What a witness file holds: its kind, a format number and the record. */
interface WitnessFile<T> {
  kind: string;
  format: 1;
  writtenAt: string;
  record: T;
}

/**
 * Writes `record` as the witness at `dir/record.json`: to a temporary file
 * (mode 0600), renamed into place, so a reader sees the old copy or the new
 * one, never a part. Not fsynced: a witness matters when the database is
 * lost, and a process killed after the rename leaves it whole.
 */
export function writeWitness<T>(dir: string, kind: string, record: T): void {
  const path = join(dir, WITNESS_FILE);
  const tmp = `${path}.tmp-${process.pid}`;
  const body: WitnessFile<T> = { kind, format: 1, writtenAt: new Date().toISOString(), record };
  writeFileSync(tmp, JSON.stringify(body) + '\n', { mode: 0o600 });
  renameSync(tmp, path);
}

/** The record of the witness at `dir/record.json` if it is one of `kind` that `check` accepts, else null. */
export function readWitness<T>(dir: string, kind: string, check: (record: unknown) => T | null): T | null {
  try {
    const v = JSON.parse(readFileSync(join(dir, WITNESS_FILE), 'utf8')) as Partial<WitnessFile<unknown>>;
    if (v.kind !== kind || v.format !== 1) return null;
    return check(v.record);
  } catch {
    return null;
  }
}

/** Removes the witness in `dir` (the record is gone: nothing should bring it back). */
export function removeWitness(dir: string): void {
  rmSync(join(dir, WITNESS_FILE), { force: true });
}

const SANDBOX_KIND = 'roost.sandbox';

/**
 * Keys of a sandbox record that change on hot paths (every exec): a change
 * of only these does not rewrite the witness, which may therefore lag on them.
 */
const HOT_KEYS: ReadonlySet<keyof SandboxInfo> = new Set(['execs']);

/** True when a change to a record (`patch`; empty for the first write) should rewrite its witness. */
export function witnessWanted(patch: Partial<SandboxInfo>): boolean {
  const keys = Object.keys(patch) as (keyof SandboxInfo)[];
  return keys.length === 0 || keys.some((k) => !HOT_KEYS.has(k));
}

/** The witnesses of a home's sandboxes. */
export class SandboxWitnesses {
  constructor(readonly layout: HomeLayout) {}

  /** Writes a sandbox's witness; a failure (its directory gone, a full disk) is not the caller's: the database has the record. */
  write(info: SandboxInfo): boolean {
    try {
      writeWitness(this.layout.sandbox(info.id), SANDBOX_KIND, info);
      return true;
    } catch {
      return false;
    }
  }

  /** Writes the witness of a record that has none (a sandbox of a Roost from before witnesses). */
  ensure(info: SandboxInfo): void {
    if (!existsSync(join(this.layout.sandbox(info.id), WITNESS_FILE)) && existsSync(this.layout.sandbox(info.id))) this.write(info);
  }

  /** The sandbox record a directory's witness holds, if it is readable and for that directory. */
  read(id: string): SandboxInfo | null {
    return readWitness(this.layout.sandbox(id), SANDBOX_KIND, (r) => {
      const parsed = SandboxInfoSchema.safeParse(r);
      return parsed.success && parsed.data.id === id ? parsed.data : null;
    });
  }

  remove(id: string): void {
    try {
      removeWitness(this.layout.sandbox(id));
    } catch {
      // The directory goes next anyway.
    }
  }
}
