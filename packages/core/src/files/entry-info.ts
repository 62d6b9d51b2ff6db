import type { EntryInfo } from '@roost/api';
import type { EntryRecord } from '@roost/protocol';

/* The agent's entry records as the API's EntryInfo. */

const S_IFMT = 0o170000;
const S_IFREG = 0o100000;
const S_IFDIR = 0o040000;
const S_IFLNK = 0o120000;

/** An entry record as the API's EntryInfo: type from st_mode, mode & 0o7777, mtime ISO from MTIME_NS. */
export function toEntryInfo(e: EntryRecord): EntryInfo {
  const fmt = e.stMode & S_IFMT;
  const info: EntryInfo = {
    path: e.path,
    name: e.name,
    type: fmt === S_IFREG ? 'file' : fmt === S_IFDIR ? 'dir' : fmt === S_IFLNK ? 'symlink' : 'other',
    size: Number(e.size),
    mode: e.stMode & 0o7777,
    uid: e.uid,
    gid: e.gid,
    mtime: isoFromNs(e.mtimeNs),
  };
  if (e.link !== undefined) info.symlinkTarget = e.link;
  return info;
}

const MAX_DATE_MS = 8.64e15;

function isoFromNs(ns: bigint): string {
  // The guest's u64 holds a signed time_t-based value: times before 1970 wrap.
  const ms = Number(BigInt.asIntN(64, ns) / 1_000_000n);
  return new Date(Math.max(-MAX_DATE_MS, Math.min(MAX_DATE_MS, ms))).toISOString();
}

/** True when a record's st_mode says directory. */
export function isDirMode(stMode: number): boolean {
  return (stMode & S_IFMT) === S_IFDIR;
}
